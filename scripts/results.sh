#!/usr/bin/env bash
# Reproduces docs/results.md: a pattern table calibrated on prose (fortunes) and
# evaluated on C code (glibc headers from /usr/include) next to KIVI, online
# PatternKV, q4_0 with and without Hadamard rotation, and q8_0, at 2 and 4 bits.
# Outputs go to $PKV_OUT_DIR (default out/results/). Takes about 30 minutes on 2 cores.
# --model gemma3 (or PKV_MODEL=gemma3): the Gemma 3 270M rows of docs/results.md, the main
# runs without the ablations, in out/results-gemma3/ (about 15 minutes on 2 cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/common.bash"
NAME="${PKV_MODEL:-smollm2}"
if [ "${1:-}" = --model ] && [ -n "${2:-}" ]; then NAME=$2
elif [ $# -gt 0 ]; then echo "results.sh: usage: results.sh [--model smollm2|gemma3]" >&2; exit 2; fi
BUILD="${PKV_BUILD_DIR:-$ROOT/build}"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
SUFFIX=""; [ "$NAME" = smollm2 ] || SUFFIX="-$NAME"
OUT="${PKV_OUT_DIR:-$ROOT/out/results$SUFFIX}"
PKV="${PKV_BIN:-$BUILD/apps/pkv}"
MODEL="$(pkv_model_file "$NAME" "$DATA")"
[ -x "$PKV" ] && [ -f "$MODEL" ] || { echo "run scripts/build.sh and scripts/fetch-data.sh first" >&2; exit 1; }
mkdir -p "$OUT"
cd "$OUT"
# The evaluation text: C declarations and comments, a domain the prose table never saw.
cat /usr/include/stdio.h /usr/include/stdlib.h /usr/include/string.h /usr/include/unistd.h /usr/include/math.h \
  /usr/include/signal.h /usr/include/time.h /usr/include/pthread.h >code.txt
sha256sum code.txt
"$PKV" dump --model "$MODEL" --text "$DATA/text/fortunes.txt" --tokens 8192 --ctx 1024 --capture k_post,v \
  --out calib.h5 --force
"$PKV" calibrate --dump calib.h5 --bits 2 --out table2.safetensors --force | tee cal2.md
"$PKV" calibrate --dump calib.h5 --bits 4 --out table4.safetensors --force | tee cal4.md
"$PKV" eval --model "$MODEL" --text code.txt --tokens 4096 --ctx 2048 \
  --kv fp16 kivi:2 patternkv:2 patternkv-table:2:table2.safetensors q4_0 q4_0:rot kivi:4 patternkv:4 \
  patternkv-table:4:table4.safetensors q8_0 --json eval.json --md eval.md --force | tee eval.out
"$PKV" dump --model "$MODEL" --text code.txt --tokens 4096 --ctx 2048 --out code.h5 --force
"$PKV" analyze --dump code.h5 --methods kivi,patternkv --bits 2 --table table2.safetensors --attn-stride 8 \
  --json analyze2.json --force | tee analyze2.md
[ "$NAME" = smollm2 ] || exit 0
# Ablations: the table without the fitted parameters, and pre-RoPE keys.
"$PKV" calibrate --dump calib.h5 --bits 2 --fit none --out table2-nofit.safetensors --force | tee cal2-nofit.md
"$PKV" eval --model "$MODEL" --text code.txt --tokens 4096 --ctx 2048 --kv fp16 patternkv-table:2:table2-nofit.safetensors \
  --json eval-nofit.json --md eval-nofit.md --force | tee eval-nofit.out
"$PKV" dump --model "$MODEL" --text "$DATA/text/fortunes.txt" --tokens 8192 --ctx 1024 --capture k_pre,v \
  --out calib-pre.h5 --force
"$PKV" calibrate --dump calib-pre.h5 --keys pre --bits 2 --out table2-pre.safetensors --force | tee cal2-pre.md
"$PKV" eval --model "$MODEL" --text code.txt --tokens 4096 --ctx 2048 \
  --kv fp16 patternkv-table:2:pre:table2-pre.safetensors kivi:2:pre patternkv:2:pre --json eval-pre.json --md eval-pre.md \
  --force | tee eval-pre.out
