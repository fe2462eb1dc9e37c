// Helpers shared by the CUDA tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/core/half.h"
#include "pkv/cuda/device.h"
#include "pkv/cuda/kmeans_assign.h"
#include "pkv/model/engine_plan.h"

/// Skips the test case (saying so) on a machine without a CUDA device.
#define PKV_REQUIRE_GPU() \
    if (pkv::cuda::device_count() == 0) PKV_SKIP("no CUDA device: GPU k-means test not run")

namespace pkv_test {

/// n points [n x d]: unit Gaussians around `blobs` centres drawn with standard
/// deviation `spread`, each point's centre uniform; deterministic in seed.
inline std::vector<float> mixture(int64_t n, int d, int blobs, uint64_t seed, float spread = 2.0f) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> centres(static_cast<size_t>(blobs) * d);
    for (float& v : centres) v = spread * nd(gen);
    std::vector<float> x(static_cast<size_t>(n) * d);
    for (int64_t i = 0; i < n; ++i) {
        const int b = static_cast<int>(gen() % static_cast<uint64_t>(blobs));
        for (int t = 0; t < d; ++t) x[size_t(i) * d + t] = centres[size_t(b) * d + t] + nd(gen);
    }
    return x;
}

/// v rounded to the tensor-core operand type of the forward engine's attention (f32: unchanged).
inline std::vector<float> rounded(std::vector<float> v, pkv::WeightType t) {
    for (float& e : v) {
        if (t == pkv::WeightType::fp16) e = pkv::half_to_float(pkv::float_to_half(e));
        else if (t == pkv::WeightType::bf16) e = pkv::bf16_to_float(pkv::float_to_bf16(e));
    }
    return v;
}

/// Unit roundoff of rounding to nearest in the type (f32: 0, nothing beyond the float sums).
inline double unit_roundoff(pkv::WeightType t) {
    return t == pkv::WeightType::fp16 ? std::ldexp(1.0, -11) : t == pkv::WeightType::bf16 ? std::ldexp(1.0, -8) : 0.0;
}

/// v rounded to the kernel's input format (binary16, or bf16).
inline std::vector<float> rounded(std::vector<float> v, pkv::cuda::InputPrecision p) {
    for (float& e : v)
        e = p == pkv::cuda::InputPrecision::bf16 ? pkv::bf16_to_float(pkv::float_to_bf16(e))
                                                 : pkv::half_to_float(pkv::float_to_half(e));
    return v;
}

/// ||a - b||² in double.
inline double sq_dist(const float* a, const float* b, int d) {
    double s = 0.0;
    for (int t = 0; t < d; ++t) s += (double(a[t]) - b[t]) * (double(a[t]) - b[t]);
    return s;
}

/// Per cluster and coordinate: sum of |x| over the points labelled with the cluster
/// (the scale of any summation error of the centroid sums).
inline std::vector<double> abs_sums(const std::vector<float>& x, int64_t n, int d, const std::vector<int32_t>& labels,
                                    int k) {
    std::vector<double> mag(size_t(k) * d, 0.0);
    for (int64_t i = 0; i < n; ++i)
        for (int t = 0; t < d; ++t) mag[size_t(labels[size_t(i)]) * d + t] += std::fabs(double(x[size_t(i) * d + t]));
    return mag;
}

}  // namespace pkv_test
