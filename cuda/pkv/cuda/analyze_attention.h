// pkv/cuda/analyze_attention.h — `pkv analyze --device cuda`: the attention metrics of
// the simulated caches on the GPU. No CUDA types: apps and tests include it with the host
// compiler.
//
//   pkv::cuda::accumulate_attention  twins  pkv::accumulate_attention (kvcache/metrics.h),
//                                    for all query heads of a KV head in one call
//
// What runs on the device, per job (one sequence of one (layer, KV head)): every query
// row t (t % stride == 0) of every query head against the exact keys and against each
// cache (key j reads k_hat[j] when flush_k[j] <= t, values likewise), the masked softmax
// (causal; window > 0: keys t - window + 1 .. t), the row's KL(p || p_hat) and
// ||o_hat - o|| / ||o||. Scores and the products with V are float, as on the CPU; the
// softmax normalizers, exponentials and KL in double. The per-row figures come back to
// the host and are added in (query head, row) order, so a run is deterministic.
//
// Agreement with the CPU (test/unit/cuda/test_cuda_analyze.cpp): a cache identical to
// the exact side gives 0 exactly on both; otherwise the float scores and products are
// rounded in another order, which moves s_hat - s and p_hat - p by about 1e-7 of the
// scores: kl_sum agrees to 5e-3 relative plus 1e-9 per row (fp16-sized key errors are
// the hardest case) and rel_sum to 1e-3 relative plus 1e-7 per row; the row counts are
// equal.
//
// Limits: head_dim <= 256. Memory: the job's inputs on the device, (G + 2 + 2 C) n D
// floats for G query heads and C caches, plus two doubles per (cache, query head, row).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "pkv/kvcache/attention_scorer.h"
#include "pkv/kvcache/metrics.h"

namespace pkv::cuda {

/// pkv::accumulate_attention for each query head q[g] ([n, D] host arrays), run on GPU
/// `device` in one launch; adds to each cache's accumulator what the CPU function would
/// add over all query heads (to the tolerance above). Synchronous. Throws
/// Error(unsupported) for head_dim > 256, Error(cuda) naming a failing CUDA call.
void accumulate_attention(const std::vector<const float*>& q, const float* k, const float* v, int64_t n, int D,
                          int stride, const std::vector<AttnCache>& caches, int64_t window = 0, float kq_scale = 0.0f,
                          int device = 0);

/// The scorer `pkv analyze --device cuda:N` uses: submit() copies the job to GPU `device`
/// and launches it, then returns; the host simulates the next sequence meanwhile. The
/// previous job's sums are added when the next one is submitted or at finish().
/// description(): "cuda:N <device name>".
std::unique_ptr<AttentionScorer> make_attention_scorer(int device = 0);

}  // namespace pkv::cuda
