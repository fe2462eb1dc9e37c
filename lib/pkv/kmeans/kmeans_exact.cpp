// The exact Lloyd loop (kmeans_exact.h); every operation is one the device kernel
// (cuda/pkv/cuda/sim_pattern.cu) performs with the same rounding.
#include "pkv/kmeans/kmeans_exact.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "pkv/core/error.h"

namespace pkv {

double exact_l2(const float* a, const float* b, int d) {
    double acc = 0.0;
    for (int t = 0; t < d; ++t) {
        const double e = static_cast<double>(a[t]) - static_cast<double>(b[t]);
        acc = std::fma(e, e, acc);
    }
    return acc;
}

namespace {

int nearest(const float* v, const float* c, int k, int d) {
    int best = 0;
    double best_d = 0.0;
    for (int j = 0; j < k; ++j) {
        const double dist = exact_l2(v, c + int64_t{j} * d, d);
        if (j == 0 || dist < best_d) {
            best_d = dist;
            best = j;
        }
    }
    return best;
}

}  // namespace

int64_t kmeans_exact_ref(const float* x, int64_t n, int d, int64_t stride, const ExactKMeansSpec& s,
                         const int64_t* init_rows, const int64_t* refill_rows, int64_t n_refill, float* centroids,
                         int32_t* labels) {
    PKV_CHECK(d >= 1 && stride >= d && s.k >= 1 && s.k <= n && s.max_iter >= 0 && s.slices >= 1 && n_refill >= 0,
              invalid_argument,
              "exact k-means: expected 1 <= k <= n, d >= 1, stride >= d, slices >= 1, got k {}, n {}, "
              "d {}, stride {}, slices {}",
              s.k, n, d, stride, s.slices);
    auto row = [&](int64_t i) { return x + i * stride; };
    for (int64_t i = 0; i < n; ++i)
        for (int t = 0; t < d; ++t)
            PKV_CHECK(std::isfinite(row(i)[t]), invalid_argument, "k-means: point {} has a non-finite value at dim {}",
                      i, t);
    const int k = s.k, S = s.slices;
    std::vector<float> c(static_cast<size_t>(k) * d), next(c.size());
    for (int j = 0; j < k; ++j) {
        PKV_CHECK(init_rows[j] >= 0 && init_rows[j] < n, invalid_argument, "exact k-means: init row {} outside [0, {})",
                  init_rows[j], n);
        std::copy(row(init_rows[j]), row(init_rows[j]) + d, c.begin() + int64_t{j} * d);
    }
    std::vector<int32_t> lab(static_cast<size_t>(n));
    std::vector<double> part(static_cast<size_t>(S) * k * d);
    std::vector<int64_t> pcount(static_cast<size_t>(S) * k);
    int64_t used = 0;
    for (int it = 0; it < s.max_iter; ++it) {
        for (int64_t i = 0; i < n; ++i) lab[i] = nearest(row(i), c.data(), k, d);
        std::fill(part.begin(), part.end(), 0.0);
        std::fill(pcount.begin(), pcount.end(), 0);
        for (int64_t i = 0; i < n; ++i) {
            const int64_t sl = i % S;
            double* ps = part.data() + (sl * k + lab[i]) * d;
            for (int t = 0; t < d; ++t) ps[t] += static_cast<double>(row(i)[t]);
            ++pcount[sl * k + lab[i]];
        }
        double shift = 0.0;
        for (int j = 0; j < k; ++j) {
            int64_t cnt = 0;
            for (int sl = 0; sl < S; ++sl) cnt += pcount[static_cast<size_t>(sl) * k + j];
            float* nj = next.data() + int64_t{j} * d;
            if (cnt == 0) {
                PKV_CHECK(used < n_refill, invalid_argument, "exact k-means: {} refill rows are too few", n_refill);
                const int64_t r = refill_rows[used++];
                PKV_CHECK(r >= 0 && r < n, invalid_argument, "exact k-means: refill row {} outside [0, {})", r, n);
                std::copy(row(r), row(r) + d, nj);
            } else {
                const double inv = 1.0 / static_cast<double>(cnt);
                for (int t = 0; t < d; ++t) {
                    double sum = part[static_cast<size_t>(j) * d + t];
                    for (int sl = 1; sl < S; ++sl) sum += part[(static_cast<size_t>(sl) * k + j) * d + t];
                    nj[t] = static_cast<float>(sum * inv);
                }
            }
            for (int t = 0; t < d; ++t)
                shift = std::max(shift, std::fabs(static_cast<double>(nj[t]) - static_cast<double>(c[j * d + t])));
        }
        c.swap(next);
        if (s.tol >= 0.0 && shift <= s.tol) break;
    }
    std::copy(c.begin(), c.end(), centroids);
    if (labels)
        for (int64_t i = 0; i < n; ++i) labels[i] = nearest(row(i), c.data(), k, d);
    return used;
}

}  // namespace pkv
