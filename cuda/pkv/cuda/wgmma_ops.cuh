// Internal: Hopper warpgroup MMA (wgmma) for the sm_90a k-means kernels
// (kmeans_wgmma_sm90a.cu, kmeans_onehot_sm90a.cu): operand descriptors, the
// instructions with A in registers, their fences, and the centroid image both kernels
// read. Included only by *_sm90a.cu files; outside sm_90a code the instructions compile
// to nothing (the host never launches those kernels there).
//
// wgmma m64nNk16 with A from registers: a warpgroup (four warps) multiplies A (64 x 16)
// by B (16 x N, from shared memory through a descriptor). Warp q of the warpgroup
// supplies rows 16 q .. 16 q + 15 of A as an mma.sync A fragment (mma_ops.cuh) and gets
// the same rows of the fp32 accumulator: thread (g, t) holds row g + 8 h, column
// 8 j + 2 t + e in d[4 j + 2 h + e].
//
// Shared-memory operands use the 128-byte swizzle: an atom is 8 rows of 128 bytes (1 KiB,
// 1 KiB aligned), and 16-byte piece p of row r sits at place p ^ (r % 8) of its row.
//   - K-major (B = centroids, [N rows][K], K contiguous): the rows of an atom are 8
//     centroids; the stride byte offset (SBO) steps 8 centroids, the k-steps of an
//     atom's 64 columns advance the start address by 32 bytes.
//   - MN-major (B = points, [K rows][N], N contiguous; imm-trans-b 1): the rows of an
//     atom are 8 values of K, each 64 columns of N; SBO steps 8 rows of K and the leading
//     byte offset (LBO) the next 64 columns. kmeans_onehot_sm90a.cu keeps every product
//     at N = 64 (one atom wide) and sets both fields to the K step.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "pkv/cuda/kmeans_assign.cuh"
#include "pkv/cuda/mma_ops.cuh"
#include "pkv/cuda/mma_rows.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PKV_WGMMA_DEVICE 1
#endif

namespace pkv::cuda::detail {

/// Shared-memory matrix descriptor in the 128-byte swizzle layout (code 1 in bits
/// 62-63): start address, leading byte offset `lbo` and stride byte offset `sbo`, each
/// in 16-byte units. K-major operands ignore `lbo` (16 by convention).
__device__ __forceinline__ uint64_t smem_desc(const void* p, uint32_t sbo = 1024, uint32_t lbo = 16) {
    const uint64_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    return ((a & 0x3FFFFu) >> 4) | (uint64_t{(lbo >> 4) & 0x3FFFu} << 16) | (uint64_t{(sbo >> 4) & 0x3FFFu} << 32) |
           (uint64_t{1} << 62);
}

/// Pins the accumulators at this point of the program: the compiler may not move a
/// read or write of them across it (they change behind its back while a wgmma runs).
template <int R>
__device__ __forceinline__ void pin(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// clang-format off
#define PKV_ACC8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                    "+f"(d[i + 6]), "+f"(d[i + 7])
#define PKV_ACC16(i) PKV_ACC8(i), PKV_ACC8(i + 8)
#define PKV_ACC32(i) PKV_ACC16(i), PKV_ACC16(i + 16)
#define PKV_ACC64(i) PKV_ACC32(i), PKV_ACC32(i + 32)
#define PKV_REGS16(TB) "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, p, 1, 1, " #TB ";\n}\n"
#define PKV_REGS32(TB) "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23," \
    "%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, " #TB ";\n}\n"
#define PKV_REGS64(TB) "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23," \
    "%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45," \
    "%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66," \
    "%67}, %68, p, 1, 1, " #TB ";\n}\n"
#define PKV_WGMMA_HEAD "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\nwgmma.mma_async.sync.aligned."
#define PKV_A_DESC "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc)
// clang-format on
#ifdef PKV_WGMMA_DEVICE
#define PKV_WGMMA_BODY(R, N, TS, TB) \
    asm volatile(PKV_WGMMA_HEAD "m64n" #N "k16.f32." TS "." TS " " PKV_REGS##R(TB) : PKV_ACC##R(0) : PKV_A_DESC)
#else
#define PKV_WGMMA_BODY(R, N, TS, TB) (void)d, (void)a, (void)desc
#endif
#define PKV_WGMMA_FN(NAME, R, N, TB)                                                                          \
    __device__ __forceinline__ void NAME(float(&d)[R], const uint32_t(&a)[4], uint64_t desc, __half) {        \
        PKV_WGMMA_BODY(R, N, "f16", TB);                                                                      \
    }                                                                                                         \
    __device__ __forceinline__ void NAME(float(&d)[R], const uint32_t(&a)[4], uint64_t desc, __nv_bfloat16) { \
        PKV_WGMMA_BODY(R, N, "bf16", TB);                                                                     \
    }

/// d += A (64 x 16, the four warps' A fragments) * B (16 x N, K-major from the
/// descriptor), fp32 accumulation; N = 2 R.
PKV_WGMMA_FN(wgmma_n, 16, 32, 0)
PKV_WGMMA_FN(wgmma_n, 32, 64, 0)
PKV_WGMMA_FN(wgmma_n, 64, 128, 0)
/// The same with B MN-major (imm-trans-b 1), N = 64.
PKV_WGMMA_FN(wgmma_nt, 32, 64, 1)

#undef PKV_WGMMA_FN
#undef PKV_WGMMA_BODY
#undef PKV_A_DESC
#undef PKV_WGMMA_HEAD
#undef PKV_REGS16
#undef PKV_REGS32
#undef PKV_REGS64
#undef PKV_ACC8
#undef PKV_ACC16
#undef PKV_ACC32
#undef PKV_ACC64

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

/// The scores of one chunk of KC centroids (`chunk`: the image layout above, in shared
/// memory) for a warp's two m-tiles held as A fragments, on wgmma, the accumulators
/// starting at -||c||²/2 (-inf past kpad); the running (best score, lowest index) of
/// rows g and g + 8 of each m-tile takes the chunk's columns, numbered from col0 + 2t.
/// Chunks must come in column order: strict '>' keeps the lowest index. A NaN score can
/// only come from a NaN row, whose every score is NaN: it never wins (row_winner then
/// gives centroid 0). m-block 0's argmax overlaps m-block 1's products.
template <typename T, int KS, int KC>
__device__ __forceinline__ void chunk_argmax(const unsigned char* chunk, const uint32_t (&af)[2][KS][4], int col0,
                                             int t, float (&best)[2][2], int (&bidx)[2][2]) {
    const T* cb = reinterpret_cast<const T*>(chunk);
    const float* hb = reinterpret_cast<const float*>(chunk + KC * 32 * KS);
    float acc[2][KC / 2];
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
    wgmma_wait<1>();
    pin(acc[0]);
    argmax_cols(acc[0], col0 + 2 * t, best[0], bidx[0]);
    wgmma_wait<0>();
    pin(acc[1]);
    argmax_cols(acc[1], col0 + 2 * t, best[1], bidx[1]);
}

}  // namespace pkv::cuda::detail
