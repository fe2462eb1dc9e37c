// Parity of the CUDA half conversion with the CPU reference. Tolerance: exact
// (both round to nearest even), checked on 2^24 random floats plus edge values.
#include <cstring>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/core/half.h"
#include "pkv/cuda/device.h"

TEST_CASE("cuda float_to_half_n equals the CPU reference bit for bit", "[cuda][parity]") {
    if (pkv::cuda::device_count() == 0) PKV_SKIP("no CUDA device: GPU parity test not run");
    const size_t n = size_t(1) << 24;
    std::vector<float> x(n);
    std::mt19937 rng(11);
    std::uniform_int_distribution<uint32_t> bits;
    for (size_t i = 0; i < n; ++i) {
        uint32_t u = bits(rng);
        u = (u & 0x807fffffu) | ((100u + (u >> 23) % 50u) << 23);
        std::memcpy(&x[i], &u, 4);
    }
    const float edges[] = {0.0f, -0.0f, 65504.0f, 65520.0f, 2049.0f, 5.96e-8f, 2.98e-8f, 1e-7f};
    std::memcpy(x.data(), edges, sizeof(edges));
    std::vector<uint16_t> ref(n), gpu(n);
    pkv::float_to_half_n(x.data(), ref.data(), n);
    pkv::cuda::float_to_half_n(x.data(), gpu.data(), n, 0);
    size_t mismatches = 0;
    for (size_t i = 0; i < n; ++i) mismatches += ref[i] != gpu[i];
    CAPTURE(n);
    CHECK(mismatches == 0);
}

TEST_CASE("cuda device query never throws", "[cuda]") {
    const int n = pkv::cuda::device_count();
    CHECK(n >= 0);
    CHECK(pkv::cuda::devices().size() == static_cast<size_t>(n));
}
