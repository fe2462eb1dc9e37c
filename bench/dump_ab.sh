#!/usr/bin/env bash
# Dump throughput of two pkv binaries on the default model, side by side in one run:
# runs alternate (A, B, A, B, ...) so that load on the machine hits both alike, and the
# median tokens/s of each and the ratio B/A are printed. For "as fast as before" checks:
#   bench/dump_ab.sh OLD_PKV NEW_PKV [TOKENS] [ROUNDS]      (defaults 4096 tokens, 5 rounds)
# Context PKV_CTX (default 1024); threads as OpenMP decides (OMP_NUM_THREADS).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 2 ] || { echo "usage: bench/dump_ab.sh PKV_A PKV_B [TOKENS] [ROUNDS]" >&2; exit 2; }
A="$1" B="$2" N="${3:-4096}" ROUNDS="${4:-5}"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
MODEL="$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="$DATA/text/fortunes.txt"
CTX="${PKV_CTX:-1024}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
rate() {
  "$1" --log-level warn dump --model "$MODEL" --text "$TEXT" --tokens "$N" --ctx "$CTX" --out "$WORK/d.h5" --force |
    sed -n 's/^throughput \([0-9.]*\) tokens\/s.*/\1/p'
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "pkv dump, $(basename "$MODEL"), $N tokens, ctx $CTX, $(nproc) cores, $ROUNDS alternating rounds"
echo "A: $A ($("$A" --version))"
echo "B: $B ($("$B" --version))"
: >"$WORK/a" && : >"$WORK/b"
for r in $(seq "$ROUNDS"); do
  ra=$(rate "$A"); rb=$(rate "$B")
  echo "$ra" >>"$WORK/a"; echo "$rb" >>"$WORK/b"
  printf "round %d: A %8.1f tok/s   B %8.1f tok/s\n" "$r" "$ra" "$rb"
done
ma=$(median <"$WORK/a"); mb=$(median <"$WORK/b")
printf "median: A %.1f tok/s, B %.1f tok/s, B/A %.3f\n" "$ma" "$mb" "$(awk -v a="$ma" -v b="$mb" 'BEGIN { print b / a }')"
