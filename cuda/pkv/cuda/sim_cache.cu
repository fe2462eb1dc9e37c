// The device half of the batched cache simulation (sim_cache.h): reconstructions of the
// tokens the host plan (sim_cache_plan.cpp) flushes. Every kernel repeats the host's
// arithmetic operation by operation (quant_device.cuh: explicit _rn intrinsics, and the
// fused operations the project's GCC build emits).
#include <cuda_fp16.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/cuda_buffer.cuh"
#include "pkv/cuda/quant_device.cuh"
#include "pkv/cuda/sim_cache.h"
#include "pkv/cuda/sim_pattern.cuh"

namespace pkv::cuda {

namespace {

using detail::DevError;
using detail::dmax;
using detail::dmin;
using detail::PatternProblem;
using detail::report;
using detail::smax;
using detail::smin;

constexpr int kThreads = 256;

int grid_for(int64_t n, int threads = kThreads) {
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, int64_t{1} << 20)));
}

struct DevProblem {
    int64_t row0, col0, base, n;
    int32_t tensor;  // 0 K, 1 V
    int32_t table;   // -1 none
};

struct DevTable {
    int64_t offset;  // into the concatenated patterns
    int32_t M;
    int32_t l2;
    float clip;
    double gate_z;
};

struct Layout {
    int64_t stride;
    int D;
};

template <typename T>
__device__ __forceinline__ T* at(T* m, const DevProblem& p, int64_t t, const Layout& L) {
    return m + (p.row0 + t) * L.stride + p.col0;
}

// quantize_minmax_group's scale and zero for a group with extremes mn, mx, as floats.
__device__ bool minmax_grid(float mn, float mx, int bits, float clip, float& z, float& s) {
    uint16_t z16 = 0, s16 = 0;
    const bool ok = detail::grid_bits(mn, mx, bits, clip, z16, s16);
    z = __half2float(__ushort_as_half(z16));
    s = __half2float(__ushort_as_half(s16));
    return ok;
}

__device__ __forceinline__ float minmax_recon(float v, float z, float s, int bits) {
    const int q = detail::code_of(v, z, s, bits);
    return static_cast<float>(
        __dadd_rn(__dmul_rn(static_cast<double>(q), static_cast<double>(s)), static_cast<double>(z)));
}

using detail::gate_passes;
using detail::nearest_pattern;

// patternkv-table: the pattern of every flushed token, K and V (the key and value
// kernels read it).
__global__ void label_kernel(const float* x, const int32_t* tok_problem, const int32_t* flush, const DevProblem* probs,
                             const DevTable* tables, const float* patterns, Layout L, int64_t total, int32_t* labels) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
        if (flush[i] == kNeverQuantized) continue;
        const DevProblem p = probs[tok_problem[i]];
        const DevTable tb = tables[p.table];
        const float* v = at(x, p, i - p.base, L);
        labels[i] = nearest_pattern(v, patterns + tb.offset, tb.M, tb.l2 != 0, L.D);
    }
}

// patternkv: the pattern of every token of a decode block, against the bank so far (the
// prefill block's tokens have their k-means labels already).
__global__ void pattern_label_kernel(const float* x, const int32_t* tok_problem, const int32_t* flush,
                                     const DevProblem* probs, const PatternProblem* banks, const float* bank, Layout L,
                                     int64_t total, int R, bool l2, int32_t* labels) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
        if (flush[i] == kNeverQuantized) continue;
        const int pi = tok_problem[i];
        const DevProblem p = probs[pi];
        const PatternProblem b = banks[pi];
        const int64_t j = i - p.base - b.s;
        if (j < b.pq) continue;
        const int64_t blk = (j - b.pq) / R;
        const int M = b.k + static_cast<int>(blk + 1 < b.centres ? blk + 1 : b.centres);
        labels[i] = nearest_pattern(at(x, p, i - p.base, L), bank + b.bank_row0 * L.D, M, l2, L.D);
    }
}

// V (kivi, patternkv-table, patternkv): one thread per flushed token; groups of g channels per
// token, each with its own min-max grid; patternkv-table subtracts the token's pattern
// where the gate passes and adds it back to the reconstruction.
__global__ void value_kernel(const float* x, const int32_t* tok_problem, const int32_t* flush, const DevProblem* probs,
                             const DevTable* tables, const float* patterns, const int32_t* labels, Layout L,
                             int64_t total, int bits, int g, float* recon, DevError* err) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
        if (flush[i] == kNeverQuantized) continue;
        const int pi = tok_problem[i];
        const DevProblem p = probs[pi];
        if (p.tensor == 0) continue;  // K tokens: key_kernel
        const int64_t t = i - p.base;
        const float* v = at(x, p, t, L);
        float* out = at(recon, p, t, L);
        const float* c = nullptr;
        float clip = 1.0f;
        bool sub = false;
        if (p.table >= 0) {
            const DevTable tb = tables[p.table];
            c = patterns + tb.offset + static_cast<int64_t>(labels[i]) * L.D;
            clip = tb.clip;
            sub = gate_passes(v, c, L.D, tb.gate_z);
        }
        for (int g0 = 0; g0 < L.D; g0 += g) {
            // The residual x - (c or 0) as pattern_block forms it (kivi: x itself).
            auto res = [&](int d) { return c ? __fsub_rn(v[d], sub ? c[d] : 0.0f) : v[d]; };
            float mn = res(g0), mx = mn;
            for (int d = g0; d < g0 + g; ++d) {
                const float r = res(d);
                if (!isfinite(r)) report(err, 1, pi, t, r, static_cast<float>(d));
                mn = smin(mn, r);
                mx = smax(mx, r);
            }
            float z, s;
            if (!minmax_grid(mn, mx, bits, clip, z, s)) {
                report(err, 2, pi, t, mn, mx);
                continue;
            }
            for (int d = g0; d < g0 + g; ++d) {
                const float q = minmax_recon(res(d), z, s, bits);
                out[d] = c ? __fadd_rn(q, sub ? c[d] : 0.0f) : q;
            }
        }
    }
}

struct DevKGroup {
    int32_t problem;
    int32_t tokens;
    int64_t t0;
};

// K (kivi, patternkv-table, patternkv): one block per group of <= G tokens. Thread t covers channel
// c0 + t % cw of the pass starting at c0, for the tokens k = s, s + S, ... of its slice
// s = t / cw (S = kKeyThreads / D slices, so short channels still fill the block). The
// slices' extremes meet in shared memory: min and max take the same values in any order
// (only the sign of a zero extreme may differ, which no code or reconstruction sees).
constexpr int kKeyThreads = 256;

__global__ void key_kernel(const float* x, const DevKGroup* groups, const DevProblem* probs, const DevTable* tables,
                           const float* patterns, const int32_t* labels, Layout L, int bits, float* recon,
                           DevError* err) {
    __shared__ float lo[kKeyThreads], hi[kKeyThreads], zero[kKeyThreads], step[kKeyThreads];
    __shared__ int ok[kKeyThreads];
    const DevKGroup gr = groups[blockIdx.x];
    const DevProblem p = probs[gr.problem];
    const int slices = max(1, static_cast<int>(blockDim.x) / L.D);
    const int cw = static_cast<int>(blockDim.x) / slices;
    const int sl = static_cast<int>(threadIdx.x) / cw, cl = static_cast<int>(threadIdx.x) % cw;
    const float* pat = nullptr;
    float clip = 1.0f;
    if (p.table >= 0) {
        const DevTable tb = tables[p.table];
        pat = patterns + tb.offset;
        clip = tb.clip;
    }
    for (int c0 = 0; c0 < L.D; c0 += cw) {
        const int d = c0 + cl;
        const bool on = sl < slices && d < L.D;
        auto res = [&](int k) {
            const float v = at(x, p, gr.t0 + k, L)[d];
            return pat ? __fsub_rn(v, pat[static_cast<int64_t>(labels[p.base + gr.t0 + k]) * L.D + d]) : v;
        };
        float mn = INFINITY, mx = -INFINITY;
        if (on)
            for (int k = sl; k < gr.tokens; k += slices) {
                const float r = res(k);
                if (!isfinite(r)) report(err, 1, gr.problem, gr.t0 + k, r, static_cast<float>(d));
                mn = smin(mn, r);
                mx = smax(mx, r);
            }
        lo[threadIdx.x] = mn;
        hi[threadIdx.x] = mx;
        __syncthreads();
        if (on && sl == 0) {
            for (int j = 1; j < slices; ++j) {
                mn = smin(mn, lo[j * cw + cl]);
                mx = smax(mx, hi[j * cw + cl]);
            }
            float z, sc;
            ok[cl] = minmax_grid(mn, mx, bits, clip, z, sc) ? 1 : 0;
            if (!ok[cl]) report(err, 2, gr.problem, gr.t0, mn, mx);
            zero[cl] = z;
            step[cl] = sc;
        }
        __syncthreads();
        if (on && ok[cl])
            for (int k = sl; k < gr.tokens; k += slices) {
                const float q = minmax_recon(res(k), zero[cl], step[cl], bits);
                at(recon, p, gr.t0 + k, L)[d] =
                    pat ? __fadd_rn(q, pat[static_cast<int64_t>(labels[p.base + gr.t0 + k]) * L.D + d]) : q;
            }
        __syncthreads();  // the next pass reuses the shared arrays
    }
}

// q4_0 / q8_0: one thread per 32-element block of a token, ggml's reference quantizer
// (codes from the fp32 scale, reconstruction with its binary16 rounding).
__global__ void ggml_kernel(const float* x, const int32_t* tok_problem, const DevProblem* probs, Layout L,
                            int64_t total, bool q4, float* recon) {
    const int per = L.D / 32;
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total * per;
         i += int64_t{gridDim.x} * blockDim.x) {
        const int64_t tok = i / per;
        const DevProblem p = probs[tok_problem[tok]];
        const int64_t off = static_cast<int64_t>(i % per) * 32;
        const float* v = at(x, p, tok - p.base, L) + off;
        float* out = at(recon, p, tok - p.base, L) + off;
        if (q4) {
            float mx = 0.0f, amax = 0.0f;
            for (int j = 0; j < 32; ++j)
                if (amax < fabsf(v[j])) {
                    amax = fabsf(v[j]);
                    mx = v[j];
                }
            const float d = __fdiv_rn(mx, -8.0f);
            const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
            const float dh = __half2float(__float2half_rn(d));
            for (int j = 0; j < 32; ++j) {
                // The host truncates to int8_t; the value lies in [0.5, 16.5], where int agrees.
                const int q = min(15, static_cast<int>(__fadd_rn(__fmul_rn(v[j], id), 8.5f)));
                out[j] = __fmul_rn(static_cast<float>(q - 8), dh);
            }
        } else {
            float amax = 0.0f;
            for (int j = 0; j < 32; ++j) amax = smax(amax, fabsf(v[j]));
            const float d = __fdiv_rn(amax, 127.0f);
            const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
            const float dh = __half2float(__float2half_rn(d));
            for (int j = 0; j < 32; ++j) {
                const int q = static_cast<int>(roundf(__fmul_rn(v[j], id)));  // in [-127, 127]
                out[j] = __fmul_rn(static_cast<float>(q), dh);
            }
        }
    }
}

// fp8: the largest |x| of each problem (one block per problem; max is order-free). A
// non-finite element is reported and leaves amax meaningless.
__global__ void amax_kernel(const float* x, const DevProblem* probs, Layout L, float* amax, DevError* err) {
    __shared__ float part[kThreads];
    const int pi = blockIdx.x;
    const DevProblem p = probs[pi];
    float m = 0.0f;
    for (int64_t e = threadIdx.x; e < p.n * L.D; e += blockDim.x) {
        const float v = at(x, p, e / L.D, L)[e % L.D];
        if (!isfinite(v)) report(err, 1, pi, e / L.D, v, static_cast<float>(e % L.D));
        m = fmaxf(m, fabsf(v));
    }
    part[threadIdx.x] = m;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) part[threadIdx.x] = fmaxf(part[threadIdx.x], part[threadIdx.x + w]);
        __syncthreads();
    }
    if (threadIdx.x == 0) amax[pi] = part[0];
}

__device__ uint8_t fp8_encode(float x) {
    const uint8_t sign = signbit(x) ? 0x80 : 0x00;
    if (isnan(x)) return static_cast<uint8_t>(sign | 0x7F);
    const float a = fabsf(x);
    if (a >= 448.0f) return static_cast<uint8_t>(sign | 0x7E);
    int code;
    if (a < 0.015625f) {
        code = static_cast<int>(rintf(__fmul_rn(a, 512.0f)));
    } else {
        int e;
        const float m = frexpf(a, &e);
        const float frac = rintf(__fmul_rn(__fsub_rn(__fmul_rn(m, 2.0f), 1.0f), 8.0f));  // exact
        code = ((e + 6) << 3) + static_cast<int>(frac);
    }
    return static_cast<uint8_t>(sign | code);
}

__device__ float fp8_decode(uint8_t code) {
    const int e = (code >> 3) & 0x0F, m = code & 0x07;
    float v;
    if (e == 0x0F && m == 0x07) v = __int_as_float(0x7fc00000);
    else if (e == 0) v = ldexpf(static_cast<float>(m), -9);
    else v = ldexpf(1.0f + static_cast<float>(m) / 8.0f, e - 7);  // exact
    return (code & 0x80) ? -v : v;
}

__global__ void fp8_kernel(const float* x, const int32_t* tok_problem, const DevProblem* probs, const float* amax,
                           Layout L, int64_t total, float* recon) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total * L.D;
         i += int64_t{gridDim.x} * blockDim.x) {
        const int64_t tok = i / L.D;
        const int d = static_cast<int>(i % L.D);
        const int pi = tok_problem[tok];
        const DevProblem p = probs[pi];
        const float scale = __fdiv_rn(amax[pi], 448.0f);
        const float v = at(x, p, tok - p.base, L)[d];
        const uint8_t c = scale > 0.0f ? fp8_encode(__fdiv_rn(v, scale)) : uint8_t{0};
        at(recon, p, tok - p.base, L)[d] = __fmul_rn(fp8_decode(c), scale);
    }
}

// In-place orthonormal Hadamard transform of one token per block (blockDim = D): the
// host's butterfly stages, then the product by fp32(1 / sqrt(D)).
__global__ void hadamard_kernel(float* m, const int32_t* tok_problem, const DevProblem* probs, Layout L, float norm) {
    extern __shared__ float sh[];
    const int64_t tok = blockIdx.x;
    const DevProblem p = probs[tok_problem[tok]];
    float* row = at(m, p, tok - p.base, L);
    const int j = threadIdx.x;
    sh[j] = row[j];
    for (int h = 1; h < L.D; h <<= 1) {
        __syncthreads();
        float a = 0.0f, b = 0.0f;
        const bool lo = (j & h) == 0;
        if (lo) {
            a = sh[j];
            b = sh[j + h];
        }
        __syncthreads();
        if (lo) {
            sh[j] = __fadd_rn(a, b);
            sh[j + h] = __fsub_rn(a, b);
        }
    }
    __syncthreads();
    row[j] = __fmul_rn(sh[j], norm);
}

const char* tensor_name(KvTensor t) { return t == KvTensor::k ? "K" : "V"; }

}  // namespace

// Grow-only device memory of the calls made with one workspace.
struct SimCacheWorkspace::Impl {
    int device = 0;
    DeviceBuffer<uint8_t> meta;  // the plan's arrays, one upload per call
    DeviceBuffer<float> xr, amax;
    DeviceBuffer<int32_t> labels;
    DeviceBuffer<float> bank;       // patternkv: every problem's bank
    DeviceBuffer<double> pscratch;  // patternkv: the k-means scratch
    DeviceBuffer<DevError> err;
    DeviceBuffer<float> io_x, io_recon;  // simulate_cache_batch's copies of the host arrays
    DeviceBuffer<int32_t> io_flush;
};

SimCacheWorkspace::SimCacheWorkspace(int device) : impl_(std::make_unique<Impl>()) { impl_->device = device; }
SimCacheWorkspace::~SimCacheWorkspace() = default;

namespace {

// Appends n elements of T to a byte staging area at a 16-byte aligned offset.
template <typename T>
size_t stage(std::vector<uint8_t>& buf, const T* data, size_t n) {
    const size_t at = (buf.size() + 15) / 16 * 16;
    buf.resize(at + n * sizeof(T));
    if (n > 0) std::memcpy(buf.data() + at, data, n * sizeof(T));
    return at;
}

}  // namespace

double simulate_cache_batch_on_device(const SimBatch& batch, const SimBatchPlan& plan, const float* d_x, float* d_recon,
                                      int32_t* d_flush, SimCacheWorkspace& ws) {
    const int D = batch.D;
    const Layout L{batch.row_stride > 0 ? batch.row_stride : D, D};
    const size_t elems = static_cast<size_t>(batch.rows * L.stride);
    const int64_t total = plan.offset.back();
    const KvMethod method = batch.params.method;
    PKV_CHECK(plan.offset.size() == batch.problems.size() + 1 && plan.flush_step.size() == static_cast<size_t>(total) &&
                  plan.bits.size() == batch.problems.size(),
              invalid_argument, "cuda cache simulation: the plan has {} problems, the batch {}: plan the batch itself",
              plan.offset.size() - 1, batch.problems.size());
    SimCacheWorkspace::Impl& w = *ws.impl_;
    PKV_CUDA_CHECK(cudaSetDevice(w.device));

    const bool pattern = method == KvMethod::patternkv;
    std::vector<DevProblem> probs;
    std::vector<int32_t> tok_problem(static_cast<size_t>(total));
    for (size_t i = 0; i < batch.problems.size(); ++i) {
        const SimProblem& q = batch.problems[i];
        const int32_t table = method == KvMethod::patternkv_table ? q.table : pattern ? static_cast<int32_t>(i) : -1;
        probs.push_back({q.row0, q.col0, plan.offset[i], q.n, q.tensor == KvTensor::k ? 0 : 1, table});
        std::fill(tok_problem.begin() + plan.offset[i], tok_problem.begin() + plan.offset[i + 1],
                  static_cast<int32_t>(i));
    }
    std::vector<DevTable> tables;
    std::vector<float> patterns;
    for (const TableHeadView& v : batch.tables) {
        tables.push_back({static_cast<int64_t>(patterns.size()), v.M, v.assign_l2 ? 1 : 0, v.clip, v.gate_z});
        patterns.insert(patterns.end(), v.patterns, v.patterns + static_cast<int64_t>(v.M) * D);
    }
    // patternkv: problem i's "table" is its own bank (the default clip and gate).
    std::vector<PatternProblem> banks;
    int64_t scratch = 0;
    int max_centres = 0, max_k = 0;
    if (pattern) {
        PKV_CHECK(plan.banks.size() == batch.problems.size(), invalid_argument,
                  "cuda cache simulation: the plan has {} patternkv banks for {} problems: plan the batch itself",
                  plan.banks.size(), batch.problems.size());
        const TableHeadView dflt;
        for (size_t i = 0; i < batch.problems.size(); ++i) {
            const SimBatchPlan::Bank& b = plan.banks[i];
            const SimProblem& q = batch.problems[i];
            tables.push_back({b.row0 * D, b.k + b.centres, batch.params.decode_l2 ? 1 : 0, 1.0f, dflt.gate_z});
            banks.push_back({q.row0, q.col0, plan.offset[i], plan.stored_from[i], b.prefill, b.pq, b.row0, b.draws,
                             scratch, b.k, b.centres, static_cast<int32_t>(i), 0});
            scratch += b.k > 0 ? detail::sim_pattern_scratch(b.prefill) : 0;
            max_centres = std::max(max_centres, b.centres);
            max_k = std::max(max_k, b.k);
        }
    }
    std::vector<DevKGroup> groups;
    for (const auto& g : plan.k_groups) groups.push_back({g.problem, g.tokens, g.t0});
    std::vector<uint8_t> staged;
    const size_t o_tok = stage(staged, tok_problem.data(), tok_problem.size());
    const size_t o_steps = stage(staged, plan.flush_step.data(), plan.flush_step.size());
    const size_t o_probs = stage(staged, probs.data(), probs.size());
    const size_t o_tables = stage(staged, tables.data(), tables.size());
    const size_t o_pat = stage(staged, patterns.data(), patterns.size());
    const size_t o_groups = stage(staged, groups.data(), groups.size());
    const size_t o_banks = stage(staged, banks.data(), banks.size());
    const size_t o_draws = stage(staged, plan.draws.data(), pattern ? plan.draws.size() : 0);
    w.meta.reserve(staged.size());
    w.err.reserve(1);
    PKV_CUDA_CHECK(cudaMemcpy(w.meta.get(), staged.data(), staged.size(), cudaMemcpyHostToDevice));
    PKV_CUDA_CHECK(cudaMemset(w.err.get(), 0, sizeof(DevError)));
    auto* d_tok = reinterpret_cast<const int32_t*>(w.meta.get() + o_tok);
    auto* d_steps = reinterpret_cast<const int32_t*>(w.meta.get() + o_steps);
    auto* d_probs = reinterpret_cast<const DevProblem*>(w.meta.get() + o_probs);
    auto* d_tables = reinterpret_cast<const DevTable*>(w.meta.get() + o_tables);
    const float* d_pat = reinterpret_cast<const float*>(w.meta.get() + o_pat);
    auto* d_groups = reinterpret_cast<const DevKGroup*>(w.meta.get() + o_groups);
    auto* d_banks = reinterpret_cast<const PatternProblem*>(w.meta.get() + o_banks);
    auto* d_draws = reinterpret_cast<const int64_t*>(w.meta.get() + o_draws);
    if (d_flush && total > 0)
        PKV_CUDA_CHECK(cudaMemcpyAsync(d_flush, d_steps, static_cast<size_t>(total) * 4, cudaMemcpyDeviceToDevice));
    if (elems > 0) PKV_CUDA_CHECK(cudaMemcpyAsync(d_recon, d_x, elems * sizeof(float), cudaMemcpyDeviceToDevice));
    if (total == 0 || (method == KvMethod::fp16 && !batch.rotate)) {
        PKV_CUDA_CHECK(cudaDeviceSynchronize());
        return 0.0;
    }

    cudaEvent_t ev0, ev1;
    PKV_CUDA_CHECK(cudaEventCreate(&ev0));
    PKV_CUDA_CHECK(cudaEventCreate(&ev1));
    PKV_CUDA_CHECK(cudaEventRecord(ev0));
    // Exact tokens and elements outside the problems keep x (or, with rotate, come back
    // as H·H·x, as the host's).
    const float* src = d_x;
    const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    if (batch.rotate) {
        w.xr.reserve(elems);
        PKV_CUDA_CHECK(cudaMemcpyAsync(w.xr.get(), d_x, elems * sizeof(float), cudaMemcpyDeviceToDevice));
        hadamard_kernel<<<static_cast<unsigned>(total), D, D * sizeof(float)>>>(w.xr.get(), d_tok, d_probs, L, norm);
        PKV_CUDA_CHECK(cudaGetLastError());
        src = w.xr.get();
    }
    if (batch.rotate) PKV_CUDA_CHECK(cudaMemcpyAsync(d_recon, src, elems * sizeof(float), cudaMemcpyDeviceToDevice));
    const int bits = batch.params.bits;
    if (method == KvMethod::patternkv_table) {
        w.labels.reserve(static_cast<size_t>(total));
        label_kernel<<<grid_for(total), kThreads>>>(src, d_tok, d_steps, d_probs, d_tables, d_pat, L, total,
                                                    w.labels.get());
        PKV_CUDA_CHECK(cudaGetLastError());
    }
    if (pattern) {
        w.labels.reserve(static_cast<size_t>(total));
        w.bank.reserve(static_cast<size_t>(plan.bank_rows * D));
        w.pscratch.reserve(static_cast<size_t>(scratch));
        detail::launch_pattern_bank(src, L.stride, D, d_banks, static_cast<int>(banks.size()), d_draws,
                                    kPatternKMeansIters, kPatternKMeansTol, batch.params.window, w.bank.get(),
                                    w.pscratch.get(), w.labels.get(), w.err.get(), max_k, max_centres);
        pattern_label_kernel<<<grid_for(total), kThreads>>>(src, d_tok, d_steps, d_probs, d_banks, w.bank.get(), L,
                                                            total, batch.params.window, batch.params.decode_l2,
                                                            w.labels.get());
        PKV_CUDA_CHECK(cudaGetLastError());
        d_pat = w.bank.get();
    }
    if (method == KvMethod::kivi || method == KvMethod::patternkv_table || pattern) {
        const bool any_v = std::any_of(batch.problems.begin(), batch.problems.end(),
                                       [](const SimProblem& q) { return q.tensor == KvTensor::v; });
        if (any_v) {
            value_kernel<<<grid_for(total), kThreads>>>(src, d_tok, d_steps, d_probs, d_tables, d_pat, w.labels.get(),
                                                        L, total, bits, std::min(batch.params.group, D), d_recon,
                                                        w.err.get());
            PKV_CUDA_CHECK(cudaGetLastError());
        }
        if (!groups.empty()) {
            const auto n_groups = static_cast<int64_t>(groups.size());
            key_kernel<<<static_cast<unsigned>(n_groups), kKeyThreads>>>(src, d_groups, d_probs, d_tables, d_pat,
                                                                         w.labels.get(), L, bits, d_recon, w.err.get());
            PKV_CUDA_CHECK(cudaGetLastError());
        }
    } else if (method == KvMethod::q4_0 || method == KvMethod::q8_0) {
        ggml_kernel<<<grid_for(total * (D / 32)), kThreads>>>(src, d_tok, d_probs, L, total, method == KvMethod::q4_0,
                                                              d_recon);
        PKV_CUDA_CHECK(cudaGetLastError());
    } else if (method == KvMethod::fp8) {
        w.amax.reserve(probs.size());
        amax_kernel<<<static_cast<unsigned>(probs.size()), kThreads>>>(src, d_probs, L, w.amax.get(), w.err.get());
        PKV_CUDA_CHECK(cudaGetLastError());
        fp8_kernel<<<grid_for(total * D), kThreads>>>(src, d_tok, d_probs, w.amax.get(), L, total, d_recon);
        PKV_CUDA_CHECK(cudaGetLastError());
    }
    if (batch.rotate) {
        hadamard_kernel<<<static_cast<unsigned>(total), D, D * sizeof(float)>>>(d_recon, d_tok, d_probs, L, norm);
        PKV_CUDA_CHECK(cudaGetLastError());
    }
    PKV_CUDA_CHECK(cudaEventRecord(ev1));
    PKV_CUDA_CHECK(cudaEventSynchronize(ev1));
    float ms = 0.0f;
    PKV_CUDA_CHECK(cudaEventElapsedTime(&ms, ev0, ev1));
    cudaEventDestroy(ev0);
    cudaEventDestroy(ev1);

    DevError e{};
    PKV_CUDA_CHECK(cudaMemcpy(&e, w.err.get(), sizeof(DevError), cudaMemcpyDeviceToHost));
    if (e.code != 0) {
        const SimProblem& q = batch.problems[static_cast<size_t>(e.problem)];
        const std::string where = fmt::format("cuda cache simulation: problem {} ({}, rows {} .., column {}), token {}",
                                              e.problem, tensor_name(q.tensor), q.row0, q.col0, e.token);
        if (e.code == 1) fail(ErrorCode::invalid_argument, "{}: channel {} is {}, expected finite", where, e.b, e.a);
        fail(ErrorCode::out_of_range, "{}: min {} and max {} give a zero or scale beyond the binary16 range", where,
             e.a, e.b);
    }
    return ms;
}

SimBatchResult simulate_cache_batch(const SimBatch& batch, const float* x, SimCacheWorkspace& ws) {
    const auto wall0 = std::chrono::steady_clock::now();
    SimBatchResult out;
    out.plan = plan_sim_batch(batch);
    const size_t elems = static_cast<size_t>(batch.rows * (batch.row_stride > 0 ? batch.row_stride : batch.D));
    out.recon.resize(elems);
    SimCacheWorkspace::Impl& w = *ws.impl_;
    PKV_CUDA_CHECK(cudaSetDevice(w.device));
    w.io_x.reserve(elems);
    w.io_recon.reserve(elems);
    w.io_flush.reserve(out.plan.flush_step.size());
    if (elems > 0) PKV_CUDA_CHECK(cudaMemcpy(w.io_x.get(), x, elems * sizeof(float), cudaMemcpyHostToDevice));
    out.kernel_ms =
        simulate_cache_batch_on_device(batch, out.plan, w.io_x.get(), w.io_recon.get(), w.io_flush.get(), ws);
    if (elems > 0)
        PKV_CUDA_CHECK(cudaMemcpy(out.recon.data(), w.io_recon.get(), elems * sizeof(float), cudaMemcpyDeviceToHost));
    if (batch.params.method == KvMethod::patternkv && out.plan.bank_rows > 0) {
        out.bank.resize(static_cast<size_t>(out.plan.bank_rows * batch.D));
        PKV_CUDA_CHECK(
            cudaMemcpy(out.bank.data(), w.bank.get(), out.bank.size() * sizeof(float), cudaMemcpyDeviceToHost));
    }
    const bool labelled =
        batch.params.method == KvMethod::patternkv || batch.params.method == KvMethod::patternkv_table;
    if (labelled && !out.plan.flush_step.empty()) {
        out.labels.resize(out.plan.flush_step.size());
        PKV_CUDA_CHECK(
            cudaMemcpy(out.labels.data(), w.labels.get(), out.labels.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
    }
    // The flush steps come back through the device copy, so the tests see what a device
    // caller reads.
    if (!out.plan.flush_step.empty())
        PKV_CUDA_CHECK(cudaMemcpy(out.plan.flush_step.data(), w.io_flush.get(), out.plan.flush_step.size() * 4,
                                  cudaMemcpyDeviceToHost));
    out.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - wall0).count();
    return out;
}

SimBatchResult simulate_cache_batch(const SimBatch& batch, const float* x, int device) {
    SimCacheWorkspace ws(device);
    return simulate_cache_batch(batch, x, ws);
}

}  // namespace pkv::cuda
