// Residual quantizer of pattern tables; the contract is in residual.h.
#include "pkv/kvcache/residual.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>

#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/kmeans/assigner.h"
#include "pkv/kmeans/minmax_assign.h"
#include "pkv/kvcache/outliers.h"
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

// What every evaluation shares with quantize_minmax_group (pkv/quant/minmax.h): the
// checks of its arguments, made once instead of once per group.
void check_params(const std::vector<ResidualParams>& ps) {
    for (const ResidualParams& p : ps) {
        check_minmax_bits(p.bits);
        PKV_CHECK(p.group > 0, invalid_argument, "group size {}: expected a positive number", p.group);
        PKV_CHECK(p.clip > 0.0f && p.clip <= 1.0f, invalid_argument,
                  "quantizer clip ratio {}: expected a value in (0, 1]", p.clip);
        PKV_CHECK(p.outliers >= 0 && p.outliers <= kMaxOutliers, invalid_argument,
                  "outliers per group: expected 0..{}, got {}", kMaxOutliers, p.outliers);
        PKV_CHECK(p.bits == ps.front().bits && p.group == ps.front().group && p.outliers == ps.front().outliers,
                  invalid_argument,
                  "residual errors: expected one bit width, group and outlier count for every parameter set, got "
                  "{}/{}/{} and {}/{}/{}",
                  ps.front().bits, ps.front().group, ps.front().outliers, p.bits, p.group, p.outliers);
    }
}

// Every candidate's grid on a set of groups: quantize_minmax_group's binary16 zero z and
// scale s as floats, and div = s, or 1 where s == 0 (the codes are then irrelevant:
// q * 0 + z). fill() computes them from each entry's range [mn, mx] and clip ratio.
struct Grids {
    std::vector<float> mn, mx, clip, z, s, div;
    explicit Grids(size_t n) : mn(n, 0.0f), mx(n, 0.0f), clip(n, 1.0f), z(n), s(n), div(n) {}
    void fill(size_t n, int bits) {
        minmax_grids(mn.data(), mx.data(), clip.data(), static_cast<int64_t>(n), bits, z.data(), s.data());
        for (size_t i = 0; i < n; ++i) div[i] = s[i] > 0.0f ? s[i] : 1.0f;
    }
};

// 1.5 * 2^23: for |v| <= 2^22, (v + kRound) - kRound is v rounded to an integer in the
// current rounding mode, as std::nearbyint rounds it.
constexpr float kRound = 12582912.0f;

// quantize_minmax_group's reconstruction of r on the grid (z, s, div). The quotient is
// clamped to [-1, qmax + 1] before rounding: rounding is monotone and the bounds are
// integers, so the clamped code is the same, and the rounding trick stays in range.
inline float reconstruct(float r, float z, float s, float div, float qmax) {
    float v = (r - z) / div;
    v = std::min(std::max(v, -1.0f), qmax + 1.0f);
    float t = (v + kRound) - kRound;
    t = std::min(std::max(t, 0.0f), qmax);
    // q s is exact in float (q < 2^8, s a binary16 value), so with or without a fused
    // multiply-add the sum has one rounding, that of the exact q s + z: the float
    // quantize_minmax_group gets from its exact double sum.
    return t * s + z;
}

// err2[k] += |x - x̂_k|² for every candidate k of one element (times w when Weighted;
// the unweighted sum stays a separate instantiation so that it keeps its exact rounding).
// x̂_k = reconstruct(x - c m_k)
// + c m_k with m_k 1 (pattern subtracted) or 0: c * 1 is c and c * 0 a zero, so x̂_k is
// the single evaluation's value up to the sign of a zero, which its square ignores. Each
// err2[k] is summed in the single evaluation's order; the loop over k vectorizes.
template <bool Weighted = false>
inline void add_element(float x, float c, const float* m, const float* z, const float* s, const float* div, float qmax,
                        int K, double w, double* err2) {
    for (int k = 0; k < K; ++k) {
        const float cm = c * m[k];
        const float xq = reconstruct(x - cm, z[k], s[k], div[k], qmax) + cm;
        const double d = static_cast<double>(x) - xq;
        if constexpr (Weighted) err2[k] += w * (d * d);
        else err2[k] += d * d;
    }
}

// e[k] = x - x̂_k for every candidate k of one element (the full key metric needs the
// errors of a token's channels together); x̂_k as in add_element.
inline void element_errors(float x, float c, const float* m, const float* z, const float* s, const float* div,
                           float qmax, int K, double* e) {
    for (int k = 0; k < K; ++k) {
        const float cm = c * m[k];
        e[k] = static_cast<double>(x) - (reconstruct(x - cm, z[k], s[k], div[k], qmax) + cm);
    }
}

// Candidates are padded to a multiple of kPad with ones whose sums are discarded (range
// 0, clip 1, no pattern), so that the loop over them runs whole vectors only.
constexpr int kPad = 8;

int padded(int K) { return (K + kPad - 1) / kPad * kPad; }

// min and max of n values at a stride in quantize_minmax_group's order; false if one is
// not finite (the caller then lets that function fail with its message).
inline bool range_of(const float* v, int64_t n, int64_t stride, float& mn, float& mx) {
    mn = v[0];
    mx = v[0];
    bool finite = true;
    for (int64_t i = 0; i < n; ++i) {
        const float e = v[i * stride];
        finite = finite && std::isfinite(e);
        mn = std::min(mn, e);
        mx = std::max(mx, e);
    }
    return finite;
}

// Held-out elements (ResidualParams::outliers) of one group of n values at a stride:
// narrows [mn, mx] to the kept range and sets bit `bit` of held[base + pos * stride] for each.
// The choice is eval's (group_outliers), so the fit sees the groups eval quantizes.
struct Holdout {
    int count = 0;
    std::vector<int64_t> idx;
    std::vector<uint8_t> held;  // per element of the block: bit 0 plain min-max, bit 1 patterns
    void group(const float* v, int64_t n, int64_t stride, size_t base, uint8_t bit, float& mn, float& mx) {
        int64_t pos[kMaxOutliers];
        float kept[2];
        const int h = group_outliers(v, n, stride, count, idx, pos, kept);
        if (h == 0) return;
        mn = kept[0];
        mx = kept[1];
        for (int i = 0; i < h; ++i) held[base + static_cast<size_t>(pos[i] * stride)] |= bit;
    }
};

// The candidates whose variant (m[k] != 0: patterns subtracted) holds an element out
// (flags as Holdout::held) reconstruct it exactly: their errors become zero.
inline void zero_held(uint8_t flags, const float* m, int K, double* e) {
    for (int k = 0; k < K; ++k)
        if (flags & (m[k] != 0.0f ? 2 : 1)) e[k] = 0.0;
}

std::vector<ResidualError> with_ref(const std::vector<double>& err2, double ref2, int64_t tokens,
                                    const std::vector<int64_t>& gated) {
    std::vector<ResidualError> out(err2.size());
    for (size_t k = 0; k < out.size(); ++k) out[k] = {err2[k], ref2, tokens, gated[k]};
    return out;
}

std::vector<ResidualError> key_errors_pass(const float* x, int D, const std::vector<SeqRange>& seqs,
                                           const float* patterns, const int32_t* labels,
                                           const std::vector<ResidualParams>& ps, const KeyMetric* metric) {
    const double* weight = metric && !metric->weight.empty() ? metric->weight.data() : nullptr;
    const double* U = metric && !metric->factor.empty() ? metric->factor.data() : nullptr;
    PKV_CHECK(D > 0, invalid_argument, "quantizer input: expected a positive head_dim, got {}", D);
    const int K = static_cast<int>(ps.size()), Kp = padded(K);
    const int64_t G = ps.front().group;
    const int bits = ps.front().bits;
    const float qmax = static_cast<float>((1 << bits) - 1);
    std::vector<float> m(static_cast<size_t>(Kp), 0.0f);
    bool any_patterns = false, any_plain = false;
    for (int k = 0; k < K; ++k) {
        m[k] = ps[k].use_patterns ? 1.0f : 0.0f;
        any_patterns = any_patterns || ps[k].use_patterns;
        any_plain = any_plain || !ps[k].use_patterns;
    }
    const std::vector<float> zeros(static_cast<size_t>(D), 0.0f);
    std::vector<double> err2(static_cast<size_t>(Kp), 0.0);
    double ref2 = 0.0;
    int64_t tokens = 0;
    // One block: the residual x - c, each channel's range with and without the
    // patterns, then every candidate's grid per channel ([D, K]).
    std::vector<float> r(static_cast<size_t>(G * D));
    std::vector<const float*> crow(static_cast<size_t>(G));
    Grids grid(static_cast<size_t>(D) * Kp);                                    // [channel, candidate]
    std::vector<double> e(U ? static_cast<size_t>(D) * Kp : 0), y(U ? Kp : 0);  // full metric: [channel, candidate]
    Holdout out;
    out.count = ps.front().outliers;
    std::vector<double> eh(out.count > 0 ? Kp : 0);  // one held-out element's errors
    for (const SeqRange& sq : seqs) {
        for (int64_t b = 0; b + G <= sq.length; b += G) {
            if (out.count > 0) out.held.assign(static_cast<size_t>(G * D), 0);
            const float* xb = x + (sq.start + b) * D;
            for (int64_t i = 0; i < G; ++i) {
                crow[i] = any_patterns ? patterns + static_cast<int64_t>(labels[sq.start + b + i]) * D : zeros.data();
                for (int d = 0; d < D; ++d) r[i * D + d] = xb[i * D + d] - crow[i][d];
            }
            for (int d = 0; d < D; ++d) {
                float mn[2], mx[2];
                const float* src[2] = {xb + d, r.data() + d};
                for (int v = 0; v < 2; ++v) {
                    if (!(v == 1 ? any_patterns : any_plain)) continue;
                    if (!range_of(src[v], G, D, mn[v], mx[v])) {
                        std::vector<float> tmp(static_cast<size_t>(G));
                        quantize_minmax_group(src[v], G, D, bits, tmp.data(), nullptr, 1.0f);
                    }
                    if (out.count > 0) out.group(src[v], G, D, static_cast<size_t>(d), uint8_t(1u << v), mn[v], mx[v]);
                }
                for (int k = 0; k < K; ++k) {
                    const int v = ps[k].use_patterns ? 1 : 0;
                    const size_t at = static_cast<size_t>(d) * Kp + k;
                    grid.mn[at] = mn[v];
                    grid.mx[at] = mx[v];
                    grid.clip[at] = ps[k].clip;
                }
            }
            grid.fill(static_cast<size_t>(D) * Kp, bits);
            if (U) {
                // |U e|² per token and candidate: row j of U starts at its diagonal.
                for (int64_t i = 0; i < G; ++i) {
                    const float* xi = xb + i * D;
                    for (int d = 0; d < D; ++d) {
                        const size_t at = static_cast<size_t>(d) * Kp;
                        element_errors(xi[d], crow[i][d], m.data(), grid.z.data() + at, grid.s.data() + at,
                                       grid.div.data() + at, qmax, Kp, e.data() + at);
                        if (out.count > 0)
                            zero_held(out.held[static_cast<size_t>(i * D + d)], m.data(), Kp, e.data() + at);
                    }
                    for (int j = 0; j < D; ++j) {
                        std::fill(y.begin(), y.end(), 0.0);
                        double ry = 0.0;
                        for (int d = j; d < D; ++d) {
                            const double u = U[static_cast<size_t>(j) * D + d];
                            ry += u * xi[d];
                            const double* ed = e.data() + static_cast<size_t>(d) * Kp;
                            for (int k = 0; k < Kp; ++k) y[k] += u * ed[k];
                        }
                        ref2 += ry * ry;
                        for (int k = 0; k < Kp; ++k) err2[k] += y[k] * y[k];
                    }
                }
                tokens += G;
                continue;
            }
            for (int64_t i = 0; i < G; ++i)
                for (int d = 0; d < D; ++d) {
                    const float xv = xb[i * D + d];
                    const size_t at = static_cast<size_t>(d) * Kp;
                    if (out.count > 0 && out.held[static_cast<size_t>(i * D + d)]) {
                        // Held out by some candidates: their errors are zero, the others' as below.
                        const double w = weight ? weight[d] : 1.0;
                        ref2 += w * (static_cast<double>(xv) * xv);
                        element_errors(xv, crow[i][d], m.data(), grid.z.data() + at, grid.s.data() + at,
                                       grid.div.data() + at, qmax, Kp, eh.data());
                        zero_held(out.held[static_cast<size_t>(i * D + d)], m.data(), Kp, eh.data());
                        for (int k = 0; k < Kp; ++k) err2[k] += w * (eh[k] * eh[k]);
                        continue;
                    }
                    if (weight) {
                        ref2 += weight[d] * (static_cast<double>(xv) * xv);
                        add_element<true>(xv, crow[i][d], m.data(), grid.z.data() + at, grid.s.data() + at,
                                          grid.div.data() + at, qmax, Kp, weight[d], err2.data());
                    } else {
                        ref2 += static_cast<double>(xv) * xv;
                        add_element(xv, crow[i][d], m.data(), grid.z.data() + at, grid.s.data() + at,
                                    grid.div.data() + at, qmax, Kp, 1.0, err2.data());
                    }
                }
            tokens += G;
        }
    }
    err2.resize(static_cast<size_t>(K));
    return with_ref(err2, ref2, tokens, std::vector<int64_t>(static_cast<size_t>(K), 0));
}

std::vector<ResidualError> value_errors_pass(const float* x, int D, const std::vector<SeqRange>& seqs,
                                             const float* patterns, const int32_t* labels, const double* rho,
                                             const std::vector<ResidualParams>& ps) {
    const int K = static_cast<int>(ps.size()), Kp = padded(K);
    const int g = std::min(ps.front().group, D);
    const int bits = ps.front().bits;
    const float qmax = static_cast<float>((1 << bits) - 1);
    bool any_patterns = false;
    for (const ResidualParams& p : ps) any_patterns = any_patterns || p.use_patterns;
    const std::vector<float> zeros(static_cast<size_t>(D), 0.0f);
    std::vector<double> err2(static_cast<size_t>(Kp), 0.0);
    std::vector<int64_t> gated(static_cast<size_t>(K), 0);
    double ref2 = 0.0;
    int64_t tokens = 0;
    std::vector<float> m(static_cast<size_t>(Kp), 0.0f), r(static_cast<size_t>(D));
    const int groups = (D + g - 1) / g;
    Grids grid(static_cast<size_t>(groups) * Kp);  // [group, candidate]
    Holdout out;
    out.count = ps.front().outliers;
    std::vector<double> eh(out.count > 0 ? Kp : 0);  // one held-out element's errors
    for (const SeqRange& sq : seqs) {
        for (int64_t j = sq.start; j < sq.start + sq.length; ++j) {
            if (out.count > 0) out.held.assign(static_cast<size_t>(D), 0);
            const float* xv = x + j * D;
            const float* c = any_patterns ? patterns + static_cast<int64_t>(labels[j]) * D : zeros.data();
            bool any_sub = false, any_plain = false;
            for (int k = 0; k < K; ++k) {
                // Candidates of one z share the gate's verdict (a fit's clip ratios).
                const bool same =
                    k > 0 && ps[k].use_patterns == ps[k - 1].use_patterns && ps[k].gate_z == ps[k - 1].gate_z;
                const bool sub = same ? m[k - 1] != 0.0f : ps[k].use_patterns && v_gate_passes(rho[j], D, ps[k].gate_z);
                m[k] = sub ? 1.0f : 0.0f;
                gated[k] += sub ? 1 : 0;
                any_sub = any_sub || sub;
                any_plain = any_plain || !sub;
            }
            if (any_sub)
                for (int d = 0; d < D; ++d) r[d] = xv[d] - c[d];
            for (int g0 = 0; g0 < D; g0 += g) {
                const int n = std::min(g, D - g0);
                float mn[2], mx[2];
                const float* src[2] = {xv + g0, r.data() + g0};
                for (int v = 0; v < 2; ++v) {
                    if (!(v == 1 ? any_sub : any_plain)) continue;
                    if (!range_of(src[v], n, 1, mn[v], mx[v])) {
                        std::vector<float> tmp(static_cast<size_t>(n));
                        quantize_minmax_group(src[v], n, 1, bits, tmp.data(), nullptr, 1.0f);
                    }
                    if (out.count > 0) out.group(src[v], n, 1, static_cast<size_t>(g0), uint8_t(1u << v), mn[v], mx[v]);
                }
                for (int k = 0; k < K; ++k) {
                    const int v = m[k] != 0.0f ? 1 : 0;
                    const size_t at = static_cast<size_t>(g0 / g) * Kp + k;
                    grid.mn[at] = mn[v];
                    grid.mx[at] = mx[v];
                    grid.clip[at] = ps[k].clip;
                }
            }
            grid.fill(static_cast<size_t>(groups) * Kp, bits);
            for (int g0 = 0; g0 < D; g0 += g) {
                const size_t at = static_cast<size_t>(g0 / g) * Kp;
                for (int d = g0; d < std::min(g0 + g, D); ++d) {
                    ref2 += static_cast<double>(xv[d]) * xv[d];
                    if (out.count > 0 && out.held[static_cast<size_t>(d)]) {
                        element_errors(xv[d], c[d], m.data(), grid.z.data() + at, grid.s.data() + at,
                                       grid.div.data() + at, qmax, Kp, eh.data());
                        zero_held(out.held[static_cast<size_t>(d)], m.data(), Kp, eh.data());
                        for (int k = 0; k < Kp; ++k) err2[k] += eh[k] * eh[k];
                        continue;
                    }
                    add_element(xv[d], c[d], m.data(), grid.z.data() + at, grid.s.data() + at, grid.div.data() + at,
                                qmax, Kp, 1.0, err2.data());
                }
            }
            tokens += 1;
        }
    }
    err2.resize(static_cast<size_t>(K));
    return with_ref(err2, ref2, tokens, gated);
}

// With `tasks`, chunks of kPad candidates become OpenMP tasks that idle threads of an
// enclosing parallel region may take; each candidate's sums do not depend on the
// others', so the result is the same. An exception of a task is rethrown here.
template <class Pass>
std::vector<ResidualError> by_chunks(const std::vector<ResidualParams>& ps, bool tasks, const Pass& pass) {
    if (ps.empty()) return {};
    check_params(ps);
    if (!tasks || ps.size() <= static_cast<size_t>(kPad)) return pass(ps);
    const size_t chunks = (ps.size() + kPad - 1) / kPad;
    std::vector<std::vector<ResidualError>> part(chunks);
    std::vector<std::exception_ptr> failed(chunks);
    for (size_t i = 0; i < chunks; ++i) {
#pragma omp task default(shared) firstprivate(i)
        try {
            const size_t k0 = i * kPad, k1 = std::min(ps.size(), k0 + kPad);
            part[i] = pass(std::vector<ResidualParams>(ps.begin() + k0, ps.begin() + k1));
        } catch (...) {
            failed[i] = std::current_exception();
        }
    }
#pragma omp taskwait
    std::vector<ResidualError> out;
    for (size_t i = 0; i < chunks; ++i) {
        if (failed[i]) std::rethrow_exception(failed[i]);
        out.insert(out.end(), part[i].begin(), part[i].end());
    }
    return out;
}

}  // namespace

std::vector<ResidualError> key_residual_errors(const float* x, int D, const std::vector<SeqRange>& seqs,
                                               const float* patterns, const int32_t* labels,
                                               const std::vector<ResidualParams>& ps, bool tasks,
                                               const KeyMetric* metric) {
    if (metric) {
        PKV_CHECK(metric->weight.empty() || metric->weight.size() == static_cast<size_t>(D), invalid_argument,
                  "key metric: expected {} channel weights, got {}", D, metric->weight.size());
        PKV_CHECK(metric->factor.empty() || metric->factor.size() == static_cast<size_t>(D) * D, invalid_argument,
                  "key metric: expected a {}x{} factor, got {} elements", D, D, metric->factor.size());
        PKV_CHECK(metric->weight.empty() || metric->factor.empty(), invalid_argument,
                  "key metric: expected channel weights or a factor, got both");
        for (size_t d = 0; d < metric->weight.size(); ++d)
            PKV_CHECK(std::isfinite(metric->weight[d]) && metric->weight[d] >= 0.0, invalid_argument,
                      "key channel weights: expected finite weights >= 0, got {} at channel {}", metric->weight[d], d);
        for (double u : metric->factor)
            PKV_CHECK(std::isfinite(u), invalid_argument, "key metric: the factor holds {}", u);
    }
    return by_chunks(ps, tasks, [&](const std::vector<ResidualParams>& q) {
        return key_errors_pass(x, D, seqs, patterns, labels, q, metric);
    });
}

std::vector<ResidualError> value_residual_errors(const float* x, int D, const std::vector<SeqRange>& seqs,
                                                 const float* patterns, const int32_t* labels, const double* rho,
                                                 const std::vector<ResidualParams>& ps, bool tasks) {
    return by_chunks(ps, tasks, [&](const std::vector<ResidualParams>& q) {
        return value_errors_pass(x, D, seqs, patterns, labels, rho, q);
    });
}

ResidualError key_residual_error(const float* x, int D, const std::vector<SeqRange>& seqs, const float* patterns,
                                 const int32_t* labels, const ResidualParams& p) {
    return key_residual_errors(x, D, seqs, patterns, labels, {p}).front();
}

ResidualError value_residual_error(const float* x, int D, const std::vector<SeqRange>& seqs, const float* patterns,
                                   const int32_t* labels, const double* rho, const ResidualParams& p) {
    return value_residual_errors(x, D, seqs, patterns, labels, rho, {p}).front();
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
                      const int32_t* labels, int bits, int group, bool use_patterns, bool tasks,
                      const KeyMetric* metric, int outliers) {
    ResidualParams p;
    p.bits = bits;
    p.group = group;
    p.use_patterns = use_patterns;
    p.outliers = outliers;
    // Clip 1 first, then the grid's other ratios in order: one pass measures them all.
    std::vector<ResidualParams> cand = {p};
    for (float a : clip_grid())
        if (a != 1.0f) {
            cand.push_back(p);
            cand.back().clip = a;
        }
    const std::vector<ResidualError> e = key_residual_errors(x, D, seqs, patterns, labels, cand, tasks, metric);
    KeyFit fit;
    fit.at_default = e[0];
    fit.at_fit = fit.at_default;
    for (size_t k = 1; k < cand.size(); ++k)
        if (e[k].err2 < fit.at_fit.err2) {
            fit.at_fit = e[k];
            fit.clip = cand[k].clip;
        }
    return fit;
}

ValueFit fit_value_params(const float* x, int D, const std::vector<SeqRange>& seqs, const float* patterns,
                          const int32_t* labels, int bits, int group, bool use_patterns, bool tasks, int outliers) {
    int64_t n = 0;
    for (const SeqRange& s : seqs) n = std::max(n, s.start + s.length);
    const std::vector<double> rho = gate_rhos(x, n, D, patterns, labels);
    ValueFit fit;
    ResidualParams p;
    p.bits = bits;
    p.group = group;
    p.use_patterns = use_patterns;
    p.outliers = outliers;
    // The default and the other z at clip 1 in one pass, the clip ratios at the
    // chosen z in a second. Without patterns z changes nothing, so the clip ratios
    // join the first pass.
    const auto clips_at = [&](std::vector<ResidualParams>& cand, double z) {
        for (float a : clip_grid())
            if (a != 1.0f) {
                cand.push_back(p);
                cand.back().gate_z = z;
                cand.back().clip = a;
            }
    };
    std::vector<ResidualParams> cand = {p};
    if (use_patterns) {
        for (double z : gate_z_grid())
            if (z != fit.gate_z) {
                cand.push_back(p);
                cand.back().gate_z = z;
            }
    } else {
        clips_at(cand, fit.gate_z);
    }
    std::vector<ResidualError> e = value_residual_errors(x, D, seqs, patterns, labels, rho.data(), cand, tasks);
    fit.at_default = e[0];
    fit.at_fit = fit.at_default;
    size_t k = 1;
    for (; use_patterns && k < cand.size(); ++k)
        if (e[k].err2 < fit.at_fit.err2) {
            fit.at_fit = e[k];
            fit.gate_z = cand[k].gate_z;
        }
    if (use_patterns) {
        cand.clear();
        clips_at(cand, fit.gate_z);
        e = value_residual_errors(x, D, seqs, patterns, labels, rho.data(), cand, tasks);
        k = 0;
    }
    for (; k < cand.size(); ++k)
        if (e[k].err2 < fit.at_fit.err2) {
            fit.at_fit = e[k];
            fit.clip = cand[k].clip;
        }
    return fit;
}

}  // namespace pkv
