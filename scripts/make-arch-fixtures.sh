#!/usr/bin/env bash
# Regenerates test/fixtures/arch/ with scripts/make-arch-fixtures.py (see that file and
# test/fixtures/arch/README.md).
# Usage: scripts/make-arch-fixtures.sh [--venv DIR] [--out DIR] [--only NAME...]
#   --venv DIR  create (if absent) a virtual environment in DIR with torch, transformers,
#               tokenizers, safetensors, sentencepiece, numpy and PyYAML from PyPI and use it;
#               without it $PYTHON (default python3) must have them
#   LLAMA_CPP   llama.cpp source tree with convert_hf_to_gguf.py, conversion/ and gguf-py/
#               (default $PKV_DATA_DIR/llama.cpp/src, PKV_DATA_DIR defaulting to data/)
# Then checks the result with test/python/test_arch_fixtures.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
LLAMA_CPP="${LLAMA_CPP:-${PKV_DATA_DIR:-$ROOT/data}/llama.cpp/src}"
OUT="$ROOT/test/fixtures/arch"
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) [ $# -ge 2 ] || { echo "make-arch-fixtures.sh: --venv needs a directory" >&2; exit 2; }
            if [ ! -x "$2/bin/python" ]; then
              python3 -m venv "$2"
              "$2/bin/pip" install -q torch transformers tokenizers safetensors sentencepiece numpy pyyaml
            fi
            PYTHON="$2/bin/python"; shift 2 ;;
    --out) [ $# -ge 2 ] || { echo "make-arch-fixtures.sh: --out needs a directory" >&2; exit 2; }
           OUT="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
[ -f "$LLAMA_CPP/convert_hf_to_gguf.py" ] || {
  echo "make-arch-fixtures.sh: no convert_hf_to_gguf.py in $LLAMA_CPP (set LLAMA_CPP)" >&2; exit 1; }
"$PYTHON" "$ROOT/scripts/make-arch-fixtures.py" --llama-cpp "$LLAMA_CPP" --out "$OUT" ${ARGS[@]+"${ARGS[@]}"}
if [ "$OUT" = "$ROOT/test/fixtures/arch" ]; then
  PKV_SOURCE_DIR="$ROOT" /usr/bin/python3 "$ROOT/test/python/test_arch_fixtures.py"
fi
