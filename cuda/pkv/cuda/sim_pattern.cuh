// Internal (sim_cache.cu and sim_pattern.cu): the device cache simulation's error record
// and the patternkv bank: each problem's prefill k-means and its decode blocks'
// Chebyshev centres, planned on the host (sim_cache_plan.cpp) and built on the device.
#pragma once

#include <algorithm>
#include <cstdint>

#include "pkv/cuda/quant_device.cuh"

namespace pkv::cuda::detail {

// First failure of a kernel: code 1 a non-finite input, 2 a scale or zero beyond binary16.
struct DevError {
    int code;
    int problem;
    long long token;
    float a, b;
};

__device__ inline void report(DevError* e, int code, int problem, int64_t token, float a, float b) {
    if (atomicCAS(&e->code, 0, code) == 0) {
        e->problem = problem;
        e->token = token;
        e->a = a;
        e->b = b;
    }
}

// One patternkv problem's bank: rows bank_row0 .. of D floats in the bank array, the
// prefill k-means centroids (k rows) first, then one Chebyshev centre per decode block
// (`centres` rows). Tokens are those of simulate_cache's ring frame, shifted by s.
struct PatternProblem {
    int64_t row0, col0;  // x row of the problem's token 0, its first column
    int64_t base;        // the problem's token 0 in the batch's token arrays (labels)
    int64_t s;           // first stored token: k-means points are tokens s .. s + prefill - 1
    int64_t prefill;     // k-means points (0: no k-means, k = 0)
    int64_t pq;          // tokens s .. s + pq - 1 keep their k-means label
    int64_t bank_row0;
    int64_t draws;    // offset of init rows [k], then refill rows [k · max_iter], in the draw array
    int64_t scratch;  // offset of the problem's k-means scratch (sim_pattern_scratch(prefill) doubles)
    int32_t k;        // k-means centroids
    int32_t centres;  // decode centres in the bank
    int32_t problem;  // index in the batch (errors)
    int32_t pad;
};

// Doubles of k-means scratch a problem of `prefill` points needs (its points sorted by label, int32).
int64_t sim_pattern_scratch(int64_t prefill);

// Threads per k-means block. The cluster sums are one slice (kmeans_exact.h: slices = 1).
constexpr int kPatternThreads = 512;

// Builds every problem's bank on the default stream: the prefill k-means (kmeans_exact.h's
// loop; labels of tokens s .. s + prefill - 1 into labels[base + s + i]) and the decode
// centres of blocks b = 0 .. centres - 1 (tokens s + pq + b·R .. + R − 1). max_k: the largest
// k of the problems (<= kDevicePatternMax); unsupported when the device's shared memory
// per block cannot hold its counts.
void launch_pattern_bank(const float* x, int64_t stride, int D, const PatternProblem* d_probs, int n_probs,
                         const int64_t* d_draws, int max_iter, double tol, int R, float* bank, double* scratch,
                         int32_t* labels, DevError* err, int max_k, int max_centres);

}  // namespace pkv::cuda::detail
