// Assignment step: the GEMM CPU assigner against the scalar double reference, tie
// breaking, block boundaries, and the centroid-sum accumulation.
#include <cmath>
#include <cstring>
#include <vector>

#include "catch.h"
#include "kmeans_test_util.h"
#include "pkv/core/error.h"
#include "pkv/kmeans/assigner.h"

using pkv_test::gaussian_points;

namespace {

// Compares CpuAssigner with assign_ref; returns the number of differing labels after
// checking that each difference is a near-tie.
int64_t compare_with_ref(const std::vector<float>& x, int64_t n, int d, const std::vector<float>& c, int k,
                         int64_t block_rows) {
    std::vector<int32_t> got(n), want(n);
    std::vector<float> got_d2(n);
    std::vector<double> want_d2(n);
    pkv::CpuAssigner cpu(block_rows);
    cpu.assign(x.data(), n, d, c.data(), k, got.data(), got_d2.data());
    pkv::assign_ref(x.data(), n, d, c.data(), k, want.data(), want_d2.data());
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) {
        CAPTURE(i, n, d, k, block_rows);
        REQUIRE(got[i] >= 0);
        REQUIRE(got[i] < k);
        REQUIRE(got_d2[i] >= 0.0f);
        if (got[i] != want[i]) {
            ++differ;
            // The chosen centroid's exact distance must be within 1e-5 (relative) of the best.
            std::vector<int32_t> l(1);
            std::vector<double> dg(1);
            pkv::assign_ref(x.data() + i * d, 1, d, c.data() + int64_t{got[i]} * d, 1, l.data(), dg.data());
            CHECK(dg[0] - want_d2[i] <= 1e-5 * want_d2[i]);
        }
        // dist2 is recomputed directly, so it matches the exact distance of its own label.
        std::vector<int32_t> l(1);
        std::vector<double> own(1);
        pkv::assign_ref(x.data() + i * d, 1, d, c.data() + int64_t{got[i]} * d, 1, l.data(), own.data());
        CHECK(std::fabs(got_d2[i] - own[0]) <= 1e-5 * own[0] + 1e-30);
    }
    return differ;
}

}  // namespace

TEST_CASE("cpu assigner matches the double reference on random data", "[kmeans][assign]") {
    struct Case {
        int64_t n;
        int d;
        int k;
        int64_t block_rows;
    };
    const Case cases[] = {{20000, 64, 100, 0}, {5000, 128, 256, 0}, {3001, 16, 7, 64}, {999, 3, 33, 7}, {10, 1, 1, 0}};
    for (const Case& cs : cases) {
        const std::vector<float> x = gaussian_points(cs.n, cs.d, 11 + cs.d);
        const std::vector<float> c = gaussian_points(cs.k, cs.d, 99 + cs.k);
        const int64_t differ = compare_with_ref(x, cs.n, cs.d, c, cs.k, cs.block_rows);
        CAPTURE(cs.n, cs.d, cs.k, differ);
        CHECK(static_cast<double>(differ) <= 1e-3 * static_cast<double>(cs.n));
    }
}

TEST_CASE("cpu assigner is independent of the block size", "[kmeans][assign]") {
    const int64_t n = 1537;
    const int d = 24, k = 19;
    const std::vector<float> x = gaussian_points(n, d, 5);
    const std::vector<float> c = gaussian_points(k, d, 6);
    std::vector<int32_t> l0(n), l1(n);
    std::vector<float> d0(n), d1(n);
    pkv::CpuAssigner(0).assign(x.data(), n, d, c.data(), k, l0.data(), d0.data());
    pkv::CpuAssigner(1).assign(x.data(), n, d, c.data(), k, l1.data(), d1.data());
    CHECK(l0 == l1);
    // dist2 is recomputed per point, so it does not depend on the GEMM tiling at all.
    CHECK(d0 == d1);
}

TEST_CASE("ties go to the lowest centroid index", "[kmeans][assign]") {
    const int d = 4;
    // Centroids 0 and 2 are identical; 1 and 3 are mirror images around the points.
    const std::vector<float> c = {1, 1, 1, 1, 5, 0, 0, 0, 1, 1, 1, 1, -5, 0, 0, 0};
    const std::vector<float> x = {1, 1, 1, 1, 1.5f, 1, 1, 1, 0, 0, 0, 0};
    // Every point is nearest to the duplicated pair c0 = c2, so all get label 0; the
    // last one is also equidistant from c1 and c3 (125), but c0 is closer (84).
    std::vector<float> x2 = x;
    x2.insert(x2.end(), {0, 10, 0, 0});
    const int64_t n = 4;
    std::vector<int32_t> ref(n), cpu(n);
    std::vector<float> dist(n);
    pkv::assign_ref(x2.data(), n, d, c.data(), 4, ref.data(), nullptr);
    pkv::CpuAssigner().assign(x2.data(), n, d, c.data(), 4, cpu.data(), dist.data());
    CHECK(ref == std::vector<int32_t>{0, 0, 0, 0});
    CHECK(cpu == ref);
    CHECK(dist[0] == 0.0f);
    CHECK(dist[1] == 0.25f);
    // With c0/c2 moved away, c1 and c3 tie exactly: label 1.
    const std::vector<float> c_far = {100, 100, 100, 100, 5, 0, 0, 0, 100, 100, 100, 100, -5, 0, 0, 0};
    const std::vector<float> y = {0, 10, 0, 0};
    int32_t lr = -1, lc = -1;
    float dc = -1;
    pkv::assign_ref(y.data(), 1, d, c_far.data(), 4, &lr, nullptr);
    pkv::CpuAssigner().assign(y.data(), 1, d, c_far.data(), 4, &lc, &dc);
    CHECK(lr == 1);
    CHECK(lc == 1);
    CHECK(dc == 125.0f);
}

TEST_CASE("accumulate_centroid_sums gives double sums and int64 counts", "[kmeans][assign]") {
    const int64_t n = 6;
    const int d = 2, k = 3;
    const std::vector<float> x = {1, 2, 3, 4, 5, 6, 0.5f, 0.25f, -1, -1, 7, 8};
    const std::vector<int32_t> labels = {0, 2, 0, 2, 0, 2};
    std::vector<double> sums(k * d, 123.0);
    std::vector<int64_t> counts(k, 77);
    pkv::accumulate_centroid_sums(x.data(), n, d, labels.data(), k, sums.data(), counts.data());
    CHECK(counts == std::vector<int64_t>{3, 0, 3});
    CHECK(sums == std::vector<double>{5, 7, 0, 0, 10.5, 12.25});

    const std::vector<int32_t> bad = {0, 3, 0, 0, 0, 0};
    CHECK_THROWS_WITH(pkv::accumulate_centroid_sums(x.data(), n, d, bad.data(), k, sums.data(), counts.data()),
                      ContainsSubstring("point 1 has label 3, expected [0, 3)"));
}

TEST_CASE("accumulated sums keep precision where float would not", "[kmeans][assign]") {
    // 2^24 + 2 ones: a float running sum stops at 2^24; double and int64 do not.
    const int64_t n = (int64_t{1} << 24) + 2;
    const std::vector<float> x(static_cast<size_t>(n), 1.0f);
    const std::vector<int32_t> labels(static_cast<size_t>(n), 0);
    double sum = 0;
    int64_t count = 0;
    pkv::accumulate_centroid_sums(x.data(), n, 1, labels.data(), 1, &sum, &count);
    CHECK(count == n);
    CHECK(sum == static_cast<double>(n));
}
