// pkv/kmeans/minmax_assign.cpp — min-max distance, its assignment and the Chebyshev centre.
#include "pkv/kmeans/minmax_assign.h"

#include <algorithm>
#include <vector>

#include "pkv/core/error.h"

namespace pkv {

double minmax_distance(const float* x, const float* c, int d) {
    PKV_CHECK(d >= 1, invalid_argument, "minmax distance: expected d >= 1, got {}", d);
    // Differences of two floats are exact in double, so the result has one rounding.
    double lo = static_cast<double>(x[0]) - c[0];
    double hi = lo;
    for (int t = 1; t < d; ++t) {
        const double r = static_cast<double>(x[t]) - c[t];
        lo = std::min(lo, r);
        hi = std::max(hi, r);
    }
    return hi - lo;
}

void assign_minmax_ref(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels, double* dist) {
    PKV_CHECK(d >= 1, invalid_argument, "minmax assignment: expected d >= 1, got {}", d);
    PKV_CHECK(k >= 1, invalid_argument, "minmax assignment: expected k >= 1, got {}", k);
    // Centroids transposed to [d, k] in double, so that one point's distances to a
    // tile of kTile centroids run side by side (each min and max in minmax_distance's
    // order and comparisons, hence the same doubles), held in registers over t.
    constexpr int kTile = 8;
    const int tiles = (k + kTile - 1) / kTile;
    std::vector<double> ct(static_cast<size_t>(tiles) * kTile * d, 0.0);
    for (int j = 0; j < k; ++j)
        for (int t = 0; t < d; ++t)
            ct[(static_cast<size_t>(j / kTile) * d + t) * kTile + j % kTile] = centroids[int64_t{j} * d + t];
#pragma omp parallel for schedule(static) if (n * k * d >= (int64_t{1} << 22))
    for (int64_t i = 0; i < n; ++i) {
        const float* xi = x + i * d;
        int best = 0;
        double best_d = 0.0;
        for (int tile = 0; tile < tiles; ++tile) {
            const double* c = ct.data() + static_cast<size_t>(tile) * kTile * d;
            double lo[kTile], hi[kTile];
            for (int u = 0; u < kTile; ++u) lo[u] = hi[u] = static_cast<double>(xi[0]) - c[u];
            for (int t = 1; t < d; ++t) {
                const double xt = xi[t];
                // Not unrolled: GCC then vectorizes over u and keeps lo and hi in registers.
#pragma GCC unroll 1
                for (int u = 0; u < kTile; ++u) {
                    const double r = xt - c[t * kTile + u];
                    lo[u] = r < lo[u] ? r : lo[u];
                    hi[u] = hi[u] < r ? r : hi[u];
                }
            }
            for (int u = 0; u < kTile && tile * kTile + u < k; ++u) {
                const double v = hi[u] - lo[u];
                if ((tile == 0 && u == 0) || v < best_d) {
                    best_d = v;
                    best = tile * kTile + u;
                }
            }
        }
        labels[i] = best;
        if (dist) dist[i] = best_d;
    }
}

void chebyshev_center(const float* x, int64_t n, int d, float* center) {
    PKV_CHECK(n >= 1, invalid_argument, "chebyshev centre: expected n >= 1 vectors, got {}", n);
    PKV_CHECK(d >= 1, invalid_argument, "chebyshev centre: expected d >= 1, got {}", d);
    std::vector<float> lo(x, x + d);
    std::vector<float> hi(x, x + d);
    for (int64_t i = 1; i < n; ++i) {
        const float* xi = x + i * d;
        for (int t = 0; t < d; ++t) {
            lo[t] = std::min(lo[t], xi[t]);
            hi[t] = std::max(hi[t], xi[t]);
        }
    }
    // In double the sum cannot overflow and is exact unless the two magnitudes differ
    // by more than 2^29; halving is exact.
    for (int t = 0; t < d; ++t)
        center[t] = static_cast<float>((static_cast<double>(lo[t]) + static_cast<double>(hi[t])) * 0.5);
}

}  // namespace pkv
