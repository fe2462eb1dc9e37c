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
    return out;
}

}  // namespace pkv
