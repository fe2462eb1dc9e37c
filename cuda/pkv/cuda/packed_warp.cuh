// Internal: warp-level helpers shared by the warp-autonomous split kernels of decode
// attention (packed_attention_fp16.cu, packed_attention_quant.cu).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace pkv::cuda::lanes {

constexpr unsigned kFull = 0xffffffffu;

constexpr int log2_of(int n) { return n <= 1 ? 0 : 1 + log2_of(n / 2); }

// Sums N values per lane over the lanes that differ in bits O, O/2, .., 1 of the lane index,
// leaving lane L the total of value (L mod 2O) >> (log2(2O) − log2 N): the first log2 N
// butterfly stages halve the values each lane keeps, the remaining stages add.
template <int N, int O, int M>
__device__ __forceinline__ void reduce_scatter(float (&v)[M], int lane) {
    if constexpr (O >= 1) {
        if constexpr (N > 1) {
            constexpr int H = N / 2;
            const bool up = (lane & O) != 0;
#pragma unroll
            for (int i = 0; i < H; ++i) {
                const float send = up ? v[i] : v[i + H];
                const float keep = up ? v[i + H] : v[i];
                v[i] = keep + __shfl_xor_sync(kFull, send, O);
            }
            reduce_scatter<H, O / 2>(v, lane);
        } else {
            v[0] += __shfl_xor_sync(kFull, v[0], O);
            reduce_scatter<1, O / 2>(v, lane);
        }
    }
}

// out[at + a] = Σ_c q[a][c] x[c], the partial dot product of each query head a over a lane's
// C channels.
template <int Q, int C, int N>
__device__ __forceinline__ void head_dots(const float (&q)[Q][C], const float (&x)[C], float (&out)[N], int at) {
#pragma unroll
    for (int a = 0; a < Q; ++a) {
        float d = 0.0f;
#pragma unroll
        for (int c = 0; c < C; ++c) d += q[a][c] * x[c];
        out[at + a] = d;
    }
}

// x over the lanes that differ in lane bits FROM, 2 FROM, .. 16: their maximum or sum.
template <int FROM>
__device__ __forceinline__ float max_over(float x) {
#pragma unroll
    for (int o = FROM; o < 32; o <<= 1) x = fmaxf(x, __shfl_xor_sync(kFull, x, o));
    return x;
}
template <int FROM>
__device__ __forceinline__ float sum_over(float x) {
#pragma unroll
    for (int o = FROM; o < 32; o <<= 1) x += __shfl_xor_sync(kFull, x, o);
    return x;
}

// N binary16 values from an aligned address (N = 4: 8 bytes, 8: 16, 16: 32) as floats.
template <int N>
__device__ __forceinline__ void load_halves(const uint16_t* p, float (&x)[N]) {
    static_assert(N == 4 || N == 8 || N == 16, "4, 8 or 16 halves");
    uint32_t w[N / 2];
    if constexpr (N == 4) {
        const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
        w[0] = u.x, w[1] = u.y;
    } else {
#pragma unroll
        for (int b = 0; b < N / 8; ++b) {
            const uint4 u = __ldg(reinterpret_cast<const uint4*>(p) + b);
            w[4 * b] = u.x, w[4 * b + 1] = u.y, w[4 * b + 2] = u.z, w[4 * b + 3] = u.w;
        }
    }
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
        x[2 * i] = f.x, x[2 * i + 1] = f.y;
    }
}

// The 32 / BITS codes of one 32-bit word as floats, exactly: a code c in the low mantissa
// bits of 2^23 gives the float 2^23 + c, from which 2^23 is subtracted (no int-to-float
// conversion, which issues at a quarter of the FMA rate).
template <int BITS>
__device__ __forceinline__ void decode_codes(uint32_t w, float (&x)[32 / BITS]) {
    constexpr uint32_t kMask = (1u << BITS) - 1u;
#pragma unroll
    for (int c = 0; c < 32 / BITS; ++c) x[c] = __uint_as_float(0x4b000000u | ((w >> (c * BITS)) & kMask)) - 8388608.0f;
}

}  // namespace pkv::cuda::lanes
