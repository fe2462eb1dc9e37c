// pkv/kmeans/kmeans_exact.h — the Lloyd loop of kmeans() (random init, no subsampling,
// one restart) in an arithmetic that another processor can repeat bit for bit: the CPU
// twin of the CUDA cache simulation's prefill k-means for patternkv
// (cuda/pkv/cuda/sim_cache.h). pkv::kmeans() itself stays the project's k-means; its
// assigners round distances in their own way (fused AVX2, GEMM), so on points nearly
// equidistant from two centroids the two loops can label differently and then follow
// different trajectories (docs/numerics.md, "patternkv on the GPU").
//
// Per iteration, exactly as kmeans() orders it: assign every point to its nearest
// centroid (lowest index on ties), add up the points of each cluster in double, move
// each centroid to its mean (a float of sum · (1 / count)), refill each empty cluster
// (in index order) with the next row of `refill_rows`, and stop after the update whose
// largest coordinate change is <= tol, or after max_iter updates. Then one final
// assignment gives the labels.
//
// The arithmetic (what a twin must repeat):
//   distance   sum over t of e_t² with e_t = double(x_t) − double(c_t), accumulated in
//              t order with fused multiply-adds (std::fma) from 0.0;
//   sums       points split into `slices` interleaved slices (point i in slice i % S),
//              each slice's sum in increasing i, then the slices added in order 0..S−1
//              starting from slice 0's sum;
//   mean       float(sum · (1.0 / count)) in double;
//   shift      max over coordinates of |double(new) − double(old)|.
#pragma once

#include <cstdint>

namespace pkv {

struct ExactKMeansSpec {
    int k = 32;         ///< centroids, 1 <= k <= n
    int max_iter = 30;  ///< update steps at most (kmeans()'s KMeansParams::max_iter)
    double tol = 1e-4;  ///< stop when the update's largest coordinate change is <= tol
    int slices = 1;     ///< interleaved partial sums (the device's point slices), >= 1
};

/// Clusters n points, point i at x + i · stride (d floats; stride >= d). init_rows: k
/// distinct rows in [0, n) (kmeans_random_draws's init_rows); refill_rows: n_refill rows
/// in [0, n) that empty clusters take in order (k · max_iter are always enough).
/// Writes centroids [k, d] and labels [n] (null: not wanted). Returns the number of
/// refill rows used. Throws invalid_argument on bad sizes or too few refill rows, and
/// on a non-finite coordinate ("k-means: point 3 has a non-finite value at dim 7").
int64_t kmeans_exact_ref(const float* x, int64_t n, int d, int64_t stride, const ExactKMeansSpec& spec,
                         const int64_t* init_rows, const int64_t* refill_rows, int64_t n_refill, float* centroids,
                         int32_t* labels);

/// The distance of the loop above: sum_t fma-accumulated (double(a_t) − double(b_t))².
double exact_l2(const float* a, const float* b, int d);

}  // namespace pkv
