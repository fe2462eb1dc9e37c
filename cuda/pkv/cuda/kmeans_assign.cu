// pkv/cuda/kmeans_assign.cu — the fp32-FMA assignment kernel with fused centroid sums
// (fp32 input, and fp16 input with d > 128) and the small kernels of the batched pass
// (conversions, max|x|, objective partials). See kmeans_assign.h for the semantics.
#include "pkv/cuda/kmeans_assign.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "pkv/core/half.h"
#include "pkv/cuda/check.cuh"
#include "pkv/cuda/device.h"
#include "pkv/cuda/kmeans_assign.cuh"

namespace pkv::cuda {
namespace detail {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunkDims = 32;  // dimensions staged per shared-memory step
// Private per-block sums live in shared memory up to this size; beyond it every
// coordinate goes straight to a global atomic (then k is large, so contention is low).
constexpr size_t kSmemAccMax = 96 * 1024;

__device__ __forceinline__ float load_f(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }

// One persistent block walks tiles of BN = (kThreads / (BK / 4)) * TM points. For
// each tile it loops over centroid tiles of BK and dimension chunks of kChunkDims;
// thread (ty, tx) owns points ty + TY*i (i < TM) and centroids tx + TX*j (j < 4) of
// the tile, so one step costs TM + 4 shared loads for 4*TM FMAs. The TX threads that
// share points sit in consecutive lanes and merge their (score, index) minima with
// shuffles; the lower index wins equal scores, as in the CPU assigner. A warp per
// point then recomputes ||x - c||² directly and, when ACC, adds the point to its
// cluster's fixed-point sums (shared-memory partials flushed once per block when
// smem_acc, else global atomics).
// x: [rows x d] T; centroids [k x d] float; labels/dist2 [rows]; sums [k x d], counts [k].
template <typename T, int BK, int TM, bool ACC>
__global__ void __launch_bounds__(kThreads) assign_kernel(AssignArgs a, bool smem_acc) {
    constexpr int TX = BK / 4;
    constexpr int TY = kThreads / TX;
    constexpr int BN = TY * TM;
    __shared__ float xs[kChunkDims][BN + 1];  // +1: conflict-free transposed stores
    __shared__ float cs[kChunkDims][BK + 1];
    __shared__ int s_labels[BN];
    extern __shared__ unsigned long long s_acc[];

    const T* __restrict__ x = static_cast<const T*>(a.x);
    const float* __restrict__ cent = a.centroids;
    const int d = a.d;
    const int k = a.k;
    const int64_t rows = a.rows;
    const int tid = threadIdx.x;
    const int tx = tid % TX;
    const int ty = tid / TX;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int64_t kd = int64_t{k} * d;

    unsigned long long* sums = a.sums;
    unsigned long long* counts = a.counts;
    if (ACC && smem_acc) {
        for (int64_t i = tid; i < kd + k; i += kThreads) s_acc[i] = 0ull;
        sums = s_acc;
        counts = s_acc + kd;
        __syncthreads();
    }

    const int64_t n_tiles = (rows + BN - 1) / BN;
    for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const int64_t p0 = tile * BN;
        float best_d[TM];
        int best_i[TM];
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            best_d[i] = INFINITY;
            best_i[i] = INT_MAX;
        }
        for (int c0 = 0; c0 < k; c0 += BK) {
            float acc[TM][4];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
            for (int d0 = 0; d0 < d; d0 += kChunkDims) {
                __syncthreads();  // previous step's readers are done
                for (int e = tid; e < BN * kChunkDims; e += kThreads) {
                    const int p = e / kChunkDims, t = e % kChunkDims;
                    const int64_t row = p0 + p;
                    const int col = d0 + t;
                    xs[t][p] = (row < rows && col < d) ? load_f(x + row * d + col) : 0.0f;
                }
                for (int e = tid; e < BK * kChunkDims; e += kThreads) {
                    const int j = e / kChunkDims, t = e % kChunkDims;
                    const int cj = c0 + j, col = d0 + t;
                    cs[t][j] = (cj < k && col < d) ? __ldg(cent + int64_t{cj} * d + col) : 0.0f;
                }
                __syncthreads();
#pragma unroll 8
                for (int t = 0; t < kChunkDims; ++t) {
                    float xv[TM], cv[4];
#pragma unroll
                    for (int i = 0; i < TM; ++i) xv[i] = xs[t][ty + TY * i];
#pragma unroll
                    for (int j = 0; j < 4; ++j) cv[j] = cs[t][tx + TX * j];
#pragma unroll
                    for (int i = 0; i < TM; ++i)
#pragma unroll
                        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(xv[i], cv[j], acc[i][j]);
                }
            }
            // This thread's centroid indices grow with j and c0, so strict '<' keeps
            // the lowest index among its own equal scores.
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int cj = c0 + tx + TX * j;
                if (cj >= k) continue;
                const float cn = __ldg(a.c_norm2 + cj);
#pragma unroll
                for (int i = 0; i < TM; ++i) {
                    const float s = cn - 2.0f * acc[i][j];
                    if (s < best_d[i]) {
                        best_d[i] = s;
                        best_i[i] = cj;
                    }
                }
            }
        }
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            float bd = best_d[i];
            int bi = best_i[i];
#pragma unroll
            for (int off = TX / 2; off > 0; off >>= 1) {
                const float od = __shfl_xor_sync(0xffffffffu, bd, off);
                const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
                if (od < bd || (od == bd && oi < bi)) {
                    bd = od;
                    bi = oi;
                }
            }
            // All scores NaN or +inf: fall back to centroid 0, as a scalar loop would.
            if (tx == 0) s_labels[ty + TY * i] = bi == INT_MAX ? 0 : bi;
        }
        __syncthreads();

        for (int p = warp; p < BN; p += kWarps) {
            const int64_t row = p0 + p;
            if (row >= rows) break;
            const int l = s_labels[p];
            const T* xr = x + row * d;
            const float* cr = cent + int64_t{l} * d;
            float s = 0.0f;
            for (int t = lane; t < d; t += 32) {
                const float xv = load_f(xr + t);
                const float diff = xv - __ldg(cr + t);
                s = fmaf(diff, diff, s);
                if (ACC) {
                    const long long q = __double2ll_rn(static_cast<double>(xv) * a.scale);
                    atomicAdd(sums + int64_t{l} * d + t, static_cast<unsigned long long>(q));
                }
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
            if (lane == 0) {
                a.labels[row] = l;
                a.dist2[row] = s;
                if (ACC) atomicAdd(counts + l, 1ull);
            }
        }
    }

    if (ACC && smem_acc) {
        __syncthreads();
        for (int64_t i = tid; i < kd + k; i += kThreads) {
            const unsigned long long v = s_acc[i];
            if (v != 0ull) atomicAdd(i < kd ? a.sums + i : a.counts + (i - kd), v);
        }
    }
}

template <typename T, int BK, int TM, bool ACC>
void launch_tiled(const AssignArgs& a, int sm_count, cudaStream_t stream) {
    constexpr int BN = (kThreads / (BK / 4)) * TM;
    auto kernel = assign_kernel<T, BK, TM, ACC>;
    const size_t acc_bytes = (static_cast<size_t>(a.k) * a.d + a.k) * sizeof(unsigned long long);
    bool smem_acc = ACC && acc_bytes <= kSmemAccMax;
    size_t dyn = smem_acc ? acc_bytes : 0;
    // The kernel's static tiles plus the dynamic accumulator can pass the 48 KiB a
    // launch gets by default, so the opt-in limit is always raised; if the block
    // still does not fit, the sums go straight to global atomics instead.
    int per_sm = 0;
    if (dyn > 0) {
        if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn)) ==
            cudaSuccess)
            PKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, dyn));
        else cudaGetLastError();
        if (per_sm == 0) smem_acc = false, dyn = 0;
    }
    if (dyn == 0) PKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
    PKV_CHECK(per_sm > 0, cuda, "cuda assigner: kernel for k = {}, d = {} does not fit on the device", a.k, a.d);
    const int64_t n_tiles = (a.rows + BN - 1) / BN;
    const int grid = static_cast<int>(std::min<int64_t>(n_tiles, int64_t{per_sm} * sm_count));
    kernel<<<grid, kThreads, dyn, stream>>>(a, smem_acc);
    PKV_CUDA_CHECK(cudaGetLastError());
}

template <typename T, bool ACC>
void launch_by_k(const AssignArgs& a, int sm_count, cudaStream_t stream) {
    // Narrow centroid tiles for small k keep the FMAs on real centroids.
    if (a.k <= 16) launch_tiled<T, 16, 2, ACC>(a, sm_count, stream);
    else if (a.k <= 32) launch_tiled<T, 32, 4, ACC>(a, sm_count, stream);
    else launch_tiled<T, 64, 8, ACC>(a, sm_count, stream);
}

// out[0] = max(out[0], max_i bits(|x_i|)); non-negative floats order like their bits.
template <typename T>
__global__ void max_abs_kernel(const T* __restrict__ x, int64_t n, unsigned int* out) {
    unsigned int m = 0;
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        m = max(m, __float_as_uint(fabsf(load_f(x + i))));
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, off));
    if ((threadIdx.x & 31) == 0) atomicMax(out, m);
}

__global__ void max_abs_bf16_kernel(const __nv_bfloat16* __restrict__ x, int64_t n, unsigned int* out) {
    unsigned int m = 0;
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        m = max(m, __float_as_uint(fabsf(__bfloat162float(x[i]))));
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, off));
    if ((threadIdx.x & 31) == 0) atomicMax(out, m);
}

// One thread per 32-row slot, rows in order.
__global__ void tile_objective_kernel(const float* __restrict__ dist2, int64_t rows, double* __restrict__ out) {
    const int64_t slots = (rows + kObjSlotRows - 1) / kObjSlotRows;
    for (int64_t s = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; s < slots; s += int64_t{gridDim.x} * blockDim.x) {
        double v = 0.0;
        const int64_t end = std::min<int64_t>(rows, (s + 1) * kObjSlotRows);
        for (int64_t r = s * kObjSlotRows; r < end; ++r) v += static_cast<double>(dist2[r]);
        out[s] = v;
    }
}

// One warp per padded centroid row.
__global__ void prep_centroids_kernel(const float* __restrict__ c32, int tasks, int k, int d, int kpad, int dpad,
                                      bool bf16, unsigned short* __restrict__ out, float* __restrict__ cnh,
                                      unsigned int* __restrict__ bad) {
    const int lane = threadIdx.x & 31;
    const int64_t rows = int64_t{tasks} * kpad;
    for (int64_t r = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / 32; r < rows;
         r += int64_t{gridDim.x} * blockDim.x / 32) {
        const int task = static_cast<int>(r / kpad), j = static_cast<int>(r % kpad);
        unsigned short* o = out + r * dpad;
        double s = 0.0;
        bool finite = true;
        for (int t = lane; t < dpad; t += 32) {
            unsigned short h = 0;
            if (j < k && t < d) {
                const float v = c32[(int64_t{task} * k + j) * d + t];
                float back;
                if (bf16) {
                    const __nv_bfloat16 b = __float2bfloat16_rn(v);
                    h = *reinterpret_cast<const unsigned short*>(&b);
                    back = __bfloat162float(b);
                } else {
                    const __half b = __float2half_rn(v);
                    h = *reinterpret_cast<const unsigned short*>(&b);
                    back = __half2float(b);
                }
                finite = finite && isfinite(back);
                s += static_cast<double>(back) * back;
            }
            o[t] = h;
        }
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        const bool all_finite = __all_sync(0xffffffffu, finite);
        if (lane == 0) {
            cnh[r] = j < k ? static_cast<float>(-0.5 * s) : -INFINITY;
            if (!all_finite) atomicMin(bad, static_cast<unsigned int>(task * k + j));
        }
    }
}

// One block per task: thread i adds slots i, i + 256, ... in order, then a fixed tree.
// Objective: chunks of kReduceChunk slots of a task summed by one block each (a fixed
// tree), then each task's chunk sums by one block (the same tree).
constexpr int kReduceChunk = 4096;

__device__ double block_sum(double v, double* part) {
    part[threadIdx.x] = v;
    __syncthreads();
    for (int w = 128; w > 0; w >>= 1) {
        if (static_cast<int>(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    return part[0];
}

__global__ void reduce_chunks_kernel(const double* __restrict__ slots, const int64_t* __restrict__ slot0, int chunks,
                                     double* __restrict__ out) {
    __shared__ double part[256];
    const int task = blockIdx.y;
    const int64_t begin = slot0[task] + int64_t{blockIdx.x} * kReduceChunk;
    const int64_t end = min(slot0[task + 1], begin + kReduceChunk);
    double v = 0.0;
    for (int64_t i = begin + threadIdx.x; i < end; i += 256) v += slots[i];
    const double s = block_sum(v, part);
    if (threadIdx.x == 0) out[int64_t{task} * chunks + blockIdx.x] = s;
}

__global__ void reduce_tasks_kernel(const double* __restrict__ part_in, int chunks, double* __restrict__ out) {
    __shared__ double part[256];
    const int task = blockIdx.x;
    double v = 0.0;
    for (int i = threadIdx.x; i < chunks; i += 256) v += part_in[int64_t{task} * chunks + i];
    const double s = block_sum(v, part);
    if (threadIdx.x == 0) out[task] = s;
}

int grid_for(int64_t n) { return static_cast<int>(std::clamp<int64_t>((n + 255) / 256, 1, 4096)); }

}  // namespace

void launch_assign(const AssignArgs& a, int sm_count, cudaStream_t stream) {
    PKV_ASSERT(a.rows > 0 && a.d > 0 && a.k > 0 && a.x && a.centroids && a.c_norm2 && a.labels && a.dist2);
    PKV_ASSERT((a.sums == nullptr) == (a.counts == nullptr));
    if (a.half) {
        if (a.sums) launch_by_k<__half, true>(a, sm_count, stream);
        else launch_by_k<__half, false>(a, sm_count, stream);
    } else {
        if (a.sums) launch_by_k<float, true>(a, sm_count, stream);
        else launch_by_k<float, false>(a, sm_count, stream);
    }
}

void launch_max_abs(const void* x, bool half, int64_t n, unsigned int* out, cudaStream_t stream) {
    if (n <= 0) return;
    if (half) max_abs_kernel<<<grid_for(n), 256, 0, stream>>>(static_cast<const __half*>(x), n, out);
    else max_abs_kernel<<<grid_for(n), 256, 0, stream>>>(static_cast<const float*>(x), n, out);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void launch_max_abs_bf16(const void* x, int64_t n, unsigned int* out, cudaStream_t stream) {
    if (n <= 0) return;
    max_abs_bf16_kernel<<<grid_for(n), 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), n, out);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void launch_tile_objective(const float* dist2, int64_t rows, double* out, cudaStream_t stream) {
    if (rows <= 0) return;
    const int64_t slots = (rows + kObjSlotRows - 1) / kObjSlotRows;
    const int grid = static_cast<int>(std::clamp<int64_t>((slots + 255) / 256, 1, 4096));
    tile_objective_kernel<<<grid, 256, 0, stream>>>(dist2, rows, out);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void launch_prep_centroids(const float* c32, int tasks, int k, int d, int kpad, int dpad, bool bf16, void* out,
                           float* cnh, unsigned int* bad, cudaStream_t stream) {
    const int64_t rows = int64_t{tasks} * kpad;
    if (rows == 0) return;
    const int grid = static_cast<int>(std::clamp<int64_t>((rows + 7) / 8, 1, 65535));
    prep_centroids_kernel<<<grid, 256, 0, stream>>>(c32, tasks, k, d, kpad, dpad, bf16,
                                                    static_cast<unsigned short*>(out), cnh, bad);
    PKV_CUDA_CHECK(cudaGetLastError());
}

int reduce_objective_chunks(int64_t max_slots) {
    return static_cast<int>(std::max<int64_t>(1, (max_slots + kReduceChunk - 1) / kReduceChunk));
}

void launch_reduce_objective(const double* slots, const int64_t* slot0, int tasks, int64_t max_slots, double* scratch,
                             double* out, cudaStream_t stream) {
    if (tasks <= 0) return;
    const int chunks = reduce_objective_chunks(max_slots);
    PKV_ASSERT(tasks <= 65535);
    reduce_chunks_kernel<<<dim3(chunks, tasks), 256, 0, stream>>>(slots, slot0, chunks, scratch);
    PKV_CUDA_CHECK(cudaGetLastError());
    reduce_tasks_kernel<<<tasks, 256, 0, stream>>>(scratch, chunks, out);
    PKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace detail
}  // namespace pkv::cuda
