// The pkv.eval_report document (docs/eval.md) of an EvalResult: provenance, the run's
// counts and, per variant, the figures derived from its sums.
#include <algorithm>
#include <cmath>

#include "pkv/core/provenance.h"
#include "pkv/pipeline/provenance.h"
#include "pkv/report/report.h"

namespace pkv {

namespace {

double ratio(double a, double b) { return b > 0 ? a / b : std::nan(""); }

nlohmann::json num(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }

// The non-empty position buckets: means over each bucket's own positions (decode means
// null, as 0/0, when the bucket lies wholly within the prefill); a bucket without any scored
// position (no sequence reaches its first edge with a next token) is left out.
nlohmann::json by_position(const EvalResult& r, const EvalAccum& a) {
    const std::vector<int64_t>& edges = r.config->position_buckets;
    const int64_t ctx = r.config->ctx;
    nlohmann::json out = nlohmann::json::array();
    for (size_t i = 0; i < a.buckets.size() && i < edges.size(); ++i) {
        const EvalBucket& b = a.buckets[i];
        if (b.n_all == 0) continue;
        const double nd = static_cast<double>(b.n_dec), na = static_cast<double>(b.n_all);
        const int64_t end = i + 1 < edges.size() ? std::min(edges[i + 1], ctx) : ctx;
        out.push_back({
            {"start", edges[i]},
            {"end", end},
            {"scored_decode", b.n_dec},
            {"scored_all", b.n_all},
            {"nll_mean", num(b.nll_dec / nd)},
            {"nll_mean_all", num(b.nll_all / na)},
            {"kl_mean", num(b.kl_dec / nd)},
            {"kl_mean_all", num(b.kl_all / na)},
            {"top1_agreement", num(static_cast<double>(b.top1_dec) / nd)},
            {"top1_agreement_all", num(static_cast<double>(b.top1_all) / na)},
        });
    }
    return out;
}

nlohmann::json figures(const EvalResult& r, const EvalAccum& a, const EvalAccum& ref) {
    const double n_dec = static_cast<double>(r.scored_decode), n_all = static_cast<double>(r.scored_all);
    const double T = static_cast<double>(r.config->n_tokens);
    const double ppl = std::exp(a.nll_dec / n_dec), ref_ppl = std::exp(ref.nll_dec / n_dec);
    const double elems = 2.0 * a.elements;
    return nlohmann::json{
        {"ppl", num(ppl)},
        {"ppl_all", num(std::exp(a.nll_all / n_all))},
        {"ppl_delta_pct", num(100.0 * (ppl / ref_ppl - 1.0))},
        {"nll_mean", num(a.nll_dec / n_dec)},
        {"kl_mean", num(a.kl_dec / n_dec)},
        {"kl_mean_all", num(a.kl_all / n_all)},
        {"top1_agreement", num(static_cast<double>(a.top1_dec) / n_dec)},
        {"top1_agreement_all", num(static_cast<double>(a.top1_all) / n_all)},
        {"bits_per_element", num(effective_bits(a.k_bits + a.v_bits, elems))},
        {"k_bits_per_element", num(effective_bits(a.k_bits, a.elements))},
        {"v_bits_per_element", num(effective_bits(a.v_bits, a.elements))},
        {"kv_bytes", num(a.kv_bytes_peak)},
        {"seconds", num(a.seconds)},
        {"seconds_per_token", num(a.seconds / T)},
        {"cpu_seconds", num(a.cpu)},
        {"cpu_seconds_per_token", num(a.cpu / T)},
        {"cost_vs_fp16", num(ratio(a.cpu, ref.cpu))},
        {"by_position", by_position(r, a)},
        {"wall_cost_vs_fp16", num(ratio(a.seconds, ref.seconds))},
    };
}

}  // namespace

nlohmann::json eval_report_json(const EvalResult& r) {
    const EvalConfig& c = *r.config;
    nlohmann::json report;
    report["format"] = kEvalReportFormat;
    report["version"] = kEvalReportVersion;
    report["provenance"] = provenance_json("eval", c.argv);
    report["provenance"].update({
        {"model", {{"file", c.model_path}, {"sha256", r.model_sha256}, {"name", r.model_name}}},
        {"texts", sources_json(r.sources)},
        {"settings",
         {{"tokens", c.n_tokens},
          {"ctx", c.ctx},
          {"prefill", c.prefill},
          {"prefill_rule", c.prefill >= 0 ? "min(n, prefill)" : "floor(n / 2 / 128) * 128"},
          {"keep_fp16_layers", c.keep_fp16_layers},
          {"seed", c.seed},
          {"bos_each_sequence", c.bos_each_sequence},
          {"position_buckets", c.position_buckets},
          {"kv", c.kv},
          {"engine", eval_attention_name(c.attention)}}},
    });
    report["model"] = r.model;
    report["run"] = {{"n_tokens", c.n_tokens},
                     {"n_sequences", r.n_sequences},
                     {"scored_decode", r.scored_decode},
                     {"scored_all", r.scored_all},
                     {"seconds", r.seconds},
                     {"compare_seconds", r.compare_seconds},
                     {"device", r.device},
                     {"engine", eval_attention_name(c.attention)}};
    report["reference"] = figures(r, r.reference, r.reference);
    report["reference"]["label"] = "fp16 (reference)";
    nlohmann::json methods = nlohmann::json::array();
    for (size_t v = 0; v < r.specs.size(); ++v) {
        const KvSpec& s = r.specs[v];
        nlohmann::json j = figures(r, r.methods[v], r.reference);
        j["spec"] = s.text;
        j["label"] = s.label();
        j["method"] = s.method_name;
        j["bits"] = s.bits;
        j["group"] = s.group;
        j["window"] = s.window;
        j["patterns"] = s.patterns;
        j["pattern_cap"] = s.pattern_cap;
        j["decode_assign"] = s.decode_l2 ? "l2" : "minmax";
        j["rotate"] = s.rotate;
        j["keys"] = s.keys_pre ? "pre" : "post";
        if (s.table) j["table"] = s.table_path;
        // Where the method's cache was: simulated on the device or the host, or held packed (--engine runtime).
        j["cache"] = r.methods[v].runtime ? "packed" : r.methods[v].cache_on_device ? "device" : "host";
        methods.push_back(j);
    }
    report["methods"] = methods;
    return report;
}

}  // namespace pkv
