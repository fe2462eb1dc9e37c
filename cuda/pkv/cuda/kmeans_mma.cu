// pkv/cuda/kmeans_mma.cu — batched nearest-centroid assignment on tensor cores
// (mma.sync m16n8k16, binary16 or bf16 operands, fp32 accumulation) with fused exact
// centroid sums and per-tile objective partials. Semantics in kmeans_assign.h.
#include <algorithm>
#include <climits>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "pkv/core/error.h"
#include "pkv/cuda/check.cuh"
#include "pkv/cuda/kmeans_assign.cuh"
#include "pkv/cuda/mma_ops.cuh"

namespace pkv::cuda::detail {
namespace {

constexpr int kWarps = kTileWarps;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = kWarpRows;
// Dynamic shared memory a block may take: partial sums plus centroids up to kSmemMax,
// else centroids alone up to kSmemCentMax (streamed in chunks beyond that).
constexpr size_t kSmemCentMax = 200 * 1024;
constexpr size_t kSmemMax = 220 * 1024;
// Shared-memory partial sums are split into two 32-bit words of a biased value
// u = q + 2^40 (q the fixed-point coordinate, |q| < 2^40): lo = u mod 2^20 and
// hi = u / 2^20 < 2^21, both added with native 32-bit shared atomics (64-bit shared
// atomics are a compare-and-swap loop on sm_90). A block flushes them to the int64
// device sums at least every kFlushTiles tiles (2048 rows): then no word overflows.
constexpr int kFlushTiles = 8;
constexpr int kLoBits = 20;
constexpr unsigned long long kBias = 1ull << 40;

// Two consecutive 16-bit values at x[col], x[col + 1] of one row (zero past d). With
// d even every pair is 4-byte aligned and one load does it.
template <typename T>
__device__ __forceinline__ uint32_t load_pair(const T* row, int col, int d, bool valid) {
    if (!valid || col >= d) return 0u;
    if ((d & 1) == 0) return __ldg(reinterpret_cast<const unsigned int*>(row + col));
    const unsigned short* r = reinterpret_cast<const unsigned short*>(row);
    const unsigned lo = __ldg(r + col);
    const unsigned hi = col + 1 < d ? __ldg(r + col + 1) : 0u;
    return lo | (hi << 16);
}

// One block walks a contiguous range of row tiles (256 rows: 8 warps x 32 rows). A
// warp keeps its 32 rows as MMA A fragments in registers for the whole tile (the
// points are read from device memory once), and streams the task's centroids from
// shared memory (ldmatrix) eight at a time: scores s = x·c - ||c||²/2 come out of the
// MMA (the accumulator starts at -||c||²/2), and each thread keeps a running
// (max score, lowest index) for its two rows per m-tile over its two centroid
// columns; the four threads of a quad then merge. The winner's squared distance is
// recomputed directly from the same registers and the rounded centroid, the point is
// added to its cluster's fixed-point sums (shared-memory partials, see kBias, flushed
// every kFlushTiles tiles and when the task changes; or device atomics when k * d
// does not fit), and each warp sums its 32 distances in double in
// a fixed order into its objective slot. Warps synchronise only when the block loads
// centroids (a new task, or every tile when k does not fit in shared memory).
// Row layout of the fragments (PTX m16n8k16): thread (g = lane / 4, t = lane % 4)
// holds rows g and g + 8 of each m-tile at columns 16 ks + 2t + {0, 1} and + 8.
template <typename T, int KS, bool ACC>
__global__ void __launch_bounds__(kThreads, 2) mma_assign_kernel(MmaArgs a, int kc, bool smem_acc) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int d = a.d, k = a.k, kpad = a.kpad, dpad = a.dpad;
    const int64_t kd = int64_t{k} * d;
    // Partials: lo and hi words at [j * ds + t] (row stride d + 1 spreads a warp's
    // rows over the banks), then one 32-bit count per cluster.
    const int ds = d + 1;
    const int64_t kds = int64_t{k} * ds;
    // Dynamic shared memory: [x staging: 16 rows a warp][partial sums][centroids].
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    T* s_x = reinterpret_cast<T*>(smem) + warp * 16 * dpad;
    unsigned char* after_x = smem + static_cast<size_t>(kWarps) * 16 * dpad * sizeof(T);
    unsigned int* s_lo = reinterpret_cast<unsigned int*>(after_x);
    unsigned int* s_hi = s_lo + kds;
    unsigned int* s_cnt = s_hi + kds;
    T* s_cent = reinterpret_cast<T*>(after_x + (smem_acc ? ((2 * kds + k) * 4 + 15) / 16 * 16 : 0));
    const int g = lane >> 2, t = lane & 3;

    const int64_t per_block = (a.n_tiles + gridDim.x - 1) / gridDim.x;
    const int64_t tile_begin = blockIdx.x * per_block;
    const int64_t tile_end = min(a.n_tiles, tile_begin + per_block);
    int loaded_task = -1, acc_task = -1, seg = 0;

    auto flush = [&](int task) {
        __syncthreads();
        unsigned long long* gs = a.sums + task * kd;
        for (int64_t i = tid; i < kds; i += kThreads) {
            const int j = static_cast<int>(i / ds), t2 = static_cast<int>(i % ds);
            const unsigned int c = s_cnt[j];
            if (c != 0u && t2 < d) {
                const unsigned long long u = (static_cast<unsigned long long>(s_hi[i]) << kLoBits) + s_lo[i];
                atomicAdd(gs + int64_t{j} * d + t2, u - static_cast<unsigned long long>(c) * kBias);
            }
            s_lo[i] = 0u;
            s_hi[i] = 0u;
        }
        __syncthreads();
        for (int j = tid; j < k; j += kThreads) {
            if (s_cnt[j] != 0u) atomicAdd(a.counts + int64_t{task} * k + j, static_cast<unsigned long long>(s_cnt[j]));
            s_cnt[j] = 0u;
        }
        __syncthreads();
    };
    if (ACC && smem_acc) {
        for (int64_t i = tid; i < 2 * kds + k; i += kThreads) s_lo[i] = 0u;
    }
    int since_flush = 0;

    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
        while (seg + 1 < a.n_segs && a.segs[seg + 1].tile0 <= tile) ++seg;
        const MmaSegment S = a.segs[seg];
        const int64_t local_tile = tile - S.tile0;
        const int64_t row0 = local_tile * kBlockRows + warp * kRowsPerWarp;
        const int task = S.task;
        if (ACC && smem_acc && (task != acc_task || since_flush == kFlushTiles)) {
            if (acc_task >= 0) flush(acc_task);
            acc_task = task;
            since_flush = 0;
        }
        ++since_flush;
        const T* x = static_cast<const T*>(S.x);

        uint32_t af[2][KS][4];
        if ((d & 7) == 0) {
            // 16-byte coalesced loads (a warp reads 512 contiguous bytes per step) staged
            // through this warp's shared rows, then ldmatrix into the A fragments.
            uint4 v[2][KS];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int i = 0; i < KS; ++i) {
                    const int c = lane + 32 * i, r = c / (2 * KS), col0 = 8 * (c % (2 * KS));
                    const int64_t row = row0 + mt * 16 + r;
                    v[mt][i] = row < S.rows && col0 < d ? __ldg(reinterpret_cast<const uint4*>(x + row * d + col0))
                                                        : make_uint4(0u, 0u, 0u, 0u);
                }
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
                for (int i = 0; i < KS; ++i) {
                    const int c = lane + 32 * i, r = c / (2 * KS), col0 = 8 * (c % (2 * KS));
                    *reinterpret_cast<uint4*>(s_x + r * dpad + col0) = v[mt][i];
                }
                __syncwarp();
                const T* arow = s_x + ((lane & 7) + 8 * ((lane >> 3) & 1)) * dpad + 8 * (lane >> 4);
#pragma unroll
                for (int ks = 0; ks < KS; ++ks) ldmatrix_x4(af[mt][ks], arow + 16 * ks);
                __syncwarp();
            }
        } else {
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int64_t r_lo = row0 + mt * 16 + g, r_hi = r_lo + 8;
                const bool v_lo = r_lo < S.rows, v_hi = r_hi < S.rows;
                const T* x_lo = x + (v_lo ? r_lo : 0) * d;
                const T* x_hi = x + (v_hi ? r_hi : 0) * d;
#pragma unroll
                for (int ks = 0; ks < KS; ++ks) {
                    const int col = ks * 16 + 2 * t;
                    af[mt][ks][0] = load_pair(x_lo, col, d, v_lo);
                    af[mt][ks][1] = load_pair(x_hi, col, d, v_hi);
                    af[mt][ks][2] = load_pair(x_lo, col + 8, d, v_lo);
                    af[mt][ks][3] = load_pair(x_hi, col + 8, d, v_hi);
                }
            }
        }

        // Pull this warp's rows of the block's next tile towards L2 while this tile computes.
        if (tile + 1 < tile_end) {
            const bool next_seg = seg + 1 < a.n_segs && a.segs[seg + 1].tile0 <= tile + 1;
            const MmaSegment& N = next_seg ? a.segs[seg + 1] : S;
            const int64_t nrow = (tile + 1 - N.tile0) * kBlockRows + warp * kRowsPerWarp + lane;
            if (nrow < N.rows) {
                const char* p = reinterpret_cast<const char*>(static_cast<const T*>(N.x) + nrow * d);
                for (int off = 0; off < d * static_cast<int>(sizeof(T)); off += 128)
                    asm volatile("prefetch.global.L2 [%0];" ::"l"(p + off));
            }
        }

        float best[2][2];
        int bidx[2][2];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                best[mt][h] = -INFINITY;
                bidx[mt][h] = INT_MAX;
            }
        const T* gcent = static_cast<const T*>(a.cent) + int64_t{task} * kpad * dpad;
        const float* cnh = a.cnh + int64_t{task} * kpad;
        for (int c0 = 0; c0 < kpad; c0 += kc) {
            const int cn = min(kc, kpad - c0);
            if (kc < kpad || task != loaded_task) {
                __syncthreads();  // earlier readers of s_cent are done
                const int4* src = reinterpret_cast<const int4*>(gcent + int64_t{c0} * dpad);
                int4* dst = reinterpret_cast<int4*>(s_cent);
                const int n16 = cn * dpad * static_cast<int>(sizeof(T)) / 16;
                for (int i = tid; i < n16; i += kThreads) dst[i] = __ldg(src + i);
                __syncthreads();
                loaded_task = kc < kpad ? -1 : task;
            }
            // ldmatrix row addresses: lanes 8m..8m+7 address matrix m (centroid row
            // lane % 8, columns + 8m within a pair of k-steps).
            const T* lrow = s_cent + (lane & 7) * dpad + 8 * (lane >> 3);
            for (int n0 = 0; n0 < cn; n0 += 8) {
                const float2 h = __ldg(reinterpret_cast<const float2*>(cnh + c0 + n0 + 2 * t));
                float acc[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    acc[mt][0] = h.x;
                    acc[mt][1] = h.y;
                    acc[mt][2] = h.x;
                    acc[mt][3] = h.y;
                }
                const T* brow = lrow + n0 * dpad;
#pragma unroll
                for (int ks = 0; ks < KS; ks += 2) {
                    if (ks + 1 < KS) {
                        uint32_t b[4];
                        ldmatrix_x4(b, brow + ks * 16);
#pragma unroll
                        for (int mt = 0; mt < 2; ++mt) {
                            mma(acc[mt], af[mt][ks], b[0], b[1], T{});
                            mma(acc[mt], af[mt][ks + 1], b[2], b[3], T{});
                        }
                    } else {
                        uint32_t b0, b1;
                        ldmatrix_x2(b0, b1, brow + ks * 16);
#pragma unroll
                        for (int mt = 0; mt < 2; ++mt) mma(acc[mt], af[mt][ks], b0, b1, T{});
                    }
                }
                // Columns grow with n0, so strict '>' keeps the lowest index per thread.
                const int col = c0 + n0 + 2 * t;
#pragma unroll
                for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                    for (int hh = 0; hh < 2; ++hh)
                        running_max(best[mt][hh], bidx[mt][hh], acc[mt][2 * hh], acc[mt][2 * hh + 1], col);
            }
        }

        const float scale = ACC ? a.scale[task] : 0.0f;
        double obj = 0.0;
        unsigned long long* sums = ACC ? a.sums + task * kd : nullptr;
        unsigned long long* counts = ACC ? a.counts + int64_t{task} * k : nullptr;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                float bv = best[mt][hh];
                int bi = bidx[mt][hh];
                quad_argmax(bv, bi);
                const int l = bi >= k ? 0 : bi;  // every score NaN: centroid 0, as a scalar loop
                const int local = warp * kRowsPerWarp + mt * 16 + hh * 8 + g;
                const int64_t row = local_tile * kBlockRows + local;
                const bool valid = row < S.rows;
                // Centroids resident in shared memory serve the recompute too.
                const T* crow = (kc == kpad ? s_cent : gcent) + int64_t{l} * dpad;
                float s = 0.0f;
#pragma unroll
                for (int ks = 0; ks < KS; ++ks)
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        const int col = ks * 16 + 2 * t + 8 * half;
                        const float2 xv = to_float2(af[mt][ks][hh + 2 * half], T{});
                        const float2 cv = to_float2(*reinterpret_cast<const unsigned int*>(crow + col), T{});
                        const float dx = xv.x - cv.x, dy = xv.y - cv.y;
                        s = fmaf(dx, dx, s);
                        s = fmaf(dy, dy, s);
                        if (ACC && valid && col < d) {
                            const long long q0 = __float2ll_rn(xv.x * scale);
                            const long long q1 = __float2ll_rn(xv.y * scale);
                            if (smem_acc) {
                                const unsigned long long u0 = static_cast<unsigned long long>(q0) + kBias;
                                const unsigned long long u1 = static_cast<unsigned long long>(q1) + kBias;
                                const int64_t at = int64_t{l} * ds + col;
                                atomicAdd(s_lo + at, static_cast<unsigned int>(u0 & ((1u << kLoBits) - 1)));
                                atomicAdd(s_hi + at, static_cast<unsigned int>(u0 >> kLoBits));
                                if (col + 1 < d) {
                                    atomicAdd(s_lo + at + 1, static_cast<unsigned int>(u1 & ((1u << kLoBits) - 1)));
                                    atomicAdd(s_hi + at + 1, static_cast<unsigned int>(u1 >> kLoBits));
                                }
                            } else {
                                unsigned long long* dst = sums + int64_t{l} * d + col;
                                atomicAdd(dst, static_cast<unsigned long long>(q0));
                                if (col + 1 < d) atomicAdd(dst + 1, static_cast<unsigned long long>(q1));
                            }
                        }
                    }
                s += __shfl_xor_sync(0xffffffffu, s, 1);
                s += __shfl_xor_sync(0xffffffffu, s, 2);
                if (t == 0 && valid) {
                    if (S.labels) S.labels[row] = l;
                    if (S.dist2) S.dist2[row] = s;
                    if (ACC) {
                        if (smem_acc) atomicAdd(s_cnt + l, 1u);
                        else atomicAdd(counts + l, 1ull);
                    }
                }
                obj += valid ? static_cast<double>(s) : 0.0;  // in (mt, hh) order
            }
        // The warp's objective slot: quad leaders' partials by a fixed butterfly (the
        // other lanes hold copies; only lanes t == 0 contribute).
        obj = t == 0 ? obj : 0.0;
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) obj += __shfl_xor_sync(0xffffffffu, obj, off);
        if (lane == 0 && row0 < S.rows) a.slots[S.slot0 + row0 / kObjSlotRows] = obj;
    }
    if (ACC && smem_acc && acc_task >= 0) flush(acc_task);
}

size_t stage_bytes(int dpad) { return static_cast<size_t>(kWarps) * 16 * dpad * 2; }
size_t partial_bytes(int k, int d) { return ((2 * static_cast<size_t>(k) * (d + 1) + k) * 4 + 15) / 16 * 16; }

template <typename T, int KS, bool ACC>
void launch_ks(const MmaArgs& a, int sm_count, cudaStream_t stream) {
    auto kernel = mma_assign_kernel<T, KS, ACC>;
    const size_t row_bytes = static_cast<size_t>(a.dpad) * sizeof(T);
    const size_t x_bytes = stage_bytes(a.dpad);
    const size_t cent_full = static_cast<size_t>(a.kpad) * row_bytes;
    const size_t acc_bytes = partial_bytes(a.k, a.d);
    bool smem_acc = false;
    int kc = a.kpad;
    size_t dyn = x_bytes + cent_full;
    if (ACC && x_bytes + cent_full + acc_bytes <= kSmemMax) {
        smem_acc = true;
        dyn = x_bytes + cent_full + acc_bytes;
    } else if (x_bytes + cent_full > kSmemCentMax) {
        kc = static_cast<int>((kSmemCentMax - x_bytes) / row_bytes) / 8 * 8;
        dyn = x_bytes + static_cast<size_t>(kc) * row_bytes;
    }
    const int grid = persistent_grid(kernel, kThreads, dyn, a.n_tiles, sm_count);
    kernel<<<grid, kThreads, dyn, stream>>>(a, kc, smem_acc);
    PKV_CUDA_CHECK(cudaGetLastError());
}

template <typename T, bool ACC>
void launch_t(const MmaArgs& a, int sm_count, cudaStream_t stream) {
    const int ks = (a.d + 15) / 16;
    if (ks <= 1) launch_ks<T, 1, ACC>(a, sm_count, stream);
    else if (ks <= 2) launch_ks<T, 2, ACC>(a, sm_count, stream);
    else if (ks <= 4) launch_ks<T, 4, ACC>(a, sm_count, stream);
    else launch_ks<T, 8, ACC>(a, sm_count, stream);
}

}  // namespace

bool mma_smem_sums(int k, int d) {
    const size_t kpad = (static_cast<size_t>(k) + 7) / 8 * 8;
    const int dpad = mma_row_stride(d);
    return stage_bytes(dpad) + kpad * static_cast<size_t>(dpad) * 2 + partial_bytes(k, d) <= kSmemMax;
}

int mma_row_stride(int d) {
    const int ks = (d + 15) / 16;
    const int ks_pad = ks <= 1 ? 1 : ks <= 2 ? 2 : ks <= 4 ? 4 : 8;
    return 16 * ks_pad + 8;
}

void launch_mma_assign(const MmaArgs& a, int sm_count, cudaStream_t stream) {
    PKV_ASSERT(a.d >= 1 && a.d <= kMmaMaxDim && a.k >= 1 && a.kpad % 8 == 0 && a.dpad == mma_row_stride(a.d));
    PKV_ASSERT((a.sums == nullptr) == (a.counts == nullptr));
    if (a.n_tiles == 0) return;
    with_element(a, [&](auto t) {
        with_sums(a, [&](auto acc) { launch_t<decltype(t), decltype(acc)::value>(a, sm_count, stream); });
    });
}

}  // namespace pkv::cuda::detail
