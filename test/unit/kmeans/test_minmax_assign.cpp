// Min-max distance, min-max assignment and the Chebyshev centre on hand-made cases.
#include <cmath>
#include <vector>

#include "catch.h"
#include "kmeans_test_util.h"
#include "pkv/core/error.h"
#include "pkv/kmeans/minmax_assign.h"

TEST_CASE("minmax distance is the range of the residual", "[kmeans][minmax]") {
    const float x[4] = {1, 5, -2, 0};
    const float c[4] = {0, 1, 0, 0};
    // residual (1, 4, -2, 0): range 4 - (-2) = 6
    CHECK(pkv::minmax_distance(x, c, 4) == 6.0);
    // A constant offset of the pattern does not change it.
    const float c_shift[4] = {10, 11, 10, 10};
    CHECK(pkv::minmax_distance(x, c_shift, 4) == 6.0);
    CHECK(pkv::minmax_distance(x, x, 4) == 0.0);
    // d = 1: always 0.
    CHECK(pkv::minmax_distance(x, c, 1) == 0.0);
    // Computed in double: the float residuals would round.
    const float big[2] = {16777216.0f, 0.0f};
    const float off[2] = {-1.0f, 0.0f};
    CHECK(pkv::minmax_distance(big, off, 2) == 16777217.0);
}

TEST_CASE("minmax assignment picks the flattest residual, lowest index on ties", "[kmeans][minmax]") {
    const int d = 3, k = 4;
    const std::vector<float> c = {
        0,  0,  0,  // pattern 0: identity
        5,  5,  5,  // pattern 1: constant offset of 0 → same d_mm as pattern 0 for every x
        0,  10, 0,  // pattern 2: a spike on dim 1
        -3, 0,  3,  // pattern 3: a ramp
    };
    const std::vector<float> x = {
        1,  1,  1,  // flat: d_mm 0 to patterns 0 and 1 → 0 (lowest index)
        2,  12, 2,  // spike: d_mm 0 to pattern 2 (residual (2, 2, 2)); 10 to pattern 0
        -3, 0,  3,  // ramp: 0 to pattern 3; 6 to pattern 0
        -1, 0,  1,  // half ramp: 2 to pattern 0, 4 to pattern 3 (residual (2, 0, -2)), 11 to pattern 2
    };
    std::vector<int32_t> labels(4);
    std::vector<double> dist(4);
    pkv::assign_minmax_ref(x.data(), 4, d, c.data(), k, labels.data(), dist.data());
    CHECK(labels == std::vector<int32_t>{0, 2, 3, 0});
    CHECK(dist == std::vector<double>{0, 0, 0, 2});
    // dist is optional.
    std::vector<int32_t> again(4);
    pkv::assign_minmax_ref(x.data(), 4, d, c.data(), k, again.data(), nullptr);
    CHECK(again == labels);
    // Agrees with a brute-force evaluation on random data.
    const std::vector<float> xr = pkv_test::gaussian_points(300, 8, 3);
    const std::vector<float> cr = pkv_test::gaussian_points(9, 8, 4);
    std::vector<int32_t> lr(300);
    pkv::assign_minmax_ref(xr.data(), 300, 8, cr.data(), 9, lr.data(), nullptr);
    for (int i = 0; i < 300; ++i)
        for (int j = 0; j < 9; ++j) {
            const double dj = pkv::minmax_distance(xr.data() + i * 8, cr.data() + j * 8, 8);
            const double dl = pkv::minmax_distance(xr.data() + i * 8, cr.data() + lr[i] * 8, 8);
            CHECK((dl < dj || (dl == dj && lr[i] <= j)));
        }
    CHECK_THROWS_WITH(pkv::assign_minmax_ref(x.data(), 4, d, c.data(), 0, labels.data(), nullptr),
                      ContainsSubstring("expected k >= 1, got 0"));
}

TEST_CASE("chebyshev centre is the per-dimension midrange", "[kmeans][minmax]") {
    const std::vector<float> x = {
        0, 10, -1, 4, 10, -5, 2, 10, 3,
    };
    std::vector<float> c(3);
    pkv::chebyshev_center(x.data(), 3, 3, c.data());
    CHECK(c == std::vector<float>{2, 10, -1});
    // It minimises the largest coordinate-wise residual: radius 2 on dim 0, 4 on dim 2.
    double radius = 0;
    for (int i = 0; i < 3; ++i)
        for (int t = 0; t < 3; ++t) radius = std::max(radius, std::fabs(double(x[i * 3 + t]) - c[t]));
    CHECK(radius == 4.0);
    // One vector is its own centre; extreme magnitudes do not overflow.
    const std::vector<float> huge = {3e38f, -3e38f, -3e38f, 3e38f};
    std::vector<float> h(2);
    pkv::chebyshev_center(huge.data(), 2, 2, h.data());
    CHECK(h == std::vector<float>{0.0f, 0.0f});
    pkv::chebyshev_center(huge.data(), 1, 2, h.data());
    CHECK(h == std::vector<float>{3e38f, -3e38f});
    CHECK_THROWS_WITH(pkv::chebyshev_center(x.data(), 0, 3, c.data()),
                      ContainsSubstring("expected n >= 1 vectors, got 0"));
}
