// The patternkv bank on the device (sim_pattern.cuh): one thread block per problem runs
// the whole Lloyd loop of pkv::kmeans_exact_ref (kmeans_exact.h), operation for
// operation, so its centroids and labels are that reference's bit for bit; the decode
// centres are chebyshev_center's (minmax_assign.h).
#include <cuda_runtime.h>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/sim_pattern.cuh"

namespace pkv::cuda::detail {

int64_t sim_pattern_scratch(int k, int D) {
    const int64_t S = D <= kPatternThreads ? kPatternThreads / D : 1;
    // partial sums [S, k, D] doubles, counts [S, k] (as doubles: exact below 2^53), next [k, D] floats (as doubles)
    return S * k * D + S * k + int64_t{k} * D;
}

namespace {

__device__ __forceinline__ const float* point(const float* x, const PatternProblem& p, int64_t stride, int64_t t) {
    return x + (p.row0 + t) * stride + p.col0;
}

__device__ int nearest_exact(const float* v, const float* c, int k, int D) {
    int best = 0;
    double best_d = 0.0;
    for (int j = 0; j < k; ++j) {
        const float* cj = c + static_cast<int64_t>(j) * D;
        double acc = 0.0;
        for (int t = 0; t < D; ++t) {
            const double e = __dsub_rn(static_cast<double>(v[t]), static_cast<double>(cj[t]));
            acc = __fma_rn(e, e, acc);
        }
        if (j == 0 || acc < best_d) {
            best_d = acc;
            best = j;
        }
    }
    return best;
}

// Block = one problem with a prefill; blockDim.x = kPatternThreads.
__global__ void prefill_kmeans_kernel(const float* x, int64_t stride, int D, const PatternProblem* probs,
                                      const int64_t* draws, int max_iter, double tol, float* bank, double* scratch,
                                      int32_t* labels, DevError* err) {
    const PatternProblem p = probs[blockIdx.x];
    if (p.k <= 0) return;
    const int k = p.k, tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
    const int S = D <= nt ? nt / D : 1;
    const int64_t n = p.prefill;
    float* c = bank + p.bank_row0 * D;
    double* part = scratch + p.scratch;
    double* pcount = part + static_cast<int64_t>(S) * k * D;
    float* next = reinterpret_cast<float*>(pcount + static_cast<int64_t>(S) * k);
    int32_t* lab = labels + p.base + p.s;
    const int64_t* init = draws + p.draws;
    const int64_t* refill = init + k;
    __shared__ double red[kPatternThreads];
    __shared__ int bad;
    __shared__ int64_t used;
    if (tid == 0) {
        bad = 0;
        used = 0;
    }
    __syncthreads();
    for (int64_t i = tid; i < n; i += nt) {
        const float* v = point(x, p, stride, p.s + i);
        for (int t = 0; t < D; ++t)
            if (!isfinite(v[t])) {
                report(err, 1, p.problem, p.s + i, v[t], static_cast<float>(t));
                bad = 1;
                break;
            }
    }
    for (int64_t e = tid; e < static_cast<int64_t>(k) * D; e += nt)
        c[e] = point(x, p, stride, p.s + init[e / D])[e % D];
    __syncthreads();
    if (bad) return;
    for (int it = 0; it < max_iter; ++it) {
        for (int64_t i = tid; i < n; i += nt) lab[i] = nearest_exact(point(x, p, stride, p.s + i), c, k, D);
        __syncthreads();
        // Thread (slice sl, channel d) adds points sl, sl + S, ... of its channel.
        const int sl = tid / D, d = tid % D;
        if (sl < S) {
            double* ps = part + static_cast<int64_t>(sl) * k * D;
            for (int j = 0; j < k; ++j) ps[static_cast<int64_t>(j) * D + d] = 0.0;
            if (d == 0)
                for (int j = 0; j < k; ++j) pcount[static_cast<int64_t>(sl) * k + j] = 0.0;
            for (int64_t i = sl; i < n; i += S) {
                const int j = lab[i];
                ps[static_cast<int64_t>(j) * D + d] = __dadd_rn(ps[static_cast<int64_t>(j) * D + d],
                                                                static_cast<double>(point(x, p, stride, p.s + i)[d]));
                if (d == 0) pcount[static_cast<int64_t>(sl) * k + j] += 1.0;
            }
        }
        // D > blockDim (not planned: D <= 256) would leave channels unsummed.
        __syncthreads();
        double shift = 0.0;
        for (int64_t e = tid; e < static_cast<int64_t>(k) * D; e += nt) {
            const int64_t j = e / D;
            double cnt = 0.0;
            for (int s2 = 0; s2 < S; ++s2) cnt += pcount[static_cast<int64_t>(s2) * k + j];
            if (cnt == 0.0) continue;  // refilled below, in cluster order
            double sum = part[e];
            for (int s2 = 1; s2 < S; ++s2) sum = __dadd_rn(sum, part[static_cast<int64_t>(s2) * k * D + e]);
            next[e] = __double2float_rn(__dmul_rn(sum, __ddiv_rn(1.0, cnt)));
        }
        __syncthreads();
        if (tid == 0) {
            int64_t u = used;
            for (int j = 0; j < k; ++j) {
                double cnt = 0.0;
                for (int s2 = 0; s2 < S; ++s2) cnt += pcount[static_cast<int64_t>(s2) * k + j];
                if (cnt != 0.0) continue;
                const float* r = point(x, p, stride, p.s + refill[u++]);
                for (int t = 0; t < D; ++t) next[static_cast<int64_t>(j) * D + t] = r[t];
            }
            used = u;
        }
        __syncthreads();
        for (int64_t e = tid; e < static_cast<int64_t>(k) * D; e += nt) {
            shift = fmax(shift, fabs(__dsub_rn(static_cast<double>(next[e]), static_cast<double>(c[e]))));
            c[e] = next[e];
        }
        red[tid] = shift;
        __syncthreads();
        for (int h = nt / 2; h > 0; h /= 2) {
            if (tid < h) red[tid] = fmax(red[tid], red[tid + h]);
            __syncthreads();
        }
        const bool done = tol >= 0.0 && red[0] <= tol;
        __syncthreads();  // red is rewritten by the next iteration
        if (done) break;
    }
    for (int64_t i = tid; i < n; i += nt) lab[i] = nearest_exact(point(x, p, stride, p.s + i), c, k, D);
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
                         int32_t* labels, DevError* err, int max_centres) {
    if (n_probs <= 0) return;
    prefill_kmeans_kernel<<<static_cast<unsigned>(n_probs), kPatternThreads>>>(x, stride, D, d_probs, d_draws, max_iter,
                                                                               tol, bank, scratch, labels, err);
    PKV_CUDA_CHECK(cudaGetLastError());
    if (max_centres <= 0) return;
    const int64_t work = static_cast<int64_t>(n_probs) * max_centres * D;
    const int64_t blocks = std::min<int64_t>((work + 255) / 256, int64_t{1} << 20);
    decode_centre_kernel<<<static_cast<unsigned>(blocks), 256>>>(x, stride, D, d_probs, n_probs, R, max_centres, bank);
    PKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pkv::cuda::detail
