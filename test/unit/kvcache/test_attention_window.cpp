// The attention metric of pkv analyze against a plain per-query softmax, with and
// without a sliding window and with another query-key scale.
#include <cmath>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/kvcache/metrics.h"
#include "pkv/kvcache/simulate.h"

using namespace pkv;

namespace {

std::vector<float> normal(int64_t count, uint64_t seed, float sd = 1.0f) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.0f, sd);
    std::vector<float> x(static_cast<size_t>(count));
    for (float& v : x) v = nd(rng);
    return x;
}

// Mean KL(exact || cache) and mean |o_hat - o| / |o| over every query, computed the plain way.
void reference(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
               const std::vector<float>& kh, const std::vector<float>& vh, const std::vector<int32_t>& fk,
               const std::vector<int32_t>& fv, int64_t n, int D, int64_t W, double scale, double& kl_mean,
               double& rel_mean) {
    double kl_sum = 0, rel_sum = 0;
    for (int64_t t = 0; t < n; ++t) {
        const int64_t j0 = W > 0 ? std::max<int64_t>(0, t - W + 1) : 0;
        std::vector<double> s, sh;
        for (int64_t j = j0; j <= t; ++j) {
            double a = 0, b = 0;
            for (int d = 0; d < D; ++d) {
                a += q[t * D + d] * k[j * D + d];
                b += q[t * D + d] * (fk[j] <= t ? kh[j * D + d] : k[j * D + d]);
            }
            s.push_back(a * scale), sh.push_back(b * scale);
        }
        auto softmax = [](std::vector<double> x) {
            double mx = x[0], z = 0;
            for (double e : x) mx = std::max(mx, e);
            for (double& e : x) z += (e = std::exp(e - mx));
            for (double& e : x) e /= z;
            return x;
        };
        const auto p = softmax(s), ph = softmax(sh);
        std::vector<double> o(D, 0.0), oh(D, 0.0);
        for (size_t i = 0; i < p.size(); ++i) {
            const int64_t j = j0 + static_cast<int64_t>(i);
            kl_sum += p[i] * (std::log(p[i]) - std::log(ph[i]));
            for (int d = 0; d < D; ++d) {
                o[d] += p[i] * v[j * D + d];
                oh[d] += ph[i] * (fv[j] <= t ? vh[j * D + d] : v[j * D + d]);
            }
        }
        double num = 0, den = 0;
        for (int d = 0; d < D; ++d) num += (oh[d] - o[d]) * (oh[d] - o[d]), den += o[d] * o[d];
        rel_sum += std::sqrt(num / den);
    }
    kl_mean = kl_sum / n;
    rel_mean = rel_sum / n;
}

}  // namespace

TEST_CASE("windowed attention scores match a plain softmax over the window", "[analyze]") {
    const int D = 16;
    const int64_t n = 150;
    const auto q = normal(n * D, 1), k = normal(n * D, 2), v = normal(n * D, 3);
    auto kh = k, vh = v;
    const auto nk = normal(n * D, 4, 0.3f), nv = normal(n * D, 5, 0.3f);
    for (size_t i = 0; i < kh.size(); ++i) kh[i] += nk[i], vh[i] += nv[i];
    std::vector<int32_t> fk(n), fv(n);
    for (int64_t j = 0; j < n; ++j) fk[j] = static_cast<int32_t>(j + 5), fv[j] = static_cast<int32_t>(j + 9);
    for (int64_t W : {int64_t{0}, int64_t{1}, int64_t{20}, int64_t{64}})
        for (float scale : {0.0f, 0.1f}) {
            INFO("window " << W << " scale " << scale);
            AttnAccum acc;
            std::vector<AttnCache> caches(1);
            caches[0] = {kh.data(), fk.data(), vh.data(), fv.data(), &acc};
            accumulate_attention(q.data(), k.data(), v.data(), n, D, 1, caches, W, scale);
            double kl = 0, rel = 0;
            reference(q, k, v, kh, vh, fk, fv, n, D, W, scale > 0 ? scale : 1.0 / std::sqrt(D), kl, rel);
            REQUIRE(acc.kl_rows == n);
            CHECK(acc.kl_sum / acc.kl_rows == Approx(kl).epsilon(1e-4).margin(1e-9));
            CHECK(acc.rel_sum / acc.rel_rows == Approx(rel).epsilon(1e-4));
        }
    SECTION("a window hides what lies outside it") {
        // Garbage in every key older than the window changes nothing the window sees.
        const int64_t W = 16;
        auto kg = kh;
        std::vector<int32_t> fg(n);
        for (int64_t j = 0; j < n; ++j) fg[j] = static_cast<int32_t>(j + W);  // quantized once out of reach
        for (float& e : kg) e = 1e3f;
        AttnAccum acc;
        std::vector<AttnCache> caches = {{kg.data(), fg.data(), vh.data(), fg.data(), &acc}};
        accumulate_attention(q.data(), k.data(), v.data(), n, D, 1, caches, W);
        CHECK(acc.kl_sum == 0.0);
        CHECK(acc.rel_sum == 0.0);
    }
}
