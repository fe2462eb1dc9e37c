// The fused AVX2 dot+argmin kernel behind CpuAssigner: parity with the double
// reference across k (partial and several centroid panels) and d, ties across and
// inside panels, row remainders, and independence of block size and thread count;
// and agreement with the Eigen GEMM path it replaces.
#include <cmath>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "catch.h"
#include "kmeans_test_util.h"
#include "pkv/kmeans/assign_cpu_fused.h"
#include "pkv/kmeans/assigner.h"

using pkv_test::gaussian_points;

namespace {

double exact_dist2(const std::vector<float>& x, int64_t i, int d, const std::vector<float>& c, int j) {
    double acc = 0.0;
    for (int t = 0; t < d; ++t) {
        const double diff = static_cast<double>(x[i * d + t]) - c[static_cast<size_t>(j) * d + t];
        acc += diff * diff;
    }
    return acc;
}

// Labels of the fused path against assign_ref: a different label must be a near-tie
// (its exact distance within 1e-5 relative of the best); returns how many differ.
int64_t check_against_ref(const std::vector<float>& x, int64_t n, int d, const std::vector<float>& c, int k,
                          int64_t block_rows) {
    std::vector<int32_t> got(n), want(n);
    std::vector<float> got_d2(n);
    std::vector<double> want_d2(n);
    pkv::detail::assign_cpu_fused(x.data(), n, d, c.data(), k, block_rows, got.data(), got_d2.data());
    pkv::assign_ref(x.data(), n, d, c.data(), k, want.data(), want_d2.data());
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) {
        CAPTURE(i, n, d, k, block_rows);
        REQUIRE(got[i] >= 0);
        REQUIRE(got[i] < k);
        const double own = exact_dist2(x, i, d, c, got[i]);
        // dist2 is the float distance of the point's own label.
        CHECK(std::fabs(got_d2[i] - own) <= 1e-5 * own + 1e-30);
        if (got[i] != want[i]) {
            ++differ;
            CHECK(own - want_d2[i] <= 1e-5 * want_d2[i]);
        }
    }
    return differ;
}

}  // namespace

TEST_CASE("fused kernel matches the double reference", "[kmeans][assign][fused]") {
    if (!pkv::detail::fused_assign_available()) PKV_SKIP("this build has no AVX2/FMA fused kernel");
    struct Case {
        int64_t n;
        int d;
        int k;
        int64_t block_rows;
    };
    // k: one partial panel, exactly one, one plus a lane, several (with a partial last
    // one), and more than one L2 chunk of panels at d = 64 and d = 128; n: remainders
    // of the 6-row micro-tile and the 192-row block.
    const Case cases[] = {{1001, 64, 1, 0},    {997, 64, 7, 0},    {2000, 128, 16, 0},   {1999, 64, 17, 0},
                          {3005, 128, 33, 64}, {4099, 64, 256, 0}, {3001, 128, 1000, 0}, {1203, 64, 1024, 0},
                          {777, 3, 40, 13},    {50, 1, 5, 0},      {5, 200, 20, 0}};
    for (const Case& cs : cases) {
        const std::vector<float> x = gaussian_points(cs.n, cs.d, 31 + cs.d + cs.k);
        const std::vector<float> c = gaussian_points(cs.k, cs.d, 77 + cs.k);
        const int64_t differ = check_against_ref(x, cs.n, cs.d, c, cs.k, cs.block_rows);
        CAPTURE(cs.n, cs.d, cs.k, differ);
        CHECK(static_cast<double>(differ) <= 1e-3 * static_cast<double>(cs.n));
    }
}

TEST_CASE("fused kernel sends exact ties to the lowest index, across and inside panels", "[kmeans][assign][fused]") {
    if (!pkv::detail::fused_assign_available()) PKV_SKIP("this build has no AVX2/FMA fused kernel");
    const int d = 8, k = 50;
    // Small integer coordinates: every score is exact in float, so ties are exact.
    std::vector<float> c(static_cast<size_t>(k) * d);
    for (int j = 0; j < k; ++j)
        for (int t = 0; t < d; ++t) c[static_cast<size_t>(j) * d + t] = static_cast<float>(10 + j * 3 + t);
    const auto set_row = [&](int j, std::vector<float> v) {
        for (int t = 0; t < d; ++t) c[static_cast<size_t>(j) * d + t] = v[t];
    };
    // Target A = (1,...,1) duplicated at 45 (last panel), 20 (second), 9 (first panel,
    // upper lane half) and 12: label 9.
    const std::vector<float> a(d, 1.0f);
    for (int j : {45, 20, 12, 9}) set_row(j, a);
    // Target B = 0: two centroids at equal distance, 18 and 37, mirror images: label 18.
    std::vector<float> b1(d, 0.0f), b2(d, 0.0f);
    b1[0] = 2.0f;
    b2[0] = -2.0f;
    set_row(37, b1);
    set_row(18, b2);
    const std::vector<float> x = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0};
    std::vector<int32_t> got(2), want(2);
    std::vector<float> d2(2);
    pkv::detail::assign_cpu_fused(x.data(), 2, d, c.data(), k, 0, got.data(), d2.data());
    pkv::assign_ref(x.data(), 2, d, c.data(), k, want.data(), nullptr);
    CHECK(want == std::vector<int32_t>{9, 18});
    CHECK(got == want);
    CHECK(d2[0] == 0.0f);
    CHECK(d2[1] == 4.0f);
    // All centroids equal: label 0 for every point.
    const std::vector<float> same(static_cast<size_t>(k) * d, 0.5f);
    pkv::detail::assign_cpu_fused(x.data(), 2, d, same.data(), k, 0, got.data(), d2.data());
    CHECK(got == std::vector<int32_t>{0, 0});
}

TEST_CASE("fused kernel does not depend on block size or thread count", "[kmeans][assign][fused]") {
    if (!pkv::detail::fused_assign_available()) PKV_SKIP("this build has no AVX2/FMA fused kernel");
    // Large enough (n k d >= 2^24) for the parallel region to engage.
    const int64_t n = 20011;
    const int d = 64, k = 40;
    const std::vector<float> x = gaussian_points(n, d, 8);
    const std::vector<float> c = gaussian_points(k, d, 9);
    std::vector<int32_t> l0(n), l1(n), l2(n);
    std::vector<float> d0(n), d1(n), d2(n);
    pkv::detail::assign_cpu_fused(x.data(), n, d, c.data(), k, 0, l0.data(), d0.data());
    pkv::detail::assign_cpu_fused(x.data(), n, d, c.data(), k, 5, l1.data(), d1.data());
    CHECK(l0 == l1);
    CHECK(d0 == d1);
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    pkv::detail::assign_cpu_fused(x.data(), n, d, c.data(), k, 0, l2.data(), d2.data());
    omp_set_num_threads(3);
    std::vector<int32_t> l3(n);
    std::vector<float> d3(n);
    pkv::detail::assign_cpu_fused(x.data(), n, d, c.data(), k, 0, l3.data(), d3.data());
    omp_set_num_threads(saved);
    CHECK(l0 == l2);
    CHECK(d0 == d2);
    CHECK(l0 == l3);
    CHECK(d0 == d3);
#endif
}

TEST_CASE("fused kernel agrees with the Eigen GEMM path", "[kmeans][assign][fused]") {
    if (!pkv::detail::fused_assign_available()) PKV_SKIP("this build has no AVX2/FMA fused kernel");
    for (const int k : {16, 100, 300}) {
        const int64_t n = 6000;
        const int d = 128;
        const std::vector<float> x = gaussian_points(n, d, 100 + k);
        const std::vector<float> c = gaussian_points(k, d, 200 + k);
        std::vector<int32_t> lf(n), lg(n);
        std::vector<float> df(n), dg(n);
        pkv::detail::assign_cpu_fused(x.data(), n, d, c.data(), k, 0, lf.data(), df.data());
        pkv::detail::assign_cpu_gemm(x.data(), n, d, c.data(), k, 0, lg.data(), dg.data());
        int64_t differ = 0;
        for (int64_t i = 0; i < n; ++i) {
            if (lf[i] == lg[i]) {
                // Same label: dist2 comes from the same exact recomputation.
                CHECK(df[i] == dg[i]);
                continue;
            }
            ++differ;
            const double ef = exact_dist2(x, i, d, c, lf[i]), eg = exact_dist2(x, i, d, c, lg[i]);
            CAPTURE(i, k, ef, eg);
            CHECK(std::fabs(ef - eg) <= 1e-5 * std::min(ef, eg));
        }
        CAPTURE(k, differ);
        CHECK(differ <= n / 1000);
    }
}
