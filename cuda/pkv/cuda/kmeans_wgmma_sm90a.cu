// pkv/cuda/kmeans_wgmma_sm90a.cu — the wide kernel's assignment on Hopper's
// warpgroup MMA (wgmma). Semantics in kmeans_assign.h ("wide" kernel); compiled for
// sm_90a only (cuda/CMakeLists.txt), launched only on compute capability 9.0.
//
// Why: the wide kernel's mma.sync loop reaches 280-350 TFLOP/s on an H200, about a
// third of its dense fp16 peak. Every mma.sync needs its B fragments in registers, so
// a warp spends as many issue slots on ldmatrix as on products. wgmma reads B straight
// from shared memory, is asynchronous, and one instruction does a 64 x 64 x 16 product
// of a warpgroup (four warps), so the issue slots go to the argmax instead.
//
// Layout and schedule (same block tile, rows, objective slots and outputs as the wide
// kernel, so the sorted reduction and the objective follow unchanged):
//   - 8 warps = 2 warpgroups; warp w owns rows 32 w .. 32 w + 31 of a 256-row tile, staged
//     by its own cp.async and held as mma.sync A fragments in registers for the tile.
//     wgmma with A in registers takes exactly that fragment layout from each warp of the
//     warpgroup (warp w % 4 supplies rows 16 (w % 4) .. of the 64-row product), so
//     m-block mt of a warpgroup is the m-tile mt of its four warps;
//   - centroids stream through shared memory in double-buffered chunks of KC rows,
//     rearranged on the way in (cp.async, 16-byte pieces) into wgmma's 128-byte swizzle
//     layout (load_chunk). Its unswizzled "core matrix" layout was measured 10-25% slower
//     than the mma.sync kernel: the eight rows of a core matrix then sit on the same banks;
//   - per 64 centroids: the accumulators start at -||c||²/2 of their column, the two
//     m-blocks' products are issued as two commit groups, and m-block 0's argmax runs
//     while m-block 1's products are still in flight;
//   - ||x||², dist2 and the direct sum for near rows as in the wide kernel.
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

// Shared memory: [up to 1 KiB to align][centroids: 2 x KC x 16 KS (swizzled layout)]
// [-||c||²/2: 2 x KC][points: 32 rows x dpad a warp].
template <int KS, int KC, int W>
size_t smem_bytes(int dpad) {
    return 1024 + (2 * static_cast<size_t>(KC) * 16 * KS + static_cast<size_t>(W) * kRowsPerWarp * dpad) * 2 +
           2 * KC * 4;
}

// W warps (4: one warpgroup, 8: two) take a tile in kTileWarps / W parts ("units") of
// 32 W rows, one after the other.
template <typename T, int KS, int KC, int W>
__global__ void __launch_bounds__(W * 32, W == 4 ? 2 : 1) wgmma_kernel(MmaArgs a) {
    constexpr int kThreads = W * 32, kSub = kTileWarps / W;
    extern __shared__ __align__(128) unsigned char smem[];
    const int d = a.d, k = a.k, kpad = a.kpad, dpad = a.dpad;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    constexpr int kCentElems = KC * 16 * KS;  // one buffer
    // The swizzle works on address bits 4-9: buffers start on 1 KiB.
    T* s_cent = reinterpret_cast<T*>(smem + ((1024u - (static_cast<uint32_t>(__cvta_generic_to_shared(smem)) & 1023u)) & 1023u));
    float* s_cnh = reinterpret_cast<float*>(s_cent + 2 * kCentElems);
    T* s_x = reinterpret_cast<T*>(s_cnh + 2 * KC) + warp * kRowsPerWarp * dpad;

    const int64_t n_units = a.n_tiles * kSub;
    const int64_t per_block = (n_units + gridDim.x - 1) / gridDim.x;
    const int64_t unit_begin = blockIdx.x * per_block;
    const int64_t unit_end = min(n_units, unit_begin + per_block);
    if (unit_begin >= unit_end) return;
    const int nch = (kpad + KC - 1) / KC;
    constexpr int kPieces = 2 * KS;  // 16-byte pieces of a row's first 16 KS elements

    int cseg = 0;  // segment of the chunk being fetched
    auto load_chunk = [&](int64_t unit, int ch, int buf) {
        if (unit < unit_end) {
            const int64_t tile = unit / kSub;
            while (cseg + 1 < a.n_segs && a.segs[cseg + 1].tile0 <= tile) ++cseg;
            const int task = a.segs[cseg].task;
            const int c0 = ch * KC, cn = min(KC, kpad - c0);
            const T* src = static_cast<const T*>(a.cent) + (int64_t{task} * kpad + c0) * dpad;
            T* dst = s_cent + buf * kCentElems;
            // 128-byte swizzle layout: dims 64 h .. 64 h + 63 of all KC centroids form
            // block h (KC rows of 128 bytes); piece p (16 bytes) of centroid c's row goes to
            // place p ^ (c % 8), so the eight rows of a group spread over all banks.
            // Centroids past the task's kpad are zero, and their score -inf through s_cnh.
            for (int i = tid; i < KC * kPieces; i += kThreads) {
                const int c = i / kPieces, p = i % kPieces;
                const bool ok = c < cn;
                const T* s = ok ? src + c * dpad + 8 * p : src;
                cp_async16(dst + ((p >> 3) * KC + c) * 64 + ((p & 7) ^ (c & 7)) * 8, s, ok ? 16 : 0);
            }
            const float* hsrc = a.cnh + int64_t{task} * kpad + c0;
            float* hdst = s_cnh + buf * KC;
            for (int i = tid; i < KC / 4; i += kThreads) {
                if (4 * i < cn) cp_async16(hdst + 4 * i, hsrc + 4 * i, 16);
                else *reinterpret_cast<float4*>(hdst + 4 * i) = make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
            }
        }
        cp_async_commit();
    };
    int pseg = 0;  // segment of the rows being fetched (per warp)
    auto load_rows = [&](int64_t unit) {
        const int64_t tile = unit / kSub;
        while (pseg + 1 < a.n_segs && a.segs[pseg + 1].tile0 <= tile) ++pseg;
        const MmaSegment& L = a.segs[pseg];
        const int64_t r0 = (tile - L.tile0) * kBlockRows + (unit % kSub * W + warp) * kRowsPerWarp;
        const int64_t left = L.rows - r0;
        const int valid = left <= 0 ? 0 : left >= kRowsPerWarp ? kRowsPerWarp : static_cast<int>(left);
        const T* x = static_cast<const T*>(L.x) + max(r0, int64_t{0}) * d;
#pragma unroll 4
        for (int i = lane; i < kRowsPerWarp * kPieces; i += 32) {
            const int r = i / kPieces, c = 8 * (i % kPieces);
            const bool ok = r < valid && c < d;
            cp_async16(s_x + r * dpad + c, ok ? x + r * d + c : x, ok ? 16 : 0);
        }
    };

    load_rows(unit_begin);
    load_chunk(unit_begin, 0, 0);
    int buf = 0, seg = 0;
    for (int64_t unit = unit_begin; unit < unit_end; ++unit) {
        const int64_t tile = unit / kSub;
        while (seg + 1 < a.n_segs && a.segs[seg + 1].tile0 <= tile) ++seg;
        uint32_t af[2][KS][4];
        float xx[2][2];
        float best[2][2];
        int bidx[2][2];
        for (int ch = 0; ch < nch; ++ch) {
            cp_async_wait<0>();
            fence_proxy_async();
            __syncthreads();  // chunk ch (and at ch == 0 this warp's rows) landed; buffer buf ^ 1 is free
            if (ch == 0) {
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    load_row_fragments<T, KS>(af[mt], s_x + mt * 16 * dpad, dpad, lane);
                    row_norms<T, KS>(af[mt], s_x + mt * 16 * dpad, dpad, lane, xx[mt][0], xx[mt][1]);
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        best[mt][h] = -INFINITY;
                        bidx[mt][h] = INT_MAX;
                    }
                }
                __syncwarp();  // every lane's fragments are out of the staging rows
                if (unit + 1 < unit_end) load_rows(unit + 1);
            }
            if (ch + 1 < nch) load_chunk(unit, ch + 1, buf ^ 1);
            else load_chunk(unit + 1, 0, buf ^ 1);

            // One wgmma width per chunk: KC centroids, the accumulators starting at their
            // -||c||²/2 (columns past kpad: -inf).
            const T* cb = s_cent + buf * kCentElems;
            const float* hb = s_cnh + buf * KC;
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
            buf ^= 1;
        }

        const MmaSegment S = a.segs[seg];
        const int64_t wrow0 = (tile - S.tile0) * kBlockRows + (unit % kSub * W + warp) * kRowsPerWarp;
        const T* gcent = static_cast<const T*>(a.cent) + int64_t{S.task} * kpad * dpad;
        double obj = 0.0;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                float bv = best[mt][hh];
                const int l = row_winner(bv, bidx[mt][hh], k);
                const int64_t row = wrow0 + mt * 16 + hh * 8 + g;
                const bool valid = row < S.rows;
                const float s = row_dist2<T, KS>(af[mt], hh, bv, xx[mt][hh], gcent + int64_t{l} * dpad, lane);
                if (t == 0 && valid) {
                    if (S.labels) S.labels[row] = l;
                    if (S.dist2) S.dist2[row] = s;
                }
                obj += valid ? static_cast<double>(s) : 0.0;  // in (mt, hh) order
            }
        obj = t == 0 ? obj : 0.0;
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) obj += __shfl_xor_sync(0xffffffffu, obj, off);
        if (lane == 0 && wrow0 < S.rows) a.slots[S.slot0 + wrow0 / kObjSlotRows] = obj;
    }
    cp_async_wait<0>();
}

template <typename T, int KS, int KC, int W>
void launch_kc(const MmaArgs& a, int sm_count, cudaStream_t stream) {
    constexpr int kThreads = W * 32;
    auto kernel = wgmma_kernel<T, KS, KC, W>;
    const size_t dyn = smem_bytes<KS, KC, W>(a.dpad);
    PKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn)));
    int per_sm = 0;
    PKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, dyn));
    per_sm = std::max(per_sm, 1);
    const int grid = static_cast<int>(std::min<int64_t>(a.n_tiles * (kTileWarps / W), int64_t{per_sm} * sm_count));
    kernel<<<grid, kThreads, dyn, stream>>>(a);
    PKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void launch_wgmma_wide(const MmaArgs& a, int chunk, int sm_count, cudaStream_t stream) {
    PKV_ASSERT(mma_wide_ok(a.d) && a.kpad % 8 == 0 && a.dpad == mma_row_stride(a.d));
    PKV_ASSERT(a.sums == nullptr && a.counts == nullptr);
    if (a.n_tiles == 0) return;
    with_element(a, [&](auto t) {
        with_staged_ksteps(a.d, [&](auto ks) {
            using T = decltype(t);
            constexpr int K = decltype(ks)::value;
            if (chunk >= 128) launch_kc<T, K, 128, kTileWarps>(a, sm_count, stream);
            else launch_kc<T, K, 64, kTileWarps>(a, sm_count, stream);
        });
    });
}

}  // namespace pkv::cuda::detail
