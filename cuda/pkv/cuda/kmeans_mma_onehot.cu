// pkv/cuda/kmeans_mma_onehot.cu — the batched tensor-core pass for k <= 128: nearest
// centroids and centroid sums both on tensor cores, points read from device memory
// once, through a cp.async pipeline. Semantics in kmeans_assign.h ("one-hot sums").
//
// Why a second kernel: at small k one Lloyd iteration is bound by reading the points
// (N * d * 2 bytes). The general kernel (kmeans_mma.cu) adds every coordinate to
// shared-memory fixed-point partials with two 32-bit atomics, and at k = 16 every
// warp's rows collide on a few addresses: the atomics, not the reads, set the pace
// (4x the HBM floor). Here the sums of a tile are one more matrix product,
// sums[k x d] += onehot(labels)[k x rows] * X[rows x d], on the same tensor cores with
// fp32 accumulators in registers, and the k x d partials leave the block once per
// group of tiles as 64-bit fixed-point integer atomics.
#include <algorithm>
#include <climits>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "pkv/core/error.h"
#include "pkv/cuda/check.cuh"
#include "pkv/cuda/kmeans_assign.cuh"
#include "pkv/cuda/mma_ops.cuh"
#include "pkv/cuda/mma_rows.cuh"

namespace pkv::cuda::detail {
namespace {

// Block work: a contiguous run of whole groups (group_tiles tiles of one segment;
// segments start on a group, see launch_mma_onehot). One block sums each group in a
// fixed order, so the fp32 partials, and with integer atomics the sums, do not depend
// on the grid, the schedule or the other tasks of the batch.
//
// Per tile (256 rows, staged in shared memory by cp.async STAGES - 1 tiles ahead), with
// NW = 16 / RM warps:
//   1. assignment: warp w takes rows 16 RM w .. 16 RM (w + 1) - 1 as A fragments
//      (ldmatrix), streams the task's centroids from shared memory sixteen at a time
//      (scores x·c - ||c||²/2 from the MMA, online max / lowest index per row),
//      recomputes dist2 = ||x - c||² directly, and leaves labels (-1 past the segment)
//      and its objective partial in shared memory;
//   2. sums: warp w owns columns 16 (w % 8) .. + 15 of the k x d sums for part w / 8 of
//      the tile's rows, walked sixteen at a time: B = the 16 x 16 block of points
//      (ldmatrix.trans), A = the 0/1 one-hot matrix of their labels built in
//      registers, C = its fp32 partials (KT m-tiles of 16 centroids x 2 n-tiles of 8
//      columns; SETS accumulator sets take alternate row blocks so that consecutive
//      MMAs do not wait on each other).
// At the end of a group every nonzero partial is scaled by the task's fixed-point
// scale (a power of two), rounded to an integer and added to the int64 device sums;
// counts go through shared memory the same way.
// RM = 1 (16 warps) keeps more warps in flight for small k; RM = 2 (8 warps) reuses
// each centroid fragment for two m-tiles and leaves registers for KT = 8.

template <typename T>
struct Pair;
template <>
struct Pair<__half> {
    using type = __half2;
    static __device__ __forceinline__ __half2 splat(float v) { return __float2half2_rn(v); }
};
template <>
struct Pair<__nv_bfloat16> {
    using type = __nv_bfloat162;
    static __device__ __forceinline__ __nv_bfloat162 splat(float v) { return __float2bfloat162_rn(v); }
};

template <typename T, int KS, int KT, int RM, int STAGES, bool ACC>
__global__ void __launch_bounds__(512 / RM, 1) onehot_kernel(MmaArgs a, int group_tiles) {
    constexpr int NW = 16 / RM, NT = NW * 32, PARTS = NW / 8, SETS = KT <= 2 ? 2 : 1;
    static_assert(NW * 16 * RM == kBlockRows, "one block tile");
    static_assert(8 * 16 >= kMmaMaxDim, "eight 16-column slices cover d");
    extern __shared__ __align__(16) unsigned char smem[];
    const int d = a.d, k = a.k, kpad = a.kpad, dpad = a.dpad;
    constexpr int kpad16 = 16 * KT;
    const int64_t kd = int64_t{k} * d;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    T* s_stage = reinterpret_cast<T*>(smem);
    T* s_cent = s_stage + static_cast<size_t>(STAGES) * kBlockRows * dpad;
    // Labels as values of T (small integers are exact: k <= 128 < 256), -1 past the segment.
    T* s_lab = s_cent + static_cast<size_t>(kpad16) * dpad;
    unsigned int* s_cnt = reinterpret_cast<unsigned int*>(s_lab + kBlockRows);
    double* s_obj = reinterpret_cast<double*>(s_cnt + kpad16);  // 8-byte aligned: kpad16 is even
    float* s_cnh = reinterpret_cast<float*>(s_obj + 16);        // -||c||²/2, -inf past kpad

    const int64_t n_groups = a.n_tiles / group_tiles;
    const int64_t per_block = (n_groups + gridDim.x - 1) / gridDim.x;
    const int64_t tile_begin = blockIdx.x * per_block * group_tiles;
    const int64_t tile_end = min(a.n_tiles, tile_begin + per_block * group_tiles);
    if (tile_begin >= tile_end) return;

    // Chunks of 16 bytes per row: 2 * KS of them (columns past d are zero-filled).
    constexpr int kChunks = 2 * KS;
    int load_seg = 0;
    auto issue = [&](int64_t tile, int stage) {
        if (tile < tile_end) {
            while (load_seg + 1 < a.n_segs && a.segs[load_seg + 1].tile0 <= tile) ++load_seg;
            const MmaSegment& L = a.segs[load_seg];
            const int64_t r0 = (tile - L.tile0) * kBlockRows;
            const int64_t left = L.rows - r0;
            const T* x = static_cast<const T*>(L.x) + r0 * d;
            const int valid_rows = left <= 0 ? 0 : left >= kBlockRows ? kBlockRows : static_cast<int>(left);
            T* dst = s_stage + static_cast<size_t>(stage) * kBlockRows * dpad;
#pragma unroll 4
            for (int i = tid; i < kBlockRows * kChunks; i += NT) {
                const int r = i / kChunks, c = 8 * (i % kChunks);
                const bool ok = r < valid_rows && c < d;
                cp_async16(dst + r * dpad + c, ok ? x + r * d + c : x, ok ? 16 : 0);
            }
        }
        cp_async_commit();  // possibly empty: keeps one group per tile for the wait below
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) issue(tile_begin + s, s);

    for (int i = tid; i < kpad16; i += NT) s_cnt[i] = 0u;
    float acc[SETS][KT][2][4];
#pragma unroll
    for (int q = 0; q < SETS; ++q)
#pragma unroll
        for (int m = 0; m < KT; ++m)
#pragma unroll
            for (int n = 0; n < 2; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[q][m][n][e] = 0.0f;

    int seg = 0, loaded_task = -1;
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
        const int64_t it = tile - tile_begin;
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // this tile is in shared memory; everyone is done with tile - 1
        issue(tile + STAGES - 1, static_cast<int>((it + STAGES - 1) % STAGES));
        while (seg + 1 < a.n_segs && a.segs[seg + 1].tile0 <= tile) ++seg;
        const MmaSegment S = a.segs[seg];  // in registers: read many times below
        const int task = S.task;
        const int64_t local_tile = tile - S.tile0;
        const T* xs = s_stage + static_cast<size_t>(it % STAGES) * kBlockRows * dpad;
        if (task != loaded_task) {
            // Rows kpad..kpad16 are zero: the 16-wide centroid steps read them (their
            // score is -inf through cnh).
            const int4* src =
                reinterpret_cast<const int4*>(static_cast<const T*>(a.cent) + int64_t{task} * kpad * dpad);
            int4* dst = reinterpret_cast<int4*>(s_cent);
            const int row16 = dpad * static_cast<int>(sizeof(T)) / 16;
            for (int i = tid; i < kpad16 * row16; i += NT)
                dst[i] = i < kpad * row16 ? __ldg(src + i) : make_int4(0, 0, 0, 0);
            for (int i = tid; i < kpad16; i += NT) s_cnh[i] = i < kpad ? a.cnh[int64_t{task} * kpad + i] : -INFINITY;
            __syncthreads();
            loaded_task = task;
        }
        const bool live = local_tile * kBlockRows < S.rows;  // false on the padding tiles of a group
        if (!live) goto flush;

        {  // 1. Assignment of this warp's 16 RM rows.
            uint32_t af[RM][KS][4];
#pragma unroll
            for (int mt = 0; mt < RM; ++mt)
                load_row_fragments<T, KS>(af[mt], xs + (warp * RM + mt) * 16 * dpad, dpad, lane);
            float best[RM][2];
            int bidx[RM][2];
#pragma unroll
            for (int mt = 0; mt < RM; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    best[mt][h] = -INFINITY;
                    bidx[mt][h] = INT_MAX;
                }
            const T* lrow = s_cent + (lane & 7) * dpad + 8 * (lane >> 3);
#pragma unroll 1
            for (int n0 = 0; n0 < kpad; n0 += 16) {
                float sc[2][RM][4];
#pragma unroll
                for (int u = 0; u < 2; ++u) {
                    const float2 h = *reinterpret_cast<const float2*>(s_cnh + n0 + 8 * u + 2 * t);
#pragma unroll
                    for (int mt = 0; mt < RM; ++mt) {
                        sc[u][mt][0] = h.x;
                        sc[u][mt][1] = h.y;
                        sc[u][mt][2] = h.x;
                        sc[u][mt][3] = h.y;
                    }
                }
#pragma unroll
                for (int ks = 0; ks < KS; ks += 2)
#pragma unroll
                    for (int u = 0; u < 2; ++u) {
                        uint32_t b[4];
                        ldmatrix_x4(b, lrow + (n0 + 8 * u) * dpad + ks * 16);
#pragma unroll
                        for (int mt = 0; mt < RM; ++mt) {
                            mma(sc[u][mt], af[mt][ks], b[0], b[1], T{});
                            mma(sc[u][mt], af[mt][ks + 1], b[2], b[3], T{});
                        }
                    }
                    // Columns grow with n0 and u: strict '>' keeps the lowest index.
#pragma unroll
                for (int u = 0; u < 2; ++u) {
                    const int col = n0 + 8 * u + 2 * t;
#pragma unroll
                    for (int mt = 0; mt < RM; ++mt)
#pragma unroll
                        for (int hh = 0; hh < 2; ++hh)
                            running_max(best[mt][hh], bidx[mt][hh], sc[u][mt][2 * hh], sc[u][mt][2 * hh + 1], col);
                }
            }
            // ||x||² of the rows (the Gram diagonal, see mma_rows.cuh).
            float xx[RM][2];
#pragma unroll
            for (int mt = 0; mt < RM; ++mt)
                row_norms<T, KS>(af[mt], xs + (warp * RM + mt) * 16 * dpad, dpad, lane, xx[mt][0], xx[mt][1]);
            double obj = 0.0;
#pragma unroll
            for (int mt = 0; mt < RM; ++mt)
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    float bv = best[mt][hh];
                    const int l = row_winner(bv, bidx[mt][hh], k);
                    const int local = warp * 16 * RM + mt * 16 + hh * 8 + g;
                    const int64_t row = local_tile * kBlockRows + local;
                    const bool valid = row < S.rows;
                    const float s = row_dist2<T, KS>(af[mt], hh, bv, xx[mt][hh], s_cent + l * dpad, lane);
                    if (t == 0) {
                        s_lab[local] = static_cast<T>(valid ? static_cast<float>(l) : -1.0f);
                        if (valid) {
                            if (S.labels) S.labels[row] = l;
                            if (S.dist2) S.dist2[row] = s;
                            if (ACC) atomicAdd(s_cnt + l, 1u);
                        }
                    }
                    obj += valid ? static_cast<double>(s) : 0.0;  // in (mt, hh) order
                }
            obj = t == 0 ? obj : 0.0;
#pragma unroll
            for (int off = 4; off < 32; off <<= 1) obj += __shfl_xor_sync(0xffffffffu, obj, off);
            if (RM == 2) {
                const int64_t row0 = local_tile * kBlockRows + warp * 32;
                if (lane == 0 && row0 < S.rows) a.slots[S.slot0 + row0 / kObjSlotRows] = obj;
            } else if (lane == 0) {
                s_obj[warp] = obj;
            }
        }
        __syncthreads();  // labels (and 16-row objective partials) of every warp are in shared memory
        if (RM == 1 && tid < kBlockRows / kObjSlotRows) {
            const int64_t row0 = local_tile * kBlockRows + tid * kObjSlotRows;
            if (row0 < S.rows) a.slots[S.slot0 + row0 / kObjSlotRows] = s_obj[2 * tid] + s_obj[2 * tid + 1];
        }

        // 2. One-hot sums of the tile into this warp's column slice: C (16 columns x
        // 16 KT centroids) += X^T (16 columns x 16 rows) * onehot (16 rows x 8 centroids
        // per n-tile). A comes from the staged points by ldmatrix.trans; each B register
        // is one half2 comparison of two rows' labels with the thread's centroid (1.0
        // where equal, else 0.0).
        if (ACC && (warp % 8) * 16 < d) {
            constexpr int kSteps = kBlockRows / 16 / PARTS;
            const int r16_0 = (warp / 8) * kSteps;
            const T* arow = xs + ((lane & 7) + 8 * (lane >> 4)) * dpad + (warp % 8) * 16 + 8 * ((lane >> 3) & 1);
            using T2 = typename Pair<T>::type;
            T2 cent[2 * KT];
#pragma unroll
            for (int j = 0; j < 2 * KT; ++j) cent[j] = Pair<T>::splat(static_cast<float>(8 * j + g));
#pragma unroll 2
            for (int r = 0; r < kSteps; ++r) {
                const int r16 = r16_0 + r;
                uint32_t xa[4];
                ldmatrix_x4_trans(xa, arow + r16 * 16 * dpad);
                const T2 l01 = *reinterpret_cast<const T2*>(s_lab + 16 * r16 + 2 * t);
                const T2 l89 = *reinterpret_cast<const T2*>(s_lab + 16 * r16 + 2 * t + 8);
                auto& A = acc[r % SETS];
#pragma unroll
                for (int j = 0; j < 2 * KT; ++j) {
                    const T2 b0 = __heq2(l01, cent[j]), b1 = __heq2(l89, cent[j]);
                    mma(A[j >> 1][j & 1], xa, *reinterpret_cast<const uint32_t*>(&b0),
                        *reinterpret_cast<const uint32_t*>(&b1), T{});
                }
            }
        }

    flush:
        // End of a group (or of the block's work): flush the partials.
        if (ACC && ((tile + 1) % group_tiles == 0 || tile + 1 == tile_end)) {
            const float scale = a.scale[task];
            unsigned long long* sums = a.sums + task * kd;
#pragma unroll
            for (int m = 0; m < KT; ++m)
#pragma unroll
                for (int n = 0; n < 2; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        // acc[.][m][n] is n-tile 2m + n: columns g, g + 8 (e >> 1) of the
                        // slice, centroids 8 (2m + n) + 2t + (e & 1).
                        const int j = 8 * (2 * m + n) + 2 * t + (e & 1), c = (warp % 8) * 16 + g + 8 * (e >> 1);
                        float v = acc[0][m][n][e];
#pragma unroll
                        for (int q = 1; q < SETS; ++q) v += acc[q][m][n][e];
                        if (v != 0.0f && j < k && c < d)
                            atomicAdd(sums + int64_t{j} * d + c,
                                      static_cast<unsigned long long>(__float2ll_rn(v * scale)));
#pragma unroll
                        for (int q = 0; q < SETS; ++q) acc[q][m][n][e] = 0.0f;
                    }
            __syncthreads();  // every row's count is in s_cnt
            for (int j = tid; j < k; j += NT) {
                if (s_cnt[j] != 0u)
                    atomicAdd(a.counts + int64_t{task} * k + j, static_cast<unsigned long long>(s_cnt[j]));
                s_cnt[j] = 0u;
            }
        }
    }
    cp_async_wait<0>();
}

template <int KT>
constexpr int stages_for() {
    return KT <= 2 ? 3 : 2;
}

size_t smem_bytes(int dpad, int stages, int kt) {
    return (static_cast<size_t>(stages) * kBlockRows + 16 * static_cast<size_t>(kt)) * dpad * 2 + kBlockRows * 2 +
           16 * static_cast<size_t>(kt) * 4 + 16 * 8 + 16 * static_cast<size_t>(kt) * 4;
}

template <typename T, int KS, int KT, bool ACC>
void launch_kt(const MmaArgs& a, int group_tiles, int sm_count, cudaStream_t stream) {
    constexpr int kStages = stages_for<KT>();
    constexpr int kRm = KT <= 4 ? 1 : 2;
    constexpr int kThreads = 512 / kRm;
    auto kernel = onehot_kernel<T, KS, KT, kRm, kStages, ACC>;
    const size_t dyn = smem_bytes(a.dpad, kStages, KT);
    const int grid = persistent_grid(kernel, kThreads, dyn, a.n_tiles / group_tiles, sm_count);
    kernel<<<grid, kThreads, dyn, stream>>>(a, group_tiles);
    PKV_CUDA_CHECK(cudaGetLastError());
}

template <typename T, int KS, bool ACC>
void launch_ks(const MmaArgs& a, int group_tiles, int sm_count, cudaStream_t stream) {
    const int kt = (a.k + 15) / 16;
    if (!ACC) {  // without sums KT only sizes the centroid buffer (and the stages)
        if (kt <= 2) launch_kt<T, KS, 2, ACC>(a, group_tiles, sm_count, stream);
        else launch_kt<T, KS, 8, ACC>(a, group_tiles, sm_count, stream);
    } else if (kt <= 1) launch_kt<T, KS, 1, ACC>(a, group_tiles, sm_count, stream);
    else if (kt <= 2) launch_kt<T, KS, 2, ACC>(a, group_tiles, sm_count, stream);
    else if (kt <= 4) launch_kt<T, KS, 4, ACC>(a, group_tiles, sm_count, stream);
    else launch_kt<T, KS, 8, ACC>(a, group_tiles, sm_count, stream);
}

}  // namespace

void launch_mma_onehot(const MmaArgs& a, int group_tiles, int sm_count, cudaStream_t stream) {
    PKV_ASSERT(mma_onehot_ok(a.k, a.d));
    assert_grouped_pass(a, group_tiles);
    if (a.n_tiles == 0) return;
    with_element(a, [&](auto t) {
        with_sums(a, [&](auto acc) {
            with_staged_ksteps(a.d, [&](auto ks) {
                launch_ks<decltype(t), decltype(ks)::value, decltype(acc)::value>(a, group_tiles, sm_count, stream);
            });
        });
    });
}

}  // namespace pkv::cuda::detail
