#!/usr/bin/env bash
# Cost of `pkv eval` per method: forward-pass time per token of each KV-cache method
# (quantization simulation included) and its ratio to the fp16 reference, measured
# side by side in one run on the default model. The ratio uses process CPU time,
# which other programs' load on shared cores disturbs far less than wall time.
# Usage: bench/eval_cost.sh [TOKENS [CTX]] (default 3072 1024: three sequences, so
# one-time costs of the first forward pass are spread out); PKV_KV overrides the
# method list.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKV="${PKV_BIN:-$ROOT/build/apps/pkv}"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
MODEL="$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="$DATA/text/fortunes.txt"
TOKENS="${1:-3072}"
CTX="${2:-1024}"
read -r -a KV <<<"${PKV_KV:-fp16 kivi:2 kivi:4 patternkv:2 patternkv:4 q4_0 q8_0 fp8}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "pkv eval cost on $(basename "$MODEL"), $TOKENS tokens, ctx $CTX, $(nproc) cores, $("$PKV" --version)"
"$PKV" --log-level warn eval --model "$MODEL" --text "$TEXT" --tokens "$TOKENS" --ctx "$CTX" --kv "${KV[@]}" \
  --json "$WORK/r.json" >/dev/null
/usr/bin/python3 - "$WORK/r.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rows = [("fp16 reference (plain forward)", r["reference"])] + [(m["label"], m) for m in r["methods"]]
print(f"{'method':32} {'CPU ms/tok':>11} {'x fp16':>8} {'wall ms/tok':>12} {'PPL':>10}")
for name, f in rows:
    print(f"{name:32} {1000 * f['cpu_seconds_per_token']:11.3f} {f['cost_vs_fp16']:8.2f} "
          f"{1000 * f['seconds_per_token']:12.3f} {f['ppl']:10.4f}")
run = r["run"]
print(f"shared output projection (all variants): {run['compare_seconds']:.1f} s; total {run['seconds']:.1f} s")
PY
