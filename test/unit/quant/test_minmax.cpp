// Asymmetric min-max quantizer: error bounds, exact cases, fp16 parameters,
// layouts and storage accounting.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/quant/minmax.h"
#include "quant_test_util.h"

using pkv::MinMaxCodes;
using pkv::MinMaxSpec;
using pkv::QuantAxis;
using pkv_test::fp16_round;
using pkv_test::random_activations;

namespace {

// Index of the (scale, zero) pair that element (t, c) uses, per the header's layout.
size_t group_index(const MinMaxSpec& spec, int D, int64_t t, int c) {
    if (spec.axis == QuantAxis::token) return static_cast<size_t>(t * (D / spec.group) + c / spec.group);
    return static_cast<size_t>((t / spec.group) * D + c);
}

// Worst |x - x̂| over the matrix divided by half the fp16 step of the element's group.
double max_error_in_half_steps(const std::vector<float>& x, const std::vector<float>& r, const MinMaxCodes& q,
                               const MinMaxSpec& spec, int64_t T, int D) {
    double worst = 0.0;
    for (int64_t t = 0; t < T; ++t)
        for (int c = 0; c < D; ++c) {
            const size_t g = group_index(spec, D, t, c);
            const double s = pkv::half_to_float(q.scales[g]);
            const double e = std::fabs(static_cast<double>(x[t * D + c]) - r[t * D + c]);
            if (s == 0.0) {
                REQUIRE(e == 0.0);
                continue;
            }
            worst = std::max(worst, e / (s / 2.0));
        }
    return worst;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("min-max error is at most half an fp16 step for every width and layout", "[quant][minmax]") {
    const int bits = GENERATE(2, 3, 4, 8);
    const int64_t T = 200;
    const int D = 64;
    for (QuantAxis axis : {QuantAxis::token, QuantAxis::channel})
        for (int G : {16, 32, 64, 128}) {
            if (axis == QuantAxis::token && G > D) continue;
            const MinMaxSpec spec{bits, G, axis};
            INFO("bits " << bits << " group " << G << " axis " << pkv::quant_axis_name(axis));
            const auto x = random_activations(T * D, 17u + static_cast<uint32_t>(bits * G));
            std::vector<float> r(x.size());
            MinMaxCodes q;
            pkv::quantize_minmax(x.data(), T, D, spec, r.data(), &q);
            // Every code is in range and the reconstruction is exactly q * s16 + z16.
            for (int64_t t = 0; t < T; ++t)
                for (int c = 0; c < D; ++c) {
                    const size_t g = group_index(spec, D, t, c);
                    const int code = q.codes[t * D + c];
                    REQUIRE(code <= (1 << bits) - 1);
                    const double expect =
                        static_cast<double>(code) * pkv::half_to_float(q.scales[g]) + pkv::half_to_float(q.zeros[g]);
                    REQUIRE(r[t * D + c] == static_cast<float>(expect));
                }
            // Small slack for the fp32 rounding of (x - z) / s and of x̂.
            CHECK(max_error_in_half_steps(x, r, q, spec, T, D) <= 1.0 + 1e-4);
        }
}

TEST_CASE("min-max error obeys the general bound when scale and zero round badly", "[quant][minmax]") {
    // Arbitrary fp32 inputs (not binary16) with tiny ranges: subnormal fp16 scales and
    // zero points that differ from the group minimum.
    const int bits = GENERATE(2, 3, 4, 8);
    const int n = 37;
    for (float range : {1e-6f, 1e-4f, 3e-3f, 0.7f, 50.0f})
        for (float offset : {0.0f, 1.3f, -517.77f}) {
            auto x = random_activations(n, 5u + static_cast<uint32_t>(range * 1000), 1.0f, false);
            const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
            const float l = *lo, h = *hi;
            for (auto& v : x) v = offset + (v - l) / (h - l) * range;
            std::vector<float> r(n);
            std::vector<uint8_t> codes(n);
            const auto p = pkv::quantize_minmax_group(x.data(), n, 1, bits, r.data(), codes.data());
            const float mn = *std::min_element(x.begin(), x.end()), mx = *std::max_element(x.begin(), x.end());
            const double s = pkv::half_to_float(p.scale), z = pkv::half_to_float(p.zero);
            const double top = z + ((1 << bits) - 1) * s;
            const double bound = std::max({s / 2.0, mx - top, z - mn});
            for (int i = 0; i < n; ++i) {
                INFO("range " << range << " offset " << offset << " element " << i);
                CHECK(std::fabs(static_cast<double>(x[i]) - r[i]) <= bound * (1 + 1e-5) + 4e-7 * std::fabs(x[i]));
            }
        }
}

TEST_CASE("constant groups reconstruct exactly", "[quant][minmax]") {
    const int bits = GENERATE(2, 3, 4, 8);
    SECTION("per token, binary16 values") {
        const int D = 64;
        std::vector<float> x(4 * D);
        for (int t = 0; t < 4; ++t)
            for (int c = 0; c < D; ++c) x[t * D + c] = c < 32 ? -3.25f * t : 1000.0f + t;
        std::vector<float> r(x.size());
        MinMaxCodes q;
        pkv::quantize_minmax(x.data(), 4, D, {bits, 32, QuantAxis::token}, r.data(), &q);
        CHECK(x == r);  // by value: a -0 zero point reconstructs as +0
        for (auto s : q.scales) CHECK(s == 0);
        for (auto c : q.codes) CHECK(c == 0);
    }
    SECTION("per channel, some constant channels among varying ones") {
        const int64_t T = 130;
        const int D = 8;
        auto x = random_activations(T * D, 3);
        for (int64_t t = 0; t < T; ++t) x[t * D + 2] = 0.0f, x[t * D + 5] = -7.5f;
        std::vector<float> r(x.size());
        pkv::quantize_minmax(x.data(), T, D, {bits, 64, QuantAxis::channel}, r.data());
        for (int64_t t = 0; t < T; ++t) {
            CHECK(r[t * D + 2] == 0.0f);
            CHECK(r[t * D + 5] == -7.5f);
        }
    }
    SECTION("a value binary16 cannot hold becomes its binary16 rounding") {
        const float v = 0.1f;
        std::vector<float> x(32, v), r(32);
        pkv::quantize_minmax_group(x.data(), 32, 1, bits, r.data());
        for (float y : r) CHECK(y == fp16_round(v));
        CHECK(fp16_round(v) != v);
    }
    SECTION("a range too small for a binary16 scale collapses to the zero point") {
        std::vector<float> x = {1.0f, 1.0f + std::ldexp(1.0f, -23), 1.0f}, r(3);
        std::vector<uint8_t> codes(3, 9);
        const auto p = pkv::quantize_minmax_group(x.data(), 3, 1, 8, r.data(), codes.data());
        CHECK(p.scale == 0);
        for (int i = 0; i < 3; ++i) CHECK(r[i] == 1.0f);
        for (auto c : codes) CHECK(c == 0);
    }
}

TEST_CASE("quantizing a reconstruction again gives the same reconstruction", "[quant][minmax]") {
    const int bits = GENERATE(2, 3, 4, 8);
    const int64_t T = 150;
    const int D = 64;
    for (QuantAxis axis : {QuantAxis::token, QuantAxis::channel}) {
        const MinMaxSpec spec{bits, axis == QuantAxis::token ? 32 : 128, axis};
        const auto x = random_activations(T * D, 99u + static_cast<uint32_t>(bits));
        std::vector<float> r1(x.size()), r2(x.size());
        MinMaxCodes q1, q2;
        pkv::quantize_minmax(x.data(), T, D, spec, r1.data(), &q1);
        pkv::quantize_minmax(r1.data(), T, D, spec, r2.data(), &q2);
        INFO("bits " << bits << " axis " << pkv::quant_axis_name(axis));
        CHECK(bitwise_equal(r1, r2));
        CHECK(q1.codes == q2.codes);
        CHECK(q1.scales == q2.scales);
        CHECK(q1.zeros == q2.zeros);
    }
}

TEST_CASE("the binary16 scale, not the fp32 one, sets codes and reconstruction", "[quant][minmax]") {
    // Group {0, 0.49995, 1} at 2 bits: the fp32 scale is 1/3 but binary16 holds
    // 0.333251953125. 0.49995 is 1.49985 fp32 steps (code 1) but 1.50022 fp16 steps
    // (code 2); 1.0 reconstructs to 3 * s16, not to 1.0.
    const float s32 = 1.0f / 3.0f;
    const float s16 = fp16_round(s32);
    REQUIRE(s16 == 0.333251953125f);
    std::vector<float> x = {0.0f, 0.49995f, 1.0f}, r(3);
    std::vector<uint8_t> codes(3);
    REQUIRE(std::nearbyint(x[1] / s32) == 1.0f);
    REQUIRE(std::nearbyint(x[1] / s16) == 2.0f);
    const auto p = pkv::quantize_minmax_group(x.data(), 3, 1, 2, r.data(), codes.data());
    CHECK(pkv::half_to_float(p.scale) == s16);
    CHECK(codes[1] == 2);
    CHECK(r[1] == 2.0f * s16);
    CHECK(r[2] == 3.0f * s16);
    CHECK(r[2] != 1.0f);
}

TEST_CASE("rounding of codes is to nearest, ties to even", "[quant][minmax]") {
    // Group {0, 0.5, 1.5, 2.5, 3} at 2 bits: scale 1 (exact in binary16), so the
    // middle elements are exact ties between codes.
    std::vector<float> x = {0.0f, 0.5f, 1.5f, 2.5f, 3.0f}, r(5);
    std::vector<uint8_t> codes(5);
    pkv::quantize_minmax_group(x.data(), 5, 1, 2, r.data(), codes.data());
    CHECK(codes == std::vector<uint8_t>{0, 0, 2, 2, 3});
}

TEST_CASE("per-channel quantization gives the last partial group its own parameters", "[quant][minmax]") {
    const int64_t T = 300;
    const int D = 8;
    const int bits = GENERATE(2, 4);
    auto x = random_activations(T * D, 11);
    for (int c = 0; c < D; ++c) x[5 * D + c] = 400.0f;  // an outlier in the first group only
    const MinMaxSpec spec{bits, 128, QuantAxis::channel};
    std::vector<float> r(x.size());
    MinMaxCodes q;
    const auto cost = pkv::quantize_minmax(x.data(), T, D, spec, r.data(), &q);
    CHECK(cost.groups == 3 * D);
    REQUIRE(q.scales.size() == 3u * D);
    // The 44 trailing tokens quantized alone give the same parameters and values.
    std::vector<float> tail_r(44 * D);
    MinMaxCodes tail_q;
    pkv::quantize_minmax(x.data() + 256 * D, 44, D, spec, tail_r.data(), &tail_q);
    REQUIRE(tail_q.scales.size() == static_cast<size_t>(D));
    for (int c = 0; c < D; ++c) {
        CHECK(q.scales[2 * D + c] == tail_q.scales[c]);
        CHECK(q.zeros[2 * D + c] == tail_q.zeros[c]);
        CHECK(pkv::half_to_float(q.scales[2 * D + c]) < pkv::half_to_float(q.scales[c]) / 4);
    }
    CHECK(std::memcmp(r.data() + 256 * D, tail_r.data(), tail_r.size() * sizeof(float)) == 0);
    // A single trailing token is a constant group per channel and comes back exactly.
    std::vector<float> r1(257 * D);
    pkv::quantize_minmax(x.data(), 257, D, spec, r1.data());
    for (int c = 0; c < D; ++c) CHECK(r1[256 * D + c] == x[256 * D + c]);
}

TEST_CASE("in-place quantization equals out-of-place", "[quant][minmax]") {
    auto x = random_activations(64 * 64, 23);
    std::vector<float> r(x.size());
    const MinMaxSpec spec{3, 64, QuantAxis::channel};
    pkv::quantize_minmax(x.data(), 64, 64, spec, r.data());
    pkv::quantize_minmax(x.data(), 64, 64, spec, x.data());
    CHECK(bitwise_equal(x, r));
}

TEST_CASE("min-max argument errors", "[quant][minmax]") {
    std::vector<float> x(64 * 4, 1.0f), r(x.size());
    CHECK_THROWS_WITH(pkv::quantize_minmax(x.data(), 4, 64, {5, 64, QuantAxis::token}, r.data()),
                      ContainsSubstring("--bits 5: expected 2, 3, 4 or 8"));
    for (int b : {0, 1, 6, 16}) CHECK_THROWS_AS(pkv::check_minmax_bits(b), pkv::Error);
    CHECK_THROWS_WITH(pkv::quantize_minmax(x.data(), 4, 64, {2, 48, QuantAxis::token}, r.data()),
                      ContainsSubstring("group size 48 does not divide head_dim 64"));
    CHECK_THROWS_WITH(pkv::minmax_cost(4, 64, {2, 128, QuantAxis::token}),
                      ContainsSubstring("group size 128 does not divide head_dim 64"));
    CHECK_THROWS_WITH(pkv::minmax_cost(4, 64, {2, 0, QuantAxis::channel}),
                      ContainsSubstring("group size 0: expected a positive number"));
    // Per channel any group size works, including one larger than T.
    CHECK_NOTHROW(pkv::quantize_minmax(x.data(), 4, 64, {2, 48, QuantAxis::channel}, r.data()));
    try {
        pkv::check_minmax_bits(7);
        FAIL("no error");
    } catch (const pkv::Error& e) {
        CHECK(e.code() == pkv::ErrorCode::invalid_argument);
    }
    x[70] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(pkv::quantize_minmax(x.data(), 4, 64, {2, 64, QuantAxis::token}, r.data()),
                      ContainsSubstring("expected finite"));
    x[70] = 1e6f;  // scale 1e6 / 3 does not fit binary16
    CHECK_THROWS_WITH(pkv::quantize_minmax(x.data(), 4, 64, {2, 64, QuantAxis::token}, r.data()),
                      ContainsSubstring("beyond the binary16 range"));
}

TEST_CASE("min-max storage accounting", "[quant][minmax]") {
    const auto bpe = [](int64_t T, int D, const MinMaxSpec& s) {
        return pkv::minmax_cost(T, D, s).bits_per_element(T * D);
    };
    CHECK(bpe(128, 128, {2, 128, QuantAxis::token}) == 2.25);
    CHECK(bpe(128, 128, {2, 128, QuantAxis::channel}) == 2.25);
    CHECK(bpe(1, 64, {2, 64, QuantAxis::token}) == 2.5);
    CHECK(bpe(10, 64, {3, 64, QuantAxis::token}) == 3.5);
    CHECK(bpe(7, 64, {4, 32, QuantAxis::token}) == 5.0);
    CHECK(bpe(256, 64, {8, 128, QuantAxis::channel}) == 8.25);
    const auto c = pkv::minmax_cost(300, 64, {2, 128, QuantAxis::channel});
    CHECK(c.groups == 192);
    CHECK(c.code_bits == 38400u);
    CHECK(c.param_bits == 6144u);
    CHECK(c.total_bits() == 44544u);
    CHECK(pkv::minmax_cost(0, 64, {2, 128, QuantAxis::channel}).total_bits() == 0u);
    CHECK(pkv::minmax_cost(0, 64, {2, 128, QuantAxis::channel}).bits_per_element(0) == 0.0);
    // quantize_minmax reports the same cost it would be asked in advance.
    std::vector<float> x = random_activations(300 * 64, 1), r(x.size());
    const auto q = pkv::quantize_minmax(x.data(), 300, 64, {2, 128, QuantAxis::channel}, r.data());
    CHECK(q.total_bits() == c.total_bits());
}

TEST_CASE("minmax_grid and minmax_grids give quantize_minmax_group's scale and zero", "[minmax]") {
    std::mt19937 rng(77);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    const int n = 300;  // more than one chunk of minmax_grids
    for (int bits : {2, 3, 4, 8}) {
        std::vector<float> mn(n), mx(n), clip(n), z(n), s(n);
        std::vector<pkv::MinMaxGroup> want(n);
        for (int i = 0; i < n; ++i) {
            std::vector<float> g = {nd(rng), nd(rng), nd(rng)};
            if (i % 7 == 0) g = {1.5f, 1.5f, 1.5f};     // constant: zero scale
            if (i % 11 == 0) g = {0.0f, -0.0f, 1e-9f};  // scale below binary16's subnormals
            std::vector<float> r(g.size());
            clip[i] = i % 3 == 0 ? 1.0f : 1.0f - 0.025f * static_cast<float>(i % 25);
            want[i] = pkv::quantize_minmax_group(g.data(), 3, 1, bits, r.data(), nullptr, clip[i]);
            mn[i] = *std::min_element(g.begin(), g.end());
            mx[i] = *std::max_element(g.begin(), g.end());
            const pkv::MinMaxGroup one = pkv::minmax_grid(mn[i], mx[i], bits, clip[i]);
            CHECK(one.scale == want[i].scale);
            CHECK(one.zero == want[i].zero);
        }
        pkv::minmax_grids(mn.data(), mx.data(), clip.data(), n, bits, z.data(), s.data());
        for (int i = 0; i < n; ++i) {
            const float wz = pkv::half_to_float(want[i].zero);  // bitwise: the sign of a zero too
            CHECK(std::memcmp(&z[i], &wz, sizeof wz) == 0);
            CHECK(s[i] == pkv::half_to_float(want[i].scale));
        }
    }
    const float mn = -70000.0f, mx = 1.0f, clip = 1.0f;
    float z = 0.0f, s = 0.0f;
    CHECK_THROWS_AS(pkv::minmax_grids(&mn, &mx, &clip, 1, 2, &z, &s), pkv::Error);
}
