// pkv/cuda/kmeans_mma_wide.cu — nearest centroids for large k on tensor cores, the
// centroids streamed through shared memory in double-buffered chunks. Semantics in
// kmeans_assign.h ("wide" kernel); the centroid sums follow by the sorted reduction.
//
// Why a third kernel: at k >= 256 one Lloyd iteration is bound by the assignment's
// matrix product (2 N k d flops: 655 GFLOP at N = 10^7, k = 256, d = 128), so what
// counts is keeping the tensor cores fed. The general kernel (kmeans_mma.cu) loads a
// tile's points synchronously, reloads every centroid chunk behind a barrier, and runs
// one 8-centroid step at a time (two dependent MMA chains a warp), which leaves it
// latency bound far below the dense tensor peak. Here
//   - a warp's next 32 rows arrive by cp.async while the current ones are multiplied
//     (the A fragments live in registers for the whole tile, so one staging buffer
//     a warp suffices),
//   - centroid chunks of KC rows (and their -||c||²/2) are fetched one chunk ahead into
//     the other of two buffers, across tile and task boundaries,
//   - each step takes 16 centroids against the warp's two m-tiles: four independent
//     accumulator chains, the step's best found by a tree before one comparison with
//     the running best,
//   - ||x||² comes from the Gram diagonal on the tensor cores, so dist2 = ||x||² - 2
//     max score without touching the centroid, except where dist2 < ||x||²/16 (the
//     direct sum of squares then, from the centroid row in L2),
// and two blocks share an SM (about 104 KB of shared memory each at d = 128).
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

constexpr int kWarps = kTileWarps;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = kWarpRows;

// Shared memory: [centroids: 2 x KC rows x dpad][-||c||²/2: 2 x KC][points: 32 rows x
// dpad a warp]. Rows are dpad = 16 KS + 8 elements apart, so the eight row addresses
// of an ldmatrix fall on distinct banks.
template <int KC>
size_t smem_bytes(int dpad) {
    return (2 * static_cast<size_t>(KC) + static_cast<size_t>(kWarps) * kRowsPerWarp) * dpad * 2 + 2 * KC * 4;
}

// One block walks a contiguous range of tiles; the chunk sequence (tile, chunk) runs
// over all of them, chunk q in buffer q % 2 while chunk q + 1 loads.
template <typename T, int KS, int KC>
__global__ void __launch_bounds__(kThreads, 2) wide_kernel(MmaArgs a) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int kpad = a.kpad, dpad = a.dpad;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int t = lane & 3;
    T* s_cent = reinterpret_cast<T*>(smem);
    float* s_cnh = reinterpret_cast<float*>(s_cent + 2 * KC * dpad);
    T* s_x = reinterpret_cast<T*>(s_cnh + 2 * KC) + warp * kRowsPerWarp * dpad;

    const int64_t per_block = (a.n_tiles + gridDim.x - 1) / gridDim.x;
    const int64_t tile_begin = blockIdx.x * per_block;
    const int64_t tile_end = min(a.n_tiles, tile_begin + per_block);
    if (tile_begin >= tile_end) return;
    const int nch = (kpad + KC - 1) / KC;
    const int row16 = dpad * static_cast<int>(sizeof(T)) / 16;  // 16-byte pieces a centroid row

    int cseg = 0;  // segment of the chunk being fetched
    auto load_chunk = [&](int64_t tile, int ch, int buf) {
        if (tile < tile_end) {
            while (cseg + 1 < a.n_segs && a.segs[cseg + 1].tile0 <= tile) ++cseg;
            const int task = a.segs[cseg].task;
            const int c0 = ch * KC, cn = min(KC, kpad - c0);
            const T* src = static_cast<const T*>(a.cent) + (int64_t{task} * kpad + c0) * dpad;
            T* dst = s_cent + buf * KC * dpad;
            // Rows past the task's kpad are zero, and their score -inf through s_cnh.
            for (int i = tid; i < KC * row16; i += kThreads) {
                const bool ok = i < cn * row16;
                cp_async16(dst + 8 * i, ok ? src + 8 * i : src, ok ? 16 : 0);
            }
            const float* hsrc = a.cnh + int64_t{task} * kpad + c0;  // 32-byte aligned: kpad % 8 == 0
            float* hdst = s_cnh + buf * KC;
            for (int i = tid; i < KC / 4; i += kThreads) {
                if (4 * i < cn) cp_async16(hdst + 4 * i, hsrc + 4 * i, 16);
                else *reinterpret_cast<float4*>(hdst + 4 * i) = make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
            }
        }
        cp_async_commit();
    };
    int pseg = 0;  // segment of the rows being fetched (per warp)

    stage_warp_rows<T, KS>(a, pseg, tile_begin, warp, lane, s_x);
    load_chunk(tile_begin, 0, 0);
    int buf = 0, seg = 0;
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
        while (seg + 1 < a.n_segs && a.segs[seg + 1].tile0 <= tile) ++seg;
        WarpRows<KS> w;
        for (int ch = 0; ch < nch; ++ch) {
            cp_async_wait<0>();
            __syncthreads();  // chunk ch (and at ch == 0 this warp's rows) landed; buffer buf ^ 1 is free
            if (ch == 0) {
                start_warp_rows<T, KS>(s_x, dpad, lane, w);
                if (tile + 1 < tile_end) stage_warp_rows<T, KS>(a, pseg, tile + 1, warp, lane, s_x);
            }
            if (ch + 1 < nch) load_chunk(tile, ch + 1, buf ^ 1);
            else load_chunk(tile + 1, 0, buf ^ 1);

            const T* lrow = s_cent + buf * KC * dpad + (lane & 7) * dpad + 8 * (lane >> 3);
            const float* hb = s_cnh + buf * KC;
            const int steps = (min(KC, kpad - ch * KC) + 15) / 16;
#pragma unroll 1
            for (int s = 0; s < steps; ++s) {
                const int n0 = 16 * s;
                float sc[2][2][4];
                // u outer: the first 8 centroids' chains finish first, so their
                // epilogue can overlap the second 8's products. Each chain starts from
                // the centroids' -||c||²/2.
#pragma unroll
                for (int u = 0; u < 2; ++u) {
                    const float2 h = *reinterpret_cast<const float2*>(hb + n0 + 8 * u + 2 * t);
#pragma unroll
                    for (int ks = 0; ks < KS; ks += 2) {
                        uint32_t b[4];
                        ldmatrix_x4(b, lrow + (n0 + 8 * u) * dpad + ks * 16);
#pragma unroll
                        for (int mt = 0; mt < 2; ++mt) {
                            if (ks == 0) mma_from(sc[u][mt], w.af[mt][0], b[0], b[1], h.x, h.y, T{});
                            else mma(sc[u][mt], w.af[mt][ks], b[0], b[1], T{});
                            mma(sc[u][mt], w.af[mt][ks + 1], b[2], b[3], T{});
                        }
                    }
                }
                // The step's best of the thread's four columns, then one comparison with
                // the running best. Columns grow with ch and s, so
                // strict '>' keeps the lowest index. A NaN score can only come from a
                // NaN row, whose every score is NaN: it never wins, and the row falls to
                // centroid 0 below.
                const int col = ch * KC + n0 + 2 * t;
#pragma unroll
                for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                    for (int hh = 0; hh < 2; ++hh) {
                        int off;
                        const float v = best_of_four(sc[0][mt][2 * hh], sc[0][mt][2 * hh + 1], sc[1][mt][2 * hh],
                                                     sc[1][mt][2 * hh + 1], off);
                        if (v > w.best[mt][hh]) {
                            w.best[mt][hh] = v;
                            w.bidx[mt][hh] = col + off;
                        }
                    }
            }
            buf ^= 1;
        }

        finish_warp_rows<T, KS>(a, seg, tile, warp, lane, w);
    }
    cp_async_wait<0>();
}

template <typename T, int KS, int KC>
void launch_kc(const MmaArgs& a, int sm_count, cudaStream_t stream) {
    auto kernel = wide_kernel<T, KS, KC>;
    const size_t dyn = smem_bytes<KC>(a.dpad);
    const int grid = persistent_grid(kernel, kThreads, dyn, a.n_tiles, sm_count);
    kernel<<<grid, kThreads, dyn, stream>>>(a);
    PKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

bool wgmma_device(int device) {
#if defined(PKV_HAVE_SM90A)
    int major = 0, minor = 0;
    PKV_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    PKV_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    return kmeans_gpu::wgmma_arch(major, minor, true);
#else
    (void)device;
    return false;
#endif
}

#if !defined(PKV_HAVE_SM90A)
size_t wgmma_image_bytes(int, int, int, int) { return 0; }
void launch_wgmma_wide(const MmaArgs&, int, int, void*, int, cudaStream_t) {
    ::pkv::fail(ErrorCode::internal, "cuda assigner: this build has no sm_90a kernel (wgmma_device() is false)");
}
size_t wgmma_onehot_image_bytes(int, int, int) { return 0; }
void launch_wgmma_onehot(const MmaArgs&, int, int, void*, int, cudaStream_t) {
    ::pkv::fail(ErrorCode::internal, "cuda assigner: this build has no sm_90a kernel (wgmma_device() is false)");
}
#endif

void launch_mma_wide(const MmaArgs& a, int chunk, int sm_count, cudaStream_t stream) {
    PKV_ASSERT(mma_wide_ok(a.d) && a.kpad % 8 == 0 && a.dpad == mma_row_stride(a.d));
    PKV_ASSERT(a.sums == nullptr && a.counts == nullptr);
    if (a.n_tiles == 0) return;
    with_element(a, [&](auto t) {
        with_staged_ksteps(a.d, [&](auto ks) {
            with_chunk(chunk, [&](auto kc) {
                launch_kc<decltype(t), decltype(ks)::value, decltype(kc)::value>(a, sm_count, stream);
            });
        });
    });
}

}  // namespace pkv::cuda::detail
