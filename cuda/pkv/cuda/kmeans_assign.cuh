// Internal: launchers of the k-means assignment kernels (kernels live in kmeans_assign.cu).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace pkv::cuda::detail {

/// One chunk of points against all centroids. Device pointers throughout.
struct AssignArgs {
    const void* x = nullptr;        ///< [rows x d], float or __half (see `half`)
    bool half = false;
    int64_t rows = 0;
    int d = 0;
    const float* centroids = nullptr;  ///< [k x d], already rounded to binary16 when `half`
    const float* c_norm2 = nullptr;    ///< [k], ||c_j||² of those values
    int k = 0;
    int32_t* labels = nullptr;         ///< [rows] out
    float* dist2 = nullptr;            ///< [rows] out
    /// Fused accumulation when non-null: [k x d] fixed-point sums and [k] counts,
    /// added to (not overwritten). A coordinate v adds llrint(v * scale).
    unsigned long long* sums = nullptr;
    unsigned long long* counts = nullptr;
    double scale = 1.0;
};

/// Labels/dist2 (and the sums when args.sums is set) for one chunk, on `stream`.
void launch_assign(const AssignArgs& args, int sm_count, cudaStream_t stream);

/// out[0] = max over n values of |v| as float bits (NaN sorts above +inf), combined
/// with the value already there.
void launch_max_abs(const void* x, bool half, int64_t n, unsigned int* out, cudaStream_t stream);

/// dst[i] = binary16(src[i]) (bf16 when `bf16`), round to nearest even.
void launch_to_half(const float* src, void* dst, int64_t n, cudaStream_t stream, bool bf16 = false);

/// out[0] = max over n bf16 values of |v| as float bits, combined with the value there.
void launch_max_abs_bf16(const void* x, int64_t n, unsigned int* out, cudaStream_t stream);

/// Rows per objective partial ("slot") in every kernel of the batched pass; slots of a
/// data set start at its row 0, so streaming in chunks of whole slots keeps the order.
constexpr int kObjSlotRows = 32;
/// Rows per block tile of the tensor-core kernel (a segment starts on a tile).
constexpr int kBlockRows = 256;

/// out[s] (s < ceil(rows / kObjSlotRows)) = sum in double of dist2 over rows
/// [32 s, 32 s + 32) in a fixed order.
void launch_tile_objective(const float* dist2, int64_t rows, double* out, cudaStream_t stream);

/// out[t] = sum of slots[slot0[t] .. slot0[t + 1]) in a fixed tree order, per task t.
void launch_reduce_objective(const double* slots, const int64_t* slot0, int tasks, double* out,
                             cudaStream_t stream);

/// One piece of one data set against one task's centroids, in a batched launch.
struct MmaSegment {
    const void* x = nullptr;  ///< device rows [rows x d], binary16 or bf16
    int64_t rows = 0;
    int64_t tile0 = 0;        ///< first block tile (kBlockRows rows) of the segment in the launch
    int64_t slot0 = 0;        ///< its first objective slot (kObjSlotRows rows each)
    int task = 0;
    int32_t* labels = nullptr;  ///< device [rows] out, or null
    float* dist2 = nullptr;     ///< device [rows] out, or null
};

/// A batched tensor-core pass: every segment's rows against its task's centroids.
struct MmaArgs {
    const MmaSegment* segs = nullptr;  ///< device [n_segs], tile0 ascending
    int n_segs = 0;
    int64_t n_tiles = 0;
    int d = 0;
    int k = 0;
    int kpad = 0;   ///< k rounded up to a multiple of 8
    int dpad = 0;   ///< centroid row stride in elements (16 * ksteps + 8)
    bool bf16 = false;
    const void* cent = nullptr;  ///< [tasks][kpad][dpad] rounded centroids, zero padded
    const float* cnh = nullptr;  ///< [tasks][kpad] -||c||²/2 of the rounded values, -inf on padding
    unsigned long long* sums = nullptr;    ///< [tasks][k * d] fixed point, added to; null: no sums
    unsigned long long* counts = nullptr;  ///< [tasks][k]
    const float* scale = nullptr;          ///< [tasks] fixed-point scale (a power of two)
    double* slots = nullptr;               ///< objective partials, one per 32 rows
};

/// The largest d the tensor-core kernel takes.
constexpr int kMmaMaxDim = 128;

/// Launches the tensor-core kernel over all segments (d <= kMmaMaxDim).
void launch_mma_assign(const MmaArgs& args, int sm_count, cudaStream_t stream);

/// Centroid row stride (elements) the tensor-core kernel expects for dimension d.
int mma_row_stride(int d);

}  // namespace pkv::cuda::detail
