// pkv/kmeans/assign_cpu.cpp — CPU assignment (fused AVX2 kernel, Eigen GEMM fallback,
// scalar reference) and the centroid-sum accumulation shared by all assigners.
#include "pkv/kmeans/assigner.h"

#include <algorithm>
#include <vector>

#include <Eigen/Dense>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pkv/core/error.h"
#include "pkv/kmeans/assign_cpu_fused.h"

namespace pkv {

namespace {

using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMapF = Eigen::Map<const RowMatrixF>;

void check_shapes(const char* who, int64_t n, int d, int k) {
    PKV_CHECK(n >= 0, invalid_argument, "{}: expected n >= 0, got {}", who, n);
    PKV_CHECK(d >= 1, invalid_argument, "{}: expected d >= 1, got {}", who, d);
    PKV_CHECK(k >= 1, invalid_argument, "{}: expected k >= 1, got {}", who, k);
}

// Below these sizes a parallel region costs more than it saves: on a loaded machine
// a descheduled worker stalls the region's closing barrier for a scheduler slice.
constexpr int64_t kParallelMinValues = int64_t{1} << 20;  // coordinates summed
constexpr int64_t kParallelMinFlops = int64_t{1} << 24;   // n * k * d of one assignment

// Rows per block of the Eigen GEMM path.
int64_t auto_block_rows(int k) {
    // About 1 MiB of float scores per thread keeps the tile in L2 while the GEMM
    // still has enough rows to amortise packing the centroids.
    const int64_t rows = (int64_t{1} << 18) / std::max(k, 1);
    return std::clamp<int64_t>(rows / 16 * 16, 64, 4096);
}

// Rows per parallel block of the fused kernel: enough to amortise a block's setup,
// small enough that two threads on a loaded machine still balance.
constexpr int64_t kFusedBlockRows = 1536;

void exact_dist2_rows(const float* x, int64_t row0, int64_t rows, int d, const float* centroids, const int32_t* labels,
                      float* dist2) {
    for (int64_t i = row0; i < row0 + rows; ++i)
        dist2[i] = detail::exact_dist2(x + i * d, centroids + int64_t{labels[i]} * d, d);
}

}  // namespace

void KMeansAssigner::assign_accumulate(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                                       float* dist2, double* sums, int64_t* counts) {
    assign(x, n, d, centroids, k, labels, dist2);
    accumulate_centroid_sums(x, n, d, labels, k, sums, counts);
}

CpuAssigner::CpuAssigner(int64_t block_rows) : block_rows_(block_rows) {
    PKV_CHECK(block_rows >= 0, invalid_argument, "cpu assigner: expected block_rows >= 0, got {}", block_rows);
}

namespace detail {

void assign_cpu_fused(const float* x, int64_t n, int d, const float* centroids, int k, int64_t block_rows,
                      int32_t* labels, float* dist2) {
    const PackedCentroids packed = pack_centroids(centroids, k, d);
    const int64_t block = block_rows > 0 ? block_rows : kFusedBlockRows;
    const int64_t n_blocks = (n + block - 1) / block;
#pragma omp parallel for schedule(dynamic, 1) if (n_blocks > 1 && n * k * d >= kParallelMinFlops)
    for (int64_t b = 0; b < n_blocks; ++b) {
        const int64_t row0 = b * block;
        const int64_t rows = std::min(block, n - row0);
        fused_argmin(x + row0 * d, rows, packed, centroids, labels + row0, dist2 + row0);
    }
}

void assign_cpu_gemm(const float* x, int64_t n, int d, const float* centroids, int k, int64_t block_rows,
                     int32_t* labels, float* dist2) {
    const ConstRowMapF C(centroids, k, d);
    const Eigen::VectorXf c_norm2 = C.rowwise().squaredNorm();
    const int64_t block = block_rows > 0 ? block_rows : auto_block_rows(k);
    const int64_t n_blocks = (n + block - 1) / block;

#pragma omp parallel if (n_blocks > 1 && n * k * d >= kParallelMinFlops)
    {
        RowMatrixF scores;  // per thread, reused across blocks
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < n_blocks; ++b) {
            const int64_t row0 = b * block;
            const int64_t rows = std::min(block, n - row0);
            const ConstRowMapF X(x + row0 * d, rows, d);
            scores.resize(rows, k);
            // Eigen runs the product single-threaded inside this parallel region.
            scores.noalias() = X * C.transpose();
            for (int64_t r = 0; r < rows; ++r) {
                const float* s = scores.data() + r * k;
                // ||x||² is the same for every centroid, so the argmin needs only
                // ||c||² - 2 x·c; strict '<' keeps the lowest index on ties.
                int best = 0;
                float best_score = c_norm2[0] - 2.0f * s[0];
                for (int j = 1; j < k; ++j) {
                    const float v = c_norm2[j] - 2.0f * s[j];
                    if (v < best_score) {
                        best_score = v;
                        best = j;
                    }
                }
                labels[row0 + r] = best;
            }
            exact_dist2_rows(x, row0, rows, d, centroids, labels, dist2);
        }
    }
}

}  // namespace detail

void CpuAssigner::assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                         float* dist2) {
    check_shapes("cpu assigner", n, d, k);
    if (n == 0) return;
    if (detail::fused_assign_available()) detail::assign_cpu_fused(x, n, d, centroids, k, block_rows_, labels, dist2);
    else detail::assign_cpu_gemm(x, n, d, centroids, k, block_rows_, labels, dist2);
}

void assign_ref(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels, double* dist2) {
    check_shapes("assign_ref", n, d, k);
    for (int64_t i = 0; i < n; ++i) {
        const float* xi = x + i * d;
        int best = 0;
        double best_d = 0.0;
        for (int j = 0; j < k; ++j) {
            const float* cj = centroids + int64_t{j} * d;
            double acc = 0.0;
            for (int t = 0; t < d; ++t) {
                const double diff = static_cast<double>(xi[t]) - static_cast<double>(cj[t]);
                acc += diff * diff;
            }
            if (j == 0 || acc < best_d) {
                best_d = acc;
                best = j;
            }
        }
        labels[i] = best;
        if (dist2) dist2[i] = best_d;
    }
}

void accumulate_centroid_sums(const float* x, int64_t n, int d, const int32_t* labels, int k, double* sums,
                              int64_t* counts) {
    check_shapes("accumulate_centroid_sums", n, d, k);
    std::fill(counts, counts + k, int64_t{0});
    std::fill(sums, sums + int64_t{k} * d, 0.0);
    for (int64_t i = 0; i < n; ++i) {
        const int32_t l = labels[i];
        if (l < 0 || l >= k) fail(ErrorCode::internal, "k-means: point {} has label {}, expected [0, {})", i, l, k);
        ++counts[l];
    }
    // Threads own disjoint slices of dimensions and each scans every point in index
    // order: x is read once in total, no reduction between threads is needed, and
    // every sum is formed in the same order whatever the thread count.
#pragma omp parallel if (n * d >= kParallelMinValues)
    {
        int n_threads = 1;
        int tid = 0;
#ifdef _OPENMP
        n_threads = omp_get_num_threads();
        tid = omp_get_thread_num();
#endif
        const int t0 = static_cast<int>(int64_t{d} * tid / n_threads);
        const int t1 = static_cast<int>(int64_t{d} * (tid + 1) / n_threads);
        if (t1 > t0) {
            for (int64_t i = 0; i < n; ++i) {
                const float* xi = x + i * d;
                double* s = sums + int64_t{labels[i]} * d;
                for (int t = t0; t < t1; ++t) s[t] += xi[t];
            }
        }
    }
}

}  // namespace pkv
