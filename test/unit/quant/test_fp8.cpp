// FP8 E4M3 codes: exhaustive round trips, ties to even, saturation, and the
// per-head scaled cache.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/quant/fp8.h"
#include "quant_test_util.h"

using pkv::fp8_e4m3_decode;
using pkv::fp8_e4m3_encode;

namespace {

bool same_bits(float a, float b) {
    if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
    uint32_t ua, ub;
    std::memcpy(&ua, &a, 4);
    std::memcpy(&ub, &b, 4);
    return ua == ub;
}

// Brute force: the finite code nearest to x (ties: even code), saturating at 448.
uint8_t nearest_code(float x) {
    const uint8_t sign = std::signbit(x) ? 0x80 : 0;
    const double a = std::fabs(static_cast<double>(x));
    int best = 0;
    double best_err = std::numeric_limits<double>::infinity();
    for (int c = 0; c <= 0x7E; ++c) {
        const double e = std::fabs(a - fp8_e4m3_decode(static_cast<uint8_t>(c)));
        if (e < best_err || (e == best_err && (c & 1) == 0)) best = c, best_err = e;
    }
    return static_cast<uint8_t>(sign | best);
}

}  // namespace

TEST_CASE("e4m3 decodes the documented grid", "[quant][fp8]") {
    CHECK(fp8_e4m3_decode(0x00) == 0.0f);
    CHECK(std::signbit(fp8_e4m3_decode(0x80)));
    CHECK(fp8_e4m3_decode(0x01) == std::ldexp(1.0f, -9));
    CHECK(fp8_e4m3_decode(0x07) == 7.0f * std::ldexp(1.0f, -9));
    CHECK(fp8_e4m3_decode(0x08) == std::ldexp(1.0f, -6));
    CHECK(fp8_e4m3_decode(0x38) == 1.0f);
    CHECK(fp8_e4m3_decode(0x39) == 1.125f);
    CHECK(fp8_e4m3_decode(0x7D) == 416.0f);
    CHECK(fp8_e4m3_decode(0x7E) == 448.0f);
    CHECK(fp8_e4m3_decode(0xFE) == -448.0f);
    CHECK(std::isnan(fp8_e4m3_decode(0x7F)));
    CHECK(std::isnan(fp8_e4m3_decode(0xFF)));
    // 0x78 (exponent 15, mantissa 0) is a finite 256: E4M3FN has no infinities.
    CHECK(fp8_e4m3_decode(0x78) == 256.0f);
    // Positive codes are strictly increasing in value.
    for (int c = 0; c < 0x7E; ++c)
        CHECK(fp8_e4m3_decode(static_cast<uint8_t>(c)) < fp8_e4m3_decode(static_cast<uint8_t>(c + 1)));
}

TEST_CASE("e4m3 round trips every one of the 256 codes", "[quant][fp8]") {
    for (int c = 0; c < 256; ++c) {
        const auto code = static_cast<uint8_t>(c);
        const float v = fp8_e4m3_decode(code);
        INFO("code " << c);
        CHECK(same_bits(fp8_e4m3_decode(fp8_e4m3_encode(v)), v));
        if (!std::isnan(v)) CHECK(fp8_e4m3_encode(v) == code);
        else CHECK((fp8_e4m3_encode(v) & 0x7F) == 0x7F);
    }
}

TEST_CASE("e4m3 rounds to nearest with ties to the even code", "[quant][fp8]") {
    for (int c = 0; c < 0x7E; ++c)
        for (float sign : {1.0f, -1.0f}) {
            const float lo = fp8_e4m3_decode(static_cast<uint8_t>(c));
            const float hi = fp8_e4m3_decode(static_cast<uint8_t>(c + 1));
            const float mid = sign * ((lo + hi) / 2.0f);  // exact: both are short binary fractions
            const uint8_t s = sign < 0 ? 0x80 : 0;
            const int even = (c & 1) == 0 ? c : c + 1;
            INFO("between codes " << c << " and " << c + 1 << " sign " << sign);
            CHECK(fp8_e4m3_encode(mid) == (s | even));
            CHECK(fp8_e4m3_encode(std::nextafter(mid, sign * 1e9f)) == (s | (c + 1)));
            CHECK(fp8_e4m3_encode(std::nextafter(mid, 0.0f)) == (s | c));
        }
    // Half the smallest subnormal is a tie between 0 and 2^-9: goes to 0.
    CHECK(fp8_e4m3_encode(std::ldexp(1.0f, -10)) == 0x00);
    CHECK(fp8_e4m3_encode(-std::ldexp(1.0f, -10)) == 0x80);
    CHECK(fp8_e4m3_encode(std::ldexp(1.0f, -30)) == 0x00);
    CHECK(fp8_e4m3_encode(std::numeric_limits<float>::denorm_min()) == 0x00);
}

TEST_CASE("e4m3 saturates and keeps NaN", "[quant][fp8]") {
    for (float v : {448.0f, 449.0f, 464.0f, 480.0f, 1e6f, 3e38f, std::numeric_limits<float>::infinity()}) {
        CHECK(fp8_e4m3_encode(v) == 0x7E);
        CHECK(fp8_e4m3_encode(-v) == 0xFE);
    }
    CHECK(fp8_e4m3_encode(432.0f) == 0x7E);  // tie between 416 (0x7D, odd) and 448 (even)
    CHECK(fp8_e4m3_encode(431.9f) == 0x7D);
    CHECK(fp8_e4m3_encode(std::numeric_limits<float>::quiet_NaN()) == 0x7F);
    CHECK(fp8_e4m3_encode(-std::numeric_limits<float>::quiet_NaN()) == 0xFF);
}

TEST_CASE("e4m3 encoding matches a brute-force nearest search on random floats", "[quant][fp8]") {
    std::mt19937 gen(5);
    std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
    std::uniform_int_distribution<int> expo(-14, 10);
    for (int i = 0; i < 200000; ++i) {
        const float v = std::ldexp(mant(gen), expo(gen));
        INFO("value " << v);
        REQUIRE(fp8_e4m3_encode(v) == nearest_code(v));
    }
}

TEST_CASE("fp8 per-head cache uses amax / 448 over the data given", "[quant][fp8]") {
    const int64_t n = 64 * 100;
    const auto x = pkv_test::random_activations(n, 31);
    std::vector<float> r(n);
    std::vector<uint8_t> codes(n);
    const auto res = pkv::quantize_fp8_e4m3(x.data(), n, r.data(), codes.data());
    float amax = 0.0f;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    CHECK(res.scale == amax / 448.0f);
    CHECK(res.storage_bits == 8u * n + 32u);
    for (int64_t i = 0; i < n; ++i) {
        REQUIRE(r[i] == fp8_e4m3_decode(codes[i]) * res.scale);
        // Relative half step 2^-4 for normals; absolute half subnormal step below.
        const double e = std::fabs(static_cast<double>(x[i]) - r[i]);
        CHECK(e <= std::max(std::fabs(x[i]) / 16.0, std::ldexp(1.0, -10) * res.scale) * (1 + 1e-6));
        if (std::fabs(x[i]) == amax) CHECK(std::fabs(r[i]) == Approx(amax).epsilon(1e-6));
    }
    std::vector<float> z(10, 0.0f), zr(10, 1.0f);
    const auto zres = pkv::quantize_fp8_e4m3(z.data(), 10, zr.data());
    CHECK(zres.scale == 0.0f);
    for (float v : zr) CHECK(v == 0.0f);
    z[3] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(pkv::quantize_fp8_e4m3(z.data(), 10, zr.data()), ContainsSubstring("expected finite"));
}
