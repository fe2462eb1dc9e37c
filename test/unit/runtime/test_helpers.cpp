// Runtime pattern-table reader: nearest-pattern helpers against brute force and pkv's
// own min-max assignment, the value gate against pkv's analyze gate and hand-made cases,
// the clip range, and that the header includes nothing but the standard library.
#include <cmath>
#include <fstream>
#include <random>
#include <set>

#include "catch.h"
#include "pkv/core/half.h"
#include "pkv/kmeans/minmax_assign.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/quant/minmax.h"
#include "table_fixture.h"

using pkv_rt::Assign;

namespace {

std::vector<float> random_rows(std::mt19937& rng, size_t n, float scale) {
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
}

int brute_l2(const float* x, const std::vector<float>& c, int m, int d) {
    int best = 0;
    long double best_d = 0;
    for (int j = 0; j < m; ++j) {
        long double s = 0;
        for (int t = 0; t < d; ++t) {
            const long double e = static_cast<long double>(x[t]) - c[static_cast<size_t>(j * d + t)];
            s += e * e;
        }
        if (j == 0 || s < best_d) best_d = s, best = j;
    }
    return best;
}

}  // namespace

TEST_CASE("runtime helpers: nearest pattern by L2 and by min-max equals brute force") {
    std::mt19937 rng(5);
    for (const int d : {1, 7, 64}) {
        const int m = 16, n = 300;
        const std::vector<float> c = random_rows(rng, static_cast<size_t>(m * d), 1.0f);
        const std::vector<float> x = random_rows(rng, static_cast<size_t>(n * d), 1.5f);
        std::vector<int32_t> labels(n);
        pkv::assign_minmax_ref(x.data(), n, d, c.data(), m, labels.data(), nullptr);
        int l2_diff = 0, mm_diff = 0;
        for (int i = 0; i < n; ++i) {
            const float* xi = x.data() + static_cast<size_t>(i * d);
            l2_diff += pkv_rt::nearest_pattern(xi, c.data(), m, d, Assign::l2) != brute_l2(xi, c, m, d);
            mm_diff += pkv_rt::nearest_pattern(xi, c.data(), m, d, Assign::minmax) != labels[static_cast<size_t>(i)];
            CHECK(pkv_rt::minmax_distance(xi, c.data(), d) == pkv::minmax_distance(xi, c.data(), d));
        }
        INFO("d = " << d);
        CHECK(l2_diff == 0);
        CHECK(mm_diff == 0);
    }
}

TEST_CASE("runtime helpers: ties go to the lowest index") {
    const int d = 4;
    const std::vector<float> x = {1, 2, 3, 4};
    // L2: rows 1 and 3 are both exactly x's nearest (the same vector).
    const std::vector<float> l2 = {9, 9, 9, 9, 1, 2, 3, 5, 0, 0, 0, 0, 1, 2, 3, 5};
    CHECK(pkv_rt::nearest_pattern(x.data(), l2.data(), 4, d, Assign::l2) == 1);
    CHECK(pkv_rt::l2_distance2(x.data(), l2.data() + 4, d) == 1.0);
    // Min-max ignores constant offsets: x + 7 and x - 2 are both at distance 0.
    const std::vector<float> mm = {0, 0, 0, 9, 8, 9, 10, 11, -1, 0, 1, 2};
    CHECK(pkv_rt::nearest_pattern(x.data(), mm.data(), 3, d, Assign::minmax) == 1);
    CHECK(pkv_rt::minmax_distance(x.data(), mm.data() + 8, d) == 0.0);
    CHECK(pkv_rt::minmax_distance(x.data(), mm.data(), d) == 8.0);  // {1, 2, 3, -5}
    // Under L2 the same rows are not tied.
    CHECK(pkv_rt::nearest_pattern(x.data(), mm.data(), 3, d, Assign::l2) == 2);
    // Degenerate input: no patterns, NaN.
    CHECK(pkv_rt::nearest_pattern(x.data(), mm.data(), 0, d, Assign::l2) == 0);
    const std::vector<float> nan(4, std::nanf(""));
    CHECK(pkv_rt::nearest_pattern(nan.data(), mm.data(), 3, d, Assign::minmax) == 0);
}

TEST_CASE("runtime helpers: the value gate equals pkv's analyze gate at the paper's z") {
    std::mt19937 rng(11);
    std::uniform_real_distribution<double> rho(0.0, 1.3);
    int differ = 0;
    for (const int d : {8, 64, 128}) {
        for (int i = 0; i < 5000; ++i) {
            const double r = rho(rng);
            differ += pkv_rt::gate_passes(r, 1.6448536269514722, d) != pkv::v_gate_passes(r, d);
        }
    }
    CHECK(differ == 0);
    // rho of random vectors equals pkv's bit for bit (float differences, double ratio).
    int rho_differ = 0;
    for (int i = 0; i < 2000; ++i) {
        const std::vector<float> v = random_rows(rng, 64, 1.0f), c = random_rows(rng, 64, 0.5f);
        rho_differ += pkv_rt::gate_rho(v.data(), c.data(), 64) != pkv::v_gate_rho(v.data(), c.data(), 64);
    }
    CHECK(rho_differ == 0);
}

TEST_CASE("runtime helpers: value gate cases") {
    const double z95 = 1.6448536269514722;
    const int D = 64;
    // v = e_1 (R(v) = 1); c = (1 - r) e_1 leaves v - c = r e_1, so rho = r.
    auto rho_case = [](double r) {
        std::vector<float> v(D, 0.0f), c(D, 0.0f);
        v[1] = 1.0f;
        c[1] = static_cast<float>(1.0 - r);
        return std::make_pair(v, c);
    };
    auto [v1, c1] = rho_case(0.1);
    CHECK(pkv_rt::gate_rho(v1.data(), c1.data(), D) == Approx(0.1).epsilon(1e-6));
    CHECK(pkv_rt::gate_subtract(v1.data(), c1.data(), D, z95));  // 0.99 >= 0.184 * 1.00005
    auto [v2, c2] = rho_case(0.95);
    CHECK_FALSE(pkv_rt::gate_subtract(v2.data(), c2.data(), D, z95));  // 0.0975 < 0.184 * 1.347
    // The threshold rho*: 1 - rho^2 = k sqrt(1 + rho^4), k = 2 z / sqrt(5 D).
    for (const double z : {0.5, z95, 3.0}) {
        const double k = 2.0 * z / std::sqrt(5.0 * D);
        double lo = 0.0, hi = 1.0;
        for (int i = 0; i < 200; ++i) {
            const double mid = (lo + hi) / 2;
            (1 - mid * mid >= k * std::sqrt(1 + mid * mid * mid * mid) ? lo : hi) = mid;
        }
        INFO("z = " << z << ", rho* = " << lo);
        CHECK(pkv_rt::gate_passes(lo * (1 - 1e-9), z, D));
        CHECK_FALSE(pkv_rt::gate_passes(lo * (1 + 1e-9), z, D));
        CHECK(pkv_rt::gate_passes(0.0, z, D));
    }
    // c = v: rho = 0, passes unless z is so large that even a perfect match fails.
    std::vector<float> v = {0.5f, -1.0f, 2.0f, 0.25f, 1.0f, -0.5f, 0.0f, 3.0f};
    CHECK(pkv_rt::gate_rho(v.data(), v.data(), 8) == 0.0);
    CHECK(pkv_rt::gate_subtract(v.data(), v.data(), 8, z95));
    CHECK_FALSE(pkv_rt::gate_subtract(v.data(), v.data(), 8, 100.0));  // k = 31.6 > 1
    // z = 0: subtract iff rho <= 1.
    CHECK(pkv_rt::gate_passes(1.0, 0.0, D));
    CHECK_FALSE(pkv_rt::gate_passes(1.0000001, 0.0, D));
    // A flat value vector (R(v) = 0) never subtracts, even against itself with z = 0.
    const std::vector<float> flat(8, 0.75f);
    CHECK(std::isinf(pkv_rt::gate_rho(flat.data(), flat.data(), 8)));
    CHECK_FALSE(pkv_rt::gate_subtract(flat.data(), flat.data(), 8, 0.0));
    // Degenerate arguments.
    CHECK_FALSE(pkv_rt::gate_passes(std::nan(""), 0.0, D));
    CHECK_FALSE(pkv_rt::gate_passes(0.0, std::nan(""), D));
    CHECK_FALSE(pkv_rt::gate_passes(0.0, 0.0, 0));
}

TEST_CASE("runtime helpers: a head's gate uses that head's z") {
    using namespace rt_test;
    const pkv_rt::PatternTable t = parse(encode(default_spec()));
    std::mt19937 rng(3);
    int differ_between_heads = 0;
    for (int i = 0; i < 400; ++i) {
        const std::vector<float> v = random_rows(rng, kDim, 1.0f);
        for (int h = 0; h < kHeadsKv; ++h) {
            const pkv_rt::HeadView hv = t.head(2, h);
            const int iv = hv.nearest_v(v.data());
            CHECK(iv == pkv_rt::nearest_pattern(v.data(), hv.v_patterns, kMv, kDim, Assign::minmax));
            CHECK(hv.v_gate(v.data(), iv) == pkv_rt::gate_subtract(v.data(), hv.v_pattern(iv), kDim, hv.v_gate_z));
        }
        // Head 0 has z = 1.645, head 1 z = 0: some vector passes one and not the other.
        const pkv_rt::HeadView a = t.head(2, 0), b = t.head(2, 1);
        const double ra = pkv_rt::gate_rho(v.data(), a.v_pattern(a.nearest_v(v.data())), kDim);
        differ_between_heads += pkv_rt::gate_passes(ra, a.v_gate_z, kDim) != pkv_rt::gate_passes(ra, b.v_gate_z, kDim);
    }
    CHECK(differ_between_heads > 0);
}

TEST_CASE("runtime helpers: clip range") {
    const pkv_rt::ClipRange half = pkv_rt::clip_range(-1.0f, 3.0f, 0.5f);
    CHECK(half.lo == 0.0f);
    CHECK(half.hi == 2.0f);
    const pkv_rt::ClipRange full = pkv_rt::clip_range(-1.0f, 3.0f, 1.0f);
    CHECK(full.lo == -1.0f);
    CHECK(full.hi == 3.0f);
    const pkv_rt::ClipRange point = pkv_rt::clip_range(2.5f, 2.5f, 0.3f);
    CHECK(point.lo == 2.5f);
    CHECK(point.hi == 2.5f);
    // pkv's grid bit for bit: its binary16 zero and scale come from the same interval.
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> x(-3.0f, 3.0f), a(0.05f, 1.0f);
    int differ = 0;
    for (int i = 0; i < 5000; ++i) {
        float mn = x(rng), mx = x(rng);
        if (mx < mn) std::swap(mn, mx);
        const float clip = i % 5 == 0 ? 1.0f : a(rng);
        const pkv_rt::ClipRange r = pkv_rt::clip_range(mn, mx, clip);
        const pkv::MinMaxGroup g = pkv::minmax_grid(mn, mx, 2, clip);
        differ += pkv::float_to_half(r.lo) != g.zero || pkv::float_to_half((r.hi - r.lo) / 3.0f) != g.scale;
    }
    CHECK(differ == 0);
}

TEST_CASE("runtime reader: the header includes only standard library headers") {
    const std::set<std::string> std_headers = {
        "algorithm", "array",  "cmath",       "cstddef",     "cstdint", "cstring",  "fstream", "initializer_list",
        "iterator",  "limits", "locale",      "map",         "memory",  "optional", "set",     "sstream",
        "stdexcept", "string", "string_view", "type_traits", "utility", "vector"};
    std::ifstream in(std::string(PKV_TEST_SOURCE_DIR) + "/lib/pkv/runtime/pattern_table_reader.h");
    REQUIRE(in);
    int includes = 0;
    for (std::string line; std::getline(in, line);) {
        const size_t at = line.find_first_not_of(" \t");
        if (at == std::string::npos || line.compare(at, 1, "#") != 0) continue;
        std::string directive = line.substr(at + 1);
        directive.erase(0, directive.find_first_not_of(" \t"));
        if (directive.compare(0, 7, "include") != 0) continue;
        ++includes;
        const size_t open = directive.find_first_of("<\"");
        INFO(line);
        REQUIRE(open != std::string::npos);
        CHECK(directive[open] == '<');
        const size_t close = directive.find('>', open);
        REQUIRE(close != std::string::npos);
        CHECK(std_headers.count(directive.substr(open + 1, close - open - 1)) == 1);
    }
    CHECK(includes > 5);
}
