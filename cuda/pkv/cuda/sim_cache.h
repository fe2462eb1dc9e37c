// pkv/cuda/sim_cache.h — pkv::simulate_cache (pkv/kvcache/simulate.h) for a batch of
// (sequence, KV head, tensor) problems in one call on a CUDA device. No CUDA types: lib/
// and tests build the batch with the host compiler.
//
// Methods: fp16, kivi (2/3/4/8 bits), q4_0, q8_0, fp8, patternkv-table and patternkv, with
// sliding-window rings (SimProblem::ring) and any prefill, under the rules of
// simulate_cache.
//
// patternkv (head_dim <= 256, patterns <= kDevicePatternMax). Each problem's prefill
// k-means runs in one thread block:
// kmeans()'s loop (the same initial rows and empty-cluster refills, drawn on the host by
// kmeans_random_draws; 30 iterations; tolerance 1e-4) in the arithmetic of
// kmeans_exact_ref (pkv/kmeans/kmeans_exact.h), which it matches bit for bit. The host's
// simulate_cache assigns with pkv::kmeans's CPU assigner, whose distances round
// differently: a point almost equidistant from two centroids can take the other label,
// and the two runs then go on from different centroids. So patternkv here agrees with the
// host statistically (same rules, bits exactly, errors and perplexities within the bounds
// test/unit/cuda/test_cuda_sim_pattern.cpp checks), not bit for bit. Everything after the
// k-means is exact: each decode block's Chebyshev centre depends on that block alone, so
// the bank every block is assigned against (the centroids plus the centres so far, up to
// the cap) is known before any assignment, and the residual code is patternkv-table's.
//
// Layout. x is a row-major matrix [rows, row_stride] of floats on the host; problem p's
// token i is the D floats at x[(row0 + i) · row_stride + col0 ...]. A packed batch is
// row_stride = D, col0 = 0, problems back to back; the forward's K or V buffer [rows,
// n_head_kv · D] is row_stride = n_head_kv · D with col0 = head · D. Problems must not
// share an element (their writes would race).
//
// Work split. The flush schedule and the storage (SimBits) depend only on (n, P, ring,
// window, group), never on the data, so the host plans them (plan_sim_batch, exact);
// the device reconstructs: each K group of <= G tokens in one thread block, V tokens and
// patternkv-table labels per token, q4_0 / q8_0 per 32-element block, fp8 after a
// per-problem amax.
//
// Numerics. The device repeats the host's float operations one by one: min-max scales
// and zeros rounded to binary16, fp32 code arithmetic, double reconstructions, ggml's
// reference quantizers, the fp8 encoder, the V gate and the assignment metrics in
// double. Where the host build contracts a multiply and an add into one fused operation
// (clip ratio < 1, the V gate's 1 + rho^4, the L2 distance), the device fuses the same
// ones, so recon matches simulate_cache bit for bit with the project's GCC build; a host
// compiler that contracts differently can move a code by one step on rare elements
// (test/unit/cuda/test_cuda_sim_cache.cpp states the bounds it checks).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "pkv/kvcache/simulate.h"

namespace pkv::cuda {

/// The most patterns (k-means centroids per problem) the device's patternkv takes.
constexpr int kDevicePatternMax = 1024;

/// Whether patternkv at head_dim D with `patterns` patterns runs on the device: D <= 256,
/// patterns <= kDevicePatternMax, and PKV_CUDA_PATTERNKV is not "0" in the environment
/// (the way to keep its k-means on the host, whose results differ statistically).
bool patternkv_on_device(int D, int patterns);

/// One (sequence, KV head, tensor) of a batch.
struct SimProblem {
    int64_t row0 = 0;     ///< x row of token 0
    int64_t col0 = 0;     ///< first column of the head in x's rows
    int64_t n = 0;        ///< tokens (0 allowed: nothing to do)
    int64_t prefill = 0;  ///< P in [0, n]
    int64_t ring = 0;     ///< sliding window W of the layer (SimParams::ring), 0: global
    KvTensor tensor = KvTensor::k;
    int table = -1;  ///< patternkv-table: index into SimBatch::tables (the head's K or V view)
};

struct SimBatch {
    /// method, bits, group, window as in SimParams, and for patternkv patterns, pattern_cap,
    /// decode_l2 and seed (ring and tables unused).
    SimParams params;
    int D = 0;               ///< head_dim
    int64_t rows = 0;        ///< rows of x
    int64_t row_stride = 0;  ///< floats per row of x (>= D); 0: D
    /// Simulate in the orthonormal Hadamard basis (plain H_D, D a power of two, D <= 1024)
    /// and rotate every token of the problem back, as pkv eval's MethodCache does.
    bool rotate = false;
    std::vector<SimProblem> problems;
    /// patternkv-table views (patterns [M, D] on the host, in the simulated basis).
    std::vector<TableHeadView> tables;
};

/// What the host plans for a batch: everything of simulate_cache but the reconstruction.
struct SimBatchPlan {
    std::vector<int64_t> offset;      ///< [problems + 1]: problem p's tokens are offset[p] .. offset[p + 1] - 1
    std::vector<int32_t> flush_step;  ///< [offset.back()], per problem as SimResult::flush_step
    std::vector<SimBits> bits;        ///< [problems]: SimResult::bits
    std::vector<int64_t> stored_from, kept_from;  ///< [problems]
    /// K groups to quantize per channel: (problem, first token, tokens), tokens <= group.
    struct KGroup {
        int32_t problem;
        int32_t tokens;
        int64_t t0;
    };
    std::vector<KGroup> k_groups;
    /// patternkv: problem p's pattern bank (empty for every other method). The simulation
    /// runs on tokens s .. n − 1 (s = stored_from); k-means clusters tokens s .. s +
    /// prefill − 1 into k = min(patterns, prefill) centroids (bank rows row0 ..), tokens s ..
    /// s + pq − 1 keep their k-means label, and decode block b (tokens s + pq + b·R .. + R − 1)
    /// adds its Chebyshev centre as row row0 + k + b while b < centres; block b is assigned
    /// against the first k + min(b + 1, centres) rows.
    struct Bank {
        int64_t prefill = 0, pq = 0, row0 = 0;
        int64_t draws = 0;  ///< offset in `draws`: k initial rows, then k · kPatternKMeansIters refill rows
        int32_t k = 0, centres = 0;
    };
    std::vector<Bank> banks;
    int64_t bank_rows = 0;       ///< rows of all banks
    std::vector<int64_t> draws;  ///< kmeans_random_draws of each distinct (prefill, k), back to back
    SimBits total() const;       ///< sum over problems
};

/// Validates the batch (one line naming the problem and the expected value on failure:
/// invalid_argument; unsupported for patternkv with head_dim > 256) and plans it. Host only.
SimBatchPlan plan_sim_batch(const SimBatch& batch);

struct SimBatchResult {
    /// Same layout as x ([rows, row_stride]): each problem's SimResult::recon (with
    /// rotate: rotated back, so tokens never quantized hold H·H·x as the host's); every
    /// element outside the problems is x's.
    std::vector<float> recon;
    SimBatchPlan plan;  ///< flush steps, bits, stored_from, kept_from
    /// patternkv: the banks the device built, [plan.bank_rows, D] (plan.banks says whose
    /// rows are where), in the simulated basis; empty for other methods.
    std::vector<float> bank;
    /// patternkv and patternkv-table: [plan.offset.back()] the bank row (patternkv: within
    /// the problem's bank; the table's row otherwise) of every quantized token, as
    /// SimResult::pattern; undefined where flush_step is kNeverQuantized. Empty otherwise.
    std::vector<int32_t> labels;
    double kernel_ms = 0.0;  ///< device time of the kernels (CUDA events)
    double total_ms = 0.0;   ///< wall time of the call: planning, copies both ways, kernels
};

/// Device memory that the calls on one device reuse (grow-only, freed with the object):
/// a caller that simulates every layer of every sequence keeps one and saves the
/// allocations. Not safe for concurrent calls.
class SimCacheWorkspace {
public:
    explicit SimCacheWorkspace(int device = 0);
    ~SimCacheWorkspace();
    SimCacheWorkspace(const SimCacheWorkspace&) = delete;
    SimCacheWorkspace& operator=(const SimCacheWorkspace&) = delete;
    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
    friend double simulate_cache_batch_on_device(const SimBatch&, const SimBatchPlan&, const float*, float*, int32_t*,
                                                 SimCacheWorkspace&);
    friend SimBatchResult simulate_cache_batch(const SimBatch&, const float*, SimCacheWorkspace&);
};

/// The device-resident form, for callers whose x already lives on the workspace's device
/// (the CUDA forward's K or V buffer): d_x and d_recon are device arrays of [batch.rows,
/// row_stride] floats that must not overlap; every element of d_recon is written (x's
/// outside the problems). d_flush (nullable) is a device array of plan.offset.back()
/// int32 that receives plan.flush_step. `plan` must be plan_sim_batch(batch). One upload
/// of the plan, then the kernels on the default stream; returns their device time in ms
/// once they finished. Throws as simulate_cache_batch.
double simulate_cache_batch_on_device(const SimBatch& batch, const SimBatchPlan& plan, const float* d_x, float* d_recon,
                                      int32_t* d_flush, SimCacheWorkspace& ws);

/// Runs the batch on device `device`. x: [batch.rows, row_stride] on the host. Throws
/// Error(cuda) naming a failing CUDA call, invalid_argument for a non-finite input
/// element and out_of_range for a group whose scale or zero exceeds binary16 (naming
/// the problem and token, as simulate_cache's quantizers would).
SimBatchResult simulate_cache_batch(const SimBatch& batch, const float* x, int device = 0);
/// The same with the workspace's device and memory (kept for the next call).
SimBatchResult simulate_cache_batch(const SimBatch& batch, const float* x, SimCacheWorkspace& ws);

}  // namespace pkv::cuda
