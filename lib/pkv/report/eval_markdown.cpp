// The Markdown table of a `pkv eval` report (JSON layout in docs/eval.md).
#include <string>

#include <fmt/format.h>

#include "pkv/report/report.h"

namespace pkv {

namespace {

std::string fixed(const nlohmann::json& v, int digits, double scale = 1.0) {
    if (!v.is_number()) return "n/a";
    return fmt::format("{:.{}f}", v.get<double>() * scale, digits);
}

std::string sci(const nlohmann::json& v) {
    if (!v.is_number()) return "n/a";
    return fmt::format("{:.3e}", v.get<double>());
}

std::string row(const std::string& label, const nlohmann::json& f) {
    return fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", label,
                       fixed(f["bits_per_element"], 2), fixed(f["kv_bytes"], 2, 1.0 / (1024.0 * 1024.0)),
                       fixed(f["ppl"], 4), fixed(f["ppl_all"], 4), fixed(f["ppl_delta_pct"], 2), sci(f["kl_mean"]),
                       fixed(f["top1_agreement"], 2, 100.0), fixed(f["cpu_seconds_per_token"], 3, 1000.0),
                       fixed(f["cost_vs_fp16"], 2),
                       fixed(f["k_bits_per_element"], 2) + " / " + fixed(f["v_bits_per_element"], 2));
}

// The reference's NLL over the decode positions of the bucket that starts at `start`.
nlohmann::json reference_nll(const nlohmann::json& r, const nlohmann::json& start) {
    if (!r.contains("reference") || !r["reference"].is_object()) return nullptr;
    const nlohmann::json& ref = r["reference"];
    if (!ref.contains("by_position") || !ref["by_position"].is_array()) return nullptr;
    for (const auto& b : ref["by_position"])
        if (b.is_object() && b.value("start", nlohmann::json()) == start) return b.value("nll_mean", nlohmann::json());
    return nullptr;
}

std::string integer(const nlohmann::json& b, const char* key) {
    return b.contains(key) && b[key].is_number_integer() ? std::to_string(b[key].get<int64_t>()) : std::string("n/a");
}

// One small table per method with position buckets (1.2 on); nothing for older reports.
std::string position_tables(const nlohmann::json& r) {
    std::string out;
    const nlohmann::json none;
    for (const auto& m : r["methods"]) {
        if (!m.is_object() || !m.contains("by_position") || !m["by_position"].is_array() || m["by_position"].empty())
            continue;
        out += fmt::format("\n### {} by position\n\n", m.value("label", std::string("?")));
        out +=
            "| positions | scored (decode / all) | NLL | NLL fp16 | mean KL | top-1 % | mean KL (all) | top-1 % (all) "
            "|\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
        for (const auto& b : m["by_position"]) {
            if (!b.is_object()) continue;
            out += fmt::format("| {}–{} | {} / {} | {} | {} | {} | {} | {} | {} |\n", integer(b, "start"),
                               integer(b, "end"), integer(b, "scored_decode"), integer(b, "scored_all"),
                               fixed(b.value("nll_mean", none), 4), fixed(reference_nll(r, b.value("start", none)), 4),
                               sci(b.value("kl_mean", none)), fixed(b.value("top1_agreement", none), 2, 100.0),
                               sci(b.value("kl_mean_all", none)), fixed(b.value("top1_agreement_all", none), 2, 100.0));
        }
    }
    if (!out.empty())
        out +=
            "\nPositions: the query's position t within its sequence, buckets [start, end); NLL (nats), mean KL and "
            "top-1 over the bucket's decode positions (n/a when all of it lies in the prefill), (all) over every "
            "position.\n";
    return out;
}

}  // namespace

std::string render_eval_markdown(const nlohmann::json& r) {
    const auto& run = r["run"];
    const auto& set = r["provenance"]["settings"];
    std::string out = fmt::format("# pkv eval: {}\n\n", r["model"].value("name", std::string("model")));
    out += fmt::format(
        "{} tokens in {} sequences of up to {} tokens; prefill {}; scored: {} decode positions ({} in all); "
        "keep-fp16 layers: {}.\n\n",
        run["n_tokens"].get<int64_t>(), run["n_sequences"].get<int64_t>(), set["ctx"].get<int>(),
        set["prefill"].get<int64_t>() >= 0 ? std::to_string(set["prefill"].get<int64_t>()) + " tokens"
                                           : std::string("half of each sequence, a multiple of 128"),
        run["scored_decode"].get<int64_t>(), run["scored_all"].get<int64_t>(),
        set["keep_fp16_layers"].empty() ? std::string("none") : set["keep_fp16_layers"].dump());
    out +=
        "| method | bits/elem | KV MiB | PPL | PPL (all) | ΔPPL % | mean KL | top-1 % | CPU ms/tok | cost × fp16 | "
        "K / V bits |\n";
    out += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    out += row(r["reference"].value("label", std::string("fp16")), r["reference"]);
    for (const auto& m : r["methods"]) out += row(m.value("label", std::string("?")), m);
    out += fmt::format(
        "\nPPL, mean KL(fp16 ‖ method) and top-1 agreement over decode positions; PPL (all) over every position. "
        "KV MiB: final cache of the longest sequence (all layers, K and V). CPU ms/tok: CPU time of the forward "
        "pass per token, all threads (the shared output projection, {:.1f} s in all, excluded); cost × fp16: its ratio "
        "to the reference's; total {:.1f} s wall.\n",
        run["compare_seconds"].get<double>(), run["seconds"].get<double>());
    if (run.value("engine", std::string("host")) == "runtime")
        out +=
            "\nEngine: runtime. Each method's attention was computed by the packed cache (append, flush and "
            "decode_attention_ref of pkv/runtime/packed_cache.h), not by the model over the simulated cache.\n";
    out += position_tables(r);
    return out;
}

}  // namespace pkv
