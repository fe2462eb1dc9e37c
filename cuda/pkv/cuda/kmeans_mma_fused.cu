// pkv/cuda/kmeans_mma_fused.cu — the batched tensor-core pass for k <= 16: nearest
// centroids and centroid sums in one pass over the points, every warp on its own
// cp.async pipeline. Semantics in kmeans_assign.h ("fused" kernel).
//
// Why a fourth kernel: at k = 16 a Lloyd iteration should cost one read of the points
// (the HBM floor), and the one-hot kernel (kmeans_mma_onehot.cu) takes far more than
// that: its 16 warps meet at two block barriers a tile (after the
// staged rows land, after the labels are in shared memory), the sums read the points
// a second time from shared memory (ldmatrix.trans), and the staging buffer stays
// taken until they have. Here
//   - each warp owns 32 rows of every tile and kStages staging buffers of its own: its
//     rows' A fragments are loaded, the buffer is handed straight back to cp.async for
//     a later tile, and the warp goes on from registers, so kStages loads a warp are in
//     flight while it computes, and no barrier is met inside a task;
//   - the sums are a second matrix product, sums[16 x d] += onehot[16 x rows] * X[rows
//     x d], whose B operand is the A fragments transposed in registers (movmatrix), and
//     whose one-hot A operand comes from the rows' labels (two shuffles, bytewise
//     compares); the counts are the one-hot matrix times ones;
//   - a warp's fp32 partial covers its 32-row slices of one group of tiles (fixed by row
//     number, so the result does not depend on the grid), is rounded once to the 64-bit
//     fixed point and added to the block's sums in shared memory as two 32-bit words
//     (native 32-bit atomics, the low word's carry taken from the value it returns);
//     the block adds them to the device sums when its task changes and at its end.
// Two warps a scheduler (240 registers) leave it latency bound, so a third staging
// buffer a warp (224 KB of shared memory a block) does not help.
// Where d <= 64 it also takes k <= 32, as two blocks of 16 centroids (NB = 2): the warp's
// sums, 32 x 64 fp32, take the registers 16 x 128 take at d = 128; the per-row work is
// that of k = 16, d = 128, so the kernel runs at about the same rows a second, well short
// of that shape's HBM floor. At d = 128, NB = 2 needs 255 registers and spills, and the
// one-hot kernel stays ahead there. (Measured passes: docs/kmeans_gpu.md.)
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

constexpr int kWarps = kTileWarps;
constexpr int kThreads = kWarps * 32;
constexpr int kStages = 2;  // staging buffers a warp (2 x 8.5 KB at d = 128)
// NB blocks of 16 centroids: 1 (k <= 16), or 2 (k <= 32) where d <= 64, so that the
// warp's sums (16 NB x d fp32) take the 64 registers a lane that 16 x 128 take.
static_assert(fused_max_k(64) == 32 && fused_max_k(128) == 16, "NB = 2 only with KS = 4");

// Shared memory: [points: kWarps x kStages x 32 rows x dpad][centroids: 16 NB x dpad]
// [-||c||²/2: 16 NB][sums: 16 NB x d + 1 low words][16 NB x d + 1 high words]
// [counts: 16 NB].
size_t smem_bytes(int d, int dpad, int nb) {
    const size_t cent = 16 * static_cast<size_t>(nb);
    return (static_cast<size_t>(kWarps) * kStages * kWarpRows + cent) * dpad * 2 + cent * 4 + 2 * (cent * d + 1) * 4 +
           cent * 4;
}

// The segment holding a tile, walked forward: its fields stay in registers and the
// table is read only where a boundary is crossed.
struct SegCursor {
    int i = -1;
    int64_t next = 0;  // first tile of segment i + 1
    MmaSegment s;
    __device__ __forceinline__ void seek(const MmaArgs& a, int64_t tile) {
        while (tile >= next) {
            ++i;
            s = a.segs[i];
            next = i + 1 < a.n_segs ? a.segs[i + 1].tile0 : INT64_MAX;
        }
    }
};

// One block walks a contiguous run of whole groups (group_tiles tiles; segments start
// on a group). Warp w takes rows 32 w .. 32 w + 31 of every tile.
template <typename T, int KS, int NB, bool ACC>
__global__ void __launch_bounds__(kThreads, 1) fused_kernel(MmaArgs a, int group_tiles) {
    static_assert(NB == 1 || (NB == 2 && KS <= 4), "16 NB x 16 KS sums a warp");
    constexpr int kCent = 16 * NB;  // centroid rows in shared memory (zero padded)
    extern __shared__ __align__(16) unsigned char smem[];
    const int d = a.d, k = a.k, kpad = a.kpad, dpad = a.dpad;
    const int64_t kd = int64_t{k} * d;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    T* s_x = reinterpret_cast<T*>(smem) + warp * kStages * kWarpRows * dpad;
    T* s_cent = reinterpret_cast<T*>(smem) + kWarps * kStages * kWarpRows * dpad;
    float* s_cnh = reinterpret_cast<float*>(s_cent + kCent * dpad);
    unsigned int* s_lo = reinterpret_cast<unsigned int*>(s_cnh + kCent);
    unsigned int* s_hi = s_lo + kCent * d + 1;  // each with a spare word at kCent * d
    unsigned int* s_cnt = s_hi + kCent * d + 1;

    const int64_t n_groups = a.n_tiles / group_tiles;
    const int64_t per_block = (n_groups + gridDim.x - 1) / gridDim.x;
    const int64_t tile_begin = blockIdx.x * per_block * group_tiles;
    const int64_t tile_end = min(a.n_tiles, tile_begin + per_block * group_tiles);
    if (tile_begin >= tile_end) return;

    if (ACC) {
        for (int i = tid; i < 2 * (kCent * d + 1) + kCent; i += kThreads) s_lo[i] = 0u;  // lo, hi, counts
    }
    // A lane copies the same 16-byte column piece of every (32 / kChunks)-th row, so its
    // addresses advance by constants.
    constexpr int kChunks = 2 * KS;  // 16-byte pieces a staged row (zero past d)
    constexpr int kRowStep = 32 / kChunks;
    static_assert(32 % kChunks == 0, "a warp covers whole rows");
    const int piece_col = 8 * (lane % kChunks), piece_row = lane / kChunks;
    const bool piece_ok = piece_col < d;
    SegCursor ls;  // the segment of the rows being fetched
    auto issue = [&](int64_t tile, int stage) {
        if (tile < tile_end) {
            ls.seek(a, tile);
            const MmaSegment& L = ls.s;
            const int64_t r0 = (tile - L.tile0) * kBlockRows + warp * kWarpRows;
            const int64_t left = L.rows - r0;
            const int valid = left <= 0 ? 0 : left >= kWarpRows ? kWarpRows : static_cast<int>(left);
            const T* src = static_cast<const T*>(L.x) + (r0 + piece_row) * d + piece_col;
            T* dst = s_x + stage * kWarpRows * dpad + piece_row * dpad + piece_col;
            if (valid == kWarpRows && piece_ok) {  // the common case: no predicates
#pragma unroll
                for (int j = 0; j < kWarpRows / kRowStep; ++j) {
                    cp_async16(dst, src, 16);
                    dst += kRowStep * dpad;
                    src += kRowStep * d;
                }
            } else if (valid > 0) {  // an empty slice is never read
#pragma unroll
                for (int j = 0; j < kWarpRows / kRowStep; ++j) {
                    const bool ok = piece_ok && piece_row + j * kRowStep < valid;
                    cp_async16(dst + j * kRowStep * dpad, ok ? src + j * kRowStep * d : L.x, ok ? 16 : 0);
                }
            }
        }
        cp_async_commit();  // possibly empty: one group a tile for the wait below
    };
    auto flush_block = [&](int task) {
        unsigned long long* sums = a.sums + task * kd;
        for (int i = tid; i < kd; i += kThreads) {
            const unsigned long long v = (static_cast<unsigned long long>(s_hi[i]) << 32) | s_lo[i];
            if (v != 0ull) atomicAdd(sums + i, v);
            s_lo[i] = 0u;
            s_hi[i] = 0u;
        }
        for (int j = tid; j < k; j += kThreads) {
            if (s_cnt[j] != 0u) atomicAdd(a.counts + int64_t{task} * k + j, static_cast<unsigned long long>(s_cnt[j]));
            s_cnt[j] = 0u;
        }
    };

#pragma unroll
    for (int s = 0; s < kStages; ++s) issue(tile_begin + s, s);
    float acc[NB][2 * KS][4], cnt[NB][4];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
#pragma unroll
        for (int n = 0; n < 2 * KS; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[b][n][e] = 0.0f;
#pragma unroll
        for (int e = 0; e < 4; ++e) cnt[b][e] = 0.0f;
    }

    SegCursor cs;  // the segment of the tile being computed
    int loaded_task = -1;
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
        const int stage = static_cast<int>((tile - tile_begin) % kStages);
        cs.seek(a, tile);
        const MmaSegment& S = cs.s;
        if (S.task != loaded_task) {  // the same tile for every warp: a block-wide branch
            __syncthreads();          // every warp is done with the previous task
            if (ACC && loaded_task >= 0) flush_block(loaded_task);
            // Rows kpad..kCent - 1 are zero with score -inf (cnh), so they never win.
            const int4* src =
                reinterpret_cast<const int4*>(static_cast<const T*>(a.cent) + int64_t{S.task} * kpad * dpad);
            int4* dst = reinterpret_cast<int4*>(s_cent);
            const int row16 = dpad * static_cast<int>(sizeof(T)) / 16;
            for (int i = tid; i < kCent * row16; i += kThreads)
                dst[i] = i < kpad * row16 ? __ldg(src + i) : make_int4(0, 0, 0, 0);
            for (int i = tid; i < kCent; i += kThreads)
                s_cnh[i] = i < kpad ? a.cnh[int64_t{S.task} * kpad + i] : -INFINITY;
            __syncthreads();
            loaded_task = S.task;
        }
        const int64_t row0 = (tile - S.tile0) * kBlockRows + warp * kWarpRows;
        const bool live = row0 < S.rows;  // false on a group's padding tiles and past the end

        cp_async_wait<kStages - 1>();
        __syncwarp();  // every lane's pieces of this tile's rows have landed
        uint32_t af[2][KS][4];
        float xx[2][2];
        const T* xs = s_x + stage * kWarpRows * dpad;
        if (live) {
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) load_row_fragments<T, KS>(af[mt], xs + mt * 16 * dpad, dpad, lane);
            row_norms<T, KS, 2>(af, xs, dpad, lane, xx);
        }
        __syncwarp();  // the buffer is free: refill it kStages tiles ahead
        issue(tile + kStages, stage);

        if (live) {
            // Scores of the 16 NB centroids: 2 NB 8-centroid eighths, each chain started
            // from -||c||²/2; the best of the thread's columns by a tree (lowest column on
            // ties). An all-NaN row never beats -inf and falls to centroid 0 below.
            const T* lrow = s_cent + (lane & 7) * dpad + 8 * (lane >> 3);
            // 4 NB independent chains (2 NB eighths x two m-tiles) interleaved.
            float sc[2 * NB][2][4];
            float2 h[2 * NB];
#pragma unroll
            for (int u = 0; u < 2 * NB; ++u) h[u] = *reinterpret_cast<const float2*>(s_cnh + 8 * u + 2 * t);
#pragma unroll
            for (int ks = 0; ks < KS; ks += 2) {
                uint32_t b[2 * NB][4];
#pragma unroll
                for (int u = 0; u < 2 * NB; ++u) ldmatrix_x4(b[u], lrow + 8 * u * dpad + ks * 16);
#pragma unroll
                for (int kk = 0; kk < 2; ++kk)
#pragma unroll
                    for (int u = 0; u < 2 * NB; ++u)
#pragma unroll
                        for (int mt = 0; mt < 2; ++mt) {
                            if (ks + kk == 0) mma_from(sc[u][mt], af[mt][0], b[u][0], b[u][1], h[u].x, h[u].y, T{});
                            else mma(sc[u][mt], af[mt][ks + kk], b[u][2 * kk], b[u][2 * kk + 1], T{});
                        }
            }
            // The step's best of the thread's four columns, then the row's winner over its
            // quad, the four rows interleaved. An all-NaN row never beats -inf and falls
            // to centroid 0.
            float bv[2][2];
            int bi[2][2];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    int off;
                    float v = best_of_four(sc[0][mt][2 * hh], sc[0][mt][2 * hh + 1], sc[1][mt][2 * hh],
                                           sc[1][mt][2 * hh + 1], off);
                    if constexpr (NB == 2) {  // centroids 16..31: only a strictly better score wins
                        int off2;
                        const float v2 = best_of_four(sc[2][mt][2 * hh], sc[2][mt][2 * hh + 1], sc[3][mt][2 * hh],
                                                      sc[3][mt][2 * hh + 1], off2);
                        if (v2 > v) {
                            v = v2;
                            off = off2 + 16;
                        }
                    }
                    const bool any = v > -INFINITY;
                    bv[mt][hh] = any ? v : -INFINITY;
                    bi[mt][hh] = any ? 2 * t + off : INT_MAX;
                }
#pragma unroll
            for (int off = 1; off < 4; off <<= 1)
#pragma unroll
                for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                    for (int hh = 0; hh < 2; ++hh) {
                        const float ov = __shfl_xor_sync(0xffffffffu, bv[mt][hh], off);
                        const int oi = __shfl_xor_sync(0xffffffffu, bi[mt][hh], off);
                        if (ov > bv[mt][hh] || (ov == bv[mt][hh] && oi < bi[mt][hh])) {
                            bv[mt][hh] = ov;
                            bi[mt][hh] = oi;
                        }
                    }
            // dist2 = ||x||² - 2 best; the direct sum only when some row of the warp is
            // close to its centroid (row_dist2 decides per row).
            float dist[2][2];
            bool near = false;
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    dist[mt][hh] = fmaxf(fmaf(-2.0f, bv[mt][hh], xx[mt][hh]), 0.0f);
                    near = near || !(dist[mt][hh] >= kDirectFraction * xx[mt][hh]);
                }
            int lab[2][2];  // labels of rows g, g + 8 of each m-tile; -1 past the segment
            const bool any_near = __any_sync(0xffffffffu, near);
            double obj = 0.0;
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    const int l = bi[mt][hh] >= k ? 0 : bi[mt][hh];
                    const int64_t row = row0 + mt * 16 + hh * 8 + g;
                    const bool valid = row < S.rows;
                    if (any_near)
                        dist[mt][hh] = row_dist2<T, KS>(af[mt], hh, bv[mt][hh], xx[mt][hh], s_cent + l * dpad, lane);
                    if (t == 0 && valid) {
                        if (S.labels) S.labels[row] = l;
                        if (S.dist2) S.dist2[row] = dist[mt][hh];
                    }
                    lab[mt][hh] = valid ? l : -1;
                    obj += valid ? static_cast<double>(dist[mt][hh]) : 0.0;  // in (mt, hh) order
                }
            obj = t == 0 ? obj : 0.0;
#pragma unroll
            for (int off = 4; off < 32; off <<= 1) obj += __shfl_xor_sync(0xffffffffu, obj, off);
            if (lane == 0) a.slots[S.slot0 + row0 / kObjSlotRows] = obj;

            if (ACC) {
                // C (16 centroids x 8 columns) += onehot (16 centroids x 16 rows) * X (16
                // rows x 8 columns) per column block. The one-hot A register of lane
                // (g, t) covers centroid g (or g + 8) and rows 2t, 2t + 1 (or 2t + 8,
                // 2t + 9): the four labels of lanes 8t and 8t + 4 (a byte each, 0xff past
                // the segment) arrive in two shuffles and are compared bytewise. B = the
                // rows' A fragments transposed.
                const uint32_t ones = one_bits(T{}) | one_bits(T{}) << 16;
                const uint32_t packed = (lab[0][0] & 0xff) | (lab[0][1] & 0xff) << 8 | (lab[1][0] & 0xff) << 16 |
                                        static_cast<uint32_t>(lab[1][1] & 0xff) << 24;
                const uint32_t la = __shfl_sync(0xffffffffu, packed, 8 * t);      // rows 2t, 2t + 8
                const uint32_t lb = __shfl_sync(0xffffffffu, packed, 8 * t + 4);  // rows 2t + 1, 2t + 9
                // Block b of 16 centroids: rows g + 16 b and g + 8 + 16 b of its one-hot matrix.
                uint32_t ga[NB], gb[NB], ha[NB], hb[NB];
#pragma unroll
                for (int b = 0; b < NB; ++b) {
                    ga[b] = __vcmpeq4(la, (g + 16 * b) * 0x01010101u);
                    gb[b] = __vcmpeq4(lb, (g + 16 * b) * 0x01010101u);
                    ha[b] = __vcmpeq4(la, (g + 8 + 16 * b) * 0x01010101u);
                    hb[b] = __vcmpeq4(lb, (g + 8 + 16 * b) * 0x01010101u);
                }
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    // Byte 2 mt (hh = 0) or 2 mt + 1 (hh = 1) of a and of b, each spread
                    // over a 16-bit half.
                    constexpr uint32_t kSel[2][2] = {{0x4400u, 0x5511u}, {0x6622u, 0x7733u}};
                    uint32_t oh[NB][4];
#pragma unroll
                    for (int b = 0; b < NB; ++b) {
                        oh[b][0] = __byte_perm(ga[b], gb[b], kSel[mt][0]) & ones;
                        oh[b][1] = __byte_perm(ha[b], hb[b], kSel[mt][0]) & ones;
                        oh[b][2] = __byte_perm(ga[b], gb[b], kSel[mt][1]) & ones;
                        oh[b][3] = __byte_perm(ha[b], hb[b], kSel[mt][1]) & ones;
                    }
                    // Transposes one k-step ahead of their products.
                    uint32_t tb[2][4];
#pragma unroll
                    for (int i = 0; i < 4; ++i) tb[0][i] = transpose8x8(af[mt][0][i]);
#pragma unroll
                    for (int ks = 0; ks < KS; ++ks) {
                        if (ks + 1 < KS)
#pragma unroll
                            for (int i = 0; i < 4; ++i) tb[(ks + 1) & 1][i] = transpose8x8(af[mt][ks + 1][i]);
#pragma unroll
                        for (int b = 0; b < NB; ++b)
#pragma unroll
                            for (int h = 0; h < 2; ++h)
                                mma(acc[b][2 * ks + h], oh[b], tb[ks & 1][2 * h], tb[ks & 1][2 * h + 1], T{});
                    }
                    // Counts: the one-hot matrix times ones (exact in fp32 below 2^24 rows).
#pragma unroll
                    for (int b = 0; b < NB; ++b) mma(cnt[b], oh[b], ones, ones, T{});
                }
            }
        }

        if (ACC && ((tile + 1) % group_tiles == 0 || tile + 1 == tile_end)) {
            // End of a group: this warp's partial, rounded once, into the block's sums.
            // acc[b][n] holds centroids 16 b + g, 16 b + g + 8 (e >> 1) and columns
            // 8 n + 2t + (e & 1).
            // Branch-free: masked entries add 0, and the low words' atomics of four
            // entries are issued before their carries are needed.
            // Masked entries (centroid >= k, column >= d) add 0 to the spare words.
            const float scale = a.scale[loaded_task];
            const bool full = k == kCent && d == 16 * KS;  // nothing masked
            const int base = g * d + 2 * t;
            const int spare = kCent * d;
#pragma unroll
            for (int bn = 0; bn < NB * 2 * KS; ++bn) {
                const int b = bn / (2 * KS), n = bn % (2 * KS);
                long long q[4];
                unsigned int old[4];
                int at[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int j = 16 * b + g + 8 * (e >> 1), c = 8 * n + 2 * t + (e & 1);
                    const bool in = full || (j < k && c < d);
                    at[e] = in ? base + 16 * d * b + 8 * d * (e >> 1) + 8 * n + (e & 1) : spare;
                    q[e] = in ? __float2ll_rn(acc[b][n][e] * scale) : 0ll;
                    old[e] = atomicAdd(s_lo + at[e], static_cast<unsigned int>(q[e]));
                    acc[b][n][e] = 0.0f;
                }
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const unsigned int ql = static_cast<unsigned int>(q[e]);
                    const unsigned int h = static_cast<unsigned int>(static_cast<unsigned long long>(q[e]) >> 32) +
                                           (old[e] + ql < old[e] ? 1u : 0u);
                    atomicAdd(s_hi + at[e], h);
                }
            }
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                if (t == 0) {  // column 0 of the count product: centroids 16 b + g and 16 b + g + 8
                    if (cnt[b][0] != 0.0f) atomicAdd(s_cnt + 16 * b + g, static_cast<unsigned int>(cnt[b][0]));
                    if (cnt[b][2] != 0.0f) atomicAdd(s_cnt + 16 * b + g + 8, static_cast<unsigned int>(cnt[b][2]));
                }
#pragma unroll
                for (int e = 0; e < 4; ++e) cnt[b][e] = 0.0f;
            }
        }
    }
    if (ACC) {
        __syncthreads();
        flush_block(loaded_task);
    }
    cp_async_wait<0>();
}

template <typename T, int KS, int NB, bool ACC>
void launch_ks(const MmaArgs& a, int group_tiles, int sm_count, cudaStream_t stream) {
    auto kernel = fused_kernel<T, KS, NB, ACC>;
    const size_t dyn = smem_bytes(a.d, a.dpad, NB);
    const int grid = persistent_grid(kernel, kThreads, dyn, a.n_tiles / group_tiles, sm_count);
    kernel<<<grid, kThreads, dyn, stream>>>(a, group_tiles);
    PKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void launch_mma_fused(const MmaArgs& a, int group_tiles, int sm_count, cudaStream_t stream) {
    PKV_ASSERT(mma_fused_ok(a.k, a.d));
    assert_grouped_pass(a, group_tiles);
    if (a.n_tiles == 0) return;
    with_element(a, [&](auto t) {
        with_sums(a, [&](auto acc) {
            with_staged_ksteps(a.d, [&](auto ks) {
                using E = decltype(t);
                constexpr int kKs = decltype(ks)::value;
                constexpr bool kAcc = decltype(acc)::value;
                if constexpr (kKs <= 4) {
                    if (a.k > 16) return launch_ks<E, kKs, 2, kAcc>(a, group_tiles, sm_count, stream);
                }
                launch_ks<E, kKs, 1, kAcc>(a, group_tiles, sm_count, stream);
            });
        });
    });
}

}  // namespace pkv::cuda::detail
