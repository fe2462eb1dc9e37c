// Internal: per-row steps the tensor-core k-means kernels share, on one m-tile of 16
// rows held as A fragments (layout in mma_ops.cuh: thread (g = lane / 4, t = lane % 4)
// holds rows g and g + 8). Rows are 16-bit values in shared memory, dpad elements apart.
#pragma once

#include <cstdint>

#include "pkv/cuda/mma_ops.cuh"

namespace pkv::cuda::detail {

/// Rows closer to their centroid than this fraction of ||x||² get the direct sum of
/// squares (the expanded form's absolute error is a few 2^-24 ||x||²).
constexpr float kDirectFraction = 1.0f / 16.0f;

/// The row's winner over its quad: `best` becomes the row's best score and the result
/// its label, the lowest index among equal scores; a row whose every score is NaN
/// (idx never set) gets centroid 0, as a scalar loop would.
__device__ __forceinline__ int row_winner(float& best, int idx, int k) {
    quad_argmax(best, idx);
    return idx >= k ? 0 : idx;
}

/// The best of a thread's four scores of one row in a 16-centroid step by a tree (p0,
/// p1: columns 2t, 2t + 1 of the first 8 centroids; p2, p3: the same columns of the
/// second 8), the lowest column on ties: the score, and in `off` its column's offset
/// from 2t (0, 1, 8 or 9). Fewer dependent instructions than four running updates.
__device__ __forceinline__ float best_of_four(float p0, float p1, float p2, float p3, int& off) {
    const bool b01 = p1 > p0, b23 = p3 > p2;
    const float v01 = b01 ? p1 : p0, v23 = b23 ? p3 : p2;
    const bool b = v23 > v01;
    off = b ? (b23 ? 9 : 8) : (b01 ? 1 : 0);
    return b ? v23 : v01;
}

/// Row layouts of staged rows, both addressed by (row r, 16-byte piece p) from the first
/// row: `int dpad`, rows dpad elements apart (padded so that ldmatrix meets no bank
/// conflicts); Swizzle128<KS>, wgmma's 128-byte swizzle (wgmma_ops.cuh) of rows of 16 KS
/// elements (KS = 4 or 8): 8-row groups of KS / 4 atoms of 1 KiB, piece p of row r at
/// place p % 8 ^ r % 8 of atom p / 8. The first row must start a group.
template <int KS>
struct Swizzle128 {
    static_assert(KS == 4 || KS == 8, "rows of one or two 128-byte atoms");
};
template <typename T>
__device__ __forceinline__ const T* piece_at(const T* rows, int dpad, int r, int p) {
    return rows + r * dpad + 8 * p;
}
template <typename T, int KS>
__device__ __forceinline__ const T* piece_at(const T* rows, Swizzle128<KS>, int r, int p) {
    const int bytes = (r >> 3) * (KS / 4) * 1024 + (p >> 3) * 1024 + (r & 7) * 128 + (((p & 7) ^ (r & 7)) << 4);
    return reinterpret_cast<const T*>(reinterpret_cast<const unsigned char*>(rows) + bytes);
}

/// The A fragments of the 16 rows starting at `rows` (KS k-steps of 16 columns).
template <typename T, int KS, typename L>
__device__ __forceinline__ void load_row_fragments(uint32_t (&af)[KS][4], const T* rows, L layout, int lane) {
    const int r = (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) ldmatrix_x4(af[ks], piece_at(rows, layout, r, 2 * ks + (lane >> 4)));
}

/// ||x||² of rows g (xx[mt][0]) and g + 8 (xx[mt][1]) of M m-tiles, m-tile mt at row
/// 16 mt of `rows` (in `layout`), for every lane of the quad of row g: the diagonal of
/// each m-tile's Gram matrix on the tensor cores (B = the same rows, read like
/// centroids; thread (g, t = g / 2) holds the diagonal entries). The 2 M accumulator
/// chains are interleaved.
template <typename T, int KS, int M, typename L>
__device__ __forceinline__ void row_norms(const uint32_t (&af)[M][KS][4], const T* rows, L layout, int lane,
                                          float (&xx)[M][2]) {
    const int g = lane >> 2;
    float gr[M][2][4];
#pragma unroll
    for (int mt = 0; mt < M; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) gr[mt][nt][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < KS; ks += 2) {
        uint32_t b[M][2][4];
#pragma unroll
        for (int mt = 0; mt < M; ++mt)
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
                ldmatrix_x4(b[mt][nt], piece_at(rows, layout, 16 * mt + 8 * nt + (lane & 7), 2 * ks + (lane >> 3)));
#pragma unroll
        for (int kk = 0; kk < 2; ++kk)
#pragma unroll
            for (int mt = 0; mt < M; ++mt)
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
                    mma(gr[mt][nt], af[mt][ks + kk], b[mt][nt][2 * kk], b[mt][nt][2 * kk + 1], T{});
    }
#pragma unroll
    for (int mt = 0; mt < M; ++mt) {
        const float d0 = (g & 1) ? gr[mt][0][1] : gr[mt][0][0];
        const float d1 = (g & 1) ? gr[mt][1][3] : gr[mt][1][2];
        xx[mt][0] = __shfl_sync(0xffffffffu, d0, 4 * g + (g >> 1));
        xx[mt][1] = __shfl_sync(0xffffffffu, d1, 4 * g + (g >> 1));
    }
}

/// The same for the one m-tile at `rows`: ||x||² of rows g (lo) and g + 8 (hi).
template <typename T, int KS, typename L>
__device__ __forceinline__ void row_norms(const uint32_t (&af)[KS][4], const T* rows, L layout, int lane, float& lo,
                                          float& hi) {
    float xx[1][2];
    row_norms<T, KS, 1>(reinterpret_cast<const uint32_t(&)[1][KS][4]>(af), rows, layout, lane, xx);
    lo = xx[0][0];
    hi = xx[0][1];
}

/// Squared distance of row g + 8 hh of the m-tile to centroid row `crow` (any memory),
/// given the row's best score x·c - ||c||²/2 and its ||x||²: ||x||² - 2 best, or where
/// that is below kDirectFraction ||x||² (or NaN) the direct fp32 sum of squares over the
/// quad's columns, in four chains added in a fixed order, so a point equal to its
/// centroid gets exactly 0. Every lane of the quad gets the same value (and takes the
/// same branch).
template <typename T, int KS>
__device__ __forceinline__ float row_dist2(const uint32_t (&af)[KS][4], int hh, float best, float xsq, const T* crow,
                                           int lane) {
    float s = fmaxf(fmaf(-2.0f, best, xsq), 0.0f);
    if (s >= kDirectFraction * xsq) return s;
    const int t = lane & 3;
    const unsigned quad = 0xFu << (lane & ~3);
    float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int c = ks * 16 + 2 * t + 8 * half;
            const float2 xv = to_float2(af[ks][hh + 2 * half], T{});
            const float2 cv = to_float2(*reinterpret_cast<const unsigned int*>(crow + c), T{});
            const float dx = xv.x - cv.x, dy = xv.y - cv.y;
            float& p = part[(ks & 1) * 2 + half];
            p = fmaf(dx, dx, p);
            p = fmaf(dy, dy, p);
        }
    s = (part[0] + part[1]) + (part[2] + part[3]);
    s += __shfl_xor_sync(quad, s, 1);
    s += __shfl_xor_sync(quad, s, 2);
    return s;
}

}  // namespace pkv::cuda::detail
