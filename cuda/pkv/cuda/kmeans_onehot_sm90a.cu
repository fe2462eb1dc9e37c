// pkv/cuda/kmeans_onehot_sm90a.cu — the one-hot kernel's pass (nearest centroids and
// their sums, points read from device memory once) on Hopper's warpgroup MMA, for
// k <= 64 (above the fused kernel's k by default). Semantics in kmeans_assign.h
// ("onehot-wgmma"); compiled for sm_90a only (cuda/CMakeLists.txt), launched only on
// compute capability 9.0.
//
// Why: at k = 32 / 64, d = 128 the mma.sync one-hot kernel (kmeans_mma_onehot.cu) stays
// far from the HBM floor. Its sums, k x d fp32 a block, do not fit one warp's
// registers, so its 16 warps meet at two barriers a tile and read the points a second
// time from shared memory (ldmatrix.trans); the fused kernel, one warp a row slice, runs
// out of registers at k = 32, d = 128. With wgmma a warpgroup holds the sums of 64
// centroids x 64 columns in 32 registers a thread, and the products read their B
// operand straight from shared memory:
//   - 8 warps = 2 warpgroups; warp w owns rows 32 w .. 32 w + 31 of a 256-row tile, staged
//     by its own cp.async (three buffers a warp, two tiles ahead) in wgmma's 128-byte
//     swizzle (Swizzle128 in mma_rows.cuh, wgmma_ops.cuh);
//   - scores: the rows' A fragments (ldmatrix) times the task's centroids (the image of
//     kmeans_wgmma_sm90a.cu, one chunk of NC = 32 or 64 centroids, loaded when the task
//     changes), wgmma m64nNCk16 with A in registers, accumulators starting at
//     -||c||²/2; argmax, ||x||², dist2 and the outputs as the wide kernel (wide_rows.cuh);
//   - labels go to shared memory (a byte a row; two buffers by tile parity), then the
//     warpgroup meets at one named barrier;
//   - sums: sums[64 centroids x d] += onehot[64 x 128 rows] * X[128 rows x d] over the
//     warpgroup's rows, 8 k-steps of 16 rows: A = the one-hot matrix built in registers
//     (warp q: centroids 16 q .. 16 q + 15, a bytewise compare of four labels), B = the
//     staged rows themselves, MN-major (imm-trans-b), one product a 64-column half, so
//     the points are read from device memory once and from shared memory by the tensor
//     cores alone; counts by shared-memory atomics (two buffers by group parity);
//   - a warpgroup's fp32 partial covers its 128-row slices of one group of tiles (fixed
//     by row number), is rounded once to the 64-bit fixed point and added to the device
//     sums; so the sums, like the one-hot kernel's, do not depend on the grid.
// A staged buffer is refilled after the next tile's barrier, which every warp of the
// warpgroup reaches only after its sums of the buffer's tile completed (wgmma wait).
// A pass is bound by each warp's chain of steps (8 warps an SM at 188-255 registers, a
// few bytes spilled at d = 128), not by the reads. The sums' wait stays in the tile that
// issued them: left to the next tile's scores, ptxas injects waits of its own. The A
// fragments stay in registers: scores with A from shared memory need a second barrier
// a tile. (Measured passes, the fused kernel's at d = 64, k = 32 included, are in
// docs/kmeans_gpu.md.)
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
#include "pkv/cuda/wgmma_ops.cuh"
#include "pkv/cuda/wide_rows.cuh"

namespace pkv::cuda::detail {
namespace {

constexpr int kWarps = kTileWarps;  // two warpgroups
constexpr int kThreads = kWarps * 32;
constexpr int kStages = 3;       // staging buffers a warp
constexpr int kSumRows = 64;     // centroids of a warpgroup's sums product (wgmma's M)
constexpr int kGroupRows = 128;  // rows of a warpgroup in a tile: the sums' K
static_assert(kWarps == 8 && kBlockRows == 2 * kGroupRows, "two warpgroups of four 32-row warps");

/// Bytes of a warp's staging buffer: 32 rows of 16 KS 16-bit values.
template <int KS>
constexpr int warp_buffer_bytes() {
    return kWarpRows * 32 * KS;
}

// Shared memory: [up to 1 KiB to align][the centroid chunk][points: kWarps x kStages
// warp buffers][labels: 2 x kBlockRows bytes][counts: 2 warpgroups x 2 x kSumRows].
template <int KS, int NC>
size_t smem_bytes() {
    return 1024 + static_cast<size_t>(buffer_bytes<KS, NC>()) +
           static_cast<size_t>(kWarps) * kStages * warp_buffer_bytes<KS>() + 2 * kBlockRows + 2 * 2 * kSumRows * 4;
}

/// Waits for the four warps of warpgroup wg (named barrier wg + 1; 0 is __syncthreads).
__device__ __forceinline__ void group_barrier(int wg) { asm volatile("bar.sync %0, 128;\n" ::"r"(wg + 1) : "memory"); }

// One block walks a contiguous run of whole groups (group_tiles tiles; segments start on
// a group, so a group has one task).
template <typename T, int KS, int NC>
__global__ void __launch_bounds__(kThreads, 1) wg_onehot_kernel(MmaArgs a, const unsigned char* img, int group_tiles) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int d = a.d, k = a.k;
    const int64_t kd = int64_t{k} * d;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2, q = warp & 3;
    const int g = lane >> 2, t = lane & 3;
    constexpr int kBuf = buffer_bytes<KS, NC>(), kChunk = chunk_bytes<KS, NC>();
    constexpr int kWarpBuf = warp_buffer_bytes<KS>();
    unsigned char* s_cent = smem + ((1024u - (static_cast<uint32_t>(__cvta_generic_to_shared(smem)) & 1023u)) & 1023u);
    unsigned char* s_pts = s_cent + kBuf;  // warp w, stage s: s_pts + (w * kStages + s) * kWarpBuf
    unsigned char* s_lab = s_pts + kWarps * kStages * kWarpBuf;
    unsigned int* s_cnt_all = reinterpret_cast<unsigned int*>(s_lab + 2 * kBlockRows);
    unsigned int* s_cnt = s_cnt_all + wg * 2 * kSumRows;  // [group parity][centroid]

    const int64_t n_groups = a.n_tiles / group_tiles;
    const int64_t per_block = (n_groups + gridDim.x - 1) / gridDim.x;
    const int64_t tile_begin = blockIdx.x * per_block * group_tiles;
    const int64_t tile_end = min(a.n_tiles, tile_begin + per_block * group_tiles);
    if (tile_begin >= tile_end) return;
    for (int i = tid; i < 2 * 2 * kSumRows; i += kThreads) s_cnt_all[i] = 0u;  // seen after the first task load

    // A lane copies the same 16-byte piece of every (32 / kPieces)-th row. Rows past the
    // segment and columns past d are zero-filled: the sums read every staged row.
    constexpr int kPieces = 2 * KS, kRowStep = 32 / kPieces;
    const int piece = lane % kPieces, prow = lane / kPieces;
    const bool piece_ok = 8 * piece < d;
    int lseg = 0;
    auto issue = [&](int64_t tile, int stage) {
        if (tile < tile_end) {
            while (lseg + 1 < a.n_segs && a.segs[lseg + 1].tile0 <= tile) ++lseg;
            const MmaSegment& L = a.segs[lseg];
            const int64_t r0 = (tile - L.tile0) * kBlockRows + warp * kWarpRows;
            const int64_t left = L.rows - r0;
            const int valid = left <= 0 ? 0 : left >= kWarpRows ? kWarpRows : static_cast<int>(left);
            const T* src = static_cast<const T*>(L.x) + (valid > 0 ? r0 + prow : 0) * d + 8 * piece;
            const T* dst = reinterpret_cast<const T*>(s_pts + (warp * kStages + stage) * kWarpBuf);
#pragma unroll
            for (int j = 0; j < kWarpRows / kRowStep; ++j) {
                const int r = prow + j * kRowStep;
                const bool ok = piece_ok && r < valid;
                cp_async16(const_cast<T*>(piece_at(dst, Swizzle128<KS>{}, r, piece)), ok ? src + j * kRowStep * d : L.x,
                           ok ? 16 : 0);
            }
        }
        cp_async_commit();  // possibly empty: one group a tile for the wait below
    };
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) issue(tile_begin + s, s);

    float sacc[KS / 4][32];  // the warpgroup's sums: centroids 16 q + g + 8 h, 64-column half
#pragma unroll
    for (int h = 0; h < KS / 4; ++h)
#pragma unroll
        for (int i = 0; i < 32; ++i) sacc[h][i] = 0.0f;
    const uint32_t ones = one_bits(T{}) | one_bits(T{}) << 16;

    int seg = 0, loaded_task = -1;
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
        const int64_t it = tile - tile_begin;
        const int stage = static_cast<int>(it % kStages);
        while (seg + 1 < a.n_segs && a.segs[seg + 1].tile0 <= tile) ++seg;
        const int task = a.segs[seg].task;
        if (task != loaded_task) {  // the same tile for every warp: a block-wide branch
            __syncthreads();        // every warp's products with the previous centroids completed
            const int4* src = reinterpret_cast<const int4*>(img + int64_t{task} * kChunk);
            for (int i = tid; i < kChunk / 16; i += kThreads) reinterpret_cast<int4*>(s_cent)[i] = __ldg(src + i);
            fence_proxy_async();
            __syncthreads();
            loaded_task = task;
        }
        const bool live = (tile - a.segs[seg].tile0) * kBlockRows < a.segs[seg].rows;  // false on padding tiles
        unsigned char* lab_buf = s_lab + (tile & 1) * kBlockRows;
        const int parity = static_cast<int>((tile / group_tiles) & 1);

        cp_async_wait<kStages - 2>();
        fence_proxy_async();  // this thread's pieces of the tile, for the warpgroup's products
        if (live) {
            const T* xs = reinterpret_cast<const T*>(s_pts + (warp * kStages + stage) * kWarpBuf);
            __syncwarp();
            WarpRows<KS> w;
            start_warp_rows<T, KS>(xs, Swizzle128<KS>{}, lane, w);

            chunk_argmax<T, KS, NC>(s_cent, w.af, 0, t, w.best, w.bidx);  // the task's NC centroids

            int lab[2][2];
            finish_warp_rows<T, KS>(a, seg, tile, warp, lane, w, lab);
            if (t == 0)
#pragma unroll
                for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                    for (int hh = 0; hh < 2; ++hh) {
                        const int l = lab[mt][hh];
                        lab_buf[warp * kWarpRows + mt * 16 + hh * 8 + g] = static_cast<unsigned char>(l & 0xff);
                        if (l >= 0) atomicAdd(s_cnt + parity * kSumRows + l, 1u);
                    }
        }
        // The warpgroup's labels and staged rows are visible to all four warps, and every
        // warp's sums of tile - 1 completed (each waits for its own below): that tile's
        // buffers take tile + 2.
        group_barrier(wg);
        issue(tile + kStages - 1, static_cast<int>((it + kStages - 1) % kStages));

        if (live) {
            // One-hot A of k-step s (rows 16 s .. 16 s + 15 of the warpgroup: warp s / 2's
            // m-tile s % 2): lane (g, t) covers centroids 16 q + g (+ 8) and rows 2t, 2t + 1
            // (+ 8); a byte a label, 0xff past the segment, compared four at a time.
            const unsigned char* lb = lab_buf + wg * kGroupRows;
            const uint32_t c_lo = (16 * q + g) * 0x01010101u, c_hi = (16 * q + g + 8) * 0x01010101u;
            uint32_t oh[8][4];
#pragma unroll
            for (int s = 0; s < 8; ++s) {
                const unsigned short* pair = reinterpret_cast<const unsigned short*>(lb + 16 * s + 2 * t);
                const uint32_t l4 = pair[0] | static_cast<uint32_t>(pair[4]) << 16;  // rows 2t, 2t+1, 2t+8, 2t+9
                const uint32_t e_lo = __vcmpeq4(l4, c_lo), e_hi = __vcmpeq4(l4, c_hi);
                oh[s][0] = __byte_perm(e_lo, 0u, 0x1100) & ones;
                oh[s][1] = __byte_perm(e_hi, 0u, 0x1100) & ones;
                oh[s][2] = __byte_perm(e_lo, 0u, 0x3322) & ones;
                oh[s][3] = __byte_perm(e_hi, 0u, 0x3322) & ones;
            }
#pragma unroll
            for (int h = 0; h < KS / 4; ++h) pin(sacc[h]);
            wgmma_fence();
            constexpr uint32_t kRowGroup = KS / 4 * 1024;  // bytes between 8-row groups
#pragma unroll
            for (int s = 0; s < 8; ++s) {
                const unsigned char* b =
                    s_pts + ((wg * 4 + s / 2) * kStages + stage) * kWarpBuf + (s & 1) * 2 * kRowGroup;
#pragma unroll
                for (int h = 0; h < KS / 4; ++h)
                    wgmma_nt(sacc[h], oh[s], smem_desc(b + h * 1024, kRowGroup, kRowGroup), T{});
            }
            wgmma_commit();
            wgmma_wait<0>();  // here, not under the next tile's scores (see the top)
#pragma unroll
            for (int h = 0; h < KS / 4; ++h) pin(sacc[h]);
        }

        if ((tile + 1) % group_tiles == 0 || tile + 1 == tile_end) {
            // End of a group: the warpgroup's partial, rounded once, into the device sums;
            // the counts (all in: every warp passed this tile's barrier) likewise.
            const float scale = a.scale[task];
            unsigned long long* sums = a.sums + task * kd;
#pragma unroll
            for (int h = 0; h < KS / 4; ++h)
#pragma unroll
                for (int i = 0; i < 32; ++i) {
                    const int c = 16 * q + g + 8 * ((i >> 1) & 1), col = 64 * h + 8 * (i >> 2) + 2 * t + (i & 1);
                    const float v = sacc[h][i];
                    if (v != 0.0f && c < k && col < d)
                        atomicAdd(sums + int64_t{c} * d + col,
                                  static_cast<unsigned long long>(__float2ll_rn(v * scale)));
                    sacc[h][i] = 0.0f;
                }
            const int j = tid & (kGroupRows - 1);
            if (j < kSumRows && j < k) {
                const unsigned int n = s_cnt[parity * kSumRows + j];
                if (n != 0u) atomicAdd(a.counts + int64_t{task} * k + j, static_cast<unsigned long long>(n));
                s_cnt[parity * kSumRows + j] = 0u;
            }
        }
    }
    cp_async_wait<0>();
}

template <typename T, int KS, int NC>
void launch_nc(const MmaArgs& a, int group_tiles, int tasks, void* image, int sm_count, cudaStream_t stream) {
    const int64_t pieces = int64_t{tasks} * (chunk_bytes<KS, NC>() / 16);
    const int blocks = static_cast<int>(std::min<int64_t>((pieces + 255) / 256, int64_t{8} * sm_count));
    auto* img = static_cast<unsigned char*>(image);
    image_kernel<T, KS, NC><<<blocks, 256, 0, stream>>>(a, tasks, img);
    PKV_CUDA_CHECK(cudaGetLastError());
    auto kernel = wg_onehot_kernel<T, KS, NC>;
    const size_t dyn = smem_bytes<KS, NC>();
    const int grid = persistent_grid(kernel, kThreads, dyn, a.n_tiles / group_tiles, sm_count);
    kernel<<<grid, kThreads, dyn, stream>>>(a, img, group_tiles);
    PKV_CUDA_CHECK(cudaGetLastError());
}

template <typename F>
void with_centroid_chunk(int kpad, F&& f) {
    if (kpad <= 32) f(std::integral_constant<int, 32>{});
    else f(std::integral_constant<int, 64>{});
}

}  // namespace

size_t wgmma_onehot_image_bytes(int tasks, int kpad, int d) {
    size_t bytes = 0;
    with_staged_ksteps(d, [&](auto ks) {
        with_centroid_chunk(kpad, [&](auto nc) {
            bytes = static_cast<size_t>(tasks) * chunk_bytes<decltype(ks)::value, decltype(nc)::value>();
        });
    });
    return bytes;
}

void launch_wgmma_onehot(const MmaArgs& a, int group_tiles, int tasks, void* image, int sm_count, cudaStream_t stream) {
    PKV_ASSERT(wgmma_onehot_ok(a.k, a.d) && a.sums != nullptr);
    assert_grouped_pass(a, group_tiles);
    if (a.n_tiles == 0) return;
    with_element(a, [&](auto t) {
        with_staged_ksteps(a.d, [&](auto ks) {
            with_centroid_chunk(a.kpad, [&](auto nc) {
                launch_nc<decltype(t), decltype(ks)::value, decltype(nc)::value>(a, group_tiles, tasks, image, sm_count,
                                                                                 stream);
            });
        });
    });
}

}  // namespace pkv::cuda::detail
