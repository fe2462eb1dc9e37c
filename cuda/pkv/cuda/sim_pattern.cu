// The patternkv bank on the device (sim_pattern.cuh): one thread block per problem runs
// the whole Lloyd loop of pkv::kmeans_exact_ref (kmeans_exact.h, one slice), operation
// for operation, so its centroids and labels are that reference's bit for bit; the
// decode centres are chebyshev_center's (minmax_assign.h).
//
// Why the loop is laid out as it is. The reference's arithmetic fixes each distance as
// one chain of double fused multiply-adds and each cluster's sum as one chain of double
// adds in point order; those chains are inherently serial, so the block gets its speed
// from running many independent chains at once: every thread keeps eight centroid
// distances in flight, up to eight threads share a point (each a contiguous range of
// centroids, the lowest index winning ties as in the sequential scan), and the sums run
// one chain per (cluster, channel) over the cluster's points, which a stable counting
// sort by label lists in increasing point order. The centroids stay in shared memory as
// doubles when they fit (converting a float to a double costs as much as several FP64
// operations, and the distances would convert each centroid element once per point).
#include <cuda_runtime.h>

#include <algorithm>

#include "pkv/core/error.h"
#include "pkv/cuda/check.cuh"
#include "pkv/cuda/sim_pattern.cuh"

namespace pkv::cuda::detail {

int64_t sim_pattern_scratch(int64_t prefill) { return (prefill + 1) / 2; }

namespace {

constexpr int kWarps = kPatternThreads / 32;
// Shared memory above which the centroids are read from the bank in global memory (as floats).
constexpr size_t kCentroidSmemLimit = 160 * 1024;

__device__ __forceinline__ const float* point(const float* x, const PatternProblem& p, int64_t stride, int64_t t) {
    return x + (p.row0 + t) * stride + p.col0;
}

// First nearest of centroids [j0, j1) to v (exact_l2's chain each), eight chains at a
// time. C: double (the shared-memory mirror, exact copies of the float centroids, which
// saves a conversion per step) or float (the bank in global memory).
template <typename C>
__device__ void nearest_range(const float* v, const C* c, int j0, int j1, int D, double& best_d, int& best) {
    constexpr int kChains = 8;
    best = -1;
    best_d = 0.0;
    for (int j = j0; j < j1; j += kChains) {
        const int m = min(kChains, j1 - j);
        const C* cj[kChains];
#pragma unroll
        for (int q = 0; q < kChains; ++q) cj[q] = c + static_cast<int64_t>(j + min(q, m - 1)) * D;
        double a[kChains];
#pragma unroll
        for (int q = 0; q < kChains; ++q) a[q] = 0.0;
        for (int t = 0; t < D; ++t) {
            const double x = static_cast<double>(v[t]);
#pragma unroll
            for (int q = 0; q < kChains; ++q) {
                const double e = __dsub_rn(x, static_cast<double>(cj[q][t]));
                a[q] = __fma_rn(e, e, a[q]);
            }
        }
#pragma unroll
        for (int q = 0; q < kChains; ++q)
            if (q < m && (best < 0 || a[q] < best_d)) {
                best_d = a[q];
                best = j + q;
            }
    }
}

// Labels of points 0 .. n - 1 against centroids c: h threads (adjacent lanes) per point.
template <typename C>
__device__ void assign_all(const float* x, const PatternProblem& p, int64_t stride, int D, int64_t n, const C* c, int k,
                           int h, int32_t* lab) {
    const int tid = static_cast<int>(threadIdx.x);
    const int part = tid % h;
    const int j0 = static_cast<int>(static_cast<int64_t>(k) * part / h);
    const int j1 = static_cast<int>(static_cast<int64_t>(k) * (part + 1) / h);
    for (int64_t base = 0; base < n * h; base += kPatternThreads) {
        const int64_t i = (base + tid) / h;
        double d = 0.0;
        int j = -1;
        if (i < n && j0 < j1) nearest_range(point(x, p, stride, p.s + i), c, j0, j1, D, d, j);
        for (int off = 1; off < h; off *= 2) {
            const double od = __shfl_down_sync(0xffffffffu, d, off);
            const int oj = __shfl_down_sync(0xffffffffu, j, off);
            // Parts are in centroid order: a later part wins only when strictly nearer.
            if (part % (2 * off) == 0 && oj >= 0 && (j < 0 || od < d)) {
                d = od;
                j = oj;
            }
        }
        if (part == 0 && i < n) lab[i] = j;
    }
}

// Block = one problem with a prefill; blockDim.x = kPatternThreads. Dynamic shared memory:
// the centroids [kmax, D] as doubles when C is double (else C is float and they live in
// the bank), then int cnt[kmax], start[kmax], empty_before[kmax], wcount[kWarps · kmax].
template <typename C>
__global__ void __launch_bounds__(kPatternThreads)
    prefill_kmeans_kernel(const float* x, int64_t stride, int D, const PatternProblem* probs, const int64_t* draws,
                          int max_iter, double tol, float* bank, double* scratch, int32_t* labels, DevError* err,
                          int kmax) {
    const PatternProblem p = probs[blockIdx.x];
    if (p.k <= 0) return;
    constexpr bool kMirror = sizeof(C) == sizeof(double);
    extern __shared__ double smem[];
    C* c = kMirror ? reinterpret_cast<C*>(smem) : reinterpret_cast<C*>(bank + p.bank_row0 * D);
    int* cnt = reinterpret_cast<int*>(kMirror ? smem + static_cast<int64_t>(kmax) * D : smem);
    int* start = cnt + kmax;
    int* empty_before = start + kmax;
    int* wcount = empty_before + kmax;
    __shared__ double red[kWarps];
    __shared__ int bad, empties;
    __shared__ int64_t used;

    const int k = p.k, tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
    const int64_t n = p.prefill;
    int32_t* lab = labels + p.base + p.s;
    int32_t* order = reinterpret_cast<int32_t*>(scratch + p.scratch);
    const int64_t* init = draws + p.draws;
    const int64_t* refill = init + k;
    int h = 1;
    while (h < 8 && 2 * h <= k && n * 2 * h <= kPatternThreads) h *= 2;
    if (tid == 0) {
        bad = 0;
        used = 0;
    }
    __syncthreads();
    for (int64_t i = tid; i < n; i += kPatternThreads) {
        const float* v = point(x, p, stride, p.s + i);
        for (int t = 0; t < D; ++t)
            if (!isfinite(v[t])) {
                report(err, 1, p.problem, p.s + i, v[t], static_cast<float>(t));
                bad = 1;
                break;
            }
    }
    for (int64_t e = tid; e < static_cast<int64_t>(k) * D; e += kPatternThreads)
        c[e] = static_cast<C>(point(x, p, stride, p.s + init[e / D])[e % D]);
    __syncthreads();
    if (bad) return;
    // Warp w's points: a contiguous segment, so the warps' segments in order are the points in order.
    const int64_t seg = (n + kWarps - 1) / kWarps;
    const int64_t w0 = min(n, warp * seg), w1 = min(n, w0 + seg);
    for (int it = 0; it < max_iter; ++it) {
        assign_all(x, p, stride, D, n, c, k, h, lab);
        for (int e = tid; e < kWarps * k; e += kPatternThreads) wcount[e] = 0;
        __syncthreads();
        // Stable counting sort by label: per-warp counts, cluster starts, then placement.
        for (int64_t b = w0; b < w1; b += 32) {
            const int64_t i = b + lane;
            const int j = i < w1 ? lab[i] : -1;
            const unsigned same = __match_any_sync(0xffffffffu, j);
            if (j >= 0 && lane == __ffs(same) - 1) wcount[warp * k + j] += __popc(same);
        }
        __syncthreads();
        for (int j = tid; j < k; j += kPatternThreads) {
            int s = 0;
            for (int w = 0; w < kWarps; ++w) s += wcount[w * k + j];
            cnt[j] = s;
        }
        __syncthreads();
        if (warp == 0) {
            // Exclusive scans of the counts and of the empty clusters over j, lane by lane range.
            const int per = (k + 31) / 32, j0 = min(k, lane * per), j1 = min(k, j0 + per);
            int s = 0, z = 0;
            for (int j = j0; j < j1; ++j) {
                s += cnt[j];
                z += cnt[j] == 0;
            }
            int is = s, iz = z;
            for (int off = 1; off < 32; off *= 2) {
                const int a = __shfl_up_sync(0xffffffffu, is, off), b2 = __shfl_up_sync(0xffffffffu, iz, off);
                if (lane >= off) {
                    is += a;
                    iz += b2;
                }
            }
            s = is - s;
            z = iz - z;
            for (int j = j0; j < j1; ++j) {
                start[j] = s;
                empty_before[j] = z;
                s += cnt[j];
                z += cnt[j] == 0;
            }
            if (lane == 31) empties = iz;
        }
        __syncthreads();
        for (int j = tid; j < k; j += kPatternThreads) {
            int s = start[j];
            for (int w = 0; w < kWarps; ++w) {
                const int m = wcount[w * k + j];
                wcount[w * k + j] = s;
                s += m;
            }
        }
        __syncthreads();
        for (int64_t b = w0; b < w1; b += 32) {
            const int64_t i = b + lane;
            const int j = i < w1 ? lab[i] : -1;
            const unsigned same = __match_any_sync(0xffffffffu, j);
            if (j >= 0) order[wcount[warp * k + j] + __popc(same & ((1u << lane) - 1u))] = static_cast<int32_t>(i);
            __syncwarp();
            if (j >= 0 && lane == __ffs(same) - 1) wcount[warp * k + j] += __popc(same);
            __syncwarp();
        }
        __syncthreads();
        // Each (cluster, channel): the mean of its points in point order, or the cluster's refill row.
        double shift = 0.0;
        for (int64_t e = tid; e < static_cast<int64_t>(k) * D; e += kPatternThreads) {
            const int j = static_cast<int>(e / D), d = static_cast<int>(e % D);
            const int m = cnt[j];
            float next;
            if (m == 0) {
                next = point(x, p, stride, p.s + refill[used + empty_before[j]])[d];
            } else {
                const int32_t* o = order + start[j];
                double sum = 0.0;
                for (int q = 0; q < m; ++q)
                    sum = __dadd_rn(sum, static_cast<double>(point(x, p, stride, p.s + o[q])[d]));
                next = __double2float_rn(__dmul_rn(sum, __ddiv_rn(1.0, static_cast<double>(m))));
            }
            shift = fmax(shift, fabs(__dsub_rn(static_cast<double>(next), static_cast<double>(c[e]))));
            c[e] = static_cast<C>(next);
        }
        for (int off = 16; off > 0; off /= 2) shift = fmax(shift, __shfl_xor_sync(0xffffffffu, shift, off));
        if (lane == 0) red[warp] = shift;
        __syncthreads();
        double all = red[0];
        for (int w = 1; w < kWarps; ++w) all = fmax(all, red[w]);
        if (tid == 0) used += empties;
        if (tol >= 0.0 && all <= tol) break;
    }
    __syncthreads();
    assign_all(x, p, stride, D, n, c, k, h, lab);
    if (kMirror)
        for (int64_t e = tid; e < static_cast<int64_t>(k) * D; e += kPatternThreads)
            bank[p.bank_row0 * D + e] = static_cast<float>(c[e]);
}

// Thread per (problem, decode block, channel): chebyshev_center of the block's R tokens.
__global__ void decode_centre_kernel(const float* x, int64_t stride, int D, const PatternProblem* probs, int n_probs,
                                     int R, int max_centres, float* bank) {
    const int64_t per = static_cast<int64_t>(max_centres) * D;
    for (int64_t g = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; g < per * n_probs;
         g += int64_t{gridDim.x} * blockDim.x) {
        const PatternProblem p = probs[g / per];
        const int b = static_cast<int>(g % per / D), d = static_cast<int>(g % D);
        if (b >= p.centres) continue;
        const int64_t t0 = p.s + p.pq + static_cast<int64_t>(b) * R;
        float lo = point(x, p, stride, t0)[d], hi = lo;
        for (int i = 1; i < R; ++i) {
            const float v = point(x, p, stride, t0 + i)[d];
            lo = smin(lo, v);
            hi = smax(hi, v);
        }
        bank[(p.bank_row0 + p.k + b) * D + d] =
            __double2float_rn(__dmul_rn(__dadd_rn(static_cast<double>(lo), static_cast<double>(hi)), 0.5));
    }
}

}  // namespace

void launch_pattern_bank(const float* x, int64_t stride, int D, const PatternProblem* d_probs, int n_probs,
                         const int64_t* d_draws, int max_iter, double tol, int R, float* bank, double* scratch,
                         int32_t* labels, DevError* err, int max_k, int max_centres) {
    if (n_probs <= 0) return;
    if (max_k > 0) {
        int dev = 0, optin = 0;
        PKV_CUDA_CHECK(cudaGetDevice(&dev));
        PKV_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        const size_t counts = sizeof(int) * static_cast<size_t>(3 + kWarps) * static_cast<size_t>(max_k);
        const size_t mirror = sizeof(double) * static_cast<size_t>(max_k) * static_cast<size_t>(D);
        const size_t statics = sizeof(double) * kWarps + 64;
        const bool use_mirror = counts + mirror + statics <= std::min(kCentroidSmemLimit, static_cast<size_t>(optin));
        const size_t bytes = counts + (use_mirror ? mirror : 0);
        PKV_CHECK(bytes + statics <= static_cast<size_t>(optin), unsupported,
                  "cuda cache simulation: patternkv with {} patterns needs {} bytes of shared memory per block, the "
                  "device offers {}",
                  max_k, bytes + statics, optin);
        const auto kernel = use_mirror ? prefill_kmeans_kernel<double> : prefill_kmeans_kernel<float>;
        PKV_CUDA_CHECK(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
        kernel<<<static_cast<unsigned>(n_probs), kPatternThreads, bytes>>>(x, stride, D, d_probs, d_draws, max_iter,
                                                                           tol, bank, scratch, labels, err, max_k);
        PKV_CUDA_CHECK(cudaGetLastError());
    }
    if (max_centres <= 0) return;
    const int64_t work = static_cast<int64_t>(n_probs) * max_centres * D;
    const int64_t blocks = std::min<int64_t>((work + 255) / 256, int64_t{1} << 20);
    decode_centre_kernel<<<static_cast<unsigned>(blocks), 256>>>(x, stride, D, d_probs, n_probs, R, max_centres, bank);
    PKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pkv::cuda::detail
