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
# Measured on an NVIDIA H200 (2026-11-29, torch 2.11.0+cu130, 3 timed iterations, at
# commit fedcdea; kernel: what pkv picked; wgmma: the wide kernel on Hopper's warpgroup MMA):
#      k    pkv ms   torch ms  floor ms  pkv/floor  torch/pkv  kernel
#     16     0.881     18.224     0.595       1.48       20.7  fused
#     32     1.412     20.011     0.595       2.37       14.2  onehot
#     64     1.831     22.345     0.595       3.08       12.2  onehot
#    128     2.511     26.700     0.595       4.22       10.6  wide+sorted
#    256     3.232     35.060     0.595       5.43       10.8  wgmma+sorted
#   1024     7.546     87.793     0.595      12.67       11.6  wgmma+sorted
# Whole-model shape, 30 iterations: k = 32 Lloyd 0.0429 s (torch 0.3514 s, 8.2x), end to
# end 0.207 s; k = 256 Lloyd 0.1114 s (torch 0.7995 s, 7.2x), end to end 0.255 s; floor
# 0.0080 s. Before the fused kernel took k = 32 at d = 64 and the points went up rounded
# on the host (commit e63c646, same machine type): k = 32 0.044-0.057 s / 0.45-0.53 s,
# k = 256 0.152-0.189 s / 0.57-0.63 s. Earlier runs: commit 419fbe0 k = 16 0.872 ms
# (1.47x the floor), k = 256 3.236 ms (10.9x), k = 1024 7.498 ms (11.9x); commit 30b8912
# k = 16 0.907 / 0.903 ms (1.52x); before the wgmma form (mma.sync, commit 79a990f)
# k = 256 3.422 ms (10.4x), k = 1024 9.023 ms (9.9x).
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
python3 - "$OUT" <<'PY'
import sys
pkv_single, torch_single, pkv_model, torch_model = {}, {}, {}, {}
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if f[0] == "pkv" and f[1] == "single":
        pkv_single[int(f[5])] = (float(f[6]), float(f[8]), f[9] if len(f) > 9 else "")  # k -> (ms, floor, kernel)
    elif f[0] == "torch" and f[1] == "single":
        torch_single[int(f[4])] = float(f[5])
    elif f[0] == "pkv" and f[1] == "model":
        pkv_model[int(f[5])] = (float(f[7]), float(f[8]), float(f[9]))  # k -> (total, lloyd, floor) s
    elif f[0] == "torch" and f[1] == "model":
        torch_model[int(f[5])] = float(f[7])
print("\nOne Lloyd iteration, N = 1e7, d = 128, fp16 input (ms)")
print(f"{'k':>6} {'pkv':>9} {'torch':>9} {'HBM floor':>10} {'pkv/floor':>10} {'torch/pkv':>10}  kernel")
for k in sorted(pkv_single):
    p, fl, kern = pkv_single[k]
    t = torch_single.get(k, float("nan"))
    print(f"{k:>6} {p:9.3f} {t:9.3f} {fl:10.3f} {p / fl:10.2f} {t / p:10.1f}  {kern}")
print("\nWhole-model calibration (batched problems), 30 iterations (s)")
print(f"{'k':>6} {'pkv Lloyd':>10} {'pkv total':>10} {'torch':>9} {'floor':>8} {'pkv/floor':>10} {'torch/pkv':>10}")
for k in sorted(pkv_model):
    tot, ll, fl = pkv_model[k]
    t = torch_model.get(k, float("nan"))
    print(f"{k:>6} {ll:10.4f} {tot:10.4f} {t:9.4f} {fl:8.4f} {ll / fl:10.1f} {t / ll:10.1f}")
print("\npkv: wall clock of full iterations (batched pass + host update); torch: CUDA events around the"
      "\nsame iterations. torch/pkv > 1 means pkv is faster.")
PY
