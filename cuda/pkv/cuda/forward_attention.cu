// Causal / sliding-window grouped-query attention over packed rows (forward_ops.cuh):
// a tiled online softmax in float.
//
// A block takes one tile of kAttentionTileRows queries of one sequence and one query head;
// its 4 warps own 4 queries each. Keys and values pass through shared memory 32 at a time,
// one key per lane: lane j forms the score of key j with the query (read from shared
// memory), the warp reduces the tile's maximum and sum once, and each lane accumulates
// the output dimensions lane, lane + 32, ... (at most 8 of them: head_dim <= 256). As in
// ops::causal_attention_rows the scores are raw dot products, the softmax is
// exp((s - max) · scale) and a query sees keys max(0, i - window + 1) .. i.
//
// The cached variant (attention_cached) also stages the reconstructed keys and values and
// their flush steps of the 32 keys: a lane scores query i against k_hat[j] when
// k_flush[j] <= i, else against k[j], and the warp (one query at a time, so the choice is
// uniform over it) accumulates v_hat[j] or v[j] the same way, as
// ops::causal_attention_rows_cached reads the cache.
#include <cmath>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/forward_ops.cuh"

namespace pkv::cuda::fwd {

namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = kAttentionTileRows / kWarps;
constexpr int kKeys = 32;
constexpr int kDimsPerLane = kMaxHeadDim / 32;

// K rows in shared memory have an odd stride, so the 32 lanes reading 32 different rows
// at one column hit 32 different banks.
__host__ __device__ inline int key_stride(int head_dim) { return head_dim | 1; }

// Queries, one key tile and one value tile; the cached variant a second key and value tile
// (the reconstructions) and the 2 · 32 flush steps.
size_t shared_bytes(int head_dim, bool cached) {
    const size_t kv = static_cast<size_t>(kKeys) * key_stride(head_dim) + static_cast<size_t>(kKeys) * head_dim;
    return sizeof(float) * (static_cast<size_t>(kAttentionTileRows) * head_dim + (cached ? 2 : 1) * kv) +
           (cached ? sizeof(int32_t) * 2 * kKeys : 0);
}

__device__ inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ inline float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <bool kCached>
__global__ void __launch_bounds__(kWarps * 32)
    attention_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                     const AttentionTile* __restrict__ tiles, int n_head, int group, int head_dim, float scale,
                     int window, AttentionCacheView cache, float* __restrict__ out) {
    extern __shared__ float smem[];
    const int ks = key_stride(head_dim);
    float* qs = smem;                                // [kAttentionTileRows][head_dim]
    float* kt = qs + kAttentionTileRows * head_dim;  // [kKeys][ks]
    float* vt = kt + kKeys * ks;                     // [kKeys][head_dim]
    // Cached only: the reconstructions and flush steps of the same keys.
    float* kh = vt + kKeys * head_dim;                                // [kKeys][ks]
    float* vh = kh + kKeys * ks;                                      // [kKeys][head_dim]
    int32_t* kf = reinterpret_cast<int32_t*>(vh + kKeys * head_dim);  // [kKeys]
    int32_t* vf = kf + kKeys;                                         // [kKeys]
    const AttentionTile t = tiles[blockIdx.x];
    const int h = blockIdx.y, g = h / group;
    const int64_t qd = static_cast<int64_t>(n_head) * head_dim, kd = static_cast<int64_t>(n_head / group) * head_dim;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    for (int e = threadIdx.x; e < kAttentionTileRows * head_dim; e += blockDim.x) {
        const int r = e / head_dim, d = e % head_dim;
        qs[e] = r < t.nq ? q[(t.row0 + t.q0 + r) * qd + static_cast<int64_t>(h) * head_dim + d] : 0.0f;
    }
    float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kDimsPerLane];
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        m[rr] = -INFINITY, l[rr] = 0.0f;
#pragma unroll
        for (int u = 0; u < kDimsPerLane; ++u) acc[rr][u] = 0.0f;
    }
    const int q_last = t.q0 + t.nq - 1;
    const int k_begin = window > 0 ? max(0, t.q0 - window + 1) : 0;
    for (int k0 = k_begin; k0 <= q_last; k0 += kKeys) {
        const int nk = min(kKeys, q_last + 1 - k0);
        __syncthreads();  // the queries are in; the previous keys are no longer read
        for (int e = threadIdx.x; e < kKeys * head_dim; e += blockDim.x) {
            const int j = e / head_dim, d = e % head_dim;
            float kv = 0.0f, vv = 0.0f;
            if (j < nk) {
                const int64_t src = (t.row0 + k0 + j) * kd + static_cast<int64_t>(g) * head_dim + d;
                kv = k[src];
                vv = v[src];
            }
            kt[j * ks + d] = kv;
            vt[j * head_dim + d] = vv;
            if (kCached) {
                float khv = 0.0f, vhv = 0.0f;
                if (j < nk) {
                    const int64_t src = (t.row0 + k0 + j) * kd + static_cast<int64_t>(g) * head_dim + d;
                    khv = cache.k_hat[src];
                    vhv = cache.v_hat[src];
                }
                kh[j * ks + d] = khv;
                vh[j * head_dim + d] = vhv;
            }
        }
        if (kCached && threadIdx.x < kKeys) {
            const int j = threadIdx.x;
            const int64_t f = static_cast<int64_t>(g) * cache.flush_stride + t.row0 + k0 + j;
            kf[j] = j < nk ? cache.k_flush[f] : 0;
            vf[j] = j < nk ? cache.v_flush[f] : 0;
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < kRowsPerWarp; ++rr) {
            const int r = warp * kRowsPerWarp + rr;
            if (r >= t.nq) continue;  // uniform over the warp
            const int qi = t.q0 + r;
            const int lo = window > 0 ? max(0, qi - window + 1) : 0;
            const int key = k0 + lane;
            const bool visible = lane < nk && key >= lo && key <= qi;
            float s = -INFINITY;
            if (visible) {
                const float* qr = qs + r * head_dim;
                const float* kr = (kCached && kf[lane] <= qi ? kh : kt) + lane * ks;
                float dot = 0.0f;
                for (int d = 0; d < head_dim; ++d) dot = fmaf(qr[d], kr[d], dot);
                s = dot;
            }
            const float mt = warp_max(s);
            if (mt == -INFINITY) continue;  // no key of this step is visible to the query (uniform)
            const float m_new = fmaxf(m[rr], mt);
            const float corr = m[rr] == -INFINITY ? 0.0f : expf((m[rr] - m_new) * scale);
            const float p = visible ? expf((s - m_new) * scale) : 0.0f;
            l[rr] = l[rr] * corr + warp_sum(p);
#pragma unroll
            for (int u = 0; u < kDimsPerLane; ++u) acc[rr][u] *= corr;
            for (int j = 0; j < nk; ++j) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
                const float* vr = (kCached && vf[j] <= qi ? vh : vt) + j * head_dim;
#pragma unroll
                for (int u = 0; u < kDimsPerLane; ++u) {
                    const int d = lane + 32 * u;
                    if (d < head_dim) acc[rr][u] = fmaf(pj, vr[d], acc[rr][u]);
                }
            }
            m[rr] = m_new;
        }
    }
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        const int r = warp * kRowsPerWarp + rr;
        if (r >= t.nq) continue;
        // Every query sees at least itself, so l > 0.
        const float inv = 1.0f / l[rr];
        float* o = out + (t.row0 + t.q0 + r) * qd + static_cast<int64_t>(h) * head_dim;
#pragma unroll
        for (int u = 0; u < kDimsPerLane; ++u) {
            const int d = lane + 32 * u;
            if (d < head_dim) o[d] = acc[rr][u] * inv;
        }
    }
}

}  // namespace

void attention(const float* q, const float* k, const float* v, const AttentionTile* tiles, int n_tiles, int n_head,
               int n_head_kv, int head_dim, float scale, int window, WeightType math, float* out, cudaStream_t s) {
    if (math != WeightType::f32)
        return attention_mma(q, k, v, tiles, n_tiles, n_head, n_head_kv, head_dim, scale, window, math, out, s);
    PKV_ASSERT(head_dim >= 1 && head_dim <= kMaxHeadDim && n_head_kv >= 1 && n_head % n_head_kv == 0 && scale > 0);
    if (n_tiles <= 0) return;
    PKV_ASSERT(n_head <= 65535);
    const size_t smem = shared_bytes(head_dim, false);
    PKV_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(n_head));
    attention_kernel<false><<<grid, kWarps * 32, smem, s>>>(q, k, v, tiles, n_head, n_head / n_head_kv, head_dim, scale,
                                                            window, AttentionCacheView{}, out);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void attention_cached(const float* q, const float* k, const float* v, const float* k_hat, const float* v_hat,
                      const int32_t* k_flush, const int32_t* v_flush, int64_t rows, const AttentionTile* tiles,
                      int n_tiles, int n_head, int n_head_kv, int head_dim, float scale, int window, WeightType math,
                      float* out, cudaStream_t s) {
    if (math != WeightType::f32)
        return attention_cached_mma(q, k, v, k_hat, v_hat, k_flush, v_flush, rows, tiles, n_tiles, n_head, n_head_kv,
                                    head_dim, scale, window, math, out, s);
    PKV_ASSERT(head_dim >= 1 && head_dim <= kMaxHeadDim && n_head_kv >= 1 && n_head % n_head_kv == 0 && scale > 0);
    if (n_tiles <= 0) return;
    PKV_ASSERT(n_head <= 65535 && k_hat && v_hat && k_flush && v_flush);
    const size_t smem = shared_bytes(head_dim, true);
    PKV_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(n_head));
    const AttentionCacheView cache{k_hat, v_hat, k_flush, v_flush, rows};
    attention_kernel<true><<<grid, kWarps * 32, smem, s>>>(q, k, v, tiles, n_head, n_head / n_head_kv, head_dim, scale,
                                                           window, cache, out);
    PKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pkv::cuda::fwd
