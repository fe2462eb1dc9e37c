// Kernels of the forward pass whose blocking the tiny models do not reach.
#include <cmath>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/model/ops.h"

using namespace pkv::ops;

// Eigen would block its products for the cache sizes it reads from the CPU, so their sums'
// order, and figures downstream of a quantizer, would change from machine to machine.
TEST_CASE("matrix products: Eigen is blocked for pkv's fixed cache sizes, not the CPU's", "[model][ops]") {
#ifndef EIGEN_NO_CPUID
    FAIL("EIGEN_NO_CPUID is not defined: Eigen would read its cache sizes from the CPU");
#endif
    std::vector<float> x(64 * 32, 0.5f), w(16 * 32, 0.25f), y(64 * 16);
    matmul_wt(x.data(), 64, 32, w.data(), 16, y.data());
    CHECK(Eigen::l1CacheSize() == 32 * 1024);
    CHECK(Eigen::l2CacheSize() == 512 * 1024);
    CHECK(Eigen::l3CacheSize() == 8 * 1024 * 1024);
    CHECK(y[0] == Approx(32 * 0.125));
}

TEST_CASE("logit statistics: blocks and merges give the exact log-softmax", "[model][ops]") {
    std::mt19937 rng(3);
    std::normal_distribution<float> d(0.0f, 6.0f);
    const int n = 1000, target = 617;
    std::vector<float> l(n);
    for (auto& x : l) x = d(rng);
    l[123] = l[900] = 40.0f;  // a tie: the lower id wins
    double mx = -1e300;
    for (float x : l) mx = std::max(mx, static_cast<double>(x));
    double z = 0;
    for (float x : l) z += std::exp(x - mx);
    const double want = mx + std::log(z) - l[target];

    for (int block : {1000, 333, 64, 7}) {
        LogitRowStats all;
        std::vector<LogitRowStats> parts;
        for (int c0 = 0; c0 < n; c0 += block) {
            const int len = std::min(block, n - c0);
            all.add_block(l.data() + c0, len, c0, target);
            LogitRowStats p;
            p.add_block(l.data() + c0, len, c0, target);
            parts.push_back(p);
        }
        CHECK(all.nll() == Approx(want).epsilon(1e-6));
        CHECK(all.argmax == 123);
        LogitRowStats merged;  // merged out of order, as threads finish
        for (size_t i = parts.size(); i-- > 0;) merged.merge(parts[i]);
        CHECK(merged.nll() == Approx(want).epsilon(1e-6));
        CHECK(merged.argmax == 123);
    }
}

TEST_CASE("attention: query blocks and row ranges do not change the result", "[model][ops]") {
    const int n = 37, H = 4, HKV = 2, HD = 8;
    std::mt19937 rng(5);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> q(n * H * HD), k(n * HKV * HD), v(n * HKV * HD);
    for (auto* a : {&q, &k, &v})
        for (auto& x : *a) x = 2.0f * d(rng);
    RowMatrix scratch;
    std::vector<float> whole(q.size()), pieces(q.size());
    causal_attention_rows(q.data(), k.data(), v.data(), H, HKV, HD, whole.data(), 0, n, scratch);
    causal_attention_rows(q.data(), k.data(), v.data(), H, HKV, HD, pieces.data(), 0, 20, scratch, 6);
    causal_attention_rows(q.data(), k.data(), v.data(), H, HKV, HD, pieces.data(), 20, n, scratch, 5);
    for (size_t i = 0; i < whole.size(); ++i) CHECK(pieces[i] == Approx(whole[i]).epsilon(1e-5).margin(1e-6));
    // Row 0 sees only itself: its output is its KV head's value row.
    for (int h = 0; h < H; ++h)
        for (int e = 0; e < HD; ++e) CHECK(whole[h * HD + e] == Approx(v[(h / 2) * HD + e]).epsilon(1e-6));
}

TEST_CASE("attention: a sliding window sees only the last W keys, in both kernels", "[model][ops]") {
    const int n = 41, H = 4, HKV = 1, HD = 8, W = 7;
    std::mt19937 rng(9);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> q(n * H * HD), k(n * HKV * HD), v(n * HKV * HD);
    for (auto* a : {&q, &k, &v})
        for (auto& x : *a) x = 2.0f * d(rng);
    // Naive: query i, head h, softmax over keys max(0, i-W+1)..i, in double.
    std::vector<double> want(q.size(), 0.0);
    for (int i = 0; i < n; ++i)
        for (int h = 0; h < H; ++h) {
            const int lo = std::max(0, i - W + 1);
            std::vector<double> s(i + 1 - lo);
            double mx = -1e300, z = 0;
            for (int j = lo; j <= i; ++j) {
                double dot = 0;
                for (int e = 0; e < HD; ++e) dot += double{q[(i * H + h) * HD + e]} * k[j * HD + e];
                s[j - lo] = dot / std::sqrt(double{HD});
                mx = std::max(mx, s[j - lo]);
            }
            for (double& x : s) z += (x = std::exp(x - mx));
            for (int j = lo; j <= i; ++j)
                for (int e = 0; e < HD; ++e) want[(i * H + h) * HD + e] += s[j - lo] / z * v[j * HD + e];
        }
    RowMatrix s1, s2;
    std::vector<float> got(q.size()), cached(q.size());
    // Query blocks of 5 rows: blocks start inside and outside the window.
    causal_attention_rows(q.data(), k.data(), v.data(), H, HKV, HD, got.data(), 0, n, s1, 5, 0.0f, W);
    const int32_t* none[1] = {nullptr};
    causal_attention_rows_cached(q.data(), k.data(), v.data(), k.data(), v.data(), none, none, H, HKV, HD,
                                 cached.data(), 0, n, s1, s2, 5, 0.0f, W);
    for (size_t i = 0; i < want.size(); ++i) {
        CHECK(got[i] == Approx(want[i]).epsilon(1e-5).margin(1e-5));
        CHECK(cached[i] == Approx(want[i]).epsilon(1e-5).margin(1e-5));
    }
    // A window as long as the sequence is full causal attention.
    std::vector<float> full(q.size()), wide(q.size());
    causal_attention_rows(q.data(), k.data(), v.data(), H, HKV, HD, full.data(), 0, n, s1);
    causal_attention_rows(q.data(), k.data(), v.data(), H, HKV, HD, wide.data(), 0, n, s1, 256, 0.0f, n);
    CHECK(full == wide);
}
