#!/usr/bin/env bash
# The README's main job, end to end on the default model and text: installs
# dependencies, fetches SmolLM2-135M-Instruct (Q4_1) and the fortunes text, builds
# pkv, dumps the KV cache of 8192 tokens and prints the dump's summary.
# Environment: PKV_TOKENS (8192), PKV_CTX (1024), PKV_OUT (out/dump.h5).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PKV_BUILD_DIR:-$ROOT/build}"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
OUT="${PKV_OUT:-$ROOT/out/dump.h5}"
bash "$ROOT/scripts/install-deps.sh"
bash "$ROOT/scripts/fetch-data.sh"
bash "$ROOT/scripts/build.sh"
mkdir -p "$(dirname "$OUT")"
PKV="$BUILD/apps/pkv"
"$PKV" dump --model "$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf" --text "$DATA/text/fortunes.txt" \
  --tokens "${PKV_TOKENS:-8192}" --ctx "${PKV_CTX:-1024}" --out "$OUT" --force
"$PKV" validate "$OUT"
"$PKV" info "$OUT"
