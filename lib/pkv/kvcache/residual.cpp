// Residual quantizer of pattern tables; the contract is in residual.h.
#include "pkv/kvcache/residual.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "pkv/core/error.h"
#include "pkv/kmeans/assigner.h"
#include "pkv/kmeans/minmax_assign.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/quant/minmax.h"

namespace pkv {

void assign_patterns(const float* x, int64_t n, int D, const float* patterns, int M, bool l2, int32_t* labels) {
    PKV_CHECK(M >= 1 && D >= 1, invalid_argument, "pattern assignment: expected M >= 1 and D >= 1, got {} and {}", M,
              D);
    if (n <= 0) return;
    if (l2) {
        // Exact double distances: a runtime's choice between two near-equidistant
        // patterns is arbitrary anyway, and the reference is what tests pin.
        std::vector<double> d2(static_cast<size_t>(n));
        assign_ref(x, n, D, patterns, M, labels, d2.data());
    } else {
        assign_minmax_ref(x, n, D, patterns, M, labels, nullptr);
    }
}

std::vector<double> gate_rhos(const float* x, int64_t n, int D, const float* patterns, const int32_t* labels) {
    std::vector<double> rho(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) rho[i] = v_gate_rho(x + i * D, patterns + static_cast<int64_t>(labels[i]) * D, D);
    return rho;
}

namespace {

void accumulate(const float* x, const float* xq, int64_t count, ResidualError& e) {
    for (int64_t i = 0; i < count; ++i) {
        const double d = static_cast<double>(x[i]) - xq[i];
        e.err2 += d * d;
        e.ref2 += static_cast<double>(x[i]) * x[i];
    }
}

}  // namespace

ResidualError key_residual_error(const float* x, int D, const std::vector<SeqRange>& seqs, const float* patterns,
                                 const int32_t* labels, const ResidualParams& p) {
    ResidualError e;
    const int64_t G = p.group;
    MinMaxSpec spec;
    spec.bits = p.bits;
    spec.group = p.group;
    spec.axis = QuantAxis::channel;
    spec.clip = p.clip;
    std::vector<float> r(static_cast<size_t>(G * D)), rq(r.size());
    for (const SeqRange& s : seqs) {
        for (int64_t b = 0; b + G <= s.length; b += G) {
            const float* xb = x + (s.start + b) * D;
            for (int64_t i = 0; i < G; ++i) {
                const float* c = patterns + static_cast<int64_t>(labels[s.start + b + i]) * D;
                for (int d = 0; d < D; ++d) r[i * D + d] = xb[i * D + d] - (p.use_patterns ? c[d] : 0.0f);
            }
            quantize_minmax(r.data(), G, D, spec, rq.data());
            for (int64_t i = 0; i < G; ++i) {
                const float* c = patterns + static_cast<int64_t>(labels[s.start + b + i]) * D;
                for (int d = 0; d < D; ++d) rq[i * D + d] += p.use_patterns ? c[d] : 0.0f;
            }
            accumulate(xb, rq.data(), G * D, e);
            e.tokens += G;
        }
    }
    return e;
}

ResidualError value_residual_error(const float* x, int D, const std::vector<SeqRange>& seqs, const float* patterns,
                                   const int32_t* labels, const double* rho, const ResidualParams& p) {
    ResidualError e;
    std::vector<float> r(static_cast<size_t>(D)), rq(r.size());
    const int g = std::min(p.group, D);
    for (const SeqRange& s : seqs) {
        for (int64_t j = s.start; j < s.start + s.length; ++j) {
            const float* xv = x + j * D;
            const float* c = patterns + static_cast<int64_t>(labels[j]) * D;
            const bool sub = p.use_patterns && v_gate_passes(rho[j], D, p.gate_z);
            for (int d = 0; d < D; ++d) r[d] = xv[d] - (sub ? c[d] : 0.0f);
            for (int g0 = 0; g0 < D; g0 += g)
                quantize_minmax_group(r.data() + g0, std::min(g, D - g0), 1, p.bits, rq.data() + g0, nullptr, p.clip);
            for (int d = 0; d < D; ++d) rq[d] += sub ? c[d] : 0.0f;
            accumulate(xv, rq.data(), D, e);
            e.tokens += 1;
            e.gated += sub ? 1 : 0;
        }
    }
    return e;
}

const std::vector<float>& clip_grid() {
    static const std::vector<float> grid = [] {
        std::vector<float> g;
        for (int i = 0; i <= 24; ++i) g.push_back(1.0f - 0.025f * static_cast<float>(i));
        return g;
    }();
    return grid;
}

const std::vector<double>& gate_z_grid() {
    static const std::vector<double> grid = {0.0, 0.5, 1.0, 1.6448536269514722, 2.5, 4.0, 8.0};
    return grid;
}

KeyFit fit_key_params(const float* x, int D, const std::vector<SeqRange>& seqs, const float* patterns,
                      const int32_t* labels, int bits, int group, bool use_patterns) {
    KeyFit fit;
    ResidualParams p;
    p.bits = bits;
    p.group = group;
    p.use_patterns = use_patterns;
    fit.at_default = key_residual_error(x, D, seqs, patterns, labels, p);
    fit.at_fit = fit.at_default;
    for (float a : clip_grid()) {
        if (a == 1.0f) continue;
        p.clip = a;
        const ResidualError e = key_residual_error(x, D, seqs, patterns, labels, p);
        if (e.err2 < fit.at_fit.err2) {
            fit.at_fit = e;
            fit.clip = a;
        }
    }
    return fit;
}

ValueFit fit_value_params(const float* x, int D, const std::vector<SeqRange>& seqs, const float* patterns,
                          const int32_t* labels, int bits, int group, bool use_patterns) {
    int64_t n = 0;
    for (const SeqRange& s : seqs) n = std::max(n, s.start + s.length);
    const std::vector<double> rho = gate_rhos(x, n, D, patterns, labels);
    ValueFit fit;
    ResidualParams p;
    p.bits = bits;
    p.group = group;
    p.use_patterns = use_patterns;
    fit.at_default = value_residual_error(x, D, seqs, patterns, labels, rho.data(), p);
    fit.at_fit = fit.at_default;
    for (double z : gate_z_grid()) {
        if (z == fit.gate_z || !use_patterns) continue;
        p.gate_z = z;
        const ResidualError e = value_residual_error(x, D, seqs, patterns, labels, rho.data(), p);
        if (e.err2 < fit.at_fit.err2) {
            fit.at_fit = e;
            fit.gate_z = z;
        }
    }
    p.gate_z = fit.gate_z;
    for (float a : clip_grid()) {
        if (a == 1.0f) continue;
        p.clip = a;
        const ResidualError e = value_residual_error(x, D, seqs, patterns, labels, rho.data(), p);
        if (e.err2 < fit.at_fit.err2) {
            fit.at_fit = e;
            fit.clip = a;
        }
    }
    return fit;
}

}  // namespace pkv
