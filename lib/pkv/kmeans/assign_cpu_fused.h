// pkv/kmeans/assign_cpu_fused.h — private to the k-means module (and its tests and
// benchmarks): the fused dot-product + argmin kernel behind CpuAssigner.
//
// Scores s_ij = ||c_j||² - 2 x_i·c_j are formed in registers, tile by tile, and only
// the running minimum per point is kept: no [rows x k] score matrix is written or
// re-read. Each dot product sums over the d coordinates in order 0..d-1 with FMA,
// whatever the tiling, so a point's label depends only on that point and the
// centroids (not on n, the block size or the thread count). Ties of computed scores
// go to the lowest centroid index. dist2 is not produced here; CpuAssigner recomputes
// it exactly from the label.
#pragma once

#include <cstdint>
#include <vector>

namespace pkv::detail {

/// True when this build has the AVX2/FMA kernel; otherwise the fused calls below throw
/// internal and CpuAssigner uses its Eigen GEMM path.
bool fused_assign_available();

/// Centroids repacked for the kernel: ceil(k / 16) panels of [d][16] floats (centroid
/// 16p + lane at panel p, lane), padding lanes zero with ||c||² = +inf so they never win.
struct PackedCentroids {
    int k = 0;
    int d = 0;
    int n_panels = 0;
    std::vector<float> panels;  ///< n_panels * d * 16
    std::vector<float> norm2;   ///< n_panels * 16, ||c_j||² (rounded from a double sum)
};

/// Packs centroids [k x d] row-major. k >= 1, d >= 1.
PackedCentroids pack_centroids(const float* centroids, int k, int d);

/// labels[i] = argmin_j (||c_j||² - 2 x_i·c_j) for the `rows` points x [rows x d]
/// (row-major, stride d), and dist2[i] = exact_dist2(x_i, centroids[labels[i]]) with
/// `centroids` the [k x d] row-major array `c` was packed from. Single-threaded;
/// callers parallelise over row blocks.
void fused_argmin(const float* x, int64_t rows, const PackedCentroids& c, const float* centroids, int32_t* labels,
                  float* dist2);

/// ||x - c||² over d coordinates, in float, straight from the coordinates (never
/// negative, no cancellation). The summation order is fixed by d alone, so equal
/// inputs give bitwise equal results on every path.
float exact_dist2(const float* x, const float* c, int d);

/// The two whole-array paths of CpuAssigner::assign (same contract: labels and exact
/// float dist2 for n points, OpenMP over blocks of block_rows rows, 0 = default):
/// the fused kernel above (requires fused_assign_available()), and Eigen GEMM score
/// tiles followed by a scalar argmin (any build; one [block x k] tile per thread).
/// Exposed so tests and benchmarks can compare them side by side.
void assign_cpu_fused(const float* x, int64_t n, int d, const float* centroids, int k, int64_t block_rows,
                      int32_t* labels, float* dist2);
void assign_cpu_gemm(const float* x, int64_t n, int d, const float* centroids, int k, int64_t block_rows,
                     int32_t* labels, float* dist2);

}  // namespace pkv::detail
