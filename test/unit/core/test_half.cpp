#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/core/half.h"

using namespace pkv;

namespace {
float bits_to_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// Independent reference: round with long double arithmetic on the exact binary16 grid.
uint16_t half_ref(float f) {
    if (std::isnan(f)) return 0x7e00;
    const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    long double a = std::fabs(static_cast<long double>(f));
    if (a >= 65520.0L) return sign | 0x7c00;
    int e;
    std::frexp(a, &e);                 // a = m * 2^e, m in [0.5, 1)
    int exp_h = std::max(e - 1, -14);  // binary16 exponent of a (clamped to subnormal range)
    long double step = std::ldexp(1.0L, exp_h - 10);
    long double q = a / step;
    long double r = std::nearbyint(q);  // default rounding mode is to nearest even
    long double v = r * step;
    // Re-encode v.
    if (v == 0) return sign;
    int e2;
    std::frexp(v, &e2);
    int eh = e2 - 1;
    if (eh < -14) return sign | static_cast<uint16_t>(v / std::ldexp(1.0L, -24));
    uint16_t mant = static_cast<uint16_t>(v / std::ldexp(1.0L, eh - 10)) - 1024;
    return sign | static_cast<uint16_t>((eh + 15) << 10) | mant;
}
}  // namespace

TEST_CASE("float_to_half matches an exact rounding reference", "[core][half]") {
    std::mt19937 rng(7);
    std::uniform_int_distribution<uint32_t> bits;
    int mismatches = 0;
    for (int i = 0; i < 2000000; ++i) {
        // Concentrate on the half range, including subnormals and overflow.
        uint32_t u = bits(rng);
        u = (u & 0x807fffffu) | ((100u + (u >> 23) % 50u) << 23);
        const float f = bits_to_float(u);
        if (float_to_half(f) != half_ref(f)) ++mismatches;
    }
    CHECK(mismatches == 0);
}

TEST_CASE("float_to_half edge cases", "[core][half]") {
    CHECK(float_to_half(0.0f) == 0x0000);
    CHECK(float_to_half(-0.0f) == 0x8000);
    CHECK(float_to_half(1.0f) == 0x3c00);
    CHECK(float_to_half(65504.0f) == 0x7bff);
    CHECK(float_to_half(65519.99f) == 0x7bff);
    CHECK(float_to_half(65520.0f) == 0x7c00);
    CHECK(float_to_half(std::numeric_limits<float>::infinity()) == 0x7c00);
    CHECK(float_to_half(2049.0f) == 0x6800);                // tie rounds to even (2048)
    CHECK(float_to_half(2051.0f) == 0x6802);                // tie rounds to even (2052)
    CHECK(float_to_half(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
    CHECK(float_to_half(std::ldexp(1.0f, -25)) == 0x0000);  // tie to even (zero)
    CHECK(float_to_half(std::ldexp(1.5f, -25)) == 0x0001);
    CHECK(float_to_half(std::ldexp(1.0f, -14)) == 0x0400);  // smallest normal
    CHECK(std::isnan(half_to_float(float_to_half(std::nanf("")))));
    // Values the HDF5 1.10 converter gets wrong after a subnormal in the same buffer.
    float in[4] = {1e-7f, 4095.13f, -7.9992f, 255.98f};
    uint16_t out[4];
    float_to_half_n(in, out, 4);
    CHECK(half_to_float(out[1]) == 4096.0f);
    CHECK(half_to_float(out[2]) == -8.0f);
    CHECK(half_to_float(out[3]) == 256.0f);
}

TEST_CASE("half_to_float is exact on every half", "[core][half]") {
    for (uint32_t h = 0; h < 65536; ++h) {
        const float f = half_to_float(static_cast<uint16_t>(h));
        if (std::isnan(f)) continue;
        REQUIRE(float_to_half(f) == h);
    }
}

TEST_CASE("bfloat16 conversions", "[core][half]") {
    CHECK(bf16_to_float(0x3f80) == 1.0f);
    CHECK(bf16_to_float(0xc000) == -2.0f);
    CHECK(float_to_bf16(1.0f) == 0x3f80);
    CHECK(float_to_bf16(bits_to_float(0x3f808000u)) == 0x3f80);  // tie to even
    CHECK(float_to_bf16(bits_to_float(0x3f818000u)) == 0x3f82);
}

TEST_CASE("array conversions equal the scalar ones bit for bit (vector and threaded paths)", "[core][half]") {
    // Random bit patterns (every class: zeros, subnormals, normals, overflow, inf, NaN)
    // plus every half's exact value and the ties between neighbouring halves; long
    // enough for the threaded path, odd so that a scalar tail remains.
    std::mt19937 gen(7);
    std::vector<float> src;
    for (uint32_t h = 0; h < 65536; ++h) {
        src.push_back(half_to_float(static_cast<uint16_t>(h)));
        const float next = half_to_float(static_cast<uint16_t>(h + 1));
        if (std::isfinite(src.back()) && std::isfinite(next) && (h & 0x7fffu) != 0x7bffu)
            src.push_back(static_cast<float>((static_cast<double>(src.back()) + next) / 2));
    }
    while (src.size() < 400001) src.push_back(bits_to_float(static_cast<uint32_t>(gen())));
    std::vector<uint16_t> h(src.size()), b(src.size());
    float_to_half_n(src.data(), h.data(), src.size());
    float_to_bf16_n(src.data(), b.data(), src.size());
    size_t bad_h = 0, bad_b = 0;
    for (size_t i = 0; i < src.size(); ++i) {
        bad_h += h[i] != float_to_half(src[i]);
        bad_b += b[i] != float_to_bf16(src[i]);
    }
    CHECK(bad_h == 0);
    CHECK(bad_b == 0);
    std::vector<float> back(h.size());
    half_to_float_n(h.data(), back.data(), h.size());
    size_t bad_back = 0;
    for (size_t i = 0; i < h.size(); ++i) {
        const float r = half_to_float(h[i]);
        bad_back += std::memcmp(&r, &back[i], 4) != 0;
    }
    CHECK(bad_back == 0);
}
