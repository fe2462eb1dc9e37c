// kmeans_random_draws and kmeans_exact_ref (the device patternkv k-means' CPU twin)
// against pkv::kmeans: the same initial rows, refills and Lloyd loop. On data without
// near-ties the two loops must agree exactly (centroids and labels bit for bit with one
// slice: the same sums in the same order); with slices the sums only reassociate.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/kmeans/kmeans.h"
#include "pkv/kmeans/kmeans_exact.h"

using namespace pkv;

namespace {

// n points around `centres` well separated blobs in d dims (no near-ties).
std::vector<float> blobs(int64_t n, int d, int centres, uint64_t seed) {
    std::mt19937_64 g(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> mu(static_cast<size_t>(centres) * d), x(static_cast<size_t>(n) * d);
    for (auto& v : mu) v = 40.0f * nd(g);
    for (int64_t i = 0; i < n; ++i)
        for (int t = 0; t < d; ++t) x[i * d + t] = mu[(i % centres) * d + t] + 0.5f * nd(g);
    return x;
}

KMeansParams params_of(int k, uint64_t seed) {
    KMeansParams p;
    p.k = k;
    p.max_iter = 30;
    p.tol = 1e-4;
    p.seed = seed;
    p.init = KMeansInit::random;
    return p;
}

}  // namespace

TEST_CASE("kmeans_random_draws gives kmeans's initial centroids", "[kmeans][exact]") {
    const int d = 5;
    for (int64_t n : {7, 40, 1000}) {
        const std::vector<float> x = blobs(n, d, 3, 11);
        for (int k : {1, 3, 7}) {
            KMeansParams p = params_of(k, 99);
            p.max_iter = 0;  // the initial centroids themselves
            const KMeansResult r = kmeans(x.data(), n, d, p);
            const KMeansDraws dr = kmeans_random_draws(n, k, 99, 0, 4);
            REQUIRE(dr.init_rows.size() == static_cast<size_t>(k));
            REQUIRE(dr.refill_rows.size() == 4);
            for (int j = 0; j < k; ++j)
                CHECK(std::memcmp(r.centroids.data() + j * d, x.data() + dr.init_rows[j] * d, d * sizeof(float)) == 0);
            for (int64_t row : dr.refill_rows) CHECK((row >= 0 && row < n));
        }
    }
    CHECK_THROWS_AS(kmeans_random_draws(3, 4, 1, 0, 0), Error);
}

TEST_CASE("kmeans_exact_ref follows kmeans's Lloyd loop", "[kmeans][exact]") {
    for (const int d : {3, 16, 64}) {
        const int64_t n = 500;
        const std::vector<float> x = blobs(n, d, 6, 5 + d);
        for (const int k : {3, 6}) {  // k > 6 splits a blob: near-ties inside it
            CAPTURE(d, k);
            const KMeansResult r = kmeans(x.data(), n, d, params_of(k, 3));
            const KMeansDraws dr = kmeans_random_draws(n, k, 3, 0, int64_t{k} * 30);
            ExactKMeansSpec s;
            s.k = k;
            std::vector<float> c(static_cast<size_t>(k) * d);
            std::vector<int32_t> lab(static_cast<size_t>(n));
            kmeans_exact_ref(x.data(), n, d, d, s, dr.init_rows.data(), dr.refill_rows.data(),
                             static_cast<int64_t>(dr.refill_rows.size()), c.data(), lab.data());
            CHECK(std::memcmp(c.data(), r.centroids.data(), c.size() * sizeof(float)) == 0);
            CHECK(lab == r.assignments);
            // Four slices reassociate the double sums: the float means stay within one rounding.
            s.slices = 4;
            std::vector<float> c4(c.size());
            kmeans_exact_ref(x.data(), n, d, d, s, dr.init_rows.data(), dr.refill_rows.data(),
                             static_cast<int64_t>(dr.refill_rows.size()), c4.data(), nullptr);
            for (size_t i = 0; i < c.size(); ++i) CHECK(c4[i] == Approx(c[i]).epsilon(1e-6));
        }
    }
}

TEST_CASE("kmeans_exact_ref refills empty clusters as kmeans does", "[kmeans][exact]") {
    // Three distinct points repeated: k = 5 leaves clusters empty every iteration.
    const int d = 4;
    std::vector<float> x;
    for (int i = 0; i < 12; ++i)
        for (int t = 0; t < d; ++t) x.push_back(static_cast<float>((i % 3) * 10 + t));
    const int64_t n = 12;
    const KMeansResult r = kmeans(x.data(), n, d, params_of(5, 8));
    const KMeansDraws dr = kmeans_random_draws(n, 5, 8, 0, 5 * 30);
    ExactKMeansSpec s;
    s.k = 5;
    std::vector<float> c(5 * d);
    std::vector<int32_t> lab(n);
    const int64_t used = kmeans_exact_ref(x.data(), n, d, d, s, dr.init_rows.data(), dr.refill_rows.data(),
                                          static_cast<int64_t>(dr.refill_rows.size()), c.data(), lab.data());
    int64_t refilled = 0;
    for (const auto& st : r.stats) refilled += st.n_empty_refilled;
    CHECK(used == refilled);
    CHECK(std::memcmp(c.data(), r.centroids.data(), c.size() * sizeof(float)) == 0);
    CHECK(lab == r.assignments);
    // Too few refill rows is an error, not a wrong result.
    if (used > 0)
        CHECK_THROWS_WITH(kmeans_exact_ref(x.data(), n, d, d, s, dr.init_rows.data(), dr.refill_rows.data(), used - 1,
                                           c.data(), nullptr),
                          ContainsSubstring("refill rows are too few"));
}

TEST_CASE("kmeans_exact_ref: strided points, bad input", "[kmeans][exact]") {
    const int d = 3, stride = 5;
    const int64_t n = 60;
    const std::vector<float> packed = blobs(n, d, 3, 2);
    std::vector<float> strided(static_cast<size_t>(n) * stride, -7.0f);
    for (int64_t i = 0; i < n; ++i) std::memcpy(&strided[i * stride], &packed[i * d], d * sizeof(float));
    const KMeansDraws dr = kmeans_random_draws(n, 3, 1, 0, 90);
    ExactKMeansSpec s;
    s.k = 3;
    std::vector<float> a(9), b(9);
    kmeans_exact_ref(packed.data(), n, d, d, s, dr.init_rows.data(), dr.refill_rows.data(), 90, a.data(), nullptr);
    kmeans_exact_ref(strided.data(), n, d, stride, s, dr.init_rows.data(), dr.refill_rows.data(), 90, b.data(),
                     nullptr);
    CHECK(a == b);
    strided[7 * stride + 2] = NAN;
    CHECK_THROWS_WITH(kmeans_exact_ref(strided.data(), n, d, stride, s, dr.init_rows.data(), dr.refill_rows.data(), 90,
                                       b.data(), nullptr),
                      ContainsSubstring("point 7 has a non-finite value at dim 2"));
}
