#include <string>
#include <vector>

#include <fmt/format.h>

#include "pkv/core/error.h"
#include "pkv/report/html_plots.h"
#include "pkv/report/report.h"
#include "pkv/report/report_fields.h"
#include "pkv/report/svg.h"

namespace pkv {

namespace {

using nlohmann::json;
using namespace report_detail;
using svg::xml_escape;

// The page must render offline and identically everywhere: system fonts only, no
// scripts, and colors that survive printing.
const char* const kStyle = R"(
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 24px auto;
       max-width: 1320px; padding: 0 16px; color: #1f2328; background: #ffffff; line-height: 1.4; }
h1 { font-size: 1.6em; margin: 0 0 4px 0; }
h2 { font-size: 1.25em; margin: 28px 0 10px 0; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
header p { margin: 2px 0 10px 0; color: #57606a; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0; font-size: 0.92em; }
dl.prov dt { font-weight: 600; color: #57606a; }
dl.prov dd { margin: 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace; overflow-wrap: anywhere; }
table { border-collapse: collapse; font-size: 0.92em; margin: 6px 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 9px; }
th { background: #f3f5f7; text-align: left; }
td.num { text-align: right; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
tr:nth-child(even) td { background: #fafbfc; }
.plots { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; padding: 8px; border: 1px solid #e1e4e8; border-radius: 6px; background: #ffffff; }
figcaption { font-size: 0.85em; color: #57606a; margin-top: 4px; }
p.note { font-size: 0.88em; color: #57606a; }
ul.warnings li { color: #9a6700; }
)";

std::string esc(const std::string& s) { return xml_escape(s); }

std::string num_cell(const std::string& s) { return "<td class=\"num\">" + esc(s) + "</td>"; }

std::string bits_text(const json& row) {
    int64_t b = integer(row, "bits");
    return b < 0 ? "n/a" : std::to_string(b);
}

std::string header(const json& report) {
    const json& prov = field(report, "provenance");
    const json& model = field(report, "model");
    const json& settings = field(report, "settings");
    const json& dump = field(prov, "dump");
    std::string out = "<header><h1>pkv analyze: " + esc(text(model, "name", "unnamed model")) + "</h1>\n";
    out += "<p>" + esc(provenance_line(report)) + "</p>\n<dl class=\"prov\">";
    auto item = [&](const std::string& key, const std::string& value) {
        out += "<dt>" + esc(key) + "</dt><dd>" + esc(value) + "</dd>";
    };
    item("command", display(field(prov, "argv")));
    if (text(dump, "source") == "model") item("streamed from", text(dump, "path", "n/a"));
    else item("dump", text(dump, "path", "n/a"));
    const json& dump_model = field(dump, "model");
    if (dump_model.is_object() && !text(dump_model, "sha256").empty())
        item("model file", text(dump_model, "file", "?") + " (sha256 " + text(dump_model, "sha256") + ")");
    item("model", fmt::format("{} layers, {} heads, {} KV heads, head_dim {}", integer(model, "n_layer"),
                              integer(model, "n_head"), integer(model, "n_head_kv"), integer(model, "head_dim")));
    item("tokens", std::to_string(integer(report, "n_tokens")));
    if (settings.is_object())
        for (auto it = settings.begin(); it != settings.end(); ++it) item("settings." + it.key(), display(it.value()));
    out += "</dl></header>\n";
    return out;
}

std::string summary_table(const json& report) {
    const json& rows = field(report, "summary");
    std::string out = "<section id=\"summary\"><h2>Summary</h2>\n";
    if (!rows.is_array() || rows.empty()) return out + "<p class=\"note\">No summary rows.</p></section>\n";
    out +=
        "<p class=\"note\">Means over the analysed layers and KV heads. NMSE: squared reconstruction error over "
        "signal energy. KL: attention-score divergence in nats. Effective bits count every overhead.</p>\n";
    out +=
        "<table><thead><tr><th>method</th><th>bits</th><th>eff bits</th><th>K NMSE</th><th>V NMSE</th>"
        "<th>attn KL</th><th>attn out rel err</th></tr></thead><tbody>\n";
    for (const json& row : rows) {
        out += "<tr><td>" + esc(method_label(text(row, "method", "?"), flag(row, "rotate"))) + "</td>" +
               num_cell(bits_text(row)) + num_cell(fixed(number(row, "eff_bits"))) +
               num_cell(sci(number(row, "k_nmse"))) + num_cell(sci(number(row, "v_nmse"))) +
               num_cell(sci(number(row, "attn_kl"))) + num_cell(sci(number(row, "attn_out_rel_err"))) + "</tr>\n";
    }
    return out + "</tbody></table></section>\n";
}

// Only for reports with local sliding-window layers: the summary per layer kind.
std::string layer_kinds_section(const json& report) {
    const json& kinds = layer_kinds(report);
    if (kinds.is_null()) return "";
    std::string out = "<section id=\"layer-kinds\"><h2>Local and global layers</h2>\n";
    out +=
        "<p class=\"note\">Means over the KV heads of each kind of layer. Local layers attend to their sliding "
        "window only and cache that many tokens. Range/std and kurtosis cells read raw \u2192 residual "
        "(after pattern alignment; n/a for methods without patterns).</p>\n";
    for (bool local : {true, false}) {
        out += "<h3>" + esc(kind_heading(kinds, local)) + "</h3>\n";
        const json& rows = field(field(kinds, local ? "local" : "global"), "summary");
        if (!rows.is_array() || rows.empty()) {
            out += "<p>No analysed layers of this kind.</p>\n";
            continue;
        }
        out += "<table><thead><tr>";
        for (const std::string& c : kind_columns()) out += "<th>" + esc(c) + "</th>";
        out += "</tr></thead><tbody>\n";
        for (const json& row : rows) {
            const std::vector<std::string> cells = kind_cells(row);
            out += "<tr><td>" + esc(cells[0]) + "</td>";
            for (size_t c = 1; c < cells.size(); ++c) out += num_cell(cells[c]);
            out += "</tr>\n";
        }
        out += "</tbody></table>\n";
    }
    return out + "</section>\n";
}

std::string fragile_section(const json& report) {
    const json& fragile = field(report, "fragile");
    const json& heads = field(fragile, "heads");
    std::string out = "<section id=\"fragile\"><h2>Fragile heads</h2>\n";
    std::string rule = text(fragile, "rule");
    if (!rule.empty()) out += "<p>Rule: " + esc(rule) + "</p>\n";
    if (!heads.is_array() || heads.empty()) {
        out += "<p>None flagged.</p>\n";
    } else {
        out +=
            "<table><thead><tr><th>layer</th><th>KV head</th><th>method</th><th>bits</th><th>K NMSE</th>"
            "<th>score</th></tr></thead><tbody>\n";
        for (const json& h : heads) {
            out += "<tr>" + num_cell(layer_with_kind(report, h)) + num_cell(std::to_string(integer(h, "kv_head"))) +
                   "<td>" + esc(method_label(text(h, "method", "?"), flag(h, "rotate"))) + "</td>" +
                   num_cell(bits_text(h)) + num_cell(sci(number(h, "k_nmse"))) + num_cell(fixed(number(h, "score"))) +
                   "</tr>\n";
        }
        out += "</tbody></table>\n";
    }
    const json& keep = field(fragile, "keep_fp16_layers");
    out += "<p><strong>Suggested layers to keep in fp16:</strong> " +
           esc(keep.is_array() && !keep.empty() ? display(keep) : std::string("none")) + "</p>\n";
    return out + "</section>\n";
}

std::string warnings_section(const json& report) {
    const json& warnings = field(report, "warnings");
    std::string out = "<section id=\"warnings\"><h2>Warnings</h2>\n";
    if (!warnings.is_array() || warnings.empty()) return out + "<p>None.</p></section>\n";
    out += "<ul class=\"warnings\">";
    for (const json& w : warnings) out += "<li>" + esc(display(w)) + "</li>";
    return out + "</ul></section>\n";
}

}  // namespace

std::string render_html(const json& report) {
    PKV_CHECK(report.is_object(), invalid_argument, "report: expected a JSON object, got {}", report.type_name());
    std::string title = "pkv analyze: " + text(field(report, "model"), "name", "report");
    std::string out =
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>"
        "<title>" +
        esc(title) + "</title><style>" + kStyle + "</style></head>\n<body>\n";
    out += header(report);
    out += summary_table(report);
    out += layer_kinds_section(report);
    out += "<section id=\"error-vs-bits\"><h2>NMSE vs effective bits</h2>\n" + figure_error_vs_bits(report) +
           "</section>\n";
    out += "<section id=\"heatmaps\"><h2>Per-layer and per-head NMSE</h2>\n" + figure_heatmaps(report) + "</section>\n";
    out +=
        "<section id=\"histograms\"><h2>Raw vs residual distributions</h2>\n"
        "<p class=\"note\">Values of one layer and KV head before (raw) and after (residual) pattern alignment, "
        "over the same equal-width bins.</p>\n" +
        figure_histograms(report) + "</section>\n";
    out += fragile_section(report);
    out += warnings_section(report);
    out += "</body></html>\n";
    return out;
}

}  // namespace pkv
