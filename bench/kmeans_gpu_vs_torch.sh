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
# commit f400d85 on a two-GPU host, GPU 0; kernel: what pkv picked; onehot-wgmma / wgmma:
# the one-hot and wide kernels on Hopper's warpgroup MMA):
#      k    pkv ms   torch ms  floor ms  pkv/floor  torch/pkv  kernel
#     16     0.857     18.311     0.595       1.44       21.4  fused
#     32     1.314     21.006     0.595       2.21       16.0  onehot-wgmma
#     64     1.477     23.285     0.595       2.48       15.8  onehot-wgmma
#    128     2.402     27.753     0.595       4.03       11.6  wide+sorted
#    256     3.116     36.563     0.595       5.23       11.7  wgmma+sorted
#   1024     7.562     91.193     0.595      12.70       12.1  wgmma+sorted
# Whole-model shape, 30 iterations: k = 32 Lloyd 0.0339 s (torch 0.3551 s, 10.5x; after
# the first iteration, as torch is timed, 12.1x), end to end 0.187 s; k = 256 Lloyd
# 0.0768 s (torch 0.8081 s, 10.5x; 10.9x), end to end 0.215 s. That was the second of two
# runs in a row; the first, just after the build and the tests, was slower at k = 1024
# (15.6 ms) and in the model rows (k = 32: 0.0489 s, 7.2x), as a run on a one-GPU host at
# c40ddea was (k = 1024 15.0 ms; model 9.7x / 9.6x), where pkv_bench_cuda_kmeans right after
# gave 7.34 ms and then 10.6-12.0 ms at k = 1024 for c40ddea and 03a2d10 alike. Before
# the one-hot kernel's wgmma form (commit 14803fa, mma.sync at k = 32 / 64):
#     16     0.874     17.953     0.595       1.47       20.5  fused
#     32     1.415     20.028     0.595       2.38       14.2  onehot
#     64     1.846     22.408     0.595       3.10       12.1  onehot
#    128     2.420     26.680     0.595       4.06       11.0  wide+sorted
#    256     3.158     35.014     0.595       5.31       11.1  wgmma+sorted
#   1024     8.233     88.060     0.595      13.83       10.7  wgmma+sorted
# (k = 1024 measured 7.69-7.73 ms in two runs of pkv_bench_cuda_kmeans right after, as at
# 0955699.) Whole-model shape, 30 iterations, two passes in flight: k = 32 Lloyd 0.0326 s
# (torch 0.3511 s, 10.8x; after the first iteration, as torch is timed, 12.0x), end to end
# 0.185 s; k = 256 Lloyd 0.0755 s (torch 0.7996 s, 10.6x; 10.9x), end to end 0.208 s;
# floor 0.0080 s. Before (commit 0955699, one pass at a time, page-locked staging
# allocated in the first iteration, one-block item list): k = 16 0.906 ms (1.52x),
# k = 256 3.294 ms, model k = 32 0.0344 s (10.2x) and k = 256 0.1057 s (7.6x), end to end
# 0.182 / 0.235 s. The same script on another H200 (commit fedcdea): k = 16 0.881 ms
# (1.48x), 10.6-20.7x torch at every k; model 8.2x / 7.2x. Before the fused kernel took
# k = 32 at d = 64 and the points went up rounded on the host (commit e63c646): model
# k = 32 0.045 s / 0.39 s, k = 256 0.152 s / 0.50 s. Earlier runs: commit 419fbe0 k = 16
# 0.872 ms (1.47x the floor), k = 256 3.236 ms (10.9x), k = 1024 7.498 ms (11.9x); commit
# 30b8912 k = 16 0.907 / 0.903 ms (1.52x); before the wgmma form (mma.sync, commit
# 79a990f) k = 256 3.422 ms (10.4x), k = 1024 9.023 ms (9.9x).
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
