// The fp16 method's split kernel of decode attention over a packed cache
// (packed_attention.h): each warp runs its own tokens of the split with its own running
// softmax, and the block's warps merge once at the end, so no barrier stands between a
// warp's loads and its use of them. Writes the same per-split records as the general split
// kernel (packed_attention.cu), which its combine kernel merges.
//
// Lane layout: lane L owns channels L·C .. L·C + C − 1 (C = D / 32) of every row, one
// 4- or 8-byte load per row, so a warp reads a row in one coalesced 128- or 256-byte run.
// A round takes kTok tokens: the warp loads their K and V rows first, then forms the
// kTok·Q partial dot products, sums them over the lanes with a butterfly that leaves each
// lane one (token, query head) total (kTok·Q ≤ 32), and updates the running max and sum of
// that query head over its kTok lanes, then the values.
#include <cuda_fp16.h>

#include <cmath>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/packed_device_impl.cuh"
#include "pkv/cuda/packed_warp.cuh"

namespace pkv::cuda {

namespace {

constexpr int kWarps16 = 4;
constexpr int kTok = 8;  // tokens per round of a warp: its loads are in flight together
using lanes::kFull;
using lanes::log2_of;
using lanes::reduce_scatter;

// C binary16 values (one aligned load of 2 C bytes) as packed words.
template <int C>
struct RowBits {
    uint32_t w[C / 2];
};

template <int C>
__device__ __forceinline__ RowBits<C> load_bits(const uint16_t* p) {
    RowBits<C> r;
    if constexpr (C == 4) {
        const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
        r.w[0] = u.x, r.w[1] = u.y;
    } else {
        r.w[0] = __ldg(reinterpret_cast<const unsigned int*>(p));
    }
    return r;
}

template <int C>
__device__ __forceinline__ void to_floats(const RowBits<C>& r, float (&x)[C]) {
#pragma unroll
    for (int i = 0; i < C / 2; ++i) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&r.w[i]));
        x[2 * i] = f.x, x[2 * i + 1] = f.y;
    }
}

template <int D, int Q>
__global__ void __launch_bounds__(kWarps16 * 32) fp16_split_kernel(SplitGeo g, SplitArrays ar) {
    constexpr int C = D / 32;
    constexpr int kVals = kTok * Q;
    static_assert(kVals <= 32 && (kVals & (kVals - 1)) == 0, "kTok · Q must be a power of two <= 32");
    constexpr int kShift = 5 - log2_of(kVals);  // lane L holds (token, head) index L >> kShift
    __shared__ float sm_m[kWarps16][Q], sm_l[kWarps16][Q];
    __shared__ float sm_acc[kWarps16][Q][D];

    const int split = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t ls = g.layer * g.S + s;
    const int64_t n = ar.counts[ls * 3];
    const int64_t j_begin = int64_t{split} * g.tiles_per_split * g.tile;
    const int64_t j_end = min(n, j_begin + int64_t{g.tiles_per_split} * g.tile);
    const int64_t head = ls * g.H + h;
    const uint16_t* kring = ar.ring + head * 2 * g.W * D + lane * C;
    const uint16_t* vring = kring + g.W * D;
    const float inv_sqrt_d = 1.0f / sqrtf(static_cast<float>(D));

    float q[Q][C];
#pragma unroll
    for (int a = 0; a < Q; ++a)
#pragma unroll
        for (int c = 0; c < C; ++c) q[a][c] = ar.q[(int64_t{s} * g.Hq + int64_t{h} * Q + a) * D + lane * C + c];
    float acc[Q][C];
#pragma unroll
    for (int a = 0; a < Q; ++a)
#pragma unroll
        for (int c = 0; c < C; ++c) acc[a][c] = 0.0f;
    // Running max and sum of this lane's query head (the same on all its lanes).
    float m = -INFINITY, l = 0.0f;
    const int idx = lane >> kShift, my_u = idx / Q;

    for (int64_t j0 = j_begin + int64_t{warp} * kTok; j0 < j_end; j0 += kWarps16 * kTok) {
        RowBits<C> kb[kTok], vb[kTok];
        const int64_t slot0 = j0 % g.W;
#pragma unroll
        for (int u = 0; u < kTok; ++u) {
            if (j0 + u < j_end) {
                int64_t slot = slot0 + u;
                if (slot >= g.W) slot -= g.W;
                kb[u] = load_bits<C>(kring + slot * D);
                vb[u] = load_bits<C>(vring + slot * D);
            } else {
#pragma unroll
                for (int i = 0; i < C / 2; ++i) kb[u].w[i] = 0u, vb[u].w[i] = 0u;
            }
        }
        float dots[kVals];
#pragma unroll
        for (int u = 0; u < kTok; ++u) {
            float k[C];
            to_floats<C>(kb[u], k);
            lanes::head_dots(q, k, dots, u * Q);
        }
        reduce_scatter<kVals, 16>(dots, lane);
        const float sc = j0 + my_u < j_end ? dots[0] * inv_sqrt_d : -INFINITY;
        // The lanes of one query head differ in the token bits of the lane: offsets 4, 8, 16.
        const float mt = lanes::max_over<32 / kTok>(sc);
        const float m_new = fmaxf(m, mt);
        const float resc = expf(m - m_new);  // 0 on the warp's first round (m = -inf)
        const float p = expf(sc - m_new);    // 0 for a token past the split
        l = l * resc + lanes::sum_over<32 / kTok>(p);
        m = m_new;
#pragma unroll
        for (int a = 0; a < Q; ++a) {
            const float r = __shfl_sync(kFull, resc, a << kShift);
#pragma unroll
            for (int c = 0; c < C; ++c) acc[a][c] *= r;
        }
#pragma unroll
        for (int u = 0; u < kTok; ++u) {
            float v[C];
            to_floats<C>(vb[u], v);
#pragma unroll
            for (int a = 0; a < Q; ++a) {
                const float w = __shfl_sync(kFull, p, (u * Q + a) << kShift);
#pragma unroll
                for (int c = 0; c < C; ++c) acc[a][c] += w * v[c];
            }
        }
    }
    // Lane a << kShift holds query head a's running max and sum (token 0 of its round).
    if ((lane & ((1 << kShift) - 1)) == 0 && idx < Q) sm_m[warp][idx] = m, sm_l[warp][idx] = l;
#pragma unroll
    for (int a = 0; a < Q; ++a)
#pragma unroll
        for (int c = 0; c < C; ++c) sm_acc[warp][a][lane * C + c] = acc[a][c];
    __syncthreads();
    for (int i = threadIdx.x; i < Q * D; i += kWarps16 * 32) {
        const int a = i / D, d = i % D;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarps16; ++w) M = fmaxf(M, sm_m[w][a]);
        float L = 0.0f, A = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps16; ++w) {
            if (sm_m[w][a] == -INFINITY) continue;  // a warp without tokens
            const float f = expf(sm_m[w][a] - M);
            L += sm_l[w][a] * f;
            A += sm_acc[w][a][d] * f;
        }
        float* rec = ar.part + ((int64_t{s} * g.Hq + int64_t{h} * Q + a) * g.splits + split) * (2 + D);
        if (d == 0) rec[0] = M, rec[1] = L;  // -inf, 0 for an empty split
        rec[2 + d] = A;
    }
}

template <int D>
bool launch_d(const SplitGeo& g, const SplitArrays& ar, cudaStream_t st) {
    const dim3 grid(g.splits, g.H, g.S);
    switch (g.Q) {
        case 1: fp16_split_kernel<D, 1><<<grid, kWarps16 * 32, 0, st>>>(g, ar); break;
        case 2: fp16_split_kernel<D, 2><<<grid, kWarps16 * 32, 0, st>>>(g, ar); break;
        case 4: fp16_split_kernel<D, 4><<<grid, kWarps16 * 32, 0, st>>>(g, ar); break;
        default: return false;
    }
    PKV_CUDA_CHECK(cudaGetLastError());
    return true;
}

}  // namespace

bool launch_fp16_split(const SplitGeo& g, const SplitArrays& ar, cudaStream_t st) {
    if (g.D == 64) return launch_d<64>(g, ar, st);
    if (g.D == 128) return launch_d<128>(g, ar, st);
    return false;
}

}  // namespace pkv::cuda
