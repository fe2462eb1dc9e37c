#!/usr/bin/env bash
# CPU prefill throughput of pkv's forward pass next to llama.cpp's on the default model,
# same prompt length and threads, measured alternately in one run.
#   pkv:       `pkv eval --kv fp16` over REPS sequences of N tokens; the figure is the fp16
#              reference's forward time alone (reference.seconds: every token's layers,
#              no output matrix, which the comparison of variants runs separately)
#   llama.cpp: `llama-bench -p N -n 0 -t THREADS -r REPS` (a warm-up run, then the mean of
#              REPS prompt evaluations; the output matrix only for the last token)
# ROUNDS rounds, each running pkv then llama.cpp; prints every round and the best round
# of each (on shared cores other programs' load only ever slows a round down, so the
# best is the closest to the machine's speed), and the ratio pkv / llama.cpp of the bests.
# Usage: bench/prefill_vs_llama_cpp.sh [N [THREADS [REPS [ROUNDS]]]] (default 512, nproc, 5, 3)
# llama.cpp comes from scripts/llama-cpp.sh ($PKV_DATA_DIR/llama.cpp/bin).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKV="${PKV_BIN:-$ROOT/build/apps/pkv}"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
MODEL="$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="$DATA/text/fortunes.txt"
LLAMA_BENCH="$DATA/llama.cpp/bin/llama-bench"
N="${1:-512}"
THREADS="${2:-$(nproc)}"
REPS="${3:-5}"
ROUNDS="${4:-3}"
[ -x "$LLAMA_BENCH" ] || { echo "prefill: $LLAMA_BENCH missing: run scripts/llama-cpp.sh" >&2; exit 1; }
[ -x "$PKV" ] || { echo "prefill: $PKV missing: build pkv (scripts/build.sh)" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cpu="$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)"
echo "prefill of $N tokens on $(basename "$MODEL"), $THREADS threads, $REPS repetitions, $ROUNDS rounds"
echo "machine: ${cpu:-unknown CPU}, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$("$PKV" --version); llama.cpp $(cat "$DATA/llama.cpp/VERSION")"

for r in $(seq 1 "$ROUNDS"); do
  OMP_NUM_THREADS="$THREADS" "$PKV" --log-level warn eval --model "$MODEL" --text "$TEXT" \
    --tokens $((N * REPS)) --ctx "$N" --kv fp16 --json "$WORK/pkv.$r.json" >/dev/null
  "$LLAMA_BENCH" -m "$MODEL" -p "$N" -n 0 -t "$THREADS" -r "$REPS" -o json >"$WORK/llama.$r.json" 2>"$WORK/llama.err" ||
    { tail -n 5 "$WORK/llama.err" >&2; exit 1; }
done

/usr/bin/python3 - "$WORK" "$ROUNDS" <<'PY'
import json, sys
work, rounds = sys.argv[1], int(sys.argv[2])
pkv, ll = [], []
for r in range(1, rounds + 1):
    p = json.load(open(f"{work}/pkv.{r}.json"))
    ref = p["reference"]
    pkv.append((1.0 / ref["seconds_per_token"], ref["cpu_seconds"] / ref["seconds"]))
    pp = [x for x in json.load(open(f"{work}/llama.{r}.json")) if x["n_prompt"] > 0 and x["n_gen"] == 0]
    if len(pp) != 1:
        sys.exit(f"prefill: expected one prompt-processing result from llama-bench, got {len(pp)}")
    ll.append((pp[0]["avg_ts"], pp[0]["stddev_ts"]))
print(f"{'round':>5} {'pkv tok/s':>10} {'CPU/wall':>9} {'llama.cpp tok/s':>16} {'+-':>7} {'ratio':>6}")
for r in range(rounds):
    print(f"{r + 1:5d} {pkv[r][0]:10.1f} {pkv[r][1]:9.2f} {ll[r][0]:16.1f} {ll[r][1]:7.1f} {pkv[r][0] / ll[r][0]:6.2f}")
bp, bl = max(x[0] for x in pkv), max(x[0] for x in ll)
print(f"best: pkv {bp:.1f} tokens/s (fp16 reference forward), llama.cpp {bl:.1f} tokens/s (llama-bench pp)")
print(f"ratio pkv / llama.cpp: {bp / bl:.2f}")
PY
