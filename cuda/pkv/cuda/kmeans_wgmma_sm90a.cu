// pkv/cuda/kmeans_wgmma_sm90a.cu — the wide kernel's assignment on Hopper's
// warpgroup MMA (wgmma). Semantics in kmeans_assign.h ("wide" kernel); compiled for
// sm_90a only (cuda/CMakeLists.txt), launched only on compute capability 9.0.
//
// Why: the wide kernel's mma.sync loop reaches 280-350 TFLOP/s on an H200, about a
// third of its dense fp16 peak. Every mma.sync needs its B fragments in registers, so
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
// Measured on an H200 (N = 10^7, d = 128, fp16, assignment without sums, ms at k = 256 /
// 1024): this kernel 2.14 / 6.36, the mma.sync wide kernel 2.34 / 7.66. Steps on the way:
//   - the unswizzled "core matrix" layout was slower than mma.sync (3.02 / 9.65 at chunks
//     of 64, 2.68 / 8.44 at 128): the eight rows of a core matrix sit on the same banks;
//   - swizzled, rearranged by each cp.async: 2.30 / 6.87 (chunks of 128), 2.53 / 7.66 (64);
//   - the pre-swizzled image: 2.27 / 6.78; fetched two chunks ahead: 2.14 / 6.36;
//   - one warpgroup a block (two blocks an SM): slower (4.04 / 10.10, unswizzled);
//   - pipelining m-block 1's argmax across chunks (four buffers): 2.30 / 6.86, because
//     ptxas then serialises the wgmma instructions (C7518: a compiler-inserted wait in
//     a divergent path; with no branch and no accumulator writes between the waits it
//     still reports C7514, accumulators read inside the pipeline stage). What remains:
//     the argmax (skipping it saved about 1 ms at k = 1024 in a diagnostic build) and
//     the sorted sums (about 1 ms a pass).
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
#include "pkv/cuda/wide_rows.cuh"

namespace pkv::cuda::detail {
namespace {

constexpr int kRowsPerWarp = kWarpRows;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PKV_WGMMA_DEVICE 1
#endif

/// Shared-memory matrix descriptor of a K-major operand in the 128-byte swizzle layout
/// (see load_chunk): start address, leading byte offset (unused by this layout: 16),
/// stride byte offset 1024 (between 8-row groups), each in 16-byte units, and the
/// layout's code 1 in bits 62-63.
__device__ __forceinline__ uint64_t smem_desc(const void* p) {
    const uint64_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    return ((a & 0x3FFFFu) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

/// Pins the accumulators at this point of the program: the compiler may not move a
/// read or write of them across it (they change behind its back while a wgmma runs).
template <int R>
__device__ __forceinline__ void pin(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#define PKV_ACC8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                    "+f"(d[i + 6]), "+f"(d[i + 7])
#define PKV_ACC32(i) PKV_ACC8(i), PKV_ACC8(i + 8), PKV_ACC8(i + 16), PKV_ACC8(i + 24)
#define PKV_REGS64 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,"\
    "%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"
#define PKV_REGS128 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,"\
    "%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,"\
    "%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,"\
    "%67}, %68, p, 1, 1, 0;\n}\n"
#define PKV_WGMMA_HEAD "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\nwgmma.mma_async.sync.aligned."
#define PKV_A_DESC "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc)

/// d += A (64 x 16, this warp's rows as an mma.sync A fragment) * B (16 x N from the
/// descriptor), fp32 accumulation; N = 2 * R centroids, column 8 j + 2 t + e of row
/// g + 8 h in d[4 j + 2 h + e].
__device__ __forceinline__ void wgmma_n(float (&d)[32], const uint32_t (&a)[4], uint64_t desc, __half) {
#ifdef PKV_WGMMA_DEVICE
    asm volatile(PKV_WGMMA_HEAD "m64n64k16.f32.f16.f16 " PKV_REGS64 : PKV_ACC32(0) : PKV_A_DESC);
#endif
}
__device__ __forceinline__ void wgmma_n(float (&d)[32], const uint32_t (&a)[4], uint64_t desc, __nv_bfloat16) {
#ifdef PKV_WGMMA_DEVICE
    asm volatile(PKV_WGMMA_HEAD "m64n64k16.f32.bf16.bf16 " PKV_REGS64 : PKV_ACC32(0) : PKV_A_DESC);
#endif
}
__device__ __forceinline__ void wgmma_n(float (&d)[64], const uint32_t (&a)[4], uint64_t desc, __half) {
#ifdef PKV_WGMMA_DEVICE
    asm volatile(PKV_WGMMA_HEAD "m64n128k16.f32.f16.f16 " PKV_REGS128 : PKV_ACC32(0), PKV_ACC32(32) : PKV_A_DESC);
#endif
}
__device__ __forceinline__ void wgmma_n(float (&d)[64], const uint32_t (&a)[4], uint64_t desc, __nv_bfloat16) {
#ifdef PKV_WGMMA_DEVICE
    asm volatile(PKV_WGMMA_HEAD "m64n128k16.f32.bf16.bf16 " PKV_REGS128 : PKV_ACC32(0), PKV_ACC32(32) : PKV_A_DESC);
#endif
}
#undef PKV_ACC8
#undef PKV_ACC32
#undef PKV_REGS64
#undef PKV_REGS128
#undef PKV_WGMMA_HEAD
#undef PKV_A_DESC

__device__ __forceinline__ void wgmma_fence() {
#ifdef PKV_WGMMA_DEVICE
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef PKV_WGMMA_DEVICE
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef PKV_WGMMA_DEVICE
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
/// Makes this thread's generic-proxy writes to shared memory (cp.async included)
/// visible to the asynchronous proxy wgmma reads through.
__device__ __forceinline__ void fence_proxy_async() {
#ifdef PKV_WGMMA_DEVICE
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

/// The running (best score, lowest index) of rows g (h = 0) and g + 8 (h = 1) over an
/// m-block's 2 R columns from col0 (column 8 j + 2 t + e in acc[4 j + 2 h + e]).
template <int R>
__device__ __forceinline__ void argmax_cols(const float (&acc)[R], int col0, float (&best)[2], int (&bidx)[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int jj = 0; jj < R / 8; ++jj) {
            int off;
            const float v = best_of_four(acc[8 * jj + 2 * h], acc[8 * jj + 2 * h + 1], acc[8 * jj + 4 + 2 * h],
                                         acc[8 * jj + 5 + 2 * h], off);
            if (v > best[h]) {
                best[h] = v;
                bidx[h] = col0 + 16 * jj + off;
            }
        }
}

constexpr int kWarps = kTileWarps;
constexpr int kThreads = kWarps * 32;

/// Bytes of one chunk in the centroid image: KC rows of 16 KS elements in the 128-byte
/// swizzle layout, then their KC values -||c||²/2.
template <int KS, int KC>
constexpr int chunk_bytes() {
    return KC * 32 * KS + KC * 4;
}
/// Its place in shared memory: whole KiB, as the swizzle needs.
template <int KS, int KC>
constexpr int buffer_bytes() {
    return (chunk_bytes<KS, KC>() + 1023) / 1024 * 1024;
}

// The image: every task's centroid chunks as wgmma reads them, so a chunk reaches shared
// memory by a plain copy of consecutive 16-byte pieces (the swizzle is relative to a
// 1 KiB boundary, which the buffers keep). In a chunk, dims 64 h .. 64 h + 63 of all KC
// centroids form block h (KC rows of 128 bytes); piece p (16 bytes) of centroid c's row
// sits at place p ^ (c % 8) of its row, so the eight rows of a group spread over all
// banks. Centroids past the task's kpad are zero, and their -||c||²/2 is -inf. One thread
// a piece.
template <typename T, int KS, int KC>
__global__ void image_kernel(MmaArgs a, int tasks, unsigned char* img) {
    constexpr int kPieces = chunk_bytes<KS, KC>() / 16, kCentPieces = KC * 2 * KS;
    const int nch = (a.kpad + KC - 1) / KC;
    const int64_t total = int64_t{tasks} * nch * kPieces;
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
        const int piece = static_cast<int>(i % kPieces);
        const int64_t chunk = i / kPieces;
        const int task = static_cast<int>(chunk / nch), c0 = static_cast<int>(chunk % nch) * KC;
        uint4 v;
        if (piece < kCentPieces) {
            const int h = piece / (KC * 8), c = piece / 8 % KC, p = 8 * h + ((piece % 8) ^ (c % 8));
            const int row = c0 + c;
            v = row < a.kpad ? *reinterpret_cast<const uint4*>(static_cast<const T*>(a.cent) +
                                                                (int64_t{task} * a.kpad + row) * a.dpad + 8 * p)
                             : make_uint4(0u, 0u, 0u, 0u);
        } else {
            float f[4];
            for (int e = 0; e < 4; ++e) {
                const int row = c0 + 4 * (piece - kCentPieces) + e;
                f[e] = row < a.kpad ? a.cnh[int64_t{task} * a.kpad + row] : -INFINITY;
            }
            v = *reinterpret_cast<const uint4*>(f);
        }
        reinterpret_cast<uint4*>(img)[i] = v;
    }
}

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
    unsigned char* s_buf =
        smem + ((1024u - (static_cast<uint32_t>(__cvta_generic_to_shared(smem)) & 1023u)) & 1023u);
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
        uint32_t af[2][KS][4];
        float xx[2][2];
        float best[2][2];
        int bidx[2][2];
        for (int ch = 0; ch < nch; ++ch) {
            cp_async_wait<kStages - 2>();
            fence_proxy_async();
            // Chunk ch (and at ch == 0 this warp's rows) landed; every warp is done with
            // the previous chunk, whose buffer the next fetch takes.
            __syncthreads();
            if (ch == 0) {
                start_warp_rows<T, KS>(s_x, dpad, lane, af, xx, best, bidx);
                if (tile + 1 < tile_end) stage_warp_rows<T, KS>(a, pseg, tile + 1, warp, lane, s_x);
            }
            load_next_chunk();

            // One wgmma width per chunk: KC centroids, the accumulators starting at their
            // -||c||²/2 (columns past kpad: -inf).
            const T* cb = reinterpret_cast<const T*>(s_buf + buf * kBuf);
            const float* hb = reinterpret_cast<const float*>(s_buf + buf * kBuf + KC * 32 * KS);
            constexpr int R = KC / 2;
            float acc[2][R];
#pragma unroll
            for (int j = 0; j < KC / 8; ++j) {
                const float2 h = *reinterpret_cast<const float2*>(hb + 8 * j + 2 * t);
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    acc[mt][4 * j] = h.x;
                    acc[mt][4 * j + 1] = h.y;
                    acc[mt][4 * j + 2] = h.x;
                    acc[mt][4 * j + 3] = h.y;
                }
            }
            pin(acc[0]);
            pin(acc[1]);
            wgmma_fence();
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
                for (int ks = 0; ks < KS; ++ks)
                    wgmma_n(acc[mt], af[mt][ks], smem_desc(cb + (ks >> 2) * KC * 64 + (ks & 3) * 16), T{});
                wgmma_commit();
            }
            // Columns grow with ch, so strict '>' keeps the lowest index. A NaN score can
            // only come from a NaN row, whose every score is NaN: it never wins, and the
            // row falls to centroid 0 below. m-block 0's argmax overlaps m-block 1's
            // products.
            const int col0 = ch * KC + 2 * t;
            wgmma_wait<1>();
            pin(acc[0]);
            argmax_cols(acc[0], col0, best[0], bidx[0]);
            wgmma_wait<0>();
            pin(acc[1]);
            argmax_cols(acc[1], col0, best[1], bidx[1]);
            buf = buf + 1 == kStages ? 0 : buf + 1;
        }

        finish_warp_rows<T, KS>(a, seg, tile, warp, lane, af, xx, best, bidx);
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
    PKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn)));
    int per_sm = 0;
    PKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, dyn));
    per_sm = std::max(per_sm, 1);
    const int grid = static_cast<int>(std::min<int64_t>(a.n_tiles, int64_t{per_sm} * sm_count));
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
