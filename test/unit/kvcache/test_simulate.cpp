// Cache simulations of pkv analyze checked against plain step-by-step simulations,
// hand-counted bits, the V gate threshold and residualization on clustered data.
#include <algorithm>
#include <cmath>
#include <deque>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/kmeans/assigner.h"
#include "pkv/kmeans/kmeans.h"
#include "pkv/kmeans/minmax_assign.h"
#include "pkv/kvcache/metrics.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/quant/minmax.h"

using namespace pkv;

namespace {

std::vector<float> random_matrix(int64_t n, int D, uint64_t seed, float scale = 1.0f) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.0f, scale);
    std::vector<float> x(static_cast<size_t>(n * D));
    for (auto& v : x) v = nd(rng);
    // A few outlier channels, as real keys have.
    for (int64_t t = 0; t < n; ++t) x[t * D + 1] += 5.0f;
    return x;
}

// What query t sees of token j according to a SimResult.
float seen(const SimResult& r, const std::vector<float>& x, int64_t t, int64_t j, int d, int D) {
    return r.flush_step[j] > t ? x[j * D + d] : r.recon[j * D + d];
}

// cache[j] = value the plain simulation holds now (exact or quantized).
using Cache = std::vector<std::vector<float>>;

void check_step(const SimResult& r, const std::vector<float>& x, const Cache& cache, int64_t t, int D) {
    for (int64_t j = 0; j <= t; ++j) {
        INFO("query " << t << " token " << j << " flush " << r.flush_step[j]);
        for (int d = 0; d < D; ++d) REQUIRE(seen(r, x, t, j, d, D) == cache[j][d]);
    }
}

std::vector<float> rows(const std::vector<float>& x, int64_t t0, int64_t t1, int D) {
    return {x.begin() + t0 * D, x.begin() + t1 * D};
}

}  // namespace

TEST_CASE("kivi bookkeeping equals a step-by-step cache", "[analyze]") {
    const int D = 4, R = 4, G = 4;
    const int64_t n = 23;
    const auto x = random_matrix(n, D, 7);
    for (int64_t P : {int64_t{0}, int64_t{3}, int64_t{9}, int64_t{12}, n}) {
        SimParams p;
        p.method = KvMethod::kivi;
        p.bits = 2;
        p.group = G;
        p.window = R;
        const SimResult rk = simulate_cache(p, KvTensor::k, x.data(), n, D, P);
        const SimResult rv = simulate_cache(p, KvTensor::v, x.data(), n, D, P);
        // Plain simulation. Prefill queries attend in full precision.
        Cache ck, cv;
        for (int64_t j = 0; j < n; ++j) ck.push_back(rows(x, j, j + 1, D)), cv.push_back(rows(x, j, j + 1, D));
        for (int64_t t = 0; t < std::min<int64_t>(P, n); ++t) check_step(rk, x, ck, t, D), check_step(rv, x, cv, t, D);
        auto quant_k_block = [&](int64_t a, int64_t b) {
            auto blk = rows(x, a, b, D);
            quantize_minmax(blk.data(), b - a, D, {2, G, QuantAxis::channel}, blk.data());
            for (int64_t j = a; j < b; ++j) ck[j].assign(blk.begin() + (j - a) * D, blk.begin() + (j - a + 1) * D);
        };
        auto quant_v_token = [&](int64_t j) {
            auto v = rows(x, j, j + 1, D);
            quantize_minmax(v.data(), 1, D, {2, std::min(G, D), QuantAxis::token}, v.data());
            cv[j] = v;
        };
        const int64_t pq = P - P % R;
        if (pq > 0) quant_k_block(0, pq);
        std::deque<int64_t> kwin, vwin;
        for (int64_t j = pq; j < P; ++j) kwin.push_back(j);
        for (int64_t j = 0; j < P; ++j) {
            if (j < P - R) quant_v_token(j);
            else vwin.push_back(j);
        }
        for (int64_t t = P; t < n; ++t) {
            kwin.push_back(t);
            vwin.push_back(t);
            check_step(rk, x, ck, t, D);
            check_step(rv, x, cv, t, D);
            if (static_cast<int64_t>(kwin.size()) == R) quant_k_block(kwin.front(), kwin.back() + 1), kwin.clear();
            if (static_cast<int64_t>(vwin.size()) > R) quant_v_token(vwin.front()), vwin.pop_front();
        }
        // Final state: window tokens stay exact, everything else is quantized.
        for (int64_t j = 0; j < n; ++j) {
            const bool kq = std::find(kwin.begin(), kwin.end(), j) == kwin.end();
            const bool vq = std::find(vwin.begin(), vwin.end(), j) == vwin.end();
            CHECK((rk.flush_step[j] != kNeverQuantized) == kq);
            CHECK((rv.flush_step[j] != kNeverQuantized) == vq);
            for (int d = 0; d < D; ++d) CHECK(rk.recon[j * D + d] == ck[j][d]);
        }
    }
}

TEST_CASE("patternkv bookkeeping equals a step-by-step cache", "[analyze]") {
    const int D = 8, R = 8, G = 8, M0 = 4;
    const int64_t n = 41;
    const auto x = random_matrix(n, D, 11);
    for (bool l2 : {false, true})
        for (int64_t P : {int64_t{13}, int64_t{16}, int64_t{5}}) {
            SimParams p;
            p.method = KvMethod::patternkv;
            p.bits = 2;
            p.group = G;
            p.window = R;
            p.patterns = M0;
            p.decode_l2 = l2;
            p.seed = 3;
            for (KvTensor tensor : {KvTensor::k, KvTensor::v}) {
                INFO("P " << P << " l2 " << l2 << " tensor " << (tensor == KvTensor::k ? "k" : "v"));
                const SimResult r = simulate_cache(p, tensor, x.data(), n, D, P);
                Cache cache;
                for (int64_t j = 0; j < n; ++j) cache.push_back(rows(x, j, j + 1, D));
                // Prefill patterns: k-means with the same settings, L2 labels.
                KMeansParams kp;
                kp.k = M0;
                kp.seed = 3;
                const KMeansResult km = kmeans(x.data(), P, D, kp);
                std::vector<float> bank = km.centroids;
                auto residual_block = [&](int64_t a, int64_t b, const std::vector<int32_t>& lab) {
                    std::vector<float> res = rows(x, a, b, D);
                    std::vector<bool> sub(static_cast<size_t>(b - a), true);
                    for (int64_t i = 0; i < b - a; ++i) {
                        const float* c = bank.data() + lab[i] * D;
                        if (tensor == KvTensor::v) sub[i] = v_gate_passes(v_gate_rho(&res[i * D], c, D), D);
                        for (int d = 0; d < D; ++d) res[i * D + d] -= sub[i] ? c[d] : 0.0f;
                        REQUIRE(r.pattern[a + i] == lab[i]);
                    }
                    if (tensor == KvTensor::k)
                        quantize_minmax(res.data(), b - a, D, {2, G, QuantAxis::channel}, res.data());
                    else quantize_minmax(res.data(), b - a, D, {2, D, QuantAxis::token}, res.data());
                    for (int64_t i = 0; i < b - a; ++i)
                        for (int d = 0; d < D; ++d)
                            cache[a + i][d] = res[i * D + d] + (sub[i] ? bank[lab[i] * D + d] : 0.0f);
                };
                const int64_t pq = P - P % R;
                for (int64_t t = 0; t < P; ++t) check_step(r, x, cache, t, D);  // prefill attends exactly
                residual_block(0, pq, std::vector<int32_t>(km.assignments.begin(), km.assignments.begin() + pq));
                int64_t start = pq;
                for (int64_t t = P; t < n; ++t) {
                    check_step(r, x, cache, t, D);
                    if (t + 1 - start < R) continue;
                    std::vector<float> c(D);
                    chebyshev_center(x.data() + start * D, t + 1 - start, D, c.data());
                    bank.insert(bank.end(), c.begin(), c.end());
                    std::vector<int32_t> lab(static_cast<size_t>(t + 1 - start));
                    const int M = static_cast<int>(bank.size()) / D;
                    if (l2) assign_ref(x.data() + start * D, t + 1 - start, D, bank.data(), M, lab.data(), nullptr);
                    else assign_minmax_ref(x.data() + start * D, t + 1 - start, D, bank.data(), M, lab.data(), nullptr);
                    residual_block(start, t + 1, lab);
                    start = t + 1;
                }
                CHECK(r.bank == bank);
                for (int64_t j = 0; j < n; ++j) {
                    CHECK((r.flush_step[j] == kNeverQuantized) == (j >= start));
                    for (int d = 0; d < D; ++d) CHECK(r.recon[j * D + d] == cache[j][d]);
                }
            }
        }
}

TEST_CASE("bits are accounted by hand", "[analyze]") {
    SECTION("kivi b = 2, G = R = 128, T a multiple of 128") {
        const int D = 64;
        const int64_t n = 256;
        const auto x = random_matrix(n, D, 1);
        SimParams p;
        p.method = KvMethod::kivi;
        const SimResult k = simulate_cache(p, KvTensor::k, x.data(), n, D, 128);
        CHECK(k.bits.total() / (n * D) == Approx(2.25).epsilon(1e-12));
        // V: the 128 most recent stay fp16; the others cost 2 + 32/64 bits.
        const SimResult v = simulate_cache(p, KvTensor::v, x.data(), n, D, 128);
        CHECK(v.bits.total() == Approx(128.0 * 64 * 2.5 + 128.0 * 64 * 16).epsilon(1e-12));
    }
    SECTION("patternkv: codes, scales, indices, gates, bank") {
        const int D = 8;
        const int64_t n = 16;
        const auto x = random_matrix(n, D, 2);
        SimParams p;
        p.method = KvMethod::patternkv;
        p.group = 8;
        p.window = 8;
        p.patterns = 2;
        const SimResult k = simulate_cache(p, KvTensor::k, x.data(), n, D, 8);
        // 256 code bits, 2 blocks x 8 channels x 32, 8 ids of 1 bit (M = 2) + 8 of 2 bits (M = 3), 3 x 8 x 16 bank.
        CHECK(k.bits.codes == 256);
        CHECK(k.bits.params == 512);
        CHECK(k.bits.index == 24);
        CHECK(k.bits.bank == 384);
        CHECK(k.bits.window == 0);
        const SimResult v = simulate_cache(p, KvTensor::v, x.data(), n, D, 8);
        CHECK(v.bits.total() == 256 + 16 * 32 + 24 + 16 + 384);
    }
    CHECK(index_bits(1) == 0);
    CHECK(index_bits(2) == 1);
    CHECK(index_bits(32) == 5);
    CHECK(index_bits(33) == 6);
}

// sinkN: the first N prompt tokens stay exact for every query and cost 16 bits per element;
// the blocks run on the schedule they have without sinks, on rows where each sink repeats
// token N (so that no sink sets a range), and give back what they charged for the sinks.
TEST_CASE("exact sink tokens: kept exact, out of every range, on the same schedule", "[analyze]") {
    const int D = 16;
    const int64_t n = 200, P = 70, S = 3;
    auto x = random_matrix(n, D, 5);
    for (int d = 0; d < D; ++d) x[static_cast<size_t>(d)] *= 40.0f;  // an outlier first token
    std::vector<float> xs = x;
    for (int64_t j = 0; j < S; ++j) std::copy(x.begin() + S * D, x.begin() + (S + 1) * D, xs.begin() + j * D);
    for (const KvMethod m : {KvMethod::kivi, KvMethod::patternkv}) {
        for (const KvTensor t : {KvTensor::k, KvTensor::v}) {
            SimParams p;
            p.method = m, p.bits = 2, p.group = 16, p.window = 32, p.patterns = 4, p.seed = 3;
            SimParams ps = p;
            ps.sinks = S;
            const SimResult r = simulate_cache(ps, t, x.data(), n, D, P);
            const SimResult same = simulate_cache(p, t, xs.data(), n, D, P);
            INFO(kv_method_name(m) << (t == KvTensor::k ? " K" : " V"));
            for (int64_t j = 0; j < S; ++j) {
                CHECK(r.flush_step[static_cast<size_t>(j)] == kNeverQuantized);
                for (int d = 0; d < D; ++d)
                    CHECK(r.recon[static_cast<size_t>(j * D + d)] == x[static_cast<size_t>(j * D + d)]);
            }
            for (int64_t j = S; j < n; ++j) {
                REQUIRE(r.flush_step[static_cast<size_t>(j)] == same.flush_step[static_cast<size_t>(j)]);
                for (int d = 0; d < D; ++d)
                    REQUIRE(r.recon[static_cast<size_t>(j * D + d)] == same.recon[static_cast<size_t>(j * D + d)]);
            }
            // The sinks trade their codes (and indices, gates; a V token its scale and zero)
            // for 16 bits per element.
            CHECK(r.bits.window == same.bits.window + 16.0 * S * D);
            CHECK(r.bits.codes == Approx(same.bits.codes - 2.0 * S * D).epsilon(1e-12));
            if (t == KvTensor::v) CHECK(r.bits.params == Approx(same.bits.params - 32.0 * S).epsilon(1e-12));
            else CHECK(r.bits.params == same.bits.params);
            if (m == KvMethod::patternkv)
                CHECK(r.bits.index == Approx(same.bits.index - S * index_bits(4)).epsilon(1e-12));  // prefill bank: 4
            // The outlier no longer sets its K group's ranges: the group's other tokens' error drops.
            const SimResult plain = simulate_cache(p, t, x.data(), n, D, P);
            double e_sink = 0, e_plain = 0;
            for (int64_t j = S; j < 16; ++j)
                for (int d = 0; d < D; ++d) {
                    const size_t i = static_cast<size_t>(j * D + d);
                    e_sink += std::pow(r.recon[i] - x[i], 2), e_plain += std::pow(plain.recon[i] - x[i], 2);
                }
            if (t == KvTensor::k && m == KvMethod::kivi) CHECK(e_sink < 0.1 * e_plain);
        }
    }
    SimParams q;
    q.method = KvMethod::kivi, q.sinks = 8;
    // No more sinks than the prompt holds.
    const SimResult r = simulate_cache(q, KvTensor::k, x.data(), n, D, 2);
    CHECK(r.flush_step[1] == kNeverQuantized);
    CHECK(r.flush_step[2] != kNeverQuantized);
}

TEST_CASE("the V gate threshold sits at the exact critical rho", "[analyze]") {
    for (int d : {64, 128}) {
        const double c = 2.0 * 1.6448536269514722 / std::sqrt(5.0 * d);
        double lo = 0.0, hi = 1.0;  // f(rho) = 1 - rho^2 - c sqrt(1 + rho^4) decreases on [0, 1]
        for (int i = 0; i < 200; ++i) {
            const double mid = 0.5 * (lo + hi);
            (1.0 - mid * mid - c * std::sqrt(1.0 + mid * mid * mid * mid) >= 0 ? lo : hi) = mid;
        }
        CHECK(lo == Approx(d == 64 ? 0.876 : 0.912).margin(0.002));
        CHECK(v_gate_passes(lo - 1e-9, d));
        CHECK_FALSE(v_gate_passes(lo + 1e-9, d));
        CHECK(v_gate_passes(0.0, d));
        CHECK_FALSE(v_gate_passes(1.0, d));
    }
    const float v[4] = {0, 0, 0, 0}, c[4] = {1, 2, 3, 4};
    CHECK_FALSE(v_gate_passes(v_gate_rho(v, c, 4), 4));  // constant v: never residualized
}

TEST_CASE("residualization flattens clustered data", "[analyze]") {
    // Four well-separated clusters, one dominant (as a few outlier tokens are in real
    // caches), with uniform within-cluster noise: raw groups are outlier-heavy, the
    // residuals flat.
    const int D = 64, clusters = 4;
    const int64_t n = 512;
    std::mt19937_64 rng(5);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_real_distribution<float> ud(-0.5f, 0.5f);
    std::vector<float> centers(clusters * D), x(static_cast<size_t>(n * D));
    for (auto& c : centers) c = 20.0f * nd(rng);
    for (int64_t t = 0; t < n; ++t) {
        const int m = t % 25 == 3 ? 1 : t % 25 == 11 ? 2 : t % 25 == 19 ? 3 : 0;
        for (int d = 0; d < D; ++d) x[t * D + d] = centers[m * D + d] + ud(rng);
    }
    SimParams p;
    p.method = KvMethod::patternkv;
    p.patterns = 32;
    p.window = 128;
    for (KvTensor tensor : {KvTensor::k, KvTensor::v}) {
        const SimResult r = simulate_cache(p, tensor, x.data(), n, D, n);
        FlatnessAccum f;
        accumulate_flatness(f, tensor, x.data(), n, D, 128, &r);
        INFO("tensor " << (tensor == KvTensor::k ? "k" : "v") << " range/std raw " << f.raw.mean_ros() << " resid "
                       << f.resid.mean_ros() << " var explained " << f.var_explained());
        CHECK(f.resid.mean_ros() < f.raw.mean_ros());
        CHECK(f.var_explained() > 0.8);
        p.method = KvMethod::kivi;
        const SimResult kv = simulate_cache(p, tensor, x.data(), n, D, n);
        p.method = KvMethod::patternkv;
        ErrorAccum ep, ek;
        ep.add(x.data(), r.recon.data(), n * D);
        ek.add(x.data(), kv.recon.data(), n * D);
        CHECK(ep.err2 < ek.err2);
    }
}

TEST_CASE("a sliding-window ring equals a step-by-step ring cache (kivi)", "[analyze]") {
    const int D = 4, R = 4, G = 4, W = 8;
    const int64_t n = 23;
    const auto x = random_matrix(n, D, 17);
    for (int64_t P : {int64_t{0}, int64_t{5}, int64_t{12}, int64_t{19}}) {
        INFO("P " << P);
        SimParams p;
        p.method = KvMethod::kivi;
        p.group = G;
        p.window = R;
        p.ring = W;
        const SimResult rk = simulate_cache(p, KvTensor::k, x.data(), n, D, P);
        const SimResult rv = simulate_cache(p, KvTensor::v, x.data(), n, D, P);
        // The ring holds at most W tokens; after the prefill it holds the prompt's last W.
        const int64_t s = std::max<int64_t>(0, P - W);
        CHECK(rk.stored_from == s);
        CHECK(rk.kept_from == n - W);
        Cache ck, cv;
        for (int64_t j = 0; j < n; ++j) ck.push_back(rows(x, j, j + 1, D)), cv.push_back(rows(x, j, j + 1, D));
        auto visible = [&](int64_t t) {
            for (int64_t j = std::max<int64_t>(0, t - W + 1); j <= t; ++j)
                for (int d = 0; d < D; ++d) {
                    INFO("query " << t << " token " << j);
                    REQUIRE(seen(rk, x, t, j, d, D) == ck[j][d]);
                    REQUIRE(seen(rv, x, t, j, d, D) == cv[j][d]);
                }
        };
        for (int64_t t = 0; t < P; ++t) visible(t);
        std::deque<int64_t> kwin, vwin;
        // Blocks of R from the ring's first token; V keeps the last R exact.
        int64_t a = s;
        for (; a + R <= P; a += R) {
            auto blk = rows(x, a, a + R, D);
            quantize_minmax(blk.data(), R, D, {2, G, QuantAxis::channel}, blk.data());
            for (int64_t j = a; j < a + R; ++j) ck[j].assign(blk.begin() + (j - a) * D, blk.begin() + (j - a + 1) * D);
        }
        for (int64_t j = a; j < P; ++j) kwin.push_back(j);
        auto quant_v = [&](int64_t j) {
            auto v = rows(x, j, j + 1, D);
            quantize_minmax(v.data(), 1, D, {2, std::min(G, D), QuantAxis::token}, v.data());
            cv[j] = v;
        };
        for (int64_t j = s; j < P; ++j) {
            if (j < P - R) quant_v(j);
            else vwin.push_back(j);
        }
        for (int64_t t = P; t < n; ++t) {
            kwin.push_back(t);
            vwin.push_back(t);
            visible(t);
            if (static_cast<int64_t>(kwin.size()) == R) {
                auto blk = rows(x, kwin.front(), t + 1, D);
                quantize_minmax(blk.data(), R, D, {2, G, QuantAxis::channel}, blk.data());
                for (int64_t j = kwin.front(); j <= t; ++j)
                    ck[j].assign(blk.begin() + (j - kwin.front()) * D, blk.begin() + (j - kwin.front() + 1) * D);
                kwin.clear();
            }
            if (static_cast<int64_t>(vwin.size()) > R) quant_v(vwin.front()), vwin.pop_front();
        }
        // Tokens that left during the prefill were never quantized.
        for (int64_t j = 0; j < s; ++j) CHECK(rk.flush_step[j] == kNeverQuantized);
    }
    SECTION("bits count only the final ring (P = 12: blocks from token 4)") {
        SimParams p;
        p.method = KvMethod::kivi;
        p.group = G;
        p.window = R;
        p.ring = W;
        const SimResult k = simulate_cache(p, KvTensor::k, x.data(), n, D, 12);
        // Kept tokens 15..22: K blocks [12,16) and [16,20) (16 codes of 2 bits, 4 channels x 32)
        // and 20..22 in fp16; blocks [4,8) and [8,12) have left.
        CHECK(k.bits.total() == 2 * (32 + 128) + 3 * 4 * 16);
        const SimResult v = simulate_cache(p, KvTensor::v, x.data(), n, D, 12);
        // V: 15..18 quantized (8 code bits + 32 per token), 19..22 in fp16.
        CHECK(v.bits.total() == 4 * (8 + 32) + 4 * 4 * 16);
        // Without a ring every block stays.
        p.ring = 0;
        CHECK(simulate_cache(p, KvTensor::k, x.data(), n, D, 12).bits.total() == 5 * (32 + 128) + 3 * 4 * 16);
    }
}

TEST_CASE("a sliding-window ring mines patterns from what it holds and writes q4_0 through", "[analyze]") {
    const int D = 32, W = 16;
    const int64_t n = 40, P = 24;
    const auto x = random_matrix(n, D, 23);
    SimParams p;
    p.method = KvMethod::patternkv;
    p.group = 8;
    p.window = 8;
    p.patterns = 4;
    p.seed = 5;
    p.ring = W;
    const SimResult r = simulate_cache(p, KvTensor::k, x.data(), n, D, P);
    KMeansParams kp;
    kp.k = 4;
    kp.max_iter = 30;
    kp.tol = 1e-4;
    kp.seed = 5;
    kp.init = KMeansInit::random;
    const KMeansResult km = kmeans(x.data() + (P - W) * D, W, D, kp);  // the ring's prompt tokens 8..23
    REQUIRE(r.bank.size() >= km.centroids.size());
    CHECK(std::equal(km.centroids.begin(), km.centroids.end(), r.bank.begin()));
    for (int64_t j = 0; j < P - W; ++j) CHECK(r.pattern[j] == -1);
    CHECK(r.pattern[P - W] >= 0);
    // Flatness covers the ring's pattern tokens, which start at stored_from.
    FlatnessAccum fa;
    accumulate_flatness(fa, KvTensor::k, x.data(), n, D, 8, &r);
    CHECK(fa.tokens == std::count_if(r.pattern.begin(), r.pattern.end(), [](int32_t c) { return c >= 0; }));
    CHECK(fa.tokens > 0);
    // q4_0 quantizes every token on write, but the final ring keeps only W of them.
    p.method = KvMethod::q4_0;
    const SimResult q = simulate_cache(p, KvTensor::k, x.data(), n, D, P);
    for (int64_t j = 0; j < n; ++j) CHECK(q.flush_step[j] == j);
    CHECK(q.bits.total() == W * (32 / 32) * (16 + 32 * 4));
    p.ring = 0;
    CHECK(simulate_cache(p, KvTensor::k, x.data(), n, D, P).bits.total() == n * (16 + 32 * 4));
}
