#!/usr/bin/env bash
# Whole-model `pkv calibrate` spread over MPI ranks (CPU) and over GPU workers
# (--devices), in one run: wall time, speed-up over one process, efficiency (speed-up
# per rank or GPU), and whether the table equals the single-process one exactly.
# Usage: bench/calibrate_scaling.sh [dump.h5]   (default: an 8192-token dump of the
#        default model made with scripts/fetch-data.sh's data, kept in data/bench)
# Env: PKV_BIN (build/apps/pkv), PKV_RANKS ("1 2 4" capped at the CPU count),
#      PKV_GPU_WORKERS ("1 2 4 8" capped at the GPU count; a GPU machine only).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKV="${PKV_BIN:-$ROOT/build/apps/pkv}"
DUMP="${1:-}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [ -z "$DUMP" ]; then
  DUMP="$ROOT/data/bench/calib-8192.h5"
  if [ ! -f "$DUMP" ]; then
    mkdir -p "$ROOT/data/bench"
    "$PKV" --log-level warn dump --model "$ROOT/data/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
      --text "$ROOT/data/text/fortunes.txt" --tokens 8192 --capture k_post,v --out "$DUMP" >/dev/null
  fi
fi
CAL=(--log-level warn calibrate --dump "$DUMP" --force)
MPIRUN=(mpirun --oversubscribe)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
same() {
  "$PKV" export --table "$1" --format json --out "$WORK/a.json" --force >/dev/null
  "$PKV" export --table "$2" --format json --out "$WORK/b.json" --force >/dev/null
  /usr/bin/python3 -c "
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
print('yes' if a['tensors'] == b['tensors'] else 'NO')" "$WORK/a.json" "$WORK/b.json"
}
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; return 1; }; t1=$(date +%s.%N); calc "$t1 - $t0"; }

echo "dump: $DUMP"
printf "%-22s %8s %9s %11s %10s\n" "run" "wall s" "speed-up" "efficiency" "identical"
cpus=$(nproc)
base=$(secs "$PKV" "${CAL[@]}" --device cpu --out "$WORK/one.safetensors")
printf "%-22s %8.2f %9.2f %11.2f %10s\n" "1 process, cpu" "$base" 1 1 yes
if command -v mpirun >/dev/null; then
  for r in ${PKV_RANKS:-1 2 4}; do
    [ "$r" -le "$cpus" ] || continue
    t=$(OMP_NUM_THREADS=$(( cpus / r > 0 ? cpus / r : 1 )) secs "${MPIRUN[@]}" -np "$r" "$PKV" "${CAL[@]}" --device cpu \
        --out "$WORK/r$r.safetensors")
    s=$(calc "$base / $t")
    printf "%-22s %8.2f %9.2f %11.2f %10s\n" "mpirun -np $r, cpu" "$t" "$s" "$(calc "$s / $r")" \
      "$(same "$WORK/one.safetensors" "$WORK/r$r.safetensors")"
  done
fi
gpus=$("$PKV" devices 2>/dev/null | grep -c '^cuda:' || true)
if [ "$gpus" -gt 0 ]; then
  g1=$(secs "$PKV" "${CAL[@]}" --device cuda:0 --out "$WORK/g1.safetensors")
  printf "%-22s %8.2f %9.2f %11.2f %10s\n" "1 GPU" "$g1" 1 1 yes
  for w in ${PKV_GPU_WORKERS:-2 4 8}; do
    [ "$w" -le "$gpus" ] || continue
    list=$(seq -s, 0 $((w - 1)))
    t=$(secs "$PKV" "${CAL[@]}" --devices "$list" --out "$WORK/g$w.safetensors")
    s=$(calc "$g1 / $t")
    printf "%-22s %8.2f %9.2f %11.2f %10s\n" "--devices $list" "$t" "$s" "$(calc "$s / $w")" \
      "$(same "$WORK/g1.safetensors" "$WORK/g$w.safetensors")"
  done
fi
echo "wall s: the whole command (dump reading, k-means, fit, held-out statistics, table write; mpirun start-up included)."
