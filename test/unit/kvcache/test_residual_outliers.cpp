// The residual quantizer's error and fit with exact outliers (ResidualParams::outliers,
// `pkv calibrate --outliers`): the fit's measurement equals quantizing each group as the
// cache simulation does (hold_out_outliers, then min-max over the kept range, the
// held-out elements exact), for keys in every metric and for gated values.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/kvcache/outliers.h"
#include "pkv/kvcache/residual.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/quant/minmax.h"

using namespace pkv;

namespace {

// Student-t (3 degrees of freedom) data around two patterns: ranges are set by rare
// extremes, which is what outliers remove.
struct Data {
    int D;
    int64_t n;
    std::vector<float> x, patterns;
    std::vector<int32_t> labels;
    Data(int D_, int64_t n_, uint64_t seed) : D(D_), n(n_) {
        std::mt19937_64 rng(seed);
        std::student_t_distribution<float> t(3.0f);
        std::normal_distribution<float> nd;
        patterns.resize(static_cast<size_t>(2 * D));
        for (float& v : patterns) v = 3.0f * nd(rng);
        x.resize(static_cast<size_t>(n * D));
        labels.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
            labels[i] = static_cast<int32_t>((i / 3) % 2);
            for (int d = 0; d < D; ++d) x[i * D + d] = patterns[labels[i] * D + d] + t(rng);
        }
    }
};

// The min-max quantizer of p's groups along `axis` (the groups the cache quantizes).
MinMaxSpec spec_of(const ResidualParams& p, QuantAxis axis) {
    MinMaxSpec spec;
    spec.bits = p.bits;
    spec.group = p.group;
    spec.axis = axis;
    spec.clip = p.clip;
    return spec;
}

// Residual parameters with the given fields.
ResidualParams params(int bits, int group, float clip, int outliers) {
    ResidualParams p;
    p.bits = bits;
    p.group = group;
    p.clip = clip;
    p.outliers = outliers;
    return p;
}

// One group matrix [rows, D] quantized as simulate.cpp's quantize_rows does with outliers:
// the reconstruction of r, held-out elements restored exactly.
std::vector<float> quantize_with_outliers(const std::vector<float>& r, int64_t rows, int D, const MinMaxSpec& spec,
                                          int count) {
    std::vector<float> rs(r.size()), rq(r.size());
    const std::vector<int64_t> held = hold_out_outliers(r.data(), rows, D, spec, count, rs.data());
    quantize_minmax(rs.data(), rows, D, spec, rq.data());
    for (int64_t i : held) rq[static_cast<size_t>(i)] = r[static_cast<size_t>(i)];
    return rq;
}

// The key error of p over whole G-token blocks, directly: |e|², Σ w e², or |U e|².
double key_err_ref(const Data& s, const std::vector<SeqRange>& seqs, const ResidualParams& p, const KeyMetric& m) {
    const int D = s.D;
    const MinMaxSpec spec = spec_of(p, QuantAxis::channel);
    double err2 = 0.0;
    for (const SeqRange& q : seqs)
        for (int64_t b = 0; b + p.group <= q.length; b += p.group) {
            const int64_t t0 = q.start + b;
            std::vector<float> r(static_cast<size_t>(p.group * D));
            for (int64_t i = 0; i < p.group; ++i)
                for (int d = 0; d < D; ++d)
                    r[i * D + d] =
                        s.x[(t0 + i) * D + d] - (p.use_patterns ? s.patterns[s.labels[t0 + i] * D + d] : 0.0f);
            const std::vector<float> rq = quantize_with_outliers(r, p.group, D, spec, p.outliers);
            for (int64_t i = 0; i < p.group; ++i) {
                // The simulator's reconstruction: the residual's plus the pattern, in float.
                std::vector<double> e(static_cast<size_t>(D));
                for (int d = 0; d < D; ++d) {
                    const float c = p.use_patterns ? s.patterns[s.labels[t0 + i] * D + d] : 0.0f;
                    const float xhat = rq[i * D + d] + c;
                    const size_t at = static_cast<size_t>((t0 + i) * D + d);
                    // A held-out element is exact (its float round trip through x - c aside).
                    e[d] = rq[i * D + d] == r[i * D + d] ? 0.0 : static_cast<double>(s.x[at]) - xhat;
                }
                if (!m.factor.empty()) {
                    for (int j = 0; j < D; ++j) {
                        double y = 0.0;
                        for (int d = j; d < D; ++d) y += m.factor[static_cast<size_t>(j) * D + d] * e[d];
                        err2 += y * y;
                    }
                } else {
                    for (int d = 0; d < D; ++d) err2 += (m.weight.empty() ? 1.0 : m.weight[d]) * e[d] * e[d];
                }
            }
        }
    return err2;
}

}  // namespace

TEST_CASE("key residual errors with outliers equal quantizing each block as the cache does", "[calib][outliers]") {
    const int D = 16, G = 32;
    const Data s(D, 7 * G + 9, 21);
    const std::vector<SeqRange> seqs = {{0, 3 * G + 5}, {3 * G + 5, s.n - (3 * G + 5)}};
    KeyMetric raw, diag, full;
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<double> u(0.1, 2.0);
    for (int d = 0; d < D; ++d) diag.weight.push_back(u(rng));
    full.factor.assign(static_cast<size_t>(D * D), 0.0);
    for (int j = 0; j < D; ++j)
        for (int d = j; d < D; ++d) full.factor[static_cast<size_t>(j) * D + d] = d == j ? u(rng) : u(rng) - 1.0;
    const int count = GENERATE(1, 2, 4);
    std::vector<ResidualParams> ps;
    for (bool pat : {true, false})
        for (float a : {1.0f, 0.85f, 0.6f}) {
            ps.push_back(params(2, G, a, count));
            ps.back().use_patterns = pat;
        }
    for (const KeyMetric* m : {&raw, &diag, &full}) {
        const std::vector<ResidualError> got =
            key_residual_errors(s.x.data(), D, seqs, s.patterns.data(), s.labels.data(), ps, false, m);
        for (size_t k = 0; k < ps.size(); ++k) {
            INFO("outliers " << count << ", candidate " << k << ", metric "
                             << (m == &raw    ? "raw"
                                 : m == &diag ? "diagonal"
                                              : "full"));
            CHECK(got[k].err2 == Approx(key_err_ref(s, seqs, ps[k], *m)).epsilon(1e-9));
            CHECK(got[k].tokens == 7 * G);
        }
    }
    // Holding out elements never raises the error at clip 1 (the kept range only narrows).
    ResidualParams none = ps.front();
    none.outliers = 0;
    const double without = key_residual_error(s.x.data(), D, seqs, s.patterns.data(), s.labels.data(), none).err2;
    CHECK(key_residual_errors(s.x.data(), D, seqs, s.patterns.data(), s.labels.data(), {ps.front()}).front().err2 <
          without);
}

TEST_CASE("value residual errors with outliers equal the gated per-token quantizer", "[calib][outliers]") {
    const int D = 32, g = 16;
    const Data s(D, 150, 22);
    const std::vector<SeqRange> seqs = {{0, 70}, {70, 80}};
    const std::vector<double> rho = gate_rhos(s.x.data(), s.n, D, s.patterns.data(), s.labels.data());
    const int count = GENERATE(1, 3);
    for (double z : {0.0, 1.6448536269514722, 8.0})
        for (float a : {1.0f, 0.7f}) {
            ResidualParams p = params(3, g, a, count);
            p.gate_z = z;
            const MinMaxSpec spec = spec_of(p, QuantAxis::token);
            double err2 = 0.0;
            int64_t gated = 0;
            for (int64_t j = 0; j < s.n; ++j) {
                const bool sub = v_gate_passes(rho[j], D, z);
                gated += sub;
                std::vector<float> r(static_cast<size_t>(D));
                for (int d = 0; d < D; ++d) r[d] = s.x[j * D + d] - (sub ? s.patterns[s.labels[j] * D + d] : 0.0f);
                const std::vector<float> rq = quantize_with_outliers(r, 1, D, spec, count);
                for (int d = 0; d < D; ++d) {
                    const float xhat = rq[d] + (sub ? s.patterns[s.labels[j] * D + d] : 0.0f);
                    const double e = rq[d] == r[d] ? 0.0 : static_cast<double>(s.x[j * D + d]) - xhat;
                    err2 += e * e;
                }
            }
            const ResidualError e =
                value_residual_error(s.x.data(), D, seqs, s.patterns.data(), s.labels.data(), rho.data(), p);
            INFO("outliers " << count << ", z " << z << ", clip " << a);
            CHECK(e.err2 == Approx(err2).epsilon(1e-9));
            CHECK(e.gated == gated);
        }
}

TEST_CASE("the clip fit with outliers held out errs less than without", "[calib][outliers]") {
    const int D = 16, G = 64;
    const Data s(D, 64 * G, 23);
    const std::vector<SeqRange> seqs = {{0, s.n}};
    const KeyFit k0 = fit_key_params(s.x.data(), D, seqs, s.patterns.data(), s.labels.data(), 4, G);
    const KeyFit k2 =
        fit_key_params(s.x.data(), D, seqs, s.patterns.data(), s.labels.data(), 4, G, true, false, nullptr, 2);
    // The extremes that stretch each group's range are held out, so every clip ratio errs less.
    CHECK(k2.at_default.err2 < k0.at_default.err2);
    CHECK(k2.at_fit.err2 < k0.at_fit.err2);
    const ValueFit v0 = fit_value_params(s.x.data(), D, seqs, s.patterns.data(), s.labels.data(), 4, G);
    const ValueFit v2 = fit_value_params(s.x.data(), D, seqs, s.patterns.data(), s.labels.data(), 4, G, true, false, 2);
    CHECK(v2.at_default.err2 < v0.at_default.err2);
    CHECK(v2.at_fit.err2 < v0.at_fit.err2);
}

TEST_CASE("residual errors refuse mixed or out-of-range outlier counts", "[calib][outliers]") {
    const Data s(8, 64, 24);
    const std::vector<SeqRange> seqs = {{0, 64}};
    ResidualParams a, b;
    a.group = b.group = 16;
    b.outliers = 1;
    CHECK_THROWS_AS(key_residual_errors(s.x.data(), 8, seqs, s.patterns.data(), s.labels.data(), {a, b}), Error);
    b.outliers = 9;
    CHECK_THROWS_AS(key_residual_errors(s.x.data(), 8, seqs, s.patterns.data(), s.labels.data(), {b}), Error);
}
