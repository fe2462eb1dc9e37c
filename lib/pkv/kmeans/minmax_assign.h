// pkv/kmeans/minmax_assign.h — min-max ("flatness") primitives for PatternKV.
//
// PatternKV subtracts a pattern c from a key/value vector x and quantizes the
// residual r = x - c with a per-vector asymmetric min-max quantizer, whose step is
// proportional to the residual's range. The relevant distance is therefore
//   d_mm(x, c) = max_t (x_t - c_t) - min_t (x_t - c_t)   (>= 0)
// It is a seminorm of x - c: it ignores a constant offset (d_mm(x, c + a·1) =
// d_mm(x, c)), so two different patterns can be at distance 0.
//
// Shapes: x [n x d] row-major float, centroids [k x d] row-major float.
#pragma once

#include <cstdint>

namespace pkv {

/// d_mm(x, c) for two d-vectors, computed in double.
double minmax_distance(const float* x, const float* c, int d);

/// labels[i] = argmin_j d_mm(x_i, c_j) (strict '<': lowest j on ties); dist (nullable)
/// receives that distance, bitwise minmax_distance's. Double loops over tiles of
/// centroids, parallel over points with OpenMP.
/// Throws invalid_argument for k < 1 or d < 1.
void assign_minmax_ref(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels, double* dist);

/// Chebyshev centre of n vectors: center[t] = (max_i x_it + min_i x_it) / 2, computed
/// in double and rounded once to float. It minimises max_i ||x_i - c||_inf (the L∞
/// radius of the set), which bounds every residual coordinate by that radius.
/// Throws invalid_argument for n < 1 or d < 1.
void chebyshev_center(const float* x, int64_t n, int d, float* center);

}  // namespace pkv
