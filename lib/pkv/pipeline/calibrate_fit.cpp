// `pkv calibrate`'s fit of one head tensor after k-means: the contract is in
// calibrate_fit.h, the fitted parameters in pkv/kvcache/residual.h.
#include "pkv/pipeline/calibrate_fit.h"

#include <algorithm>
#include <exception>
#include <optional>
#include <type_traits>
#include <utility>

namespace pkv::calib {

namespace {

// The quantized widths --bits-budget chooses among (16, fp16, needs no fit).
constexpr int kFitWidths[] = {2, 3, 4, 8};

// Training sequences for the fit: whole sequences in order until fit_tokens are covered.
std::vector<SeqRange> fit_subset(const std::vector<SeqRange>& seqs, int64_t fit_tokens) {
    std::vector<SeqRange> out;
    int64_t n = 0;
    for (const SeqRange& s : seqs) {
        if (n >= fit_tokens && !out.empty()) break;
        out.push_back(s);
        n += s.length;
    }
    return out;
}

double total_sum_squares(const std::vector<float>& x, int64_t n, int D) {
    std::vector<double> mean(static_cast<size_t>(D), 0.0);
    for (int64_t i = 0; i < n; ++i)
        for (int d = 0; d < D; ++d) mean[d] += x[i * D + d];
    for (double& m : mean) m /= static_cast<double>(std::max<int64_t>(n, 1));
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i)
        for (int d = 0; d < D; ++d) {
            const double e = x[i * D + d] - mean[d];
            s += e * e;
        }
    return s;
}

nlohmann::json nmse_or_null(const ResidualError& e) {
    return e.tokens > 0 ? nlohmann::json(e.nmse()) : nlohmann::json(nullptr);
}

// What the key and value fits of one tensor share: the pooled tokens, the patterns, the
// training and held-out tokens' patterns and the sequences the fit uses.
struct FitInputs {
    const Pooled& pool;
    int D;
    const float* patterns;
    const int32_t* labels;  // training tokens' patterns
    const int32_t* hl;      // held-out tokens' patterns
    const std::vector<SeqRange>& fit_seqs;
    const CalibrateConfig& c;
    bool tasks;               // fewer tensors than threads: the fits' candidates become OpenMP tasks
    const KeyMetric* metric;  // keys: the qk objectives' metric, or nullptr
};

// The held-out ablation of one head tensor, the same for keys and values: plain min-max,
// min-max with its own fitted clip ratio, patterns at the default settings (p) and at the
// fitted ones, measured in one pass; `fitted_error` gets the last, whose counts the
// caller may report.
template <class ErrorsFn>
nlohmann::json heldout_record(const ErrorsFn& held_errors, const ResidualParams& p, float minmax_clip,
                              const ResidualParams& fitted, ResidualError& fitted_error) {
    ResidualParams base = p;
    base.use_patterns = false;
    ResidualParams clipped = base;
    clipped.clip = minmax_clip;
    const std::vector<ResidualError> e = held_errors(std::vector<ResidualParams>{base, clipped, p, fitted});
    nlohmann::json held;
    held["nmse_minmax"] = nmse_or_null(e[0]);
    held["nmse_minmax_clipped"] = nmse_or_null(e[1]);
    held["nmse_patterns"] = nmse_or_null(e[2]);
    fitted_error = e[3];
    held["nmse_fitted"] = nmse_or_null(fitted_error);
    held["tokens"] = fitted_error.tokens;
    return held;
}

// a() as an OpenMP task (when `task`; else first) beside b(); returns both results once
// both are done, or rethrows an exception of either then (a task must not throw).
template <class A, class B>
std::pair<std::invoke_result_t<A>, std::invoke_result_t<B>> beside(bool task, const A& a, const B& b) {
    std::optional<std::invoke_result_t<A>> ra;
    std::optional<std::invoke_result_t<B>> rb;
    std::exception_ptr ea, eb;
#pragma omp task default(shared) if (task)
    try {
        ra = a();
    } catch (...) {
        ea = std::current_exception();
    }
    try {
        rb = b();
    } catch (...) {
        eb = std::current_exception();
    }
#pragma omp taskwait
    if (ea) std::rethrow_exception(ea);
    if (eb) std::rethrow_exception(eb);
    return {std::move(*ra), std::move(*rb)};
}

// Keys: fits the clip ratio (clip 1 without --fit) and measures the held-out NMSE of
// plain min-max, min-max with its own clip, patterns by default and patterns fitted.
nlohmann::json finish_key(const FitInputs& x, ResidualParams p, HeadTensorResult& out, nlohmann::json& j) {
    const Pooled& pool = x.pool;
    const CalibrateConfig& c = x.c;
    // The plain min-max fit needs no patterns: a task beside the patterns' fit.
    auto [minmax, fit] = beside(
        x.tasks,
        [&] {
            return fit_key_params(pool.train.data(), x.D, x.fit_seqs, x.patterns, x.labels, c.bits, c.group, false,
                                  x.tasks, x.metric, c.outliers);
        },
        [&] {
            return fit_key_params(pool.train.data(), x.D, x.fit_seqs, x.patterns, x.labels, c.bits, c.group, true,
                                  x.tasks, x.metric, c.outliers);
        });
    const float minmax_clip = minmax.clip;
    if (!c.fit) {
        fit.clip = 1.0f;
        fit.at_fit = fit.at_default;
    }
    if (c.bits_budget > 0.0)
        for (int w : kFitWidths) {
            KeyFit f = w == c.bits ? fit
                                   : fit_key_params(pool.train.data(), x.D, x.fit_seqs, x.patterns, x.labels, w,
                                                    c.group, true, x.tasks, x.metric, c.outliers);
            if (!c.fit) f.clip = 1.0f, f.at_fit = f.at_default;
            out.widths.push_back({w, f.clip, ptable::kDefaultGateZ, f.at_fit.nmse()});
        }
    out.clip = fit.clip;
    j["clip"] = fit.clip;
    j["train"] = {{"nmse_patterns", nmse_or_null(fit.at_default)}, {"nmse_fitted", nmse_or_null(fit.at_fit)}};
    const auto held_errors = [&](const std::vector<ResidualParams>& q) {
        return key_residual_errors(pool.hold.data(), x.D, pool.hold_seqs, x.patterns, x.hl, q);
    };
    ResidualParams fitted = p;
    fitted.clip = fit.clip;
    ResidualError e;
    nlohmann::json held = heldout_record(held_errors, p, minmax_clip, fitted, e);
    if (x.metric) {
        ResidualParams base = p;
        base.use_patterns = false;
        const std::vector<ResidualError> q = key_residual_errors(pool.hold.data(), x.D, pool.hold_seqs, x.patterns,
                                                                 x.hl, {base, p, fitted}, false, x.metric);
        held["qk_nmse_minmax"] = nmse_or_null(q[0]);
        held["qk_nmse_patterns"] = nmse_or_null(q[1]);
        held["qk_nmse_fitted"] = nmse_or_null(q[2]);
    }
    return held;
}

// Values: as finish_key, with the gate's z fitted too (the paper's z without --fit) and
// the share of held-out tokens the gate sends to their pattern.
nlohmann::json finish_value(const FitInputs& x, ResidualParams p, HeadTensorResult& out, nlohmann::json& j) {
    const Pooled& pool = x.pool;
    const CalibrateConfig& c = x.c;
    auto [minmax, fit] = beside(
        x.tasks,
        [&] {
            return fit_value_params(pool.train.data(), x.D, x.fit_seqs, x.patterns, x.labels, c.bits, c.group, false,
                                    x.tasks, c.outliers);
        },
        [&] {
            return fit_value_params(pool.train.data(), x.D, x.fit_seqs, x.patterns, x.labels, c.bits, c.group, true,
                                    x.tasks, c.outliers);
        });
    const float minmax_clip = minmax.clip;
    if (!c.fit) {
        fit.clip = 1.0f;
        fit.gate_z = ptable::kDefaultGateZ;
        fit.at_fit = fit.at_default;
    }
    if (c.bits_budget > 0.0)
        for (int w : kFitWidths) {
            ValueFit f = w == c.bits ? fit
                                     : fit_value_params(pool.train.data(), x.D, x.fit_seqs, x.patterns, x.labels, w,
                                                        c.group, true, x.tasks, c.outliers);
            if (!c.fit) f.clip = 1.0f, f.gate_z = ptable::kDefaultGateZ, f.at_fit = f.at_default;
            out.widths.push_back({w, f.clip, f.gate_z, f.at_fit.nmse()});
        }
    out.clip = fit.clip;
    out.gate_z = fit.gate_z;
    j["clip"] = fit.clip;
    j["gate_z"] = fit.gate_z;
    j["train"] = {{"nmse_patterns", nmse_or_null(fit.at_default)}, {"nmse_fitted", nmse_or_null(fit.at_fit)}};
    const std::vector<double> rho = gate_rhos(pool.hold.data(), pool.n_hold(), x.D, x.patterns, x.hl);
    const auto held_errors = [&](const std::vector<ResidualParams>& q) {
        return value_residual_errors(pool.hold.data(), x.D, pool.hold_seqs, x.patterns, x.hl, rho.data(), q);
    };
    ResidualParams fitted = p;
    fitted.clip = fit.clip;
    fitted.gate_z = fit.gate_z;
    ResidualError e;
    nlohmann::json held = heldout_record(held_errors, p, minmax_clip, fitted, e);
    j["gate_rate"] = e.tokens > 0 ? nlohmann::json(static_cast<double>(e.gated) / static_cast<double>(e.tokens))
                                  : nlohmann::json(nullptr);
    return held;
}

}  // namespace

nlohmann::json width_fits_json(const std::vector<WidthFit>& w) {
    nlohmann::json j = nlohmann::json::array();
    for (const WidthFit& f : w) {
        j.push_back({{"bits", f.bits}, {"clip", f.clip}, {"gate_z", f.gate_z}, {"train_nmse", f.nmse}});
        if (f.attn >= 0.0) j.back()["attn_error"] = f.attn;
    }
    return j;
}

std::vector<WidthFit> width_fits_from_json(const nlohmann::json& j) {
    std::vector<WidthFit> out;
    for (const nlohmann::json& f : j)
        out.push_back({f.at("bits").get<int>(), f.at("clip").get<float>(), f.at("gate_z").get<double>(),
                       f.at("train_nmse").get<double>(), f.value("attn_error", -1.0)});
    return out;
}

HeadTensorResult finish_tensor(bool is_value, const Pooled& pool, const KMeansResult& km, int D, int M,
                               const CalibrateConfig& c, bool tasks, const KeyMetric* key_metric) {
    HeadTensorResult out;
    const float* patterns = km.centroids.data();
    const int64_t n = pool.n_train();
    std::vector<int32_t> labels(static_cast<size_t>(n));
    assign_patterns(pool.train.data(), n, D, patterns, M, c.assign_l2, labels.data());
    out.counts.assign(static_cast<size_t>(M), 0);
    for (int32_t l : labels) ++out.counts[l];
    const int64_t dead = std::count(out.counts.begin(), out.counts.end(), int64_t{0});
    const double sst = total_sum_squares(pool.train, n, D);

    const std::vector<SeqRange> fit_seqs = fit_subset(pool.train_seqs, c.fit_tokens);
    ResidualParams p;
    p.bits = c.bits;
    p.group = c.group;
    p.outliers = c.outliers;
    nlohmann::json j = {{"objective", km.objective},
                        {"variance_explained", sst > 0.0 ? 1.0 - km.objective / sst : 0.0},
                        {"dead_patterns", dead},
                        {"kmeans_iterations", km.iterations}};
    std::vector<int32_t> hl(static_cast<size_t>(pool.n_hold()));
    assign_patterns(pool.hold.data(), pool.n_hold(), D, patterns, M, c.assign_l2, hl.data());
    const FitInputs x{pool, D, patterns, labels.data(), hl.data(), fit_seqs, c, tasks, is_value ? nullptr : key_metric};
    nlohmann::json held = is_value ? finish_value(x, p, out, j) : finish_key(x, p, out, j);
    j["heldout"] = std::move(held);
    out.stats = std::move(j);
    return out;
}

}  // namespace pkv::calib
