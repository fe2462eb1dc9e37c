// Internal: launchers of the k-means assignment kernels (kernels live in kmeans_assign.cu).
#pragma once

#include <algorithm>
#include <cstdint>

#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/kmeans_assign.h"

namespace pkv::cuda::detail {

/// One chunk of points against all centroids. Device pointers throughout.
struct AssignArgs {
    const void* x = nullptr;  ///< [rows x d], float or __half (see `half`)
    bool half = false;
    int64_t rows = 0;
    int d = 0;
    const float* centroids = nullptr;  ///< [k x d], already rounded to binary16 when `half`
    const float* c_norm2 = nullptr;    ///< [k], ||c_j||² of those values
    int k = 0;
    int32_t* labels = nullptr;  ///< [rows] out
    float* dist2 = nullptr;     ///< [rows] out
    /// Fused accumulation when non-null: [k x d] fixed-point sums and [k] counts,
    /// added to (not overwritten). A coordinate v adds llrint(v * scale).
    unsigned long long* sums = nullptr;
    unsigned long long* counts = nullptr;
    double scale = 1.0;
};

/// Labels/dist2 (and the sums when args.sums is set) for one chunk, on `stream`.
void launch_assign(const AssignArgs& args, int sm_count, cudaStream_t stream);

/// The grid of a persistent kernel whose blocks each walk a run of `work` units: as many
/// blocks as fit on the device at once with `dyn` bytes of dynamic shared memory (whose
/// opt-in limit it raises for the kernel), at least one an SM, at most `work`.
template <typename Kernel>
int persistent_grid(Kernel kernel, int threads, size_t dyn, int64_t work, int sm_count) {
    PKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn)));
    int per_sm = 0;
    PKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, dyn));
    return static_cast<int>(std::min<int64_t>(work, int64_t{std::max(per_sm, 1)} * sm_count));
}

/// out[0] = max over n values of |v| as float bits (NaN sorts above +inf), combined
/// with the value already there.
void launch_max_abs(const void* x, bool half, int64_t n, unsigned int* out, cudaStream_t stream);

/// out[0] = max over n bf16 values of |v| as float bits, combined with the value there.
void launch_max_abs_bf16(const void* x, int64_t n, unsigned int* out, cudaStream_t stream);

/// Rows per objective partial ("slot") in every kernel of the batched pass; slots of a
/// data set start at its row 0, so streaming in chunks of whole slots keeps the order.
constexpr int kObjSlotRows = 32;
/// Rows per block tile of the tensor-core kernel (a segment starts on a tile).
constexpr int kBlockRows = 256;
/// The general and wide kernels' block tile: 8 warps of 32 rows (two m16 tiles), one
/// objective slot a warp.
constexpr int kTileWarps = 8;
constexpr int kWarpRows = 32;
static_assert(kTileWarps * kWarpRows == kBlockRows, "one block tile");
static_assert(kWarpRows == kObjSlotRows, "one objective slot a warp tile");

/// out[s] (s < ceil(rows / kObjSlotRows)) = sum in double of dist2 over rows
/// [32 s, 32 s + 32) in a fixed order.
void launch_tile_objective(const float* dist2, int64_t rows, double* out, cudaStream_t stream);

/// Doubles of scratch launch_reduce_objective needs per task when no task has more
/// than max_slots slots.
int reduce_objective_chunks(int64_t max_slots);

/// out[t] = sum of slots[slot0[t] .. slot0[t + 1]) in a fixed tree order, per task t:
/// chunks of 4096 slots in parallel into scratch [tasks * reduce_objective_chunks], then
/// per task. max_slots >= the largest slot0[t + 1] - slot0[t].
void launch_reduce_objective(const double* slots, const int64_t* slot0, int tasks, int64_t max_slots, double* scratch,
                             double* out, cudaStream_t stream);

/// One piece of one data set against one task's centroids, in a batched launch.
struct MmaSegment {
    const void* x = nullptr;  ///< device rows [rows x d], binary16 or bf16
    int64_t rows = 0;
    int64_t tile0 = 0;  ///< first block tile (kBlockRows rows) of the segment in the launch
    int64_t slot0 = 0;  ///< its first objective slot (kObjSlotRows rows each)
    int task = 0;
    int32_t* labels = nullptr;  ///< device [rows] out, or null
    float* dist2 = nullptr;     ///< device [rows] out, or null
    int64_t xrow = 0;           ///< row of x in the point buffer (for the sorted sums)
};

/// A batched tensor-core pass: every segment's rows against its task's centroids.
struct MmaArgs {
    const MmaSegment* segs = nullptr;  ///< device [n_segs], tile0 ascending
    int n_segs = 0;
    int64_t n_tiles = 0;
    int d = 0;
    int k = 0;
    int kpad = 0;  ///< k rounded up to a multiple of 8
    int dpad = 0;  ///< centroid row stride in elements (16 * ksteps + 8)
    bool bf16 = false;
    const void* cent = nullptr;            ///< [tasks][kpad][dpad] rounded centroids, zero padded
    const float* cnh = nullptr;            ///< [tasks][kpad] -||c||²/2 of the rounded values, -inf on padding
    unsigned long long* sums = nullptr;    ///< [tasks][k * d] fixed point, added to; null: no sums
    unsigned long long* counts = nullptr;  ///< [tasks][k]
    const float* scale = nullptr;          ///< [tasks] fixed-point scale (a power of two)
    double* slots = nullptr;               ///< objective partials, one per 32 rows
};

/// Centroid row stride (elements) the tensor-core kernel expects for dimension d.
int mma_row_stride(int d);

/// The preconditions the grouped passes (fused, one-hot) share: the centroid operand's
/// padding, sums and counts both set or both null, whole groups of tiles.
inline void assert_grouped_pass(const MmaArgs& a, int group_tiles) {
    PKV_ASSERT(a.kpad % 8 == 0 && a.dpad == mma_row_stride(a.d));
    PKV_ASSERT((a.sums == nullptr) == (a.counts == nullptr));
    PKV_ASSERT(group_tiles >= 1 && a.n_tiles % group_tiles == 0);
}

/// The largest d the tensor-core kernel takes.
constexpr int kMmaMaxDim = kmeans_gpu::kMmaMaxDim;

/// Launches the tensor-core kernel over all segments (d <= kMmaMaxDim).
void launch_mma_assign(const MmaArgs& args, int sm_count, cudaStream_t stream);

/// The row widths of the kernels that stage points with cp.async (one-hot, fused,
/// wide): 32 < d <= kMmaMaxDim, d a multiple of 8 (16-byte rows).
inline bool mma_staged_dim(int d) { return kmeans_gpu::staged_dim(d); }

/// Calls f(T{}) with T the pass's 16-bit element type (__nv_bfloat16 when args.bf16,
/// else __half).
template <typename F>
void with_element(const MmaArgs& a, F&& f) {
    if (a.bf16) f(__nv_bfloat16{});
    else f(__half{});
}

/// Calls f(std::true_type{}) when the pass adds sums (args.sums set), else
/// f(std::false_type{}).
template <typename F>
void with_sums(const MmaArgs& a, F&& f) {
    if (a.sums) f(std::true_type{});
    else f(std::false_type{});
}

/// Calls f(std::integral_constant<int, KS>{}) with the staged kernels' k-steps of 16
/// columns for d: KS = 4 (d <= 64) or 8.
template <typename F>
void with_staged_ksteps(int d, F&& f) {
    if ((d + 15) / 16 <= 4) f(std::integral_constant<int, 4>{});
    else f(std::integral_constant<int, 8>{});
}

/// Calls f(std::integral_constant<int, KC>{}) with the wide kernels' centroid chunk:
/// KC = 128 (chunk >= 128) or 64.
template <typename F>
void with_chunk(int chunk, F&& f) {
    if (chunk >= 128) f(std::integral_constant<int, 128>{});
    else f(std::integral_constant<int, 64>{});
}

/// The largest k the one-hot kernel takes.
constexpr int kOnehotMaxK = kmeans_gpu::kOnehotMaxK;

/// True when the one-hot kernel (kmeans_mma_onehot.cu) takes (k, d).
inline bool mma_onehot_ok(int k, int d) { return kmeans_gpu::onehot_ok(k, d); }

/// Tiles per group of the one-hot kernel's sums for k (a group's fp32 partials are
/// flushed to the int64 sums once; more tiles, fewer device atomics).
inline int onehot_group_tiles(int k) { return kmeans_gpu::onehot_group_tiles(k); }

/// The one-hot kernel over all segments: labels, dist2, objective slots as
/// launch_mma_assign; sums and counts (when set) from fp32 tensor-core partials per
/// group of `group_tiles` tiles. Every segment's tile0 must be a multiple of
/// group_tiles, and so must n_tiles (pad with empty tiles; they cost a check).
void launch_mma_onehot(const MmaArgs& args, int group_tiles, int sm_count, cudaStream_t stream);

/// True when the fused kernel (kmeans_mma_fused.cu) takes (k, d): k <= fused_max_k(d)
/// (kmeans_assign.h: one or two 16-centroid blocks).
inline bool mma_fused_ok(int k, int d) { return kmeans_gpu::fused_ok(k, d); }

/// Tiles per group of the fused kernel's sums (4096 rows: a warp's fp32 partial covers
/// 512 of them).
inline int fused_group_tiles() { return kmeans_gpu::kFusedGroupTiles; }

/// The fused kernel over all segments: the same outputs and group rules as
/// launch_mma_onehot (sums from fp32 tensor-core partials, one per warp and group).
void launch_mma_fused(const MmaArgs& args, int group_tiles, int sm_count, cudaStream_t stream);

/// True when the wide kernel (kmeans_mma_wide.cu) takes d (any k; the assigner picks it
/// for large k).
inline bool mma_wide_ok(int d) { return kmeans_gpu::wide_ok(d); }

/// The wide kernel over all segments: labels, dist2 and objective slots as
/// launch_mma_assign, no sums (args.sums must be null: the sorted reduction follows).
/// Centroids stream through shared memory `chunk` rows at a time (64 or 128).
void launch_mma_wide(const MmaArgs& args, int chunk, int sm_count, cudaStream_t stream);

/// True when this build has the sm_90a kernel (kmeans_wgmma_sm90a.cu) and `device` has
/// compute capability 9.0, the only one its code runs on.
bool wgmma_device(int device);

/// Device bytes launch_wgmma_wide needs for the centroid image of `tasks` tasks.
size_t wgmma_image_bytes(int tasks, int kpad, int d, int chunk);

/// The wide kernel with its products on wgmma: the same outputs and preconditions as
/// launch_mma_wide. First writes the centroids of args.cent / args.cnh (tasks of them) as
/// the kernel reads them (whole chunks, swizzled) into `image` (wgmma_image_bytes()).
/// Only where wgmma_device() holds.
void launch_wgmma_wide(const MmaArgs& args, int chunk, int tasks, void* image, int sm_count, cudaStream_t stream);

/// The largest k the one-hot kernel takes on wgmma (kmeans_onehot_sm90a.cu): one
/// warpgroup product of 64 centroids.
constexpr int kWgmmaOnehotMaxK = kmeans_gpu::kWgmmaOnehotMaxK;

/// True when the one-hot kernel on wgmma takes (k, d) (the device must also pass
/// wgmma_device()).
inline bool wgmma_onehot_ok(int k, int d) { return kmeans_gpu::wgmma_onehot_ok(k, d); }

/// Tiles per group of its sums (4096 rows: a warpgroup's fp32 partial covers 2048).
inline int wgmma_onehot_group_tiles() { return kmeans_gpu::kWgmmaOnehotGroupTiles; }

/// Device bytes launch_wgmma_onehot needs for the centroid image of `tasks` tasks.
size_t wgmma_onehot_image_bytes(int tasks, int kpad, int d);

/// The one-hot kernel on wgmma: the same outputs and group rules as launch_mma_onehot,
/// sums required (args.sums and args.counts set). First writes the tasks' centroids
/// as one swizzled chunk each into `image` (wgmma_onehot_image_bytes()). Only where
/// wgmma_device() holds.
void launch_wgmma_onehot(const MmaArgs& args, int group_tiles, int tasks, void* image, int sm_count,
                         cudaStream_t stream);

/// Tensor-core centroid operands from fp32 centroids c32 [tasks][k][d]: out
/// [tasks][kpad][dpad] binary16 (bf16 when `bf16`), rounded to nearest even, zero padded;
/// cnh [tasks][kpad] = -||rounded c||²/2 (norm in double, fixed order), -inf on padding.
/// A row with a non-finite rounded value sets *bad = min(*bad, task * k + j).
void launch_prep_centroids(const float* c32, int tasks, int k, int d, int kpad, int dpad, bool bf16, void* out,
                           float* cnh, unsigned int* bad, cudaStream_t stream);

/// True when the tensor-core kernel keeps k x d partial sums in shared memory; else
/// the batched pass computes the sums by a sorted reduction (below).
bool mma_smem_sums(int k, int d);

/// Sorted reduction of the centroid sums (large k), all on the device (no host round
/// trip): after the assignment kernel wrote every segment's labels,
/// hist[task * k + label] = rows per label of this launch (hist zeroed by the caller),
/// also added to counts (the pass's totals over streamed chunks).
void launch_label_histogram(const MmaSegment* segs, int n_segs, int64_t n_tiles, int k, unsigned long long* hist,
                            unsigned long long* counts, cudaStream_t stream);

/// One run of rows of one cluster: idx[begin, end) all belong to `slot` = task * k + j.
struct SumItem {
    unsigned int begin = 0, end = 0;
    int slot = 0;
    int task = 0;
};

/// From hist[slots]: cursor[slot] = the exclusive prefix sum of hist (the cluster's
/// first place in idx), items = runs of at most item_rows rows of one slot in slot
/// order, n_items[0] = their number. scratch: build_items_scratch(slots) values (block
/// totals, 2 a block of 1024 slots). The caller guarantees the total rows < 2^32 and room
/// for max_sum_items(rows, slots, item_rows) items.
void launch_build_items(const unsigned long long* hist, int slots, int k, unsigned int item_rows,
                        unsigned long long* scratch, unsigned int* cursor, SumItem* items, unsigned long long* n_items,
                        cudaStream_t stream);
int64_t build_items_scratch(int slots);

/// The most items launch_build_items writes for `rows` rows over `slots` slots.
inline int64_t max_sum_items(int64_t rows, int64_t slots, unsigned int item_rows) { return rows / item_rows + slots; }

/// Every row writes its point-buffer row index at its cluster's next place (cursor
/// advanced by block-aggregated atomics). Order within a cluster is arbitrary (the
/// integer sums below do not depend on it).
void launch_label_scatter(const MmaSegment* segs, int n_segs, int64_t n_tiles, int k, unsigned int* cursor,
                          unsigned int* idx, cudaStream_t stream);

/// sums[slot * d + t] += sum over the item's rows of llrint(x[row][t] * scale[task]),
/// one warp per item, int64 in registers (exact, deterministic). x: binary16 or bf16
/// point buffer [rows x d], d <= 128. The item count is read on the device (n_items[0]
/// <= max_items, which sizes the grid).
void launch_segment_sums(const void* x, bool bf16, int d, const unsigned int* idx, const SumItem* items,
                         const unsigned long long* n_items, int64_t max_items, const float* scale,
                         unsigned long long* sums, cudaStream_t stream);

}  // namespace pkv::cuda::detail
