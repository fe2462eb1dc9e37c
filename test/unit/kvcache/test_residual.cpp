// The residual quantizer of pattern tables: clip ratios, the value gate threshold,
// pattern assignment, error measurement and the parameter fit, checked against direct
// computations and on held-out draws of the same distribution.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/kmeans/assigner.h"
#include "pkv/kmeans/minmax_assign.h"
#include "pkv/kvcache/residual.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/quant/minmax.h"

using namespace pkv;

namespace {

// Heavy-tailed data (Student-t with 3 degrees of freedom): min-max ranges are set by
// rare extremes, which is when clipping pays.
std::vector<float> heavy_tailed(int64_t n, int D, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::student_t_distribution<float> t(3.0f);
    std::vector<float> x(static_cast<size_t>(n * D));
    for (auto& v : x) v = t(rng);
    return x;
}

double sq_err(const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    return s;
}

}  // namespace

TEST_CASE("clip ratio 1 is plain min-max and smaller ratios clamp to a narrower grid", "[calib]") {
    std::vector<float> x = {-4.0f, -1.0f, -0.5f, 0.0f, 0.25f, 0.5f, 1.0f, 8.0f};
    std::vector<float> a(x.size()), b(x.size());
    const MinMaxGroup g1 = quantize_minmax_group(x.data(), 8, 1, 2, a.data());
    const MinMaxGroup g2 = quantize_minmax_group(x.data(), 8, 1, 2, b.data(), nullptr, 1.0f);
    CHECK(g1.scale == g2.scale);
    CHECK(g1.zero == g2.zero);
    CHECK(a == b);
    // a = 0.5: range [2 - 3, 2 + 3] = [-1, 5]; -4 clamps to -1 and 8 to the top of the grid.
    const MinMaxGroup g3 = quantize_minmax_group(x.data(), 8, 1, 2, b.data(), nullptr, 0.5f);
    CHECK(half_to_float(g3.zero) == -1.0f);
    CHECK(half_to_float(g3.scale) == 2.0f);
    CHECK(b[0] == -1.0f);
    CHECK(b[7] == 5.0f);
    CHECK_THROWS_AS(quantize_minmax_group(x.data(), 8, 1, 2, b.data(), nullptr, 0.0f), Error);
    CHECK_THROWS_AS(quantize_minmax_group(x.data(), 8, 1, 2, b.data(), nullptr, 1.5f), Error);
}

TEST_CASE("assign_patterns matches the l2 and min-max references", "[calib]") {
    const int D = 16, M = 7;
    const std::vector<float> x = heavy_tailed(300, D, 1), c = heavy_tailed(M, D, 2);
    std::vector<int32_t> got(300), want(300);
    std::vector<double> d2(300);
    assign_patterns(x.data(), 300, D, c.data(), M, true, got.data());
    assign_ref(x.data(), 300, D, c.data(), M, want.data(), d2.data());
    CHECK(got == want);
    assign_patterns(x.data(), 300, D, c.data(), M, false, got.data());
    assign_minmax_ref(x.data(), 300, D, c.data(), M, want.data(), nullptr);
    CHECK(got == want);
}

TEST_CASE("key residual error counts whole G-token blocks of each sequence", "[calib]") {
    const int D = 8, G = 4;
    const std::vector<float> x = heavy_tailed(11, D, 3);
    const std::vector<float> pat(static_cast<size_t>(D), 0.0f);
    const std::vector<int32_t> labels(11, 0);
    // Sequences of 6 and 5 tokens: one whole block each (tokens 0-3 and 6-9).
    const std::vector<SeqRange> seqs = {{0, 6}, {6, 5}};
    ResidualParams p;
    p.bits = 2;
    p.group = G;
    const ResidualError e = key_residual_error(x.data(), D, seqs, pat.data(), labels.data(), p);
    CHECK(e.tokens == 8);
    MinMaxSpec spec;
    spec.bits = 2;
    spec.group = G;
    spec.axis = QuantAxis::channel;
    double err2 = 0, ref2 = 0;
    for (int64_t t0 : {0, 6}) {
        std::vector<float> blk(x.begin() + t0 * D, x.begin() + (t0 + G) * D), q(blk.size());
        quantize_minmax(blk.data(), G, D, spec, q.data());
        err2 += sq_err(blk, q);
        for (float v : blk) ref2 += static_cast<double>(v) * v;
    }
    CHECK(e.err2 == Approx(err2).epsilon(1e-12));
    CHECK(e.ref2 == Approx(ref2).epsilon(1e-12));
}

TEST_CASE("value residual error applies the gate with the given threshold", "[calib]") {
    const int D = 32;
    std::mt19937_64 rng(4);
    std::normal_distribution<float> nd;
    // Two patterns far apart; tokens are one pattern plus small noise, so the gate passes
    // at the paper's z, and an absurd z rejects every subtraction.
    std::vector<float> pat(2 * D);
    for (auto& v : pat) v = 4.0f * nd(rng);
    const int64_t n = 64;
    std::vector<float> x(static_cast<size_t>(n * D));
    std::vector<int32_t> labels(n);
    for (int64_t i = 0; i < n; ++i) {
        labels[i] = static_cast<int32_t>(i % 2);
        for (int d = 0; d < D; ++d) x[i * D + d] = pat[labels[i] * D + d] + 0.1f * nd(rng);
    }
    const std::vector<double> rho = gate_rhos(x.data(), n, D, pat.data(), labels.data());
    for (int64_t i = 0; i < n; ++i) CHECK(rho[i] == v_gate_rho(x.data() + i * D, pat.data() + labels[i] * D, D));
    const std::vector<SeqRange> seqs = {{0, n}};
    ResidualParams p;
    p.bits = 2;
    p.group = D;
    const ResidualError paper = value_residual_error(x.data(), D, seqs, pat.data(), labels.data(), rho.data(), p);
    CHECK(paper.gated == n);
    p.gate_z = 1e6;
    const ResidualError never = value_residual_error(x.data(), D, seqs, pat.data(), labels.data(), rho.data(), p);
    CHECK(never.gated == 0);
    p.use_patterns = false;
    p.gate_z = 0.0;
    const ResidualError plain = value_residual_error(x.data(), D, seqs, pat.data(), labels.data(), rho.data(), p);
    CHECK(plain.gated == 0);
    CHECK(plain.err2 == never.err2);
    CHECK(paper.err2 < 0.05 * plain.err2);
}

TEST_CASE("the fitted clip ratio lowers the error on held-out data of the same distribution", "[calib]") {
    const int D = 32, G = 64;
    const int64_t n = 64 * 64;
    const std::vector<float> train = heavy_tailed(n, D, 10), held = heavy_tailed(n, D, 11);
    const std::vector<float> pat(static_cast<size_t>(D), 0.0f);
    const std::vector<int32_t> labels(n, 0);
    const std::vector<SeqRange> seqs = {{0, n}};
    const KeyFit kf = fit_key_params(train.data(), D, seqs, pat.data(), labels.data(), 2, G);
    CHECK(kf.clip < 1.0f);
    CHECK(kf.at_fit.err2 < kf.at_default.err2);
    ResidualParams p;
    p.bits = 2;
    p.group = G;
    const double base = key_residual_error(held.data(), D, seqs, pat.data(), labels.data(), p).nmse();
    p.clip = kf.clip;
    const double fitted = key_residual_error(held.data(), D, seqs, pat.data(), labels.data(), p).nmse();
    CHECK(fitted < 0.97 * base);

    const ValueFit vf = fit_value_params(train.data(), D, seqs, pat.data(), labels.data(), 2, G);
    CHECK(vf.clip < 1.0f);
    CHECK(vf.at_fit.err2 <= vf.at_default.err2);
    // With 8 bits the grid is fine enough that clipping only hurts: the fit keeps 1.
    const KeyFit k8 = fit_key_params(train.data(), D, seqs, pat.data(), labels.data(), 8, G);
    CHECK(k8.clip == 1.0f);
}

TEST_CASE("patternkv-table with one zero pattern holds keys exactly as KIVI does", "[calib]") {
    const int D = 16;
    const int64_t n = 300, P = 140;
    const std::vector<float> x = heavy_tailed(n, D, 20);
    const std::vector<float> zero(static_cast<size_t>(D), 0.0f);
    TableHeadView tk{zero.data(), 1, 1.0f, 1.6448536269514722, false}, tv = tk;
    SimParams sp;
    sp.bits = 2;
    sp.group = 32;
    sp.window = 32;
    sp.table_k = &tk;
    sp.table_v = &tv;
    sp.method = KvMethod::patternkv_table;
    const SimResult t = simulate_cache(sp, KvTensor::k, x.data(), n, D, P);
    sp.method = KvMethod::kivi;
    const SimResult k = simulate_cache(sp, KvTensor::k, x.data(), n, D, P);
    CHECK(t.recon == k.recon);
    CHECK(t.flush_step == k.flush_step);
    CHECK(t.bits.bank == 0.0);
    CHECK(t.bits.index == 0.0);  // one pattern: 0-bit indices
    CHECK(t.bits.codes == k.bits.codes);
}

TEST_CASE("patternkv-table uses the table's clip ratio and gate threshold", "[calib]") {
    const int D = 16;
    const int64_t n = 256;
    const std::vector<float> x = heavy_tailed(n, D, 30), pats = heavy_tailed(4, D, 31);
    TableHeadView tk{pats.data(), 4, 0.8f, 1.6448536269514722, true}, tv{pats.data(), 4, 0.8f, 1e6, true};
    SimParams sp;
    sp.method = KvMethod::patternkv_table;
    sp.bits = 2;
    sp.group = 64;
    sp.window = 64;
    sp.table_k = &tk;
    sp.table_v = &tv;
    const SimResult sv = simulate_cache(sp, KvTensor::v, x.data(), n, D, 128);
    // z = 1e6 rejects every subtraction: values are quantized as they are, clipped at 0.8.
    for (int64_t j = 0; j < n; ++j) CHECK(sv.gate[j] == 0);
    std::vector<float> want(static_cast<size_t>(D));
    for (int64_t j = 0; j < n; ++j) {
        if (sv.flush_step[j] == kNeverQuantized) continue;
        quantize_minmax_group(x.data() + j * D, D, 1, 2, want.data(), nullptr, 0.8f);
        for (int d = 0; d < D; ++d) CHECK(sv.recon[j * D + d] == want[d]);
    }
    const SimResult sk = simulate_cache(sp, KvTensor::k, x.data(), n, D, 128);
    std::vector<int32_t> labels(n);
    assign_patterns(x.data(), n, D, pats.data(), 4, true, labels.data());
    for (int64_t j = 0; j < n; ++j)
        if (sk.flush_step[j] != kNeverQuantized) CHECK(sk.pattern[j] == labels[j]);
}

namespace {

// The single evaluations as they were written before the one-pass form: quantize_minmax
// per block or token, then the sums in element order. The one-pass functions must
// give these bit for bit.
ResidualError ref_key_error(const float* x, int D, const std::vector<SeqRange>& seqs, const float* pat,
                            const int32_t* labels, const ResidualParams& p) {
    ResidualError e;
    const int64_t G = p.group;
    MinMaxSpec spec;
    spec.bits = p.bits;
    spec.group = p.group;
    spec.axis = QuantAxis::channel;
    spec.clip = p.clip;
    std::vector<float> r(static_cast<size_t>(G * D)), rq(r.size());
    for (const SeqRange& s : seqs)
        for (int64_t b = 0; b + G <= s.length; b += G) {
            const float* xb = x + (s.start + b) * D;
            for (int64_t i = 0; i < G; ++i)
                for (int d = 0; d < D; ++d)
                    r[i * D + d] = xb[i * D + d] - (p.use_patterns ? pat[labels[s.start + b + i] * D + d] : 0.0f);
            quantize_minmax(r.data(), G, D, spec, rq.data());
            for (int64_t i = 0; i < G * D; ++i) {
                const float xq = rq[i] + (p.use_patterns ? pat[labels[s.start + b + i / D] * D + i % D] : 0.0f);
                const double d = static_cast<double>(xb[i]) - xq;
                e.err2 += d * d;
                e.ref2 += static_cast<double>(xb[i]) * xb[i];
            }
            e.tokens += G;
        }
    return e;
}

ResidualError ref_value_error(const float* x, int D, const std::vector<SeqRange>& seqs, const float* pat,
                              const int32_t* labels, const double* rho, const ResidualParams& p) {
    ResidualError e;
    const int g = std::min(p.group, D);
    std::vector<float> r(static_cast<size_t>(D)), rq(r.size());
    for (const SeqRange& s : seqs)
        for (int64_t j = s.start; j < s.start + s.length; ++j) {
            const float* c = pat + labels[j] * D;
            const bool sub = p.use_patterns && v_gate_passes(rho[j], D, p.gate_z);
            for (int d = 0; d < D; ++d) r[d] = x[j * D + d] - (sub ? c[d] : 0.0f);
            for (int g0 = 0; g0 < D; g0 += g)
                quantize_minmax_group(r.data() + g0, std::min(g, D - g0), 1, p.bits, rq.data() + g0, nullptr, p.clip);
            for (int d = 0; d < D; ++d) {
                const double dd = static_cast<double>(x[j * D + d]) - (rq[d] + (sub ? c[d] : 0.0f));
                e.err2 += dd * dd;
                e.ref2 += static_cast<double>(x[j * D + d]) * x[j * D + d];
            }
            e.tokens += 1;
            e.gated += sub ? 1 : 0;
        }
    return e;
}

bool same(const ResidualError& a, const ResidualError& b) {
    return a.err2 == b.err2 && a.ref2 == b.ref2 && a.tokens == b.tokens && a.gated == b.gated;
}

}  // namespace

TEST_CASE("one-pass residual errors equal the single evaluations bit for bit", "[calib]") {
    const int D = 16, M = 5;
    const int64_t n = 200;
    std::vector<float> x = heavy_tailed(n, D, 40), pat = heavy_tailed(M, D, 41);
    // Edge cases of the quantizer: a constant channel (zero scale), a pattern equal to
    // its tokens (zero residual), signed zeros and values on binary16 ties.
    for (int64_t i = 0; i < n; ++i) x[i * D + 3] = 0.5f;
    for (int d = 0; d < D; ++d) pat[4 * D + d] = x[7 * D + d];
    for (int64_t i = 0; i < n; i += 3) x[i * D + 5] = (i % 2) ? -0.0f : 0.0f;
    x[11 * D + 2] = 1.0f + 1.0f / 2048.0f;
    std::vector<int32_t> labels(n);
    assign_patterns(x.data(), n, D, pat.data(), M, false, labels.data());
    labels[7] = 4;
    const std::vector<double> rho = gate_rhos(x.data(), n, D, pat.data(), labels.data());
    const std::vector<SeqRange> seqs = {{0, 70}, {70, 3}, {73, 127}};
    for (int bits : {2, 3, 4, 8})
        for (int group : {4, 8, 16, 32}) {
            std::vector<ResidualParams> ps;
            for (bool use : {true, false})
                for (float clip : {1.0f, 0.9f, 0.625f, 0.4f})
                    for (double z : {0.0, 1.6448536269514722, 8.0}) {
                        ResidualParams p;
                        p.bits = bits;
                        p.group = group;
                        p.use_patterns = use;
                        p.clip = clip;
                        p.gate_z = z;
                        ps.push_back(p);
                    }
            const std::vector<ResidualError> ke = key_residual_errors(x.data(), D, seqs, pat.data(), labels.data(), ps);
            const std::vector<ResidualError> ve =
                value_residual_errors(x.data(), D, seqs, pat.data(), labels.data(), rho.data(), ps);
            REQUIRE(ke.size() == ps.size());
            REQUIRE(ve.size() == ps.size());
            for (size_t k = 0; k < ps.size(); ++k) {
                CHECK(same(ke[k], ref_key_error(x.data(), D, seqs, pat.data(), labels.data(), ps[k])));
                CHECK(same(ve[k], ref_value_error(x.data(), D, seqs, pat.data(), labels.data(), rho.data(), ps[k])));
                CHECK(same(ke[k], key_residual_error(x.data(), D, seqs, pat.data(), labels.data(), ps[k])));
            }
        }
    // As OpenMP tasks in a parallel region: the same values.
    std::vector<ResidualParams> many;
    for (float clip : clip_grid())
        for (bool use : {true, false}) {
            ResidualParams p;
            p.group = 8;
            p.clip = clip;
            p.use_patterns = use;
            many.push_back(p);
        }
    const std::vector<ResidualError> one = key_residual_errors(x.data(), D, seqs, pat.data(), labels.data(), many);
    const std::vector<ResidualError> vone =
        value_residual_errors(x.data(), D, seqs, pat.data(), labels.data(), rho.data(), many);
    std::vector<ResidualError> split, vsplit;
#pragma omp parallel num_threads(3)
#pragma omp single
    {
        split = key_residual_errors(x.data(), D, seqs, pat.data(), labels.data(), many, true);
        vsplit = value_residual_errors(x.data(), D, seqs, pat.data(), labels.data(), rho.data(), many, true);
    }
    REQUIRE(split.size() == many.size());
    REQUIRE(vsplit.size() == many.size());
    for (size_t k = 0; k < many.size(); ++k) {
        CHECK(same(split[k], one[k]));
        CHECK(same(vsplit[k], vone[k]));
    }
    std::vector<ResidualParams> mixed(2);
    mixed[1].bits = 4;
    CHECK_THROWS_AS(key_residual_errors(x.data(), D, seqs, pat.data(), labels.data(), mixed), Error);
    CHECK(key_residual_errors(x.data(), D, seqs, pat.data(), labels.data(), {}).empty());
}
