// Causal / sliding-window grouped-query attention on tensor cores (mma m16n8k16, binary16
// or bf16 operands, float accumulation): the engine's attention, with binary16 operands,
// when its weights are bf16 or fp16. The float kernel (forward_attention.cu) stays the f32
// engine's exact path.
//
// A block takes one tile of kAttentionTileRows (16) queries of one sequence for up to four
// query heads of one GQA group, one warp a head, so the key and value tiles staged in
// shared memory serve every head of the group. Keys arrive in chunks of 64 (32 at head_dim
// 256), converted from float to the operand type as they are staged. Per chunk a warp forms
// its 16 x chunk scores with the tensor cores, keeps the online softmax statistics of its
// two rows per thread in float (exp2 of scores scaled by scale · log2 e), rounds the
// probabilities to the operand type and multiplies them with the value tile. head_dim is
// padded with zeros to 64, 128 or 256.
//
// The cached variant (attention_cached) also stages the reconstructions and the chunk's flush
// steps: a chunk whose keys query i reads partly from the cache and partly exact forms
// both score matrices and picks per (query, key); values likewise, as two products whose
// probabilities are split by the value flush steps. Chunks far from the diagonal need only
// one of the two.
#include <cmath>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/forward_ops.cuh"
#include "pkv/cuda/mma_ops.cuh"

namespace pkv::cuda::fwd {

namespace {

using detail::ldmatrix_x4;
using detail::ldmatrix_x4_trans;
using detail::mma;

constexpr int kWarps = 4;  // query heads per block
constexpr int kRows = kAttentionTileRows;
static_assert(kRows == 16, "one mma row tile per warp");

template <int D>
constexpr int key_chunk() {
    return D <= 128 ? 64 : 32;
}
// Shared rows are padded by 8 elements (16 bytes), so the 8 row addresses of an ldmatrix
// fall in 8 different 16-byte bank groups.
template <int D>
constexpr int row_stride() {
    return D + 8;
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
}

template <typename T, int D, bool kCached>
size_t shared_bytes_mma() {
    constexpr int KC = key_chunk<D>(), S = row_stride<D>();
    return sizeof(T) * (static_cast<size_t>(kWarps) * kRows * S + (kCached ? 4 : 2) * static_cast<size_t>(KC) * S) +
           (kCached ? sizeof(int32_t) * 2 * KC : 0);
}

// Rows [0, n) of `count` rows of D operands from float rows at src + row · ld (+ dim),
// head_dim real dims, the rest zero; 4 floats a thread and step when head_dim allows.
template <typename T, int D>
__device__ __forceinline__ void stage_rows(T* dst, const float* __restrict__ src, int64_t ld, int count, int n,
                                           int head_dim, bool vec4) {
    constexpr int S = row_stride<D>();
    for (int e = threadIdx.x; e < count * (D / 4); e += kWarps * 32) {
        const int j = e / (D / 4), d = (e % (D / 4)) * 4;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (j < n && d < head_dim) {
            const float* p = src + j * ld + d;
            if (vec4) {
                x = *reinterpret_cast<const float4*>(p);
            } else {
                x.x = p[0];
                x.y = d + 1 < head_dim ? p[1] : 0.0f;
                x.z = d + 2 < head_dim ? p[2] : 0.0f;
                x.w = d + 3 < head_dim ? p[3] : 0.0f;
            }
        }
        uint2 packed;
        packed.x = pack2<T>(x.x, x.y);
        packed.y = pack2<T>(x.z, x.w);
        *reinterpret_cast<uint2*>(dst + j * S + d) = packed;
    }
}

// s[nt] += Q (16 x D, rows of qs) · K^T for the chunk's KC keys (rows of kt).
template <typename T, int D>
__device__ __forceinline__ void scores(float (&s)[key_chunk<D>() / 8][4], const T* qs, const T* kt, int lane) {
    constexpr int KC = key_chunk<D>(), S = row_stride<D>();
#pragma unroll
    for (int nt = 0; nt < KC / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        ldmatrix_x4(a, qs + (lane % 16) * S + kk * 16 + (lane / 16) * 8);
#pragma unroll
        for (int nt = 0; nt < KC / 8; nt += 2) {
            uint32_t b[4];
            const int m = lane / 8;
            ldmatrix_x4(b, kt + (nt * 8 + (m / 2) * 8 + lane % 8) * S + kk * 16 + (m % 2) * 8);
            mma(s[nt], a, b[0], b[1], T{});
            mma(s[nt + 1], a, b[2], b[3], T{});
        }
    }
}

// o += P (16 x KC, as float pairs in the score layout) · V (rows of vt).
template <typename T, int D>
__device__ __forceinline__ void accumulate(float (&o)[D / 8][4], const float (&p)[key_chunk<D>() / 8][4], const T* vt,
                                           int lane) {
    constexpr int KC = key_chunk<D>(), S = row_stride<D>();
#pragma unroll
    for (int kc = 0; kc < KC / 16; ++kc) {
        // The score layout of two adjacent 8-key tiles is the A layout of one 16-key step.
        uint32_t a[4];
        a[0] = pack2<T>(p[2 * kc][0], p[2 * kc][1]);
        a[1] = pack2<T>(p[2 * kc][2], p[2 * kc][3]);
        a[2] = pack2<T>(p[2 * kc + 1][0], p[2 * kc + 1][1]);
        a[3] = pack2<T>(p[2 * kc + 1][2], p[2 * kc + 1][3]);
        const int m = lane / 8;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt += 2) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, vt + (kc * 16 + (m % 2) * 8 + lane % 8) * S + (dt + m / 2) * 8);
            mma(o[dt], a, b[0], b[1], T{});
            mma(o[dt + 1], a, b[2], b[3], T{});
        }
    }
}

template <typename T, int D, bool kCached>
__global__ void __launch_bounds__(kWarps * 32)
    attention_mma_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                         const AttentionTile* __restrict__ tiles, int n_head, int group, int parts, int head_dim,
                         float scale_log2, int window, AttentionCacheView cache, float* __restrict__ out) {
    constexpr int KC = key_chunk<D>(), S = row_stride<D>(), NT = KC / 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* qs = reinterpret_cast<T*>(smem_raw);  // [kWarps][kRows][S]
    T* kt = qs + kWarps * kRows * S;         // [KC][S]
    T* vt = kt + KC * S;                     // [KC][S]
    T* kh = vt + KC * S;                     // cached: [KC][S] reconstructions
    T* vh = kh + KC * S;
    int32_t* kf = reinterpret_cast<int32_t*>(vh + KC * S);  // cached: [KC] flush steps
    int32_t* vf = kf + KC;

    const AttentionTile t = tiles[blockIdx.x];
    const int g = blockIdx.y / parts, part = blockIdx.y % parts;
    const int h0 = g * group + part * kWarps, nh = min(kWarps, group - part * kWarps);
    const int64_t qd = static_cast<int64_t>(n_head) * head_dim, kd = static_cast<int64_t>(n_head / group) * head_dim;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const bool vec4 = head_dim % 4 == 0;

    for (int hh = 0; hh < kWarps; ++hh)
        stage_rows<T, D>(qs + hh * kRows * S, q + (t.row0 + t.q0) * qd + static_cast<int64_t>(h0 + hh) * head_dim, qd,
                         kRows, hh < nh ? t.nq : 0, head_dim, vec4);

    const bool active = warp < nh;
    const int lr = lane / 4, lc = lane % 4;
    const int qi[2] = {t.q0 + lr, t.q0 + lr + 8};  // the query positions of this thread's two rows
    int lo[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) lo[r] = window > 0 ? max(0, qi[r] - window + 1) : 0;
    float o[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    const int q_last = t.q0 + t.nq - 1;
    const int k_begin = window > 0 ? max(0, t.q0 - window + 1) : 0;
    const T* qw = qs + warp * kRows * S;
    for (int k0 = k_begin; k0 <= q_last; k0 += KC) {
        const int nk = min(KC, q_last + 1 - k0);
        const int64_t src = (t.row0 + k0) * kd + static_cast<int64_t>(g) * head_dim;
        __syncthreads();  // the previous chunk is no longer read
        stage_rows<T, D>(kt, k + src, kd, KC, nk, head_dim, vec4);
        stage_rows<T, D>(vt, v + src, kd, KC, nk, head_dim, vec4);
        // Which of the two forms some query of the tile reads in this chunk.
        bool k_raw = true, k_hat = false, v_raw = true, v_hat = false;
        if constexpr (kCached) {
            stage_rows<T, D>(kh, cache.k_hat + src, kd, KC, nk, head_dim, vec4);
            stage_rows<T, D>(vh, cache.v_hat + src, kd, KC, nk, head_dim, vec4);
            int kfj = INT_MAX, vfj = INT_MAX;
            if (threadIdx.x < KC) {
                const int j = threadIdx.x;
                const int64_t f = static_cast<int64_t>(g) * cache.flush_stride + t.row0 + k0 + j;
                kfj = j < nk ? cache.k_flush[f] : INT_MAX;
                vfj = j < nk ? cache.v_flush[f] : INT_MAX;
                kf[j] = kfj;
                vf[j] = vfj;
            }
            const bool in = threadIdx.x < nk;
            k_hat = __syncthreads_or(in && kfj <= q_last);
            k_raw = __syncthreads_or(in && kfj > t.q0);
            v_hat = __syncthreads_or(in && vfj <= q_last);
            v_raw = __syncthreads_or(in && vfj > t.q0);
        } else {
            __syncthreads();
        }
        if (!active) continue;

        float s[NT][4];
        if (k_raw) scores<T, D>(s, qw, kt, lane);
        if constexpr (kCached) {
            if (k_hat) {
                float sh[NT][4];
                scores<T, D>(sh, qw, kh, lane);
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const int j = nt * 8 + 2 * lc + (c & 1);
                        if (!k_raw || kf[j] <= qi[c / 2]) s[nt][c] = sh[nt][c];
                    }
            }
        }
        // Mask, then the online softmax of each row.
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int r = c / 2, key = k0 + nt * 8 + 2 * lc + (c & 1);
                if (key > qi[r] || key < lo[r] || key - k0 >= nk) s[nt][c] = -INFINITY;
                mx[r] = fmaxf(mx[r], s[nt][c]);
            }
        float corr[2], base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float m_new = fmaxf(m[r], mx[r]);
            // No key visible yet: nothing to scale, and every probability of the row is 0.
            base[r] = m_new == -INFINITY ? 0.0f : m_new * scale_log2;
            corr[r] = exp2f(m[r] * scale_log2 - base[r]);
            m[r] = m_new;
            l[r] *= corr[r];
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int r = c / 2;
                s[nt][c] = exp2f(s[nt][c] * scale_log2 - base[r]);
                l[r] += s[nt][c];
            }
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            o[dt][0] *= corr[0], o[dt][1] *= corr[0];
            o[dt][2] *= corr[1], o[dt][3] *= corr[1];
        }
        if constexpr (kCached) {
            if (v_hat) {
                // The probabilities of keys query i reads from the cache go to the reconstructions.
                float ph[NT][4];
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const int j = nt * 8 + 2 * lc + (c & 1);
                        const bool hat = vf[j] <= qi[c / 2];
                        ph[nt][c] = hat ? s[nt][c] : 0.0f;
                        if (hat) s[nt][c] = 0.0f;
                    }
                accumulate<T, D>(o, ph, vh, lane);
            }
        }
        if (v_raw) accumulate<T, D>(o, s, vt, lane);
    }
    if (!active) return;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = lr + 8 * r;
        if (row >= t.nq) continue;
        // Every query sees at least itself, so l > 0.
        const float inv = 1.0f / l[r];
        float* dst = out + (t.row0 + t.q0 + row) * qd + static_cast<int64_t>(h0 + warp) * head_dim;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            const int d = dt * 8 + 2 * lc;
            if (d < head_dim) dst[d] = o[dt][2 * r] * inv;
            if (d + 1 < head_dim) dst[d + 1] = o[dt][2 * r + 1] * inv;
        }
    }
}

template <typename T, int D, bool kCached>
void launch(const float* q, const float* k, const float* v, const AttentionTile* tiles, int n_tiles, int n_head,
            int n_head_kv, int head_dim, float scale, int window, const AttentionCacheView& cache, float* out,
            cudaStream_t s) {
    const size_t smem = shared_bytes_mma<T, D, kCached>();
    auto* kernel = attention_mma_kernel<T, D, kCached>;
    PKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    const int group = n_head / n_head_kv, parts = (group + kWarps - 1) / kWarps;
    PKV_ASSERT(static_cast<int64_t>(n_head_kv) * parts <= 65535);
    const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(n_head_kv * parts));
    const float scale_log2 = scale * 1.4426950408889634f;
    kernel<<<grid, kWarps * 32, smem, s>>>(q, k, v, tiles, n_head, group, parts, head_dim, scale_log2, window, cache,
                                           out);
    PKV_CUDA_CHECK(cudaGetLastError());
}

template <typename T, bool kCached>
void dispatch(const float* q, const float* k, const float* v, const AttentionTile* tiles, int n_tiles, int n_head,
              int n_head_kv, int head_dim, float scale, int window, const AttentionCacheView& cache, float* out,
              cudaStream_t s) {
    if (head_dim <= 64)
        launch<T, 64, kCached>(q, k, v, tiles, n_tiles, n_head, n_head_kv, head_dim, scale, window, cache, out, s);
    else if (head_dim <= 128)
        launch<T, 128, kCached>(q, k, v, tiles, n_tiles, n_head, n_head_kv, head_dim, scale, window, cache, out, s);
    else launch<T, 256, kCached>(q, k, v, tiles, n_tiles, n_head, n_head_kv, head_dim, scale, window, cache, out, s);
}

}  // namespace

void attention_mma(const float* q, const float* k, const float* v, const AttentionTile* tiles, int n_tiles, int n_head,
                   int n_head_kv, int head_dim, float scale, int window, WeightType math, float* out, cudaStream_t s) {
    PKV_ASSERT(head_dim >= 1 && head_dim <= kMaxHeadDim && n_head_kv >= 1 && n_head % n_head_kv == 0 && scale > 0);
    PKV_ASSERT(math != WeightType::f32);
    if (n_tiles <= 0) return;
    if (math == WeightType::fp16)
        dispatch<__half, false>(q, k, v, tiles, n_tiles, n_head, n_head_kv, head_dim, scale, window, {}, out, s);
    else
        dispatch<__nv_bfloat16, false>(q, k, v, tiles, n_tiles, n_head, n_head_kv, head_dim, scale, window, {}, out, s);
}

void attention_cached_mma(const float* q, const float* k, const float* v, const float* k_hat, const float* v_hat,
                          const int32_t* k_flush, const int32_t* v_flush, int64_t rows, const AttentionTile* tiles,
                          int n_tiles, int n_head, int n_head_kv, int head_dim, float scale, int window,
                          WeightType math, float* out, cudaStream_t s) {
    PKV_ASSERT(head_dim >= 1 && head_dim <= kMaxHeadDim && n_head_kv >= 1 && n_head % n_head_kv == 0 && scale > 0);
    PKV_ASSERT(math != WeightType::f32 && k_hat && v_hat && k_flush && v_flush);
    if (n_tiles <= 0) return;
    const AttentionCacheView cache{k_hat, v_hat, k_flush, v_flush, rows};
    if (math == WeightType::fp16)
        dispatch<__half, true>(q, k, v, tiles, n_tiles, n_head, n_head_kv, head_dim, scale, window, cache, out, s);
    else
        dispatch<__nv_bfloat16, true>(q, k, v, tiles, n_tiles, n_head, n_head_kv, head_dim, scale, window, cache, out,
                                      s);
}

}  // namespace pkv::cuda::fwd
