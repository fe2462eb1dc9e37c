// Assembles the pkv.analyze_report document from the accumulated metrics:
// per-configuration results, means, fragile heads and histograms, and, for models
// with sliding-window layers, the same means per layer kind (local, global).
#include <algorithm>
#include <cmath>
#include <ctime>
#include <limits>
#include <map>
#include <set>
#include <tuple>

#include "pkv/core/provenance.h"
#include "pkv/core/version.h"
#include "pkv/pipeline/analyze.h"
#include "pkv/report/report.h"

namespace pkv {

using analyze::ConfigAccum;
using analyze::PairResult;
using analyze::RunSpec;
using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Scaled MAD: 1.4826 * median |x - median| estimates the standard deviation of
// Gaussian data, so (x - median) / MAD is a robust z-score.
constexpr double kMadScale = 1.4826;
constexpr double kFragileZ = 3.0;

double nmse(const ErrorAccum& e) { return e.ref2 > 0 ? e.err2 / e.ref2 : kNaN; }

json tensor_json(const ErrorAccum& e) {
    const double m = nmse(e);
    const double snr = (std::isfinite(m) && m > 0) ? -10.0 * std::log10(m) : kNaN;
    return {{"nmse", json_number(m)}, {"snr_db", json_number(snr)}, {"eff_bits", effective_bits(e.bits, e.elements)}};
}

json flat_json(const FlatnessAccum& raw, const FlatnessAccum* pat) {
    const FlatAccum& r = pat ? pat->raw : raw.raw;
    return {{"range_over_std_raw", json_number(r.mean_ros())},
            {"range_over_std_resid", json_number(pat ? pat->resid.mean_ros() : kNaN)},
            {"kurtosis_raw", json_number(r.kurtosis())},
            {"kurtosis_resid", json_number(pat ? pat->resid.kurtosis() : kNaN)},
            {"var_explained", json_number(pat ? pat->var_explained() : kNaN)}};
}

double median(std::vector<double> v) {
    if (v.empty()) return kNaN;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double mean_of(const std::vector<double>& v) {
    double s = 0;
    int64_t c = 0;
    for (double x : v)
        if (std::isfinite(x)) s += x, ++c;
    return c ? s / c : kNaN;
}

// Robust z-scores of values (NaN entries stay NaN; all NaN when MAD is 0).
std::vector<double> robust_z(const std::vector<double>& x) {
    std::vector<double> finite;
    for (double v : x)
        if (std::isfinite(v)) finite.push_back(v);
    std::vector<double> z(x.size(), kNaN);
    if (finite.size() < 3) return z;
    const double med = median(finite);
    std::vector<double> dev;
    for (double v : finite) dev.push_back(std::fabs(v - med));
    const double mad = kMadScale * median(dev);
    if (!(mad > 0)) return z;
    for (size_t i = 0; i < x.size(); ++i)
        if (std::isfinite(x[i])) z[i] = (x[i] - med) / mad;
    return z;
}

// The layer kind of every analysed (layer, KV head), parallel to AnalyzeResult::pairs.
struct Kinds {
    std::map<int, int> layer_window;  // analysed layer -> its sliding window (0: global)
    std::vector<int> pair_window;     // [pairs]
    bool has_local = false;
};

// Windows come from layer_windows (parallel to layers); a layer it does not cover takes
// its pairs' window, so a result without layer_windows still reads as all global.
Kinds layer_kinds_of(const AnalyzeResult& in) {
    Kinds k;
    for (size_t i = 0; i < std::min(in.layers.size(), in.layer_windows.size()); ++i)
        k.layer_window[in.layers[i]] = in.layer_windows[i];
    for (const PairResult& pr : in.pairs) k.layer_window.emplace(pr.layer, pr.window);
    for (const PairResult& pr : in.pairs) k.pair_window.push_back(k.layer_window.at(pr.layer));
    for (const auto& lw : k.layer_window) k.has_local = k.has_local || lw.second > 0;
    return k;
}

// Robust z of each pair against the pairs of its own layer kind only. Local and global
// layers differ in their error level, so one pool would flag a whole kind instead of
// the heads that stand out within it. Without local layers: robust_z over all pairs.
std::vector<double> robust_z_by_kind(const std::vector<double>& x, const Kinds& kinds) {
    if (!kinds.has_local) return robust_z(x);
    std::vector<double> z(x.size(), kNaN);
    for (bool local : {true, false}) {
        std::vector<size_t> idx;
        std::vector<double> vals;
        for (size_t p = 0; p < x.size(); ++p)
            if ((kinds.pair_window[p] > 0) == local) idx.push_back(p), vals.push_back(x[p]);
        const std::vector<double> zk = robust_z(vals);
        for (size_t i = 0; i < idx.size(); ++i) z[idx[i]] = zk[i];
    }
    return z;
}

// The analysis settings as run, so a report can be reproduced from itself.
json settings_json(const AnalyzeResult& in) {
    const AnalyzeConfig& c = *in.config;
    json methods = json::array();
    for (KvMethod m : c.methods) methods.push_back(kv_method_name(m));
    json settings = {{"methods", methods},
                     {"bits", c.bits},
                     {"group", c.group},
                     {"window", c.window},
                     {"keys", c.keys_pre ? "pre" : "post"},
                     {"layers", in.layers},
                     {"heads", in.heads},
                     {"prefill", c.prefill >= 0 ? json(c.prefill) : json("n/2 rounded down to a multiple of window")},
                     {"patterns", c.patterns},
                     {"pattern_cap", c.pattern_cap},
                     {"assign", c.assign_l2 ? "l2" : "minmax"},
                     {"rotate", c.rotate},
                     {"attn_stride", c.attn_stride},
                     {"seed", c.seed},
                     {"kmeans", "random init, 30 iterations, tol 1e-4 (max abs centroid shift), L2 prefill labels"},
                     {"v_gate", "one-sided z-test, z = 1.6448536269514722"}};
    if (!in.table.is_null()) settings["table"] = in.table;
    return settings;
}

// Per-head values the summary and the fragile rule need, indexed [run][pair].
struct HeadValues {
    std::vector<std::vector<double>> k_nmse, v_nmse, kl, rel, eff;  // NaN: undefined or not measured
    std::vector<std::vector<json>> flat;                            // the result's "flatness"
    explicit HeadValues(size_t runs) : k_nmse(runs), v_nmse(runs), kl(runs), rel(runs), eff(runs), flat(runs) {}
};

// One (head, configuration) entry of "results"; also records the head's values for the later sections.
json config_result_json(const AnalyzeResult& in, const PairResult& pr, int window, size_t r, HeadValues& hv) {
    const RunSpec& run = in.runs[r];
    const ConfigAccum& a = pr.configs[r];
    json res = {{"layer", pr.layer}, {"kv_head", pr.head},  {"window", window}, {"method", kv_method_name(run.method)},
                {"bits", run.bits},  {"rotate", run.rotate}};
    res["k"] = in.has_k ? tensor_json(a.k) : json(nullptr);
    res["v"] = in.has_v ? tensor_json(a.v) : json(nullptr);
    res["eff_bits"] = effective_bits(a.k.bits + a.v.bits, a.k.elements + a.v.elements);
    if (in.has_attn) {
        const double klm = a.attn.kl_rows ? a.attn.kl_sum / a.attn.kl_rows : kNaN;
        const double relm = a.attn.rel_rows ? a.attn.rel_sum / a.attn.rel_rows : kNaN;
        res["attn"] = {{"kl", json_number(klm)}, {"out_rel_err", json_number(relm)}};
        hv.kl[r].push_back(klm);
        hv.rel[r].push_back(relm);
    } else {
        res["attn"] = nullptr;
        hv.kl[r].push_back(kNaN);
        hv.rel[r].push_back(kNaN);
    }
    const int rot = run.rotate ? 1 : 0;
    const bool pat = run.method == KvMethod::patternkv || run.method == KvMethod::patternkv_table;
    res["flatness"] = {{"k", in.has_k ? flat_json(pr.raw_k[rot], pat ? &a.flat_k : nullptr) : json(nullptr)},
                       {"v", in.has_v ? flat_json(pr.raw_v[rot], pat ? &a.flat_v : nullptr) : json(nullptr)}};
    hv.k_nmse[r].push_back(in.has_k ? nmse(a.k) : kNaN);
    hv.v_nmse[r].push_back(in.has_v ? nmse(a.v) : kNaN);
    hv.eff[r].push_back(res["eff_bits"].get<double>());
    hv.flat[r].push_back(res["flatness"]);
    return res;
}

// Every (head, configuration) result, head-major as the pairs were analysed.
json results_json(const AnalyzeResult& in, const Kinds& kinds, HeadValues& hv) {
    json results = json::array();
    for (size_t p = 0; p < in.pairs.size(); ++p)
        for (size_t r = 0; r < in.runs.size(); ++r)
            results.push_back(config_result_json(in, in.pairs[p], kinds.pair_window[p], r, hv));
    return results;
}

// Mean over the selected pairs of v[pair]; NaN entries are left out.
double mean_over(const std::vector<double>& v, const std::vector<size_t>& sel) {
    std::vector<double> picked;
    for (size_t p : sel) picked.push_back(v[p]);
    return mean_of(picked);
}

// One summary row: means over the selected pairs of run r.
json summary_row(const AnalyzeResult& in, const HeadValues& hv, size_t r, const std::vector<size_t>& sel) {
    const RunSpec& run = in.runs[r];
    const double e = mean_over(hv.eff[r], sel);
    return {{"method", kv_method_name(run.method)},
            {"bits", run.bits},
            {"rotate", run.rotate},
            {"k_nmse", json_number(mean_over(hv.k_nmse[r], sel))},
            {"v_nmse", json_number(mean_over(hv.v_nmse[r], sel))},
            {"attn_kl", json_number(mean_over(hv.kl[r], sel))},
            {"attn_out_rel_err", json_number(mean_over(hv.rel[r], sel))},
            {"eff_bits", std::isfinite(e) ? e : exact_bits(1.0)}};
}

// Means over the selected pairs of every flatness field of one tensor ("k" or "v").
json flatness_mean_json(const std::vector<json>& flat, const std::vector<size_t>& sel, const char* tensor) {
    json out = json::object();
    for (const char* f :
         {"range_over_std_raw", "range_over_std_resid", "kurtosis_raw", "kurtosis_resid", "var_explained"}) {
        std::vector<double> vals;
        for (size_t p : sel) {
            const json t = flat[p].is_object() ? flat[p].value(tensor, json()) : json();
            const json v = t.is_object() ? t.value(f, json()) : json();
            vals.push_back(v.is_number() ? v.get<double>() : kNaN);
        }
        out[f] = json_number(mean_of(vals));
    }
    return out;
}

// Means over heads per configuration: the table a reader compares methods by.
json summary_json(const AnalyzeResult& in, const HeadValues& hv) {
    std::vector<size_t> all(in.pairs.size());
    for (size_t p = 0; p < all.size(); ++p) all[p] = p;
    json summary = json::array();
    for (size_t r = 0; r < in.runs.size(); ++r) summary.push_back(summary_row(in, hv, r, all));
    return summary;
}

// One layer kind: its analysed layers and, per configuration, the means over its heads
// with the flatness means added.
json kind_json(const AnalyzeResult& in, const HeadValues& hv, const Kinds& kinds, bool local) {
    std::vector<int> layers;
    for (const auto& lw : kinds.layer_window)
        if ((lw.second > 0) == local) layers.push_back(lw.first);
    std::vector<size_t> sel;
    for (size_t p = 0; p < in.pairs.size(); ++p)
        if ((kinds.pair_window[p] > 0) == local) sel.push_back(p);
    json summary = json::array();
    if (!sel.empty())
        for (size_t r = 0; r < in.runs.size(); ++r) {
            json row = summary_row(in, hv, r, sel);
            row["flatness"] = {{"k", in.has_k ? flatness_mean_json(hv.flat[r], sel, "k") : json(nullptr)},
                               {"v", in.has_v ? flatness_mean_json(hv.flat[r], sel, "v") : json(nullptr)}};
            summary.push_back(std::move(row));
        }
    return {{"layers", layers}, {"summary", std::move(summary)}};
}

// Local (sliding-window) and global layers apart; null when no analysed layer is local.
json layer_kinds_json(const AnalyzeResult& in, const HeadValues& hv, const Kinds& kinds) {
    if (!kinds.has_local) return nullptr;
    std::set<int> windows;
    for (const auto& lw : kinds.layer_window)
        if (lw.second > 0) windows.insert(lw.second);
    json local = kind_json(in, hv, kinds, true);
    local["window"] = windows.size() == 1 ? json(*windows.begin()) : json(nullptr);
    return {{"local", std::move(local)}, {"global", kind_json(in, hv, kinds, false)}};
}

// Fragile heads: robust z of K or V NMSE above 3 within one (method, bits, rotate) and layer
// kind, and the layers worth keeping in fp16 because a head of theirs is fragile at the
// lowest bits.
json fragile_json(const AnalyzeResult& in, const HeadValues& hv, const Kinds& kinds) {
    json heads = json::array();
    int lowest = std::numeric_limits<int>::max();
    for (const RunSpec& run : in.runs)
        if (run.method != KvMethod::fp16) lowest = std::min(lowest, run.bits);
    std::set<int> keep;
    for (size_t r = 0; r < in.runs.size(); ++r) {
        const RunSpec& run = in.runs[r];
        if (run.method == KvMethod::fp16) continue;
        const std::vector<double> zk = robust_z_by_kind(hv.k_nmse[r], kinds),
                                  zv = robust_z_by_kind(hv.v_nmse[r], kinds);
        for (size_t p = 0; p < in.pairs.size(); ++p) {
            double score = -std::numeric_limits<double>::infinity();
            if (std::isfinite(zk[p])) score = std::max(score, zk[p]);
            if (std::isfinite(zv[p])) score = std::max(score, zv[p]);
            if (!(score > kFragileZ)) continue;
            heads.push_back({{"layer", in.pairs[p].layer},
                             {"kv_head", in.pairs[p].head},
                             {"window", kinds.pair_window[p]},
                             {"method", kv_method_name(run.method)},
                             {"bits", run.bits},
                             {"rotate", run.rotate},
                             {"k_nmse", json_number(hv.k_nmse[r][p])},
                             {"score", score}});
            if (run.bits == lowest) keep.insert(in.pairs[p].layer);
        }
    }
    const char* rule = kinds.has_local
                           ? "per (method, bits, rotate) and layer kind: a head is fragile when its K or V NMSE "
                             "exceeds median + 3 MAD over the analysed heads of its kind, local (sliding-window) "
                             "heads against local heads and global against global (MAD scaled by 1.4826, i.e. "
                             "robust z > 3); score = the larger robust z; fp16 layers suggested where a head is "
                             "fragile at the lowest bits analysed"
                           : "per (method, bits, rotate): a head is fragile when its K or V NMSE exceeds median + 3 "
                             "MAD over the analysed heads (MAD scaled by 1.4826, i.e. robust z > 3); score = the "
                             "larger robust z; fp16 layers suggested where a head is fragile at the lowest bits "
                             "analysed";
    return {
        {"rule", rule}, {"heads", std::move(heads)}, {"keep_fp16_layers", std::vector<int>(keep.begin(), keep.end())}};
}

// Raw and residual value histograms of the heads that collected them, for plotting.
json histograms_json(const AnalyzeResult& in) {
    json hists = json::array();
    for (const PairResult& pr : in.pairs) {
        if (!pr.has_hist) continue;
        for (int t = 0; t < 2; ++t) {
            const HistAccum& h = t == 0 ? pr.hist_k : pr.hist_v;
            if (!h.ready) continue;
            hists.push_back({{"layer", pr.layer},
                             {"kv_head", pr.head},
                             {"tensor", t == 0 ? "k" : "v"},
                             {"lo", h.lo},
                             {"hi", h.hi},
                             {"raw", h.raw},
                             {"residual", h.resid}});
        }
    }
    return hists;
}

}  // namespace

json analyze_report_json(const AnalyzeResult& in) {
    const AnalyzeConfig& c = *in.config;
    json report;
    report["format"] = "pkv.analyze_report";
    report["format_version"] = "1.4";
    report["provenance"] = provenance_json("analyze", c.argv);
    report["provenance"]["dump"] = {{"path", in.source_path.empty() ? c.dump_path : in.source_path},
                                    {"source", in.source},
                                    {"model", in.dump_model},
                                    {"provenance", in.dump_provenance}};
    report["provenance"]["device"] = in.device;
    report["provenance"]["sim_device"] = in.sim_device;
    report["settings"] = settings_json(in);
    report["model"] = in.model;
    report["n_tokens"] = in.n_tokens;
    const Kinds kinds = layer_kinds_of(in);
    HeadValues hv(in.runs.size());
    report["results"] = results_json(in, kinds, hv);
    report["summary"] = summary_json(in, hv);
    report["layer_kinds"] = layer_kinds_json(in, hv, kinds);
    report["fragile"] = fragile_json(in, hv, kinds);
    report["histograms"] = histograms_json(in);
    report["warnings"] = in.warnings;
    return report;
}

}  // namespace pkv
