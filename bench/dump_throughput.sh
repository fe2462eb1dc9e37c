#!/usr/bin/env bash
# Dump throughput and peak memory on the default model, at growing --tokens, side
# by side in one run. Peak memory should stay flat (writes stream to disk) and near
# the model's size. Usage: bench/dump_throughput.sh [TOKENS...] (default 2048 8192 32768);
# PKV_MODEL picks another model (e.g. data/models/gemma-3-270m-q4_k_m.gguf).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKV="${PKV_BIN:-$ROOT/build/apps/pkv}"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
MODEL="${PKV_MODEL:-$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
TEXT="$DATA/text/fortunes.txt"
CTX="${PKV_CTX:-1024}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(2048 8192 32768)
model_mib=$(awk -v b="$(stat -L -c %s "$MODEL")" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "pkv dump on $(basename "$MODEL") ($model_mib MiB), ctx $CTX, $(nproc) cores, $("$PKV" --version)"
printf "%8s %10s %10s %14s %14s %12s\n" tokens seconds tok/s "peak RSS MiB" "RSS/model" "file MiB"
first_rss=""
for n in "${sizes[@]}"; do
  out=$("$PKV" --log-level warn dump --model "$MODEL" --text "$TEXT" --tokens "$n" --ctx "$CTX" \
        --out "$WORK/d.h5" --force)
  tps=$(sed -n 's/^throughput \([0-9.]*\) tokens\/s (\([0-9.]*\) s), peak memory \([0-9.]*\) MiB.*/\1 \2 \3/p' <<<"$out")
  read -r rate secs rss <<<"$tps"
  fmib=$(awk -v b="$(stat -c %s "$WORK/d.h5")" 'BEGIN { printf "%.1f", b / 1048576 }')
  printf "%8d %10.1f %10.1f %14.1f %14.2f %12.1f\n" "$n" "$secs" "$rate" "$rss" \
    "$(awk -v r="$rss" -v m="$model_mib" 'BEGIN { print r / m }')" "$fmib"
  [ -n "$first_rss" ] || first_rss="$rss"
  last_rss="$rss"
done
awk -v a="$first_rss" -v b="$last_rss" -v n0="${sizes[0]}" -v n1="${sizes[-1]}" \
  'BEGIN { printf "peak memory ratio %d vs %d tokens: %.2fx (tokens %.0fx)\n", n1, n0, b / a, n1 / n0 }'
