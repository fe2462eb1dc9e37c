// pkv/cuda/kmeans_wgmma_sm90a.cu — the wide kernel's assignment on Hopper's
// warpgroup MMA (wgmma). Semantics in kmeans_assign.h ("wide" kernel); compiled for
// sm_90a only (cuda/CMakeLists.txt), launched only on compute capability 9.0.
//
// Why: the wide kernel's mma.sync loop stays at about a third of the dense fp16 peak.
// Every mma.sync needs its B fragments in registers, so
// a warp spends as many issue slots on ldmatrix as on products. wgmma reads B straight
// from shared memory, is asynchronous, and one instruction does a 64 x KC x 16 product
// of a warpgroup (four warps), so the issue slots go to the argmax instead.
//
// Layout and schedule (same block tile, rows, objective slots and outputs as the wide
// kernel, so the sorted reduction and the objective follow unchanged):
//   - 8 warps = 2 warpgroups; warp w owns rows 32 w .. 32 w + 31 of a 256-row tile, staged
//     by its own cp.async and held as mma.sync A fragments in registers for the tile.
//     wgmma with A in registers takes exactly that fragment layout from each warp of the
//     warpgroup (warp w % 4 supplies rows 16 (w % 4) .. of the 64-row product), so
//     m-block mt of a warpgroup is the m-tile mt of its four warps;
//   - before the kernel, image_kernel writes every task's centroids as wgmma reads them:
//     chunks of KC rows in the 128-byte swizzle layout, each followed by its -||c||²/2.
//     A chunk then reaches shared memory by plain 16-byte cp.async copies, two chunks
//     ahead, three buffers;
//   - per chunk: the accumulators start at -||c||²/2 of their column, the two m-blocks'
//     products are issued as two commit groups, and m-block 0's argmax runs while
//     m-block 1's products are still in flight;
//   - ||x||², dist2 and the direct sum for near rows as in the wide kernel.
//
// Why this layout:
//   - swizzled, not wgmma's unswizzled "core matrix" layout: the eight rows of a core
//     matrix sit on the same shared-memory banks;
//   - the image is swizzled once before the kernel, so chunks arrive by plain copies,
//     and two chunks ahead;
//   - two warpgroups a block, not one (two blocks an SM);
//   - m-block 1's argmax is not pipelined across chunks: ptxas then serialises the
//     wgmma instructions (C7518: a compiler-inserted wait in a divergent path; with no
//     branch and no accumulator writes between the waits it still reports C7514,
//     accumulators read inside the pipeline stage).
// What bounds a pass is then the argmax and the sorted sums. (Measured figures of each
// step: docs/kmeans_gpu.md.)
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

constexpr int kRowsPerWarp = kWarpRows;

constexpr int kWarps = kTileWarps;
constexpr int kThreads = kWarps * 32;

/// Chunk buffers in shared memory: chunk q is multiplied while q + 1 and q + 2 load.
constexpr int kStages = 3;

// Shared memory: [up to 1 KiB to align][kStages chunk buffers][points: 32 rows x dpad a warp].
template <int KS, int KC>
size_t smem_bytes(int dpad) {
    return 1024 + kStages * static_cast<size_t>(buffer_bytes<KS, KC>()) +
           static_cast<size_t>(kWarps) * kRowsPerWarp * dpad * 2;
}

// Blocks an SM is built for: two where d <= 64 with chunks of 64 (138 registers a
// thread unbounded, so 128 costs little), else one.
template <int KS, int KC>
constexpr int blocks_per_sm() {
    return KS <= 4 && KC <= 64 ? 2 : 1;
}

// One block walks a contiguous range of tiles; the chunk sequence (tile, chunk) runs
// over all of them, chunk q in buffer q % kStages. Needs at least two chunks a tile: a
// tile's rows arrive with the group of the chunk fetched just after them, two chunks
// after its first.
template <typename T, int KS, int KC>
__global__ void __launch_bounds__(kThreads, blocks_per_sm<KS, KC>()) wgmma_kernel(MmaArgs a, const unsigned char* img) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int kpad = a.kpad, dpad = a.dpad;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int t = lane & 3;
    constexpr int kBuf = buffer_bytes<KS, KC>(), kChunk = chunk_bytes<KS, KC>();
    unsigned char* s_buf = smem + ((1024u - (static_cast<uint32_t>(__cvta_generic_to_shared(smem)) & 1023u)) & 1023u);
    T* s_x = reinterpret_cast<T*>(s_buf + kStages * kBuf) + warp * kRowsPerWarp * dpad;

    const int64_t per_block = (a.n_tiles + gridDim.x - 1) / gridDim.x;
    const int64_t tile_begin = blockIdx.x * per_block;
    const int64_t tile_end = min(a.n_tiles, tile_begin + per_block);
    if (tile_begin >= tile_end) return;
    const int nch = (kpad + KC - 1) / KC;

    // The fetch cursor: the next chunk (ftile, fch) to load, into buffer fbuf.
    int cseg = 0, fch = 0, fbuf = 0;
    int64_t ftile = tile_begin;
    auto load_next_chunk = [&]() {
        if (ftile < tile_end) {
            while (cseg + 1 < a.n_segs && a.segs[cseg + 1].tile0 <= ftile) ++cseg;
            const unsigned char* src = img + (int64_t{a.segs[cseg].task} * nch + fch) * kChunk;
            unsigned char* dst = s_buf + fbuf * kBuf;
#pragma unroll
            for (int i = tid; i < kChunk / 16; i += kThreads) cp_async16(dst + 16 * i, src + 16 * i, 16);
        }
        cp_async_commit();
        if (++fch == nch) {
            fch = 0;
            ++ftile;
        }
        fbuf = fbuf + 1 == kStages ? 0 : fbuf + 1;
    };
    int pseg = 0;  // segment of the rows being fetched (per warp)

    stage_warp_rows<T, KS>(a, pseg, tile_begin, warp, lane, s_x);
    load_next_chunk();
    load_next_chunk();
    int buf = 0, seg = 0;
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
        while (seg + 1 < a.n_segs && a.segs[seg + 1].tile0 <= tile) ++seg;
        WarpRows<KS> w;
        for (int ch = 0; ch < nch; ++ch) {
            cp_async_wait<kStages - 2>();
            fence_proxy_async();
            // Chunk ch (and at ch == 0 this warp's rows) landed; every warp is done with
            // the previous chunk, whose buffer the next fetch takes.
            __syncthreads();
            if (ch == 0) {
                start_warp_rows<T, KS>(s_x, dpad, lane, w);
                if (tile + 1 < tile_end) stage_warp_rows<T, KS>(a, pseg, tile + 1, warp, lane, s_x);
            }
            load_next_chunk();

            // One wgmma width per chunk: KC centroids.
            chunk_argmax<T, KS, KC>(s_buf + buf * kBuf, w.af, ch * KC, t, w.best, w.bidx);
            buf = buf + 1 == kStages ? 0 : buf + 1;
        }

        finish_warp_rows<T, KS>(a, seg, tile, warp, lane, w);
    }
    cp_async_wait<0>();
}

template <typename T, int KS, int KC>
void launch_kc(const MmaArgs& a, int tasks, void* image, int sm_count, cudaStream_t stream) {
    PKV_ASSERT(a.kpad > KC);  // two chunks at least (see wgmma_kernel)
    const int64_t pieces = int64_t{tasks} * ((a.kpad + KC - 1) / KC) * (chunk_bytes<KS, KC>() / 16);
    const int blocks = static_cast<int>(std::min<int64_t>((pieces + 255) / 256, int64_t{8} * sm_count));
    auto* img = static_cast<unsigned char*>(image);
    image_kernel<T, KS, KC><<<blocks, 256, 0, stream>>>(a, tasks, img);
    PKV_CUDA_CHECK(cudaGetLastError());
    auto kernel = wgmma_kernel<T, KS, KC>;
    const size_t dyn = smem_bytes<KS, KC>(a.dpad);
    const int grid = persistent_grid(kernel, kThreads, dyn, a.n_tiles, sm_count);
    kernel<<<grid, kThreads, dyn, stream>>>(a, img);
    PKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

size_t wgmma_image_bytes(int tasks, int kpad, int d, int chunk) {
    size_t bytes = 0;
    with_staged_ksteps(d, [&](auto ks) {
        with_chunk(chunk, [&](auto kc) {
            constexpr int KS = decltype(ks)::value, KC = decltype(kc)::value;
            bytes = static_cast<size_t>(tasks) * ((kpad + KC - 1) / KC) * chunk_bytes<KS, KC>();
        });
    });
    return bytes;
}

void launch_wgmma_wide(const MmaArgs& a, int chunk, int tasks, void* image, int sm_count, cudaStream_t stream) {
    PKV_ASSERT(mma_wide_ok(a.d) && a.kpad % 8 == 0 && a.dpad == mma_row_stride(a.d));
    PKV_ASSERT(a.sums == nullptr && a.counts == nullptr);
    if (a.n_tiles == 0) return;
    with_element(a, [&](auto t) {
        with_staged_ksteps(a.d, [&](auto ks) {
            with_chunk(chunk, [&](auto kc) {
                launch_kc<decltype(t), decltype(ks)::value, decltype(kc)::value>(a, tasks, image, sm_count, stream);
            });
        });
    });
}

}  // namespace pkv::cuda::detail
