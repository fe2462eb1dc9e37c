// Internal: pkv's quantizer, pattern choice and value gate on the device, operation by
// operation as the host computes them (pkv/quant/minmax.cpp, pkv/kvcache/simulate.cpp,
// pkv/kmeans/assign_cpu.cpp and the runtime's packed_cache.cpp, which repeat one another).
// Every rounding is an explicit _rn intrinsic, so nvcc contracts nothing the host does not;
// the fused operations are those the project's GCC build (-march=native, with FMA) emits
// there: the clip's centre and half-width on their mn term and m -+ a h, the L2 distance's
// sum of squares, and 1 + rho^2 rho^2. Shared by the cache simulation (sim_cache.cu) and the
// packed cache's device appends (packed_append.cu).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace pkv::cuda::detail {

// std::min / std::max as the host evaluates them (the first argument unless the second
// is strictly beyond it), so even the sign of a zero extreme is the host's.
__device__ __forceinline__ float smin(float a, float b) { return b < a ? b : a; }
__device__ __forceinline__ float smax(float a, float b) { return a < b ? b : a; }
__device__ __forceinline__ double dmin(double a, double b) { return b < a ? b : a; }
__device__ __forceinline__ double dmax(double a, double b) { return a < b ? b : a; }

// A quantizer group with extremes mn, mx under clip ratio `clip`: its binary16 zero and
// scale (pkv::minmax_grid). Returns whether both are finite.
__device__ __forceinline__ bool grid_bits(float mn, float mx, int bits, float clip, uint16_t& z16, uint16_t& s16) {
    if (clip < 1.0f) {
        const float hx = __fmul_rn(0.5f, mx);
        const float c = __fmaf_rn(mn, 0.5f, hx);
        const float h = __fmaf_rn(-0.5f, mn, hx);
        mn = __fmaf_rn(-clip, h, c);
        mx = __fmaf_rn(clip, h, c);
    }
    z16 = __half_as_ushort(__float2half_rn(mn));
    s16 = __half_as_ushort(__float2half_rn(__fdiv_rn(__fsub_rn(mx, mn), static_cast<float>((1 << bits) - 1))));
    return isfinite(__half2float(__ushort_as_half(z16))) && isfinite(__half2float(__ushort_as_half(s16)));
}

// The distance of v to pattern c: the min-max distance (max - min of v - c, in double) or
// the squared L2 distance (double), summed over channels in order. (The unrolling lets a
// thread issue several channels' loads before the chain of sums needs them; the order of
// the sums stays the same.)
__device__ inline double pattern_distance(const float* v, const float* c, bool l2, int D) {
    if (l2) {
        double d = 0.0;
#pragma unroll 8
        for (int t = 0; t < D; ++t) {
            const double e = __dsub_rn(static_cast<double>(v[t]), static_cast<double>(c[t]));
            d = __fma_rn(e, e, d);
        }
        return d;
    }
    double lo = __dsub_rn(static_cast<double>(v[0]), static_cast<double>(c[0])), hi = lo;
#pragma unroll 8
    for (int t = 1; t < D; ++t) {
        const double r = __dsub_rn(static_cast<double>(v[t]), static_cast<double>(c[t]));
        lo = dmin(lo, r);
        hi = dmax(hi, r);
    }
    return __dsub_rn(hi, lo);
}

// The pattern nearest to v among M rows of D floats (the lowest index on ties).
__device__ inline int nearest_pattern(const float* v, const float* pat, int M, bool l2, int D) {
    int best = 0;
    double best_d = 0.0;
    for (int j = 0; j < M; ++j) {
        const double d = pattern_distance(v, pat + static_cast<int64_t>(j) * D, l2, D);
        if (j == 0 || d < best_d) {
            best_d = d;
            best = j;
        }
    }
    return best;
}

// The value gate's test on the extremes of v and of v - c over the channels.
__device__ inline bool gate_from_extremes(float vmin, float vmax, float rmin, float rmax, int D, double z) {
    const double rv = __dsub_rn(static_cast<double>(vmax), static_cast<double>(vmin));
    if (rv <= 0.0) return false;
    const double rho = __ddiv_rn(__dsub_rn(static_cast<double>(rmax), static_cast<double>(rmin)), rv);
    if (!isfinite(rho)) return false;
    const double rho2 = __dmul_rn(rho, rho);
    const double lhs = __dsub_rn(1.0, rho2);
    const double k = __ddiv_rn(__dadd_rn(z, z), __dsqrt_rn(__dmul_rn(5.0, static_cast<double>(D))));
    return lhs >= __dmul_rn(k, __dsqrt_rn(__fma_rn(rho2, rho2, 1.0)));
}

// The value gate (v_gate_rho then v_gate_passes): subtract pattern c from v or not.
__device__ inline bool gate_passes(const float* v, const float* c, int D, double z) {
    float vmin = v[0], vmax = v[0], rmin = __fsub_rn(v[0], c[0]), rmax = rmin;
    for (int i = 1; i < D; ++i) {
        vmin = smin(vmin, v[i]);
        vmax = smax(vmax, v[i]);
        const float e = __fsub_rn(v[i], c[i]);
        rmin = smin(rmin, e);
        rmax = smax(rmax, e);
    }
    return gate_from_extremes(vmin, vmax, rmin, rmax, D, z);
}

// The code of x on a grid of zero z and scale s (both binary16 values): round half to
// even of (x - z) / s, clamped to [0, 2^bits - 1]; 0 on a flat grid.
__device__ __forceinline__ int code_of(float x, float z, float s, int bits) {
    if (!(s > 0.0f)) return 0;
    const float t = rintf(__fdiv_rn(__fsub_rn(x, z), s));
    return static_cast<int>(smin(smax(t, 0.0f), static_cast<float>((1 << bits) - 1)));
}

}  // namespace pkv::cuda::detail
