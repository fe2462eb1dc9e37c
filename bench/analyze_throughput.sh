#!/usr/bin/env bash
# `pkv analyze` throughput (tokens x KV heads per second) and peak memory on a dump
# of the default model. The dump (50k tokens, k_post,v,q) takes a few minutes on 2
# cores and is kept in $PKV_BENCH_DUMP when that is set.
# Usage: bench/analyze_throughput.sh [TOKENS] [extra pkv analyze options...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKV="${PKV_BIN:-$ROOT/build/apps/pkv}"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
MODEL="$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="$DATA/text/fortunes.txt"
TOKENS="${1:-51200}"; shift || true
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
DUMP="${PKV_BENCH_DUMP:-$WORK/bench.h5}"
if [ ! -f "$DUMP" ]; then
  echo "dumping $TOKENS tokens (ctx 1024, k_post,v,q) to $DUMP ..."
  "$PKV" --log-level warn dump --model "$MODEL" --text "$TEXT" --tokens "$TOKENS" --ctx 1024 \
    --capture k_post,v,q --out "$DUMP"
fi
tokens=$(/usr/bin/python3 -c "import h5py,sys; print(h5py.File(sys.argv[1])['k_post'].shape[2])" "$DUMP")
heads=$(/usr/bin/python3 -c "import h5py,sys; s=h5py.File(sys.argv[1])['k_post'].shape; print(s[0]*s[1])" "$DUMP")
echo "pkv analyze on a dump of $tokens tokens x $heads (layer, KV head) pairs, $(nproc) cores, $("$PKV" --version)"
args=(--methods fp16,kivi,patternkv,q4_0,q8_0,fp8 --bits 2,4 "$@")
echo "options: ${args[*]}"
/usr/bin/time -f "%e %M" -o "$WORK/time" "$PKV" --log-level warn analyze --dump "$DUMP" "${args[@]}" \
  --json "$WORK/r.json" >/dev/null
read -r secs rss_kib <"$WORK/time"
# The pairs actually analysed (--layers/--heads may select a subset of the dump).
pairs=$(/usr/bin/python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results']; print(len({(x['layer'], x['kv_head']) for x in r}))" "$WORK/r.json")
awk -v s="$secs" -v t="$tokens" -v h="$pairs" -v r="$rss_kib" 'BEGIN {
  printf "%d (layer, KV head) pairs analysed: %.1f s, %.0f tokens x heads per second, peak memory %.1f MiB\n", h, s, t * h / s, r / 1024 }'
