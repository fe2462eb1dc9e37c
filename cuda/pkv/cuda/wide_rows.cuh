// Internal: the per-warp row steps of the two forms of the wide kernel
// (kmeans_mma_wide.cu on mma.sync, kmeans_wgmma_sm90a.cu on wgmma). Both walk block
// tiles of kBlockRows rows, warp w owning rows 32 w .. 32 w + 31 of a tile as two m-tiles
// of A fragments, so they stage, start and finish a warp's rows the same way.
#pragma once

#include <climits>
#include <cstdint>

#include "pkv/cuda/kmeans_assign.cuh"
#include "pkv/cuda/mma_ops.cuh"
#include "pkv/cuda/mma_rows.cuh"

namespace pkv::cuda::detail {

/// Stages this warp's 32 rows of block tile `tile` into s_x (32 rows, dpad elements
/// apart) by cp.async, without committing: rows past the segment's end and columns past
/// d are zero. `seg` is the warp's segment cursor (tiles only grow).
template <typename T, int KS>
__device__ __forceinline__ void stage_warp_rows(const MmaArgs& a, int& seg, int64_t tile, int warp, int lane, T* s_x) {
    constexpr int kPieces = 2 * KS;  // 16-byte pieces of a row's first 16 KS elements
    while (seg + 1 < a.n_segs && a.segs[seg + 1].tile0 <= tile) ++seg;
    const MmaSegment& L = a.segs[seg];
    const int64_t r0 = (tile - L.tile0) * kBlockRows + warp * kWarpRows;
    const int64_t left = L.rows - r0;
    const int valid = left <= 0 ? 0 : left >= kWarpRows ? kWarpRows : static_cast<int>(left);
    const T* x = static_cast<const T*>(L.x) + max(r0, int64_t{0}) * a.d;
#pragma unroll 4
    for (int i = lane; i < kWarpRows * kPieces; i += 32) {
        const int r = i / kPieces, c = 8 * (i % kPieces);
        const bool ok = r < valid && c < a.d;
        cp_async16(s_x + r * a.dpad + c, ok ? x + r * a.d + c : x, ok ? 16 : 0);
    }
}

/// A warp's 32 rows of a tile while their scores run: the two m-tiles' A fragments,
/// ||x||², and the running (best score, lowest index) of rows g and g + 8 of each
/// (index [m-tile][row]).
template <int KS>
struct WarpRows {
    uint32_t af[2][KS][4];
    float xx[2][2];
    float best[2][2];
    int bidx[2][2];
};

/// A tile's start, once its rows have landed in s_x (`layout`: mma_rows.cuh): the A fragments and ||x||² of the
/// warp's two m-tiles, and the running bests reset. Ends with __syncwarp(): s_x may then
/// take the next tile's rows.
template <typename T, int KS, typename L>
__device__ __forceinline__ void start_warp_rows(const T* s_x, L layout, int lane, WarpRows<KS>& w) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
        const T* rows = piece_at(s_x, layout, 16 * mt, 0);
        load_row_fragments<T, KS>(w.af[mt], rows, layout, lane);
        row_norms<T, KS>(w.af[mt], rows, layout, lane, w.xx[mt][0], w.xx[mt][1]);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            w.best[mt][h] = -INFINITY;
            w.bidx[mt][h] = INT_MAX;
        }
    }
    __syncwarp();  // every lane's fragments are out of the staging rows
}

/// A tile's end: each of the warp's rows takes its winner (row_winner) and its distance
/// (row_dist2); labels and dist2 go to the segment's outputs where it has them, and the
/// warp's objective slot gets the sum of its rows' distances in a fixed order. lab gets
/// the labels of rows g + 8 hh of m-tile mt (lab[mt][hh]), -1 past the segment. `warp`
/// numbers the warp's 32 rows in the tile.
template <typename T, int KS>
__device__ __forceinline__ void finish_warp_rows(const MmaArgs& a, int seg, int64_t tile, int warp, int lane,
                                                 const WarpRows<KS>& w, int (&lab)[2][2]) {
    const int g = lane >> 2, t = lane & 3;
    // The segment is read again here, not held in registers through the chunk loop.
    const MmaSegment S = a.segs[seg];
    const int64_t row0 = (tile - S.tile0) * kBlockRows + warp * kWarpRows;
    const T* gcent = static_cast<const T*>(a.cent) + int64_t{S.task} * a.kpad * a.dpad;
    double obj = 0.0;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            float bv = w.best[mt][hh];
            const int l = row_winner(bv, w.bidx[mt][hh], a.k);
            const int64_t row = row0 + mt * 16 + hh * 8 + g;
            const bool valid = row < S.rows;
            const float s = row_dist2<T, KS>(w.af[mt], hh, bv, w.xx[mt][hh], gcent + int64_t{l} * a.dpad, lane);
            if (t == 0 && valid) {
                if (S.labels) S.labels[row] = l;
                if (S.dist2) S.dist2[row] = s;
            }
            lab[mt][hh] = valid ? l : -1;
            obj += valid ? static_cast<double>(s) : 0.0;  // in (mt, hh) order
        }
    obj = t == 0 ? obj : 0.0;
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) obj += __shfl_xor_sync(0xffffffffu, obj, off);
    if (lane == 0 && row0 < S.rows) a.slots[S.slot0 + row0 / kObjSlotRows] = obj;
}

/// The same without the labels.
template <typename T, int KS>
__device__ __forceinline__ void finish_warp_rows(const MmaArgs& a, int seg, int64_t tile, int warp, int lane,
                                                 const WarpRows<KS>& w) {
    int lab[2][2];
    finish_warp_rows<T, KS>(a, seg, tile, warp, lane, w, lab);
}

}  // namespace pkv::cuda::detail
