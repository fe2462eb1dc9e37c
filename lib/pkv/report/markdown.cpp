#include <string>
#include <vector>

#include <fmt/format.h>

#include "pkv/core/error.h"
#include "pkv/report/report.h"
#include "pkv/report/report_fields.h"

namespace pkv {

namespace {

using nlohmann::json;
using namespace report_detail;

// Inside a table cell a '|' would end the cell and a newline the row.
std::string cell(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '|') out += "\\|";
        else if (c == '\n' || c == '\r') out += ' ';
        else out += c;
    }
    return out;
}

std::string one_line(const std::string& s) {
    std::string out = s;
    for (char& c : out)
        if (c == '\n' || c == '\r') c = ' ';
    return out;
}

std::string bits_label(const json& row) {
    int64_t b = integer(row, "bits");
    return b < 0 ? "n/a" : std::to_string(b);
}

void summary_table(const json& report, std::string& out) {
    const json& rows = field(report, "summary");
    out += "## Summary\n\n";
    if (!rows.is_array() || rows.empty()) {
        out += "No summary rows.\n\n";
        return;
    }
    out += "Means over the analysed layers and KV heads.\n\n";
    out += "| method | bits | eff bits | K NMSE | V NMSE | attn KL | attn out rel err |\n";
    out += "|---|--:|--:|--:|--:|--:|--:|\n";
    for (const json& row : rows) {
        out += fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n",
                           cell(method_label(text(row, "method", "?"), flag(row, "rotate"))), bits_label(row),
                           fixed(number(row, "eff_bits")), sci(number(row, "k_nmse")), sci(number(row, "v_nmse")),
                           sci(number(row, "attn_kl")), sci(number(row, "attn_out_rel_err")));
    }
    out += "\n";
}

// Only for reports with local sliding-window layers: the summary per layer kind.
void layer_kinds_section(const json& report, std::string& out) {
    const json& kinds = layer_kinds(report);
    if (kinds.is_null()) return;
    out += "## Local and global layers\n\n";
    out +=
        "Means over the KV heads of each kind of layer. Range/std and kurtosis cells read raw \u2192 "
        "residual (after pattern alignment; n/a for methods without patterns).\n\n";
    const std::vector<std::string>& columns = kind_columns();
    for (bool local : {true, false}) {
        out += "### " + one_line(kind_heading(kinds, local)) + "\n\n";
        const json& rows = field(field(kinds, local ? "local" : "global"), "summary");
        if (!rows.is_array() || rows.empty()) {
            out += "No analysed layers of this kind.\n\n";
            continue;
        }
        std::string head = "|", rule = "|";
        for (size_t c = 0; c < columns.size(); ++c) {
            head += " " + columns[c] + " |";
            rule += c == 0 ? "---|" : "--:|";
        }
        out += head + "\n" + rule + "\n";
        for (const json& row : rows) {
            out += "|";
            for (const std::string& c : kind_cells(row)) out += " " + cell(c) + " |";
            out += "\n";
        }
        out += "\n";
    }
}

void fragile_section(const json& report, std::string& out) {
    const json& fragile = field(report, "fragile");
    const json& heads = field(fragile, "heads");
    out += "## Fragile heads\n\n";
    std::string rule = text(fragile, "rule");
    if (!rule.empty()) out += "Rule: " + one_line(rule) + "\n\n";
    if (!heads.is_array() || heads.empty()) {
        out += "None flagged.\n\n";
    } else {
        out += "| layer | KV head | method | bits | K NMSE | score |\n";
        out += "|--:|--:|---|--:|--:|--:|\n";
        for (const json& h : heads) {
            out += fmt::format("| {} | {} | {} | {} | {} | {} |\n", layer_with_kind(report, h), integer(h, "kv_head"),
                               cell(method_label(text(h, "method", "?"), flag(h, "rotate"))), bits_label(h),
                               sci(number(h, "k_nmse")), fixed(number(h, "score")));
        }
        out += "\n";
    }
    const json& keep = field(fragile, "keep_fp16_layers");
    if (keep.is_array() && !keep.empty()) out += "Suggested fp16 layers: " + display(keep) + "\n\n";
    else out += "Suggested fp16 layers: none\n\n";
}

}  // namespace

std::string render_markdown(const json& report) {
    PKV_CHECK(report.is_object(), invalid_argument, "report: expected a JSON object, got {}", report.type_name());
    std::string out = "# pkv analyze report\n\n";

    const json& model = field(report, "model");
    const json& settings = field(report, "settings");
    const json& dump = field(field(report, "provenance"), "dump");
    out += provenance_line(report) + "\n";
    std::string dump_path = text(dump, "path");
    // 1.2: activations streamed from the model (analyze --model) name the model, not a dump.
    const bool streamed = text(dump, "source") == "model";
    if (!dump_path.empty()) out += (streamed ? "streamed from: " : "dump: ") + one_line(dump_path) + "\n";
    // 1.3: attention scored off the CPU (its figures agree with the CPU's to a tolerance).
    const std::string device = text(field(report, "provenance"), "device");
    if (!device.empty() && device != "cpu") out += "attention metrics scored on: " + one_line(device) + "\n";
    const std::string sim_device = text(field(report, "provenance"), "sim_device");
    if (!sim_device.empty() && sim_device != "cpu") out += "caches simulated on: " + one_line(sim_device) + "\n";
    out += fmt::format("model: {} ({} layers, {} heads, {} KV heads, head_dim {}), {} tokens\n",
                       one_line(text(model, "name", "?")), integer(model, "n_layer"), integer(model, "n_head"),
                       integer(model, "n_head_kv"), integer(model, "head_dim"), integer(report, "n_tokens"));
    std::string keys = text(settings, "keys");
    out += fmt::format("settings: keys {}-RoPE, group {}, window {}\n\n", keys.empty() ? "?" : one_line(keys),
                       integer(settings, "group"), integer(settings, "window"));

    summary_table(report, out);
    layer_kinds_section(report, out);
    fragile_section(report, out);

    const json& warnings = field(report, "warnings");
    if (warnings.is_array() && !warnings.empty()) {
        out += "## Warnings\n\n";
        for (const json& w : warnings) out += "- " + one_line(display(w)) + "\n";
        out += "\n";
    }
    return out;
}

}  // namespace pkv
