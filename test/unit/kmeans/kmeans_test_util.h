// Seeded synthetic data for the k-means tests.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace pkv_test {

/// n x d standard normal values, row-major.
inline std::vector<float> gaussian_points(int64_t n, int d, uint64_t seed) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n) * d);
    for (float& v : x) v = normal(gen);
    return x;
}

/// Gaussian blobs: `blobs` centres drawn uniformly from [-spread, spread]^d (or, with
/// `separated`, centre c = spread * e_c, all pairwise distances spread * sqrt(2); needs
/// blobs <= d), then `per_blob` points around each with standard deviation `sigma`.
/// truth[i] is the blob of point i; points are interleaved (point i is in blob i % blobs).
struct Blobs {
    std::vector<float> x;
    std::vector<int> truth;
    int64_t n = 0;
};

inline Blobs gaussian_blobs(int blobs, int64_t per_blob, int d, float spread, float sigma, uint64_t seed,
                            bool separated = false) {
    std::mt19937_64 gen(seed);
    std::uniform_real_distribution<float> uniform(-spread, spread);
    std::normal_distribution<float> normal(0.0f, sigma);
    std::vector<float> centres(static_cast<size_t>(blobs) * d);
    for (float& v : centres) v = uniform(gen);
    if (separated)
        for (int c = 0; c < blobs; ++c)
            for (int t = 0; t < d; ++t) centres[static_cast<size_t>(c) * d + t] = t == c ? spread : 0.0f;
    Blobs b;
    b.n = blobs * per_blob;
    b.x.resize(static_cast<size_t>(b.n) * d);
    b.truth.resize(static_cast<size_t>(b.n));
    for (int64_t i = 0; i < b.n; ++i) {
        const int c = static_cast<int>(i % blobs);
        b.truth[i] = c;
        for (int t = 0; t < d; ++t) b.x[i * d + t] = centres[static_cast<size_t>(c) * d + t] + normal(gen);
    }
    return b;
}

}  // namespace pkv_test
