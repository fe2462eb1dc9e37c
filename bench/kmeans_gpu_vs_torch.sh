#!/usr/bin/env bash
# k-means on the GPU: pkv's batched tensor-core Lloyd iteration against a plain PyTorch
# Lloyd loop on the same GPU and the HBM floor, in one run.
#   single: N = 1e7 points, d = 128, k = 16 ... 1024, fp16 input; ms per full Lloyd
#           iteration (assign + sums + objective + centroid update) for pkv and torch;
#           floor = N * d * 2 bytes / 4.3e12 B/s; ratios pkv/floor and torch/pkv.
#   model:  90 problems (SmolLM2-135M: 30 layers x 3 KV heads) x 100,000 tokens x d = 64,
#           k = 32 and 256, 30 iterations; pkv kmeans_batch vs a batched torch loop (bmm,
#           argmin, scatter-add); floor = 30 reads of all points in fp16.
# Usage: bench/kmeans_gpu_vs_torch.sh [build dir]   (default $PKV_BUILD_DIR or build-gpu)
# Env: PKV_BENCH_N (1e7), PKV_BENCH_ITERS (3), PKV_BENCH_MODEL ("90,100000,64,30"),
#      PKV_BENCH_KS ("16,32,64,128,256,1024").
# Needs a CUDA build of pkv with benchmarks, and python3 with torch on the GPU machine.
#
# Measured figures (and those of earlier commits): docs/kmeans_gpu.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-${PKV_BUILD_DIR:-$ROOT/build-gpu}}"
BIN="$BUILD/bench/pkv_bench_cuda_kmeans"
N="${PKV_BENCH_N:-10000000}"
ITERS="${PKV_BENCH_ITERS:-3}"
MODEL="${PKV_BENCH_MODEL:-90,100000,64,30}"
KS="${PKV_BENCH_KS:-16,32,64,128,256,1024}"
[ -x "$BIN" ] || { echo "missing $BIN (build with CUDA and -DPKV_BUILD_BENCH=ON)" >&2; exit 1; }
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
IFS=, read -r MB MT MD MI <<<"$MODEL"
"$BIN" "$N" "$ITERS" 0 --csv --precisions fp16 --ks "$KS" | tee -a "$OUT"
"$BIN" --model "$MB" "$MT" "$MD" "$MI" --csv | tee -a "$OUT"
python3 "$ROOT/bench/kmeans_torch.py" --n "$N" --iters "$ITERS" --ks "$KS" --model "$MODEL" | tee -a "$OUT"
python3 - "$OUT" "$MI" <<'PY'
import sys
MI = int(sys.argv[2])
pkv_single, torch_single, pkv_model, torch_model = {}, {}, {}, {}
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if f[0] == "pkv" and f[1] == "single":
        pkv_single[int(f[5])] = (float(f[6]), float(f[8]), f[9] if len(f) > 9 else "")  # k -> (ms, floor, kernel)
    elif f[0] == "torch" and f[1] == "single":
        torch_single[int(f[4])] = float(f[5])
    elif f[0] == "pkv" and f[1] == "model" and (len(f) < 12 or f[11] == "2"):  # the default: 2 passes in flight
        # k -> (total, lloyd, floor, first iteration) s
        pkv_model[int(f[5])] = (float(f[7]), float(f[8]), float(f[9]), float(f[10]) if len(f) > 10 else float("nan"))
    elif f[0] == "torch" and f[1] == "model":
        torch_model[int(f[5])] = float(f[7])
print("\nOne Lloyd iteration, N = 1e7, d = 128, fp16 input (ms)")
print(f"{'k':>6} {'pkv':>9} {'torch':>9} {'HBM floor':>10} {'pkv/floor':>10} {'torch/pkv':>10}  kernel")
for k in sorted(pkv_single):
    p, fl, kern = pkv_single[k]
    t = torch_single.get(k, float("nan"))
    print(f"{k:>6} {p:9.3f} {t:9.3f} {fl:10.3f} {p / fl:10.2f} {t / p:10.1f}  {kern}")
print("\nWhole-model calibration (batched problems), 30 iterations (s)")
print(f"{'k':>6} {'pkv Lloyd':>10} {'pkv total':>10} {'torch':>9} {'floor':>8} {'pkv/floor':>10} {'torch/pkv':>10}"
      f" {'warm pkv':>9} {'torch/pkv':>10}")
for k in sorted(pkv_model):
    tot, ll, fl, first = pkv_model[k]
    t = torch_model.get(k, float("nan"))
    warm = (ll - first) * MI / (MI - 1)  # the same number of iterations after the first
    print(f"{k:>6} {ll:10.4f} {tot:10.4f} {t:9.4f} {fl:8.4f} {ll / fl:10.1f} {t / ll:10.1f}"
          f" {warm:9.4f} {t / warm:10.1f}")
print("\npkv: wall clock of full iterations (batched pass + host update); torch: CUDA events around the"
      "\nsame iterations after one warm-up iteration. warm pkv: pkv's iterations after its first (which"
      "\nalso allocates), scaled to the same count, as torch is timed. torch/pkv > 1 means pkv is faster.")
PY
