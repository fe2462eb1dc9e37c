// Dense-and-sparse groups (pkv/kvcache/outliers.h) and the simulation's outN option: the
// held-out elements are the ones whose removal narrows their group's range most, they
// stay exact, and each costs its value and position.
#include <cmath>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/kvcache/outliers.h"
#include "pkv/kvcache/simulate.h"

using namespace pkv;

TEST_CASE("outliers: the held-out elements narrow each group's range most", "[analyze][outliers]") {
    MinMaxSpec tok;
    tok.axis = QuantAxis::token, tok.group = 4;
    // Two tokens of two groups of 4 channels.
    const std::vector<float> x = {0, 1, 2, 100, -50, 1, 2, 3, 5, 5, 5, 5, 1, 2, 3, 4};
    std::vector<float> xs(x.size());
    const std::vector<int64_t> held = hold_out_outliers(x.data(), 2, 8, tok, 1, xs.data());
    // 100 (top) and -50 (bottom); a constant group drops its first-sorted element at the
    // bottom (ties: the smaller a), the last group its bottom (range 2 either way: a = 0 first).
    REQUIRE(held.size() == 4);
    CHECK(held[0] == 3);
    CHECK(held[1] == 4);
    CHECK(xs[3] == 0.0f);  // repeats the kept minimum
    CHECK(xs[4] == 1.0f);
    CHECK(outlier_bits(4) == 18);
    CHECK(outlier_bits(128) == 23);
    CHECK(outlier_bits(129) == 24);

    MinMaxSpec ch;
    ch.axis = QuantAxis::channel, ch.group = 3;
    // 4 tokens, 2 channels: groups are tokens 0-2 and token 3 alone (too small to hold out).
    const std::vector<float> y = {0, 9, 1, -9, 7, 8, 3, 3};
    std::vector<float> ys(y.size());
    const std::vector<int64_t> hy = hold_out_outliers(y.data(), 4, 2, ch, 1, ys.data());
    REQUIRE(hy.size() == 2);
    CHECK(hy[0] == 4);  // channel 0: {0, 1, 7}: dropping 7 leaves range 1
    CHECK(hy[1] == 3);  // channel 1: {9, -9, 8}: dropping -9 leaves range 1
    CHECK(ys[4] == 0.0f);
    CHECK(ys[3] == 8.0f);
    CHECK(ys[6] == 3.0f);
}

TEST_CASE("outliers: outN keeps them exact and charges their value and position", "[analyze][outliers]") {
    const int D = 32;
    const int64_t n = 300, P = 100;
    std::mt19937_64 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n * D));
    for (float& v : x) v = nd(rng);
    for (int64_t t = 0; t < n; t += 37) x[static_cast<size_t>(t * D + (t % D))] = 200.0f;  // rare spikes
    for (const KvTensor t : {KvTensor::k, KvTensor::v}) {
        SimParams p;
        p.method = KvMethod::kivi, p.bits = 4, p.group = 32, p.window = 32;
        SimParams po = p;
        po.outliers = 1;
        const SimResult a = simulate_cache(p, t, x.data(), n, D, P);
        const SimResult b = simulate_cache(po, t, x.data(), n, D, P);
        INFO((t == KvTensor::k ? "K" : "V"));
        double ea = 0, eb = 0;
        for (int64_t j = 0; j < n; ++j) {
            for (int d = 0; d < D; ++d) {
                const size_t i = static_cast<size_t>(j * D + d);
                REQUIRE(a.flush_step[static_cast<size_t>(j)] == b.flush_step[static_cast<size_t>(j)]);
                if (x[i] == 200.0f) CHECK(b.recon[i] == 200.0f);  // a spike is its group's outlier
                ea += std::pow(a.recon[i] - x[i], 2), eb += std::pow(b.recon[i] - x[i], 2);
            }
        }
        CHECK(eb < 0.1 * ea);
        CHECK(b.bits.codes == a.bits.codes);
        // One held-out element per group: its value and its position (5 bits in 32).
        double sparse = 0;
        for (const SimUnit& u : a.units) {
            const int64_t m = u.t1 - u.t0;
            sparse += t == KvTensor::k ? (m > 2 ? D * outlier_bits(m) : 0) : D / 32 * outlier_bits(32);
        }
        CHECK(outlier_bits(32) == 21);
        CHECK(b.bits.params - a.bits.params == Approx(sparse).epsilon(1e-12));
    }
}
