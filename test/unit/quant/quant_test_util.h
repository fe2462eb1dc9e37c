// Helpers shared by the quantizer tests: reproducible random matrices.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "pkv/core/half.h"

namespace pkv_test {

/// Normal(0, sigma) values with a few large outliers, optionally rounded to binary16
/// (as activations read from a dump are).
inline std::vector<float> random_activations(int64_t n, uint32_t seed, float sigma = 2.0f, bool fp16 = true) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, sigma);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& v : x) {
        v = normal(gen);
        if (u(gen) < 0.01f) v *= 20.0f;  // outlier channel-like values
        if (fp16) v = pkv::half_to_float(pkv::float_to_half(v));
    }
    return x;
}

inline float fp16_round(float v) { return pkv::half_to_float(pkv::float_to_half(v)); }

}  // namespace pkv_test
