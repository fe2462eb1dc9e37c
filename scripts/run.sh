#!/usr/bin/env bash
# The README's main job, end to end on the default model and text: installs
# dependencies, fetches SmolLM2-135M-Instruct (Q4_1) and the fortunes text, builds
# pkv, dumps the KV cache of 8192 tokens, validates the dump, calibrates a pattern
# table from it (out/table.safetensors, with held-out statistics; exported to GGUF),
# evaluates perplexity with quantized KV caches (out/eval.md: fp16, KIVI, PatternKV,
# the table and rotated q4_0 on 2048 tokens at the dump's context), and analyzes the dump (fp16, KIVI, PatternKV at 2 and 4 bits, the table, q4_0,
# q8_0, fp8), printing the summary tables and writing out/report.json and
# out/report.html.
# Environment: PKV_TOKENS (8192), PKV_CTX (1024), PKV_OUT_DIR (out/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PKV_BUILD_DIR:-$ROOT/build}"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
OUT_DIR="${PKV_OUT_DIR:-$ROOT/out}"
bash "$ROOT/scripts/install-deps.sh"
bash "$ROOT/scripts/fetch-data.sh"
bash "$ROOT/scripts/build.sh"
mkdir -p "$OUT_DIR"
PKV="$BUILD/apps/pkv"
"$PKV" dump --model "$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf" --text "$DATA/text/fortunes.txt" \
  --tokens "${PKV_TOKENS:-8192}" --ctx "${PKV_CTX:-1024}" --out "$OUT_DIR/dump.h5" --force
"$PKV" validate "$OUT_DIR/dump.h5"
"$PKV" info "$OUT_DIR/dump.h5"
"$PKV" calibrate --dump "$OUT_DIR/dump.h5" --out "$OUT_DIR/table.safetensors" --device auto --force
"$PKV" validate "$OUT_DIR/table.safetensors"
"$PKV" export --table "$OUT_DIR/table.safetensors" --format gguf --out "$OUT_DIR/table.gguf" --force
"$PKV" eval --model "$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf" --text "$DATA/text/fortunes.txt" --tokens 2048 \
  --ctx "${PKV_CTX:-1024}" --kv fp16 kivi:2 patternkv:2 "patternkv-table:2:$OUT_DIR/table.safetensors" q4_0:rot \
  --json "$OUT_DIR/eval.json" --md "$OUT_DIR/eval.md" --force
"$PKV" analyze --dump "$OUT_DIR/dump.h5" --methods fp16,kivi,patternkv,q4_0,q8_0,fp8 --bits 2,4 \
  --table "$OUT_DIR/table.safetensors" --attn-stride 8 --json "$OUT_DIR/report.json" --html "$OUT_DIR/report.html" --force
echo "report: $OUT_DIR/report.html"
