#!/usr/bin/env bash
# Decode attention on the GPU: pkv's fp16, KIVI-2 and PatternKV-2 kernels over the packed
# cache (pkv_bench_cuda_decode_attention) and PyTorch's scaled_dot_product_attention on
# the same shapes (bench/sdpa_decode.py), in one run on one GPU: Llama-3-8B attention
# (32 query heads, 8 KV heads, head_dim 128), contexts 4k/32k/128k, batch 1 and 16.
# Prints both tables, then per (batch, context) the pkv fp16 kernel's time against SDPA's
# and PatternKV-2's throughput over fp16 and KIVI-2.
# Usage: bench/decode_vs_sdpa.sh [build dir] [extra options of the pkv bench]
#        (default build dir: $PKV_BUILD_DIR or build-gpu)
# Env: PKV_BENCH_CONTEXTS (4096,32768,131072), PKV_BENCH_BATCHES (1,16), PKV_BENCH_REPS (50).
#      PKV_DECODE_KERNEL=general: time the general split kernel instead of the warp kernels;
#      PKV_DECODE_KERNEL=lanes: the 2-bit rows keep the quantized kernel's lanes' path (no tensor cores).
# Needs a CUDA build of pkv with benchmarks, and python3 with torch on the GPU machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-${PKV_BUILD_DIR:-$ROOT/build-gpu}}"
shift || true
BIN="$BUILD/bench/pkv_bench_cuda_decode_attention"
CONTEXTS="${PKV_BENCH_CONTEXTS:-4096,32768,131072}"
BATCHES="${PKV_BENCH_BATCHES:-1,16}"
REPS="${PKV_BENCH_REPS:-50}"
[ -x "$BIN" ] || { echo "missing $BIN (build with CUDA and -DPKV_BUILD_BENCH=ON)" >&2; exit 1; }
PKV_OUT="$(mktemp)"
TORCH_OUT="$(mktemp)"
trap 'rm -f "$PKV_OUT" "$TORCH_OUT"' EXIT
"$BIN" --contexts "$CONTEXTS" --batches "$BATCHES" --reps "$REPS" "$@" | tee "$PKV_OUT"
PEAK="$(sed -n 's/.*HBM peak \([0-9.]*\) GB\/s.*/\1/p' "$PKV_OUT" | head -1)"
echo
python3 "$ROOT/bench/sdpa_decode.py" --contexts "$CONTEXTS" --batches "$BATCHES" --reps "$REPS" \
  --peak-gbs "${PEAK:-nan}" | tee "$TORCH_OUT"
python3 - "$PKV_OUT" "$TORCH_OUT" <<'PY'
import sys
rows = {}
for path in sys.argv[1:]:
    for line in open(path):
        f = line.split()
        if len(f) != 9 or line.startswith("#") or f[0] == "method":
            continue
        rows[(f[0], int(f[1]), int(f[2]))] = float(f[4])
pkv = next((m for (m, _, _) in rows if m.startswith("patternkv-")), None)
kivi = next((m for (m, _, _) in rows if m.startswith("kivi-")), None)
sdpa = next((m for (m, _, _) in rows if m.startswith("sdpa")), None)
print("\nmedian us per call; ratios > 1: the first is faster")
print(f"{'batch':>5} {'context':>8} {'fp16':>9} {sdpa or 'sdpa':>13} {'sdpa/fp16':>10} {kivi or 'kivi':>9} "
      f"{pkv or 'pkv':>12} {'fp16/pkv':>9} {'kivi/pkv':>9}")
keys = sorted({(b, c) for (_, b, c) in rows})
nan = float("nan")
for b, c in keys:
    f16 = rows.get(("fp16", b, c), nan)
    sd = rows.get((sdpa, b, c), nan)
    kv = rows.get((kivi, b, c), nan)
    pk = rows.get((pkv, b, c), nan)
    print(f"{b:>5} {c:>8} {f16:9.1f} {sd:13.1f} {sd / f16:10.2f} {kv:9.1f} {pk:12.1f} {f16 / pk:9.2f} {kv / pk:9.2f}")
PY
