// pkv/cuda/kmeans_sorted_sums.cu — centroid sums for large k by a sorted reduction:
// histogram of the labels, counting-sort scatter of row indices, then one warp per run
// of rows of a cluster summing exact fixed-point coordinates in registers. Used by the
// batched pass when k x d partial sums do not fit in shared memory (kmeans_assign.h).
#include <algorithm>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/kmeans_assign.cuh"

namespace pkv::cuda::detail {
namespace {

constexpr int kThreads = 256;

// Segment of a row tile (segments are sorted by tile0).
__device__ __forceinline__ int segment_of(const MmaSegment* segs, int n_segs, int64_t tile) {
    int lo = 0, hi = n_segs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (segs[mid].tile0 <= tile) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// Per-row kernels (one thread per row of the launch's tiles, one device atomic each):
// only for k too large for the block-aggregated kernels' shared-memory counters.
__global__ void histogram_rows_kernel(const MmaSegment* __restrict__ segs, int n_segs, int64_t n_rows, int k,
                                      unsigned long long* __restrict__ hist, unsigned long long* __restrict__ counts) {
    for (int64_t r = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; r < n_rows; r += int64_t{gridDim.x} * blockDim.x) {
        const int64_t tile = r / kBlockRows;
        const MmaSegment& s = segs[segment_of(segs, n_segs, tile)];
        const int64_t row = r - s.tile0 * kBlockRows;
        if (row >= s.rows) continue;
        atomicAdd(hist + int64_t{s.task} * k + s.labels[row], 1ull);
        atomicAdd(counts + int64_t{s.task} * k + s.labels[row], 1ull);
    }
}

__global__ void scatter_rows_kernel(const MmaSegment* __restrict__ segs, int n_segs, int64_t n_rows, int k,
                                    unsigned int* __restrict__ cursor, unsigned int* __restrict__ idx) {
    for (int64_t r = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; r < n_rows; r += int64_t{gridDim.x} * blockDim.x) {
        const int64_t tile = r / kBlockRows;
        const MmaSegment& s = segs[segment_of(segs, n_segs, tile)];
        const int64_t row = r - s.tile0 * kBlockRows;
        if (row >= s.rows) continue;
        const unsigned int pos = atomicAdd(cursor + int64_t{s.task} * k + s.labels[row], 1u);
        idx[pos] = static_cast<unsigned int>(s.xrow + row);
    }
}

// Block-aggregated kernels: block b takes a contiguous range of tiles and walks it in
// runs of one task (consecutive segments of one task form one run). Per-row device
// atomics on k addresses serialise in L2 (at k = 16, 10^7 rows took milliseconds);
// here rows count in shared memory and a run adds each nonzero count to the device
// once. At most kAggMaxK labels (two 32-bit counters each in shared memory).
constexpr int kAggMaxK = 6144;  // 48 KB of counters: no opt-in to more shared memory
static_assert(kThreads == kBlockRows, "one thread a row of a tile");

struct TileRange {
    int64_t begin, end;
};
__device__ __forceinline__ TileRange block_tiles(int64_t n_tiles) {
    const int64_t per = (n_tiles + gridDim.x - 1) / gridDim.x;
    const int64_t b = blockIdx.x * per;
    return {b, min(n_tiles, b + per)};
}

// Calls f(seg, tile) for every tile of the run of task segs[seg].task that starts at
// tile `begin` (seg its segment), up to `end`; returns the tile after the run.
template <typename F>
__device__ __forceinline__ int64_t run_tiles(const MmaSegment* segs, int n_segs, int& seg, int64_t begin, int64_t end,
                                             F&& f) {
    const int task = segs[seg].task;
    int64_t tile = begin;
    for (; tile < end; ++tile) {
        int s2 = seg;
        while (s2 + 1 < n_segs && segs[s2 + 1].tile0 <= tile) ++s2;
        if (segs[s2].task != task) break;
        seg = s2;
        f(seg, tile);
    }
    return tile;
}

// A block's walk over its tiles: the range and the segment cursor.
struct BlockWalk {
    TileRange tr;
    int seg = 0;
};

// A block's start: its walk, with its k shared-memory counters zeroed and the cursor on
// the segment of its first tile; false when it has no tiles.
__device__ __forceinline__ bool block_start(const MmaSegment* segs, int n_segs, int64_t n_tiles, int k,
                                            unsigned int* s_cnt, BlockWalk& w) {
    w.tr = block_tiles(n_tiles);
    if (w.tr.begin >= w.tr.end) return false;
    for (int i = threadIdx.x; i < k; i += kThreads) s_cnt[i] = 0u;
    __syncthreads();
    w.seg = segment_of(segs, n_segs, w.tr.begin);
    return true;
}

// The task of `tile`, seg advanced to its segment (tiles only grow).
__device__ __forceinline__ int task_of(const MmaSegment* segs, int n_segs, int& seg, int64_t tile) {
    while (seg + 1 < n_segs && segs[seg + 1].tile0 <= tile) ++seg;
    return segs[seg].task;
}

// Counts the labels of the run of tiles starting at `tile` into s_cnt (shared-memory
// atomics); returns the tile after the run.
__device__ __forceinline__ int64_t count_run(const MmaSegment* segs, int n_segs, int& seg, int64_t tile, int64_t end,
                                             unsigned int* s_cnt) {
    return run_tiles(segs, n_segs, seg, tile, end, [&](int sg, int64_t t) {
        const MmaSegment& s = segs[sg];
        const int64_t row = (t - s.tile0) * kBlockRows + threadIdx.x;
        if (row < s.rows) atomicAdd(s_cnt + s.labels[row], 1u);
    });
}

// One pass over a block's runs. kScatter false (histogram): hist and counts += the
// run's label counts. kScatter true: one device atomic per nonzero count reserves the
// run's places in its cluster (cursor), then a second walk over the run puts every row
// at the next place of its cluster.
template <bool kScatter>
__global__ void label_runs_kernel(const MmaSegment* __restrict__ segs, int n_segs, int64_t n_tiles, int k,
                                  unsigned long long* __restrict__ hist, unsigned long long* __restrict__ counts,
                                  unsigned int* __restrict__ cursor, unsigned int* __restrict__ idx) {
    extern __shared__ unsigned int s_cnt[];
    unsigned int* s_base = s_cnt + k;  // scatter only
    BlockWalk w;
    if (!block_start(segs, n_segs, n_tiles, k, s_cnt, w)) return;
    int& seg = w.seg;
    for (int64_t tile = w.tr.begin; tile < w.tr.end;) {
        const int task = task_of(segs, n_segs, seg, tile);
        const int seg0 = seg;
        const int64_t next = count_run(segs, n_segs, seg, tile, w.tr.end, s_cnt);
        __syncthreads();
        for (int i = threadIdx.x; i < k; i += kThreads) {
            const unsigned int c = s_cnt[i];
            if (c != 0u) {
                if constexpr (kScatter) {
                    s_base[i] = atomicAdd(cursor + int64_t{task} * k + i, c);
                } else {
                    atomicAdd(hist + int64_t{task} * k + i, static_cast<unsigned long long>(c));
                    atomicAdd(counts + int64_t{task} * k + i, static_cast<unsigned long long>(c));
                }
            }
            s_cnt[i] = 0u;
        }
        __syncthreads();
        if constexpr (kScatter) {
            seg = seg0;
            run_tiles(segs, n_segs, seg, tile, w.tr.end, [&](int sg, int64_t t) {
                const MmaSegment& s = segs[sg];
                const int64_t row = (t - s.tile0) * kBlockRows + threadIdx.x;
                if (row < s.rows) {
                    const int l = s.labels[row];
                    idx[s_base[l] + atomicAdd(s_cnt + l, 1u)] = static_cast<unsigned int>(s.xrow + row);
                }
            });
            __syncthreads();
            for (int i = threadIdx.x; i < k; i += kThreads) s_cnt[i] = 0u;
            __syncthreads();
        }
        tile = next;
    }
}

// The scatter for k <= kSortMaxK: a block takes up to kSortRows rows of one task at a
// time (whole tiles of its range), sorts them by cluster in shared memory (counts, one
// device atomic per nonzero count for the places, a scan for the local starts), then
// writes each cluster's rows to consecutive places of idx, where label_runs_kernel
// writes every index to a place of its own (a 32-byte sector each). At large k a
// cluster has too few rows of a block for the local sort to pay (about 4 at k = 1024),
// hence the limit.
constexpr int kSortTiles = 16;
constexpr int kSortRows = kSortTiles * kBlockRows;
constexpr int kSortMaxK = 256;
// [count, local start, place in idx: k each][label, rank, row, sorted row, sorted label:
// kSortRows each]
size_t sort_scatter_smem(int k) { return (3 * static_cast<size_t>(k) + 5 * kSortRows) * 4; }

// Inclusive scan over the threads of a block (THREADS of them, a multiple of 32) of N
// sequences at once, one value of each a thread: a warp-shuffle scan, then one over the
// warps' totals. tot gets the block's totals (every thread).
template <int THREADS, int N>
__device__ __forceinline__ void block_scan(unsigned long long (&v)[N], unsigned long long (&tot)[N]) {
    static_assert(THREADS % 32 == 0 && THREADS <= 1024, "whole warps, at most 32");
    constexpr int kWarpsN = THREADS / 32;
    __shared__ unsigned long long s_w[N][kWarpsN];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    auto warp_scan = [&](unsigned long long(&x)[N]) {
#pragma unroll
        for (int off = 1; off < 32; off <<= 1)
#pragma unroll
            for (int i = 0; i < N; ++i) {
                const unsigned long long y = __shfl_up_sync(0xffffffffu, x[i], off);
                if (lane >= off) x[i] += y;
            }
    };
    warp_scan(v);
    if (lane == 31)
#pragma unroll
        for (int i = 0; i < N; ++i) s_w[i][warp] = v[i];
    __syncthreads();
    if (warp == 0) {
        unsigned long long w[N];
#pragma unroll
        for (int i = 0; i < N; ++i) w[i] = lane < kWarpsN ? s_w[i][lane] : 0ull;
        warp_scan(w);
        if (lane < kWarpsN)
#pragma unroll
            for (int i = 0; i < N; ++i) s_w[i][lane] = w[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < N; ++i) {
        if (warp > 0) v[i] += s_w[i][warp - 1];
        tot[i] = s_w[i][kWarpsN - 1];
    }
    __syncthreads();  // s_w may be reused
}

// Exclusive scan of in[0, n) into out (n <= kSortMaxK, kThreads threads).
__device__ __forceinline__ void block_exclusive_scan(const unsigned int* in, unsigned int* out, int n) {
    constexpr int kPer = kSortMaxK / kThreads;
    const int b = threadIdx.x * kPer;
    unsigned int own = 0;
#pragma unroll
    for (int i = 0; i < kPer; ++i) own += b + i < n ? in[b + i] : 0u;
    unsigned long long v[1] = {own}, tot[1];
    block_scan<kThreads, 1>(v, tot);
    unsigned int run = static_cast<unsigned int>(v[0]) - own;
#pragma unroll
    for (int i = 0; i < kPer; ++i)
        if (b + i < n) {
            out[b + i] = run;
            run += in[b + i];
        }
    __syncthreads();
}

__global__ void sort_scatter_kernel(const MmaSegment* __restrict__ segs, int n_segs, int64_t n_tiles, int k,
                                    unsigned int* __restrict__ cursor, unsigned int* __restrict__ idx) {
    extern __shared__ unsigned int s_mem[];
    unsigned int* s_cnt = s_mem;
    unsigned int* s_off = s_cnt + k;
    unsigned int* s_base = s_off + k;
    unsigned int* s_lab = s_base + k;
    unsigned int* s_rank = s_lab + kSortRows;
    unsigned int* s_row = s_rank + kSortRows;
    unsigned int* s_srow = s_row + kSortRows;
    unsigned int* s_slab = s_srow + kSortRows;
    BlockWalk w;
    if (!block_start(segs, n_segs, n_tiles, k, s_cnt, w)) return;
    for (int64_t tile = w.tr.begin; tile < w.tr.end;) {
        // Up to kSortTiles tiles of one task: labels, ranks within their cluster.
        const int task = task_of(segs, n_segs, w.seg, tile);
        const int64_t first = tile;
        tile = run_tiles(segs, n_segs, w.seg, tile, min(w.tr.end, tile + kSortTiles), [&](int sg, int64_t t) {
            const MmaSegment& s = segs[sg];
            const int64_t row = (t - s.tile0) * kBlockRows + threadIdx.x;
            const int j = static_cast<int>(t - first) * kBlockRows + threadIdx.x;
            unsigned int l = 0xffffffffu;
            if (row < s.rows) {
                l = static_cast<unsigned int>(s.labels[row]);
                s_rank[j] = atomicAdd(s_cnt + l, 1u);
                s_row[j] = static_cast<unsigned int>(s.xrow + row);
            }
            s_lab[j] = l;
        });
        const int nt = static_cast<int>(tile - first);
        __syncthreads();
        block_exclusive_scan(s_cnt, s_off, k);
        for (int i = threadIdx.x; i < k; i += kThreads) {
            const unsigned int c = s_cnt[i];
            if (c != 0u) s_base[i] = atomicAdd(cursor + int64_t{task} * k + i, c);
        }
        for (int j = threadIdx.x; j < nt * kBlockRows; j += kThreads) {
            const unsigned int l = s_lab[j];
            if (l == 0xffffffffu) continue;
            const unsigned int p = s_off[l] + s_rank[j];
            s_srow[p] = s_row[j];
            s_slab[p] = l;
        }
        __syncthreads();
        const unsigned int m = s_off[k - 1] + s_cnt[k - 1];
        for (unsigned int p = threadIdx.x; p < m; p += kThreads) {
            const unsigned int l = s_slab[p];
            idx[s_base[l] + (p - s_off[l])] = s_srow[p];
        }
        __syncthreads();
        for (int i = threadIdx.x; i < k; i += kThreads) s_cnt[i] = 0u;
        __syncthreads();
    }
}

// Two kernels over blocks of kBuildThreads slots (one thread a slot): the first writes
// every block's rows and items, the second gives each block the sum of the blocks before
// it, scans its own slots and writes their cursors and items, so that tens of thousands
// of slots (90 tasks x k = 256) do not wait on one block's serial scan.
constexpr int kBuildThreads = 1024;

__device__ __forceinline__ unsigned long long items_of(unsigned long long h, unsigned int item_rows) {
    return (h + item_rows - 1) / item_rows;
}

__global__ void __launch_bounds__(kBuildThreads)
    block_totals_kernel(const unsigned long long* __restrict__ hist, int slots, unsigned int item_rows,
                        unsigned long long* __restrict__ totals) {
    const int i = blockIdx.x * kBuildThreads + threadIdx.x;
    const unsigned long long h = i < slots ? hist[i] : 0ull;
    unsigned long long v[2] = {h, items_of(h, item_rows)}, tot[2];
    block_scan<kBuildThreads, 2>(v, tot);
    if (threadIdx.x == 0) {
        totals[2 * blockIdx.x] = tot[0];
        totals[2 * blockIdx.x + 1] = tot[1];
    }
}

__global__ void __launch_bounds__(kBuildThreads)
    build_items_kernel(const unsigned long long* __restrict__ hist, int slots, int k, unsigned int item_rows,
                       const unsigned long long* __restrict__ totals, unsigned int* __restrict__ cursor,
                       SumItem* __restrict__ items, unsigned long long* __restrict__ n_items) {
    // The blocks before this one: rows and items, summed by the whole block.
    unsigned long long before[2] = {0ull, 0ull}, tot[2];
    for (unsigned int b = threadIdx.x; b < blockIdx.x; b += kBuildThreads) {
        before[0] += totals[2 * b];
        before[1] += totals[2 * b + 1];
    }
    block_scan<kBuildThreads, 2>(before, tot);
    const unsigned long long base_r = tot[0], base_q = tot[1];

    const int i = blockIdx.x * kBuildThreads + threadIdx.x;
    const unsigned long long h = i < slots ? hist[i] : 0ull, nq = items_of(h, item_rows);
    unsigned long long v[2] = {h, nq};
    block_scan<kBuildThreads, 2>(v, tot);
    if (blockIdx.x + 1 == gridDim.x && threadIdx.x == 0) n_items[0] = base_q + tot[1];
    if (i >= slots) return;
    const unsigned long long run = base_r + v[0] - h;
    unsigned long long it = base_q + v[1] - nq;
    cursor[i] = static_cast<unsigned int>(run);
    for (unsigned long long p = 0; p < h; p += item_rows) {
        SumItem x;
        x.begin = static_cast<unsigned int>(run + p);
        x.end = static_cast<unsigned int>(run + min(h, p + item_rows));
        x.slot = i;
        x.task = i / k;
        items[it++] = x;
    }
}

__device__ __forceinline__ float2 pair_to_float2(unsigned int v, bool bf16) {
    if (bf16) return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
    return __half22float2(*reinterpret_cast<const __half2*>(&v));
}

// Lane l owns columns 2l, 2l + 1 (+ 64, + 65 for d > 64) of every row of the item;
// four rows are in flight per step.
template <int PAIRS>
__global__ void segment_sums_kernel(const unsigned short* __restrict__ x, bool bf16, int d,
                                    const unsigned int* __restrict__ idx, const SumItem* __restrict__ items,
                                    const unsigned long long* __restrict__ n_items_p, const float* __restrict__ scale,
                                    unsigned long long* __restrict__ sums) {
    const int64_t n_items = static_cast<int64_t>(*n_items_p);
    const int lane = threadIdx.x & 31;
    const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
    for (int64_t it = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / 32; it < n_items; it += warps) {
        const SumItem item = items[it];
        const float sc = scale[item.task];
        long long acc[PAIRS][2] = {};
        for (unsigned int p = item.begin; p < item.end; p += 4) {
            unsigned int v[4][PAIRS];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const bool ok = p + u < item.end;
                const unsigned short* row = x + (ok ? static_cast<int64_t>(__ldg(idx + p + u)) * d : 0);
#pragma unroll
                for (int q = 0; q < PAIRS; ++q) {
                    const int col = 2 * lane + 64 * q;
                    unsigned int w = 0u;
                    if (ok && col < d) {
                        if ((d & 1) == 0) {
                            w = __ldg(reinterpret_cast<const unsigned int*>(row + col));
                        } else {
                            const unsigned int lo = __ldg(row + col);
                            const unsigned int hi = col + 1 < d ? __ldg(row + col + 1) : 0u;
                            w = lo | (hi << 16);
                        }
                    }
                    v[u][q] = w;
                }
            }
#pragma unroll
            for (int u = 0; u < 4; ++u)
#pragma unroll
                for (int q = 0; q < PAIRS; ++q) {
                    const float2 f = pair_to_float2(v[u][q], bf16);
                    acc[q][0] += __float2ll_rn(f.x * sc);
                    acc[q][1] += __float2ll_rn(f.y * sc);
                }
        }
        unsigned long long* dst = sums + static_cast<int64_t>(item.slot) * d;
#pragma unroll
        for (int q = 0; q < PAIRS; ++q) {
            const int col = 2 * lane + 64 * q;
            if (col < d && acc[q][0] != 0) atomicAdd(dst + col, static_cast<unsigned long long>(acc[q][0]));
            if (col + 1 < d && acc[q][1] != 0) atomicAdd(dst + col + 1, static_cast<unsigned long long>(acc[q][1]));
        }
    }
}

// d a multiple of 8 (32 < d <= 128): rows read as 16-byte pieces, PP lanes a row (d / 8
// of them busy), 32 / PP rows a load, U loads in flight; lane (r = lane / PP, c = lane %
// PP) sums columns 8c..8c+7 of its rows in int64, then lanes of one c add up by shuffles.
// Fewer loads and address computations than the pair kernel above.
template <int PP, int U>
__global__ void segment_sums16_kernel(const uint4* __restrict__ x, bool bf16, int d,
                                      const unsigned int* __restrict__ idx, const SumItem* __restrict__ items,
                                      const unsigned long long* __restrict__ n_items_p, const float* __restrict__ scale,
                                      unsigned long long* __restrict__ sums) {
    const int64_t n_items = static_cast<int64_t>(*n_items_p);
    constexpr int R = 32 / PP;
    const int lane = threadIdx.x & 31, r = lane / PP, c = lane % PP;
    const int pieces = d / 8;
    const bool col_ok = c < pieces;
    const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
    for (int64_t it = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / 32; it < n_items; it += warps) {
        const SumItem item = items[it];
        const float sc = scale[item.task];
        long long acc[8] = {};
        for (unsigned int p = item.begin; p < item.end; p += R * U) {
            uint4 v[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const unsigned int pos = p + u * R + r;
                v[u] = pos < item.end && col_ok ? __ldg(x + static_cast<int64_t>(__ldg(idx + pos)) * pieces + c)
                                                : make_uint4(0u, 0u, 0u, 0u);
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const unsigned int w[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const float2 f = pair_to_float2(w[q], bf16);
                    acc[2 * q] += __float2ll_rn(f.x * sc);
                    acc[2 * q + 1] += __float2ll_rn(f.y * sc);
                }
            }
        }
#pragma unroll
        for (int off = PP; off < 32; off <<= 1)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], off);
        if (r == 0 && col_ok) {
            unsigned long long* dst = sums + static_cast<int64_t>(item.slot) * d + 8 * c;
#pragma unroll
            for (int e = 0; e < 8; ++e)
                if (acc[e] != 0) atomicAdd(dst + e, static_cast<unsigned long long>(acc[e]));
        }
    }
}

int grid_for(int64_t work, int per_block) {
    const int64_t g = (work + per_block - 1) / per_block;
    return static_cast<int>(g < 1 ? 1 : (g > 65535 ? 65535 : g));
}

}  // namespace

// Blocks of the aggregated kernels: enough to fill the device several times over while
// each run's device atomics (k per block) stay few.
constexpr int kAggBlocks = 1024;

void launch_label_histogram(const MmaSegment* segs, int n_segs, int64_t n_tiles, int k, unsigned long long* hist,
                            unsigned long long* counts, cudaStream_t stream) {
    const int64_t rows = n_tiles * kBlockRows;
    if (rows == 0) return;
    if (k <= kAggMaxK) {
        const int grid = static_cast<int>(std::min<int64_t>(n_tiles, kAggBlocks));
        label_runs_kernel<false><<<grid, kThreads, static_cast<size_t>(k) * 4, stream>>>(segs, n_segs, n_tiles, k, hist,
                                                                                         counts, nullptr, nullptr);
    } else {
        histogram_rows_kernel<<<grid_for(rows, kThreads), kThreads, 0, stream>>>(segs, n_segs, rows, k, hist, counts);
    }
    PKV_CUDA_CHECK(cudaGetLastError());
}

void launch_label_scatter(const MmaSegment* segs, int n_segs, int64_t n_tiles, int k, unsigned int* cursor,
                          unsigned int* idx, cudaStream_t stream) {
    const int64_t rows = n_tiles * kBlockRows;
    if (rows == 0) return;
    if (k <= kSortMaxK) {
        const size_t smem = sort_scatter_smem(k);
        PKV_CUDA_CHECK(cudaFuncSetAttribute(sort_scatter_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
        const int grid = static_cast<int>(std::min<int64_t>((n_tiles + kSortTiles - 1) / kSortTiles, kAggBlocks));
        sort_scatter_kernel<<<grid, kThreads, smem, stream>>>(segs, n_segs, n_tiles, k, cursor, idx);
    } else if (k <= kAggMaxK) {
        const int grid = static_cast<int>(std::min<int64_t>(n_tiles, kAggBlocks));
        label_runs_kernel<true><<<grid, kThreads, static_cast<size_t>(k) * 8, stream>>>(segs, n_segs, n_tiles, k,
                                                                                        nullptr, nullptr, cursor, idx);
    } else {
        scatter_rows_kernel<<<grid_for(rows, kThreads), kThreads, 0, stream>>>(segs, n_segs, rows, k, cursor, idx);
    }
    PKV_CUDA_CHECK(cudaGetLastError());
}

int64_t build_items_scratch(int slots) { return 2 * ((int64_t{slots} + kBuildThreads - 1) / kBuildThreads); }

void launch_build_items(const unsigned long long* hist, int slots, int k, unsigned int item_rows,
                        unsigned long long* scratch, unsigned int* cursor, SumItem* items, unsigned long long* n_items,
                        cudaStream_t stream) {
    PKV_ASSERT(slots >= 1 && k >= 1 && item_rows >= 1);
    const int blocks = static_cast<int>((int64_t{slots} + kBuildThreads - 1) / kBuildThreads);
    block_totals_kernel<<<blocks, kBuildThreads, 0, stream>>>(hist, slots, item_rows, scratch);
    PKV_CUDA_CHECK(cudaGetLastError());
    build_items_kernel<<<blocks, kBuildThreads, 0, stream>>>(hist, slots, k, item_rows, scratch, cursor, items,
                                                             n_items);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void launch_segment_sums(const void* x, bool bf16, int d, const unsigned int* idx, const SumItem* items,
                         const unsigned long long* n_items, int64_t max_items, const float* scale,
                         unsigned long long* sums, cudaStream_t stream) {
    if (max_items == 0) return;
    PKV_ASSERT(d >= 1 && d <= 128);
    const auto* xs = static_cast<const unsigned short*>(x);
    const int grid = grid_for(max_items, kThreads / 32);
    if (d % 8 == 0 && d > 32) {
        const auto* x16 = static_cast<const uint4*>(x);
        if (d <= 64)
            segment_sums16_kernel<8, 4><<<grid, kThreads, 0, stream>>>(x16, bf16, d, idx, items, n_items, scale, sums);
        else
            segment_sums16_kernel<16, 4><<<grid, kThreads, 0, stream>>>(x16, bf16, d, idx, items, n_items, scale, sums);
    } else if (d <= 64) {
        segment_sums_kernel<1><<<grid, kThreads, 0, stream>>>(xs, bf16, d, idx, items, n_items, scale, sums);
    } else {
        segment_sums_kernel<2><<<grid, kThreads, 0, stream>>>(xs, bf16, d, idx, items, n_items, scale, sums);
    }
    PKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pkv::cuda::detail
