// The key fit in a channel metric (`pkv calibrate --objective qk`): weights that follow
// the queries change the clip ratio where the raw error and the score error disagree.
#include <cmath>
#include <cstdint>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/kvcache/residual.h"

using namespace pkv;

namespace {

// Two channels, 8 blocks of 32 tokens. Channel 0 alternates between -1 and 1, which
// plain min-max reproduces exactly (any clip ratio below 1 moves the two extremes).
// Channel 1 is Gaussian with sigma 3: its rare extremes stretch the range, so the raw
// error, which it dominates, wants a clip ratio well below 1.
std::vector<float> two_channels(int64_t n) {
    std::vector<float> x(static_cast<size_t>(2 * n));
    uint64_t state = 0x9e3779b97f4a7c15ULL;
    auto uniform = [&] {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        return (static_cast<double>(state >> 11) + 0.5) / 9007199254740992.0;
    };
    for (int64_t t = 0; t < n; ++t) {
        x[2 * t] = t % 2 == 0 ? -1.0f : 1.0f;
        const double u1 = uniform(), u2 = uniform();
        x[2 * t + 1] = static_cast<float>(3.0 * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    }
    return x;
}

struct Fixture {
    int64_t n = 256;
    std::vector<float> x = two_channels(n);
    std::vector<float> patterns = std::vector<float>(2, 0.0f);
    std::vector<int32_t> labels = std::vector<int32_t>(static_cast<size_t>(n), 0);
    std::vector<SeqRange> seqs{{0, n}};
    KeyFit fit(const std::vector<double>* w) const {
        if (!w) return fit_key_params(x.data(), 2, seqs, patterns.data(), labels.data(), 2, 32, false, false);
        KeyMetric m;
        m.weight = *w;
        return fit_key_params(x.data(), 2, seqs, patterns.data(), labels.data(), 2, 32, false, false, &m);
    }
};

}  // namespace

TEST_CASE("key fit: a channel the queries weigh heavily is not clipped for a light one's sake",
          "[residual][objective]") {
    const Fixture f;
    const KeyFit raw = f.fit(nullptr);
    const std::vector<double> query_heavy_0{1.0, 1e-4};
    const KeyFit qk = f.fit(&query_heavy_0);
    // The raw error follows the Gaussian channel and clips; the weighted one follows
    // the two-level channel, which clipping only hurts.
    CHECK(raw.clip <= 0.9f);
    CHECK(qk.clip == 1.0f);
    // Each fit is optimal in its own metric: the weighted error at the raw fit's clip is larger.
    ResidualParams p;
    p.bits = 2;
    p.group = 32;
    p.use_patterns = false;
    p.clip = raw.clip;
    KeyMetric m;
    m.weight = query_heavy_0;
    const ResidualError at_raw_clip =
        key_residual_errors(f.x.data(), 2, f.seqs, f.patterns.data(), f.labels.data(), {p}, false, &m).front();
    CHECK(qk.at_fit.err2 < at_raw_clip.err2);
}

TEST_CASE("key fit: unit weights are the raw error, scaled weights choose the same clip", "[residual][objective]") {
    const Fixture f;
    const KeyFit raw = f.fit(nullptr);
    const std::vector<double> ones{1.0, 1.0}, twos{2.0, 2.0};
    const KeyFit unit = f.fit(&ones);
    CHECK(unit.clip == raw.clip);
    CHECK(unit.at_fit.err2 == Approx(raw.at_fit.err2).epsilon(1e-12));
    CHECK(unit.at_fit.ref2 == Approx(raw.at_fit.ref2).epsilon(1e-12));
    const KeyFit doubled = f.fit(&twos);
    CHECK(doubled.clip == raw.clip);
    CHECK(doubled.at_fit.nmse() == Approx(raw.at_fit.nmse()).epsilon(1e-12));
}

TEST_CASE("key errors: negative or non-finite channel weights are refused", "[residual][objective]") {
    const Fixture f;
    const std::vector<double> negative{1.0, -1.0}, nan{std::nan(""), 1.0};
    CHECK_THROWS_WITH(f.fit(&negative), ContainsSubstring("channel weights"));
    CHECK_THROWS_WITH(f.fit(&nan), ContainsSubstring("at channel 0"));
    const std::vector<double> three{1.0, 1.0, 1.0};
    CHECK_THROWS_WITH(f.fit(&three), ContainsSubstring("expected 2 channel weights, got 3"));
}

TEST_CASE("key errors in a full metric: |U e|², diagonal U as the weights, cross terms count",
          "[residual][objective]") {
    const Fixture f;
    ResidualParams p;
    p.bits = 2;
    p.group = 32;
    p.use_patterns = false;
    std::vector<ResidualParams> ps{p, p};
    ps[1].clip = 0.7f;
    auto errors = [&](const KeyMetric& m) {
        return key_residual_errors(f.x.data(), 2, f.seqs, f.patterns.data(), f.labels.data(), ps, false, &m);
    };
    KeyMetric diag, full;
    diag.weight = {4.0, 0.25};
    full.factor = {2.0, 0.0, 0.0, 0.5};  // U = diag(2, 0.5): UᵀU = diag(4, 0.25)
    const std::vector<ResidualError> a = errors(diag), b = errors(full);
    for (size_t k = 0; k < ps.size(); ++k) {
        CHECK(b[k].err2 == Approx(a[k].err2).epsilon(1e-12));
        CHECK(b[k].ref2 == Approx(a[k].ref2).epsilon(1e-12));
    }
    // An off-diagonal term: |U e|² = (e0 + e1)² with U = [[1, 1], [0, 0]]; against the
    // direct sum over the reconstruction of each channel (the raw errors per channel).
    KeyMetric sum_dir;
    sum_dir.factor = {1.0, 1.0, 0.0, 0.0};
    KeyMetric only0, only1;
    only0.weight = {1.0, 0.0};
    only1.weight = {0.0, 1.0};
    const std::vector<ResidualError> s = errors(sum_dir), e0 = errors(only0), e1 = errors(only1);
    for (size_t k = 0; k < ps.size(); ++k) {
        // (e0 + e1)² = e0² + e1² + 2 e0 e1: not the diagonal sum unless the errors cancel on average.
        CHECK(s[k].err2 != Approx(e0[k].err2 + e1[k].err2).epsilon(1e-6));
        CHECK(s[k].err2 <= 2.0 * (e0[k].err2 + e1[k].err2) + 1e-9);
    }
    KeyMetric bad;
    bad.factor = {1.0, 0.0, 0.0};
    CHECK_THROWS_WITH(errors(bad), ContainsSubstring("expected a 2x2 factor, got 3 elements"));
}
