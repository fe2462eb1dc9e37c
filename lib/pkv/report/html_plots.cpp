#include "pkv/report/html_plots.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "pkv/report/report_fields.h"
#include "pkv/report/svg.h"

namespace pkv::report_detail {

namespace {

using nlohmann::json;
using svg::xml_escape;

bool positive(std::optional<double> v) { return v && *v > 0; }

std::string figure(const std::string& svg_text, const std::string& caption = "") {
    if (caption.empty()) return "<figure>" + svg_text + "</figure>\n";
    return "<figure>" + svg_text + "<figcaption>" + xml_escape(caption) + "</figcaption></figure>\n";
}

std::string note(const std::string& message) { return "<p class=\"note\">" + xml_escape(message) + "</p>\n"; }

// ---- NMSE vs effective bits ------------------------------------------------------

struct Point {
    double x, y;
    int64_t bits;
};

struct Series {
    std::string method, label;
    bool rotate = false;
    std::vector<Point> k, v;
};

std::vector<double> bit_ticks(double lo, double hi) {
    std::vector<double> ticks;
    for (double t : {1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0})
        if (t >= lo && t <= hi) ticks.push_back(t);
    // A narrow range (one method family near one bit width) may hold none of the
    // round widths above; plain decimal ticks read better there.
    if (ticks.size() < 2) ticks = svg::nice_ticks(lo, hi, 4);
    return ticks;
}

std::string error_panel(const std::vector<Series>& series, bool want_v, double x_lo, double x_hi) {
    const double width = 580, height = 330;
    const double px0 = 68, px1 = 430, py0 = 34, py1 = 276;
    const char* tensor = want_v ? "V" : "K";
    double y_lo = INFINITY, y_hi = 0;
    for (const Series& s : series)
        for (const Point& p : want_v ? s.v : s.k) {
            y_lo = std::min(y_lo, p.y);
            y_hi = std::max(y_hi, p.y);
        }
    svg::Doc doc(width, height, fmt::format("{} NMSE vs effective bits", tensor));
    doc.text(px0, 20, fmt::format("{} reconstruction NMSE (mean over layers and heads)", tensor), "start", 13, "#111",
             0, "bold");
    if (!(y_hi > 0)) {
        doc.text((px0 + px1) / 2, (py0 + py1) / 2, "no positive finite values", "middle", 12, "#666");
        return doc.str();
    }
    svg::log_range(y_lo, y_hi);
    svg::LogScale xs{x_lo, x_hi, px0, px1};
    svg::LogScale ys{y_lo, y_hi, py1, py0};

    std::vector<double> xt = bit_ticks(x_lo, x_hi), yt = svg::log_ticks(y_lo, y_hi, 8);
    std::vector<double> xt_px, yt_px;
    std::vector<std::string> xt_text, yt_text;
    for (double t : xt) {
        xt_px.push_back(xs.map(t));
        xt_text.push_back(svg::format_tick(t));
    }
    for (double t : yt) {
        yt_px.push_back(ys.map(t));
        yt_text.push_back(svg::format_tick(t));
    }
    doc.rect(px0, py0, px1 - px0, py1 - py0, "#fcfcfc");
    doc.grid_vertical(xt_px, py0, py1);
    doc.grid_horizontal(yt_px, px0, px1);
    doc.axis_bottom(py1, px0, px1, xt_px, xt_text, "effective bits per element (log scale)");
    doc.axis_left(px0, py0, py1, yt_px, yt_text, "NMSE (log scale)");

    double legend_y = py0 + 4;
    for (size_t i = 0; i < series.size(); ++i) {
        const Series& s = series[i];
        const std::vector<Point>& pts = want_v ? s.v : s.k;
        std::string color = method_color(s.method, i);
        std::string dash = s.rotate ? "5 3" : "";
        std::vector<double> lx, ly;
        for (const Point& p : pts) {
            lx.push_back(xs.map(p.x));
            ly.push_back(ys.map(p.y));
        }
        doc.polyline(lx, ly, color, 1.8, dash);
        for (size_t j = 0; j < pts.size(); ++j) {
            std::string tip = fmt::format("{} {}-bit: {:.2f} effective bits, {} NMSE {:.3e}", s.label, pts[j].bits,
                                          pts[j].x, tensor, pts[j].y);
            doc.circle(lx[j], ly[j], 3.6, s.rotate ? "#ffffff" : color, color, tip);
        }
        // Legend on the right of the plot area: a line sample, a marker, the label.
        double lx0 = px1 + 18;
        doc.line(lx0, legend_y, lx0 + 22, legend_y, color, 1.8, dash);
        doc.circle(lx0 + 11, legend_y, 3.6, s.rotate ? "#ffffff" : color, color);
        doc.text(lx0 + 28, legend_y + 4, s.label, "start", 11);
        legend_y += 18;
    }
    return doc.str();
}

// ---- heatmaps --------------------------------------------------------------------

struct Combo {
    std::string method;
    int64_t bits;
    bool rotate;
    bool operator<(const Combo& o) const {
        return std::tie(method, bits, rotate) < std::tie(o.method, o.bits, o.rotate);
    }
};

// A sequential ramp from pale (small error) to dark (large error), interpolated in
// RGB between five hand-picked anchors.
std::string ramp_color(double t) {
    static const double anchors[5][3] = {{250, 244, 210}, {248, 190, 110}, {230, 112, 60}, {170, 36, 62}, {62, 12, 78}};
    t = std::clamp(t, 0.0, 1.0) * 4;
    int i = std::min(static_cast<int>(t), 3);
    double f = t - i;
    int rgb[3];
    for (int c = 0; c < 3; ++c)
        rgb[c] = static_cast<int>(std::lround(anchors[i][c] + (anchors[i + 1][c] - anchors[i][c]) * f));
    return fmt::format("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2]);
}

using CellMap = std::map<std::pair<int64_t, int64_t>, std::optional<double>>;

std::string heatmap_svg(const std::string& title, const std::vector<int64_t>& layers, const std::vector<int64_t>& heads,
                        const CellMap& k, const CellMap& v, const svg::LogScale& color) {
    const double L = static_cast<double>(layers.size()), H = static_cast<double>(heads.size());
    const double ch = std::clamp(260.0 / L, 4.0, 16.0), cw = std::clamp(108.0 / H, 10.0, 32.0);
    const double left = 44, top = 54, gap = 24;
    const double panel_w = left + H * cw + gap;
    const double width = 2 * panel_w + 4, height = top + L * ch + 34;
    svg::Doc doc(width, height, title);
    doc.text(4, 14, title, "start", 12, "#111", 0, "bold");
    const int label_every = static_cast<int>(std::ceil(11.0 / ch));
    for (int panel = 0; panel < 2; ++panel) {
        const CellMap& cells = panel == 0 ? k : v;
        const char* tensor = panel == 0 ? "K" : "V";
        double x0 = panel * panel_w + left;
        doc.text(x0 + H * cw / 2, top - 20, tensor, "middle", 12, "#111", 0, "bold");
        for (size_t c = 0; c < heads.size(); ++c)
            doc.text(x0 + (c + 0.5) * cw, top - 4, std::to_string(heads[c]), "middle", 9, "#333");
        for (size_t r = 0; r < layers.size(); ++r) {
            double y = top + r * ch;
            if (r % label_every == 0) doc.text(x0 - 5, y + ch / 2 + 3, std::to_string(layers[r]), "end", 9, "#333");
            for (size_t c = 0; c < heads.size(); ++c) {
                auto it = cells.find({layers[r], heads[c]});
                std::optional<double> val = it == cells.end() ? std::nullopt : it->second;
                std::string tip =
                    fmt::format("layer {}, KV head {}: {} NMSE {}", layers[r], heads[c], tensor, sci(val));
                std::string fill = "#d4d4d4";
                if (val && *val >= 0) {
                    double pos = color.map(std::max(*val, color.d0));
                    fill = ramp_color((pos - color.r0) / (color.r1 - color.r0));
                }
                doc.rect(x0 + c * cw, y, cw, ch, fill, "#ffffff", tip);
            }
        }
        doc.text(x0 + H * cw / 2, top + L * ch + 16, "KV head", "middle", 10, "#333");
        doc.text(x0 - 32, top + L * ch / 2, "layer", "middle", 10, "#333", -90);
    }
    return doc.str();
}

std::string color_legend(const svg::LogScale& color) {
    const double x0 = 20, x1 = 440, y0 = 24, bar_h = 16;
    svg::Doc doc(480, 78, "color scale: NMSE, log");
    doc.text(x0, 14, "NMSE (log color scale; gray: undefined)", "start", 11, "#111");
    const int steps = 84;
    for (int i = 0; i < steps; ++i) {
        double t0 = static_cast<double>(i) / steps;
        doc.rect(x0 + t0 * (x1 - x0), y0, (x1 - x0) / steps + 0.5, bar_h, ramp_color(t0 + 0.5 / steps));
    }
    svg::LogScale axis{color.d0, color.d1, x0, x1};
    std::vector<double> px;
    std::vector<std::string> labels;
    for (double t : svg::log_ticks(color.d0, color.d1, 10)) {
        px.push_back(axis.map(t));
        labels.push_back(svg::format_tick(t));
    }
    doc.axis_bottom(y0 + bar_h, x0, x1, px, labels, "");
    return doc.str();
}

// ---- histograms ------------------------------------------------------------------

std::vector<double> counts_of(const json& arr) {
    std::vector<double> out;
    if (!arr.is_array()) return out;
    for (const json& c : arr) {
        double d = c.is_number() ? c.get<double>() : 0;
        out.push_back(std::isfinite(d) && d > 0 ? d : 0);
    }
    return out;
}

void step_line(svg::Doc& doc, const std::vector<double>& counts, const svg::LinearScale& xs, const svg::LinearScale& ys,
               double lo, double hi, const std::string& color) {
    std::vector<double> px, py;
    double n = static_cast<double>(counts.size());
    px.push_back(xs.map(lo));
    py.push_back(ys.map(0));
    for (size_t i = 0; i < counts.size(); ++i) {
        double a = lo + (hi - lo) * i / n, b = lo + (hi - lo) * (i + 1) / n;
        px.push_back(xs.map(a));
        py.push_back(ys.map(counts[i]));
        px.push_back(xs.map(b));
        py.push_back(ys.map(counts[i]));
    }
    px.push_back(xs.map(hi));
    py.push_back(ys.map(0));
    doc.polyline(px, py, color, 1.5);
}

}  // namespace

std::string method_color(const std::string& method, size_t fallback_index) {
    static const std::map<std::string, std::string> known = {{"fp16", "#6b7280"},      {"kivi", "#2563eb"},
                                                             {"patternkv", "#dc2626"}, {"q4_0", "#16a34a"},
                                                             {"q8_0", "#9333ea"},      {"fp8", "#d97706"}};
    static const char* palette[] = {"#0891b2", "#be185d", "#4d7c0f", "#92400e", "#1e3a8a", "#0f766e"};
    auto it = known.find(method);
    return it != known.end() ? it->second : palette[fallback_index % 6];
}

std::string figure_error_vs_bits(const json& report) {
    const json& rows = field(report, "summary");
    if (!rows.is_array() || rows.empty()) return note("No summary rows to plot.");
    std::vector<Series> series;
    size_t skipped = 0;
    double x_lo = INFINITY, x_hi = 0;
    for (const json& row : rows) {
        std::string method = text(row, "method", "?");
        bool rotate = flag(row, "rotate");
        std::string label = method_label(method, rotate);
        auto it = std::find_if(series.begin(), series.end(), [&](const Series& s) { return s.label == label; });
        if (it == series.end()) {
            series.push_back(Series{method, label, rotate, {}, {}});
            it = series.end() - 1;
        }
        std::optional<double> x = number(row, "eff_bits"), k = number(row, "k_nmse"), v = number(row, "v_nmse");
        if (!positive(x)) {
            skipped += 2;
            continue;
        }
        x_lo = std::min(x_lo, *x);
        x_hi = std::max(x_hi, *x);
        int64_t bits = integer(row, "bits");
        if (positive(k)) it->k.push_back({*x, *k, bits});
        else ++skipped;
        if (positive(v)) it->v.push_back({*x, *v, bits});
        else ++skipped;
    }
    if (!(x_hi > 0)) return note("No summary row has a positive effective bit count to plot.");
    for (Series& s : series) {
        auto by_x = [](const Point& a, const Point& b) { return a.x < b.x; };
        std::sort(s.k.begin(), s.k.end(), by_x);
        std::sort(s.v.begin(), s.v.end(), by_x);
    }
    // Log spacing keeps 2..4 bits readable next to fp16's 16; the margin keeps end
    // markers off the frame.
    x_lo /= 1.15;
    x_hi *= 1.15;
    std::string caption =
        "Mean NMSE over all analysed layers and KV heads per method; dashed lines and hollow markers: with "
        "Hadamard rotation (+had). Hover a marker for its values.";
    if (skipped)
        caption +=
            fmt::format(" {} value(s) left out: undefined or zero (exact), which a log axis cannot show.", skipped);
    return "<div class=\"plots\">" + figure(error_panel(series, false, x_lo, x_hi)) +
           figure(error_panel(series, true, x_lo, x_hi)) + "</div>\n" + note(caption);
}

std::string figure_heatmaps(const json& report, size_t max_maps) {
    const json& results = field(report, "results");
    if (!results.is_array() || results.empty()) return note("No per-head results to draw.");
    std::vector<Combo> combos;
    std::set<Combo> seen;
    std::set<int64_t> layer_set, head_set;
    bool any_quantized = false;
    for (const json& r : results) {
        Combo c{text(r, "method", "?"), integer(r, "bits"), flag(r, "rotate")};
        if (seen.insert(c).second) combos.push_back(c);
        any_quantized |= c.method != "fp16";
        if (integer(r, "layer") >= 0) layer_set.insert(integer(r, "layer"));
        if (integer(r, "kv_head") >= 0) head_set.insert(integer(r, "kv_head"));
    }
    if (layer_set.empty() || head_set.empty()) return note("No result names a layer and a KV head.");
    // fp16 errors are rounding noise; while real quantizers are present their maps
    // say more.
    if (any_quantized)
        combos.erase(std::remove_if(combos.begin(), combos.end(), [](const Combo& c) { return c.method == "fp16"; }),
                     combos.end());
    size_t total = combos.size();
    if (combos.size() > max_maps) combos.resize(max_maps);

    std::map<Combo, std::pair<CellMap, CellMap>> cells;
    double lo = INFINITY, hi = 0;
    for (const json& r : results) {
        Combo c{text(r, "method", "?"), integer(r, "bits"), flag(r, "rotate")};
        if (std::find_if(combos.begin(), combos.end(), [&](const Combo& o) { return !(o < c) && !(c < o); }) ==
            combos.end())
            continue;
        std::pair<int64_t, int64_t> key{integer(r, "layer"), integer(r, "kv_head")};
        std::optional<double> k = number(field(r, "k"), "nmse"), v = number(field(r, "v"), "nmse");
        cells[c].first[key] = k;
        cells[c].second[key] = v;
        for (auto val : {k, v})
            if (positive(val)) {
                lo = std::min(lo, *val);
                hi = std::max(hi, *val);
            }
    }
    if (!(hi > 0)) return note("No positive finite NMSE among the results to color.");
    // The exact data range, not whole decades, so the ramp's full contrast goes to
    // differences that exist.
    if (hi <= lo * 1.01) {
        lo /= 1.5;
        hi *= 1.5;
    }
    svg::LogScale color{lo, hi, 0, 1};

    std::vector<int64_t> layers(layer_set.begin(), layer_set.end()), heads(head_set.begin(), head_set.end());
    std::string out = figure(color_legend(color), "Shared color scale of every heatmap below");
    out += "<div class=\"plots\">";
    for (const Combo& c : combos) {
        std::string title = fmt::format("{}, {} bits", method_label(c.method, c.rotate), c.bits);
        out += figure(heatmap_svg(title, layers, heads, cells[c].first, cells[c].second, color));
    }
    out += "</div>\n";
    if (total > combos.size())
        out += note(fmt::format("Showing the first {} of {} method/bits combinations.", combos.size(), total));
    return out;
}

std::string figure_histograms(const json& report, size_t max_plots) {
    const json& hists = field(report, "histograms");
    if (!hists.is_array() || hists.empty()) return note("The report holds no histograms.");
    std::string out = "<div class=\"plots\">";
    size_t drawn = 0, skipped = 0;
    for (const json& h : hists) {
        if (drawn == max_plots) break;
        std::optional<double> lo = number(h, "lo"), hi = number(h, "hi");
        std::vector<double> raw = counts_of(field(h, "raw")), resid = counts_of(field(h, "residual"));
        if (!lo || !hi || !(*hi > *lo) || (raw.empty() && resid.empty())) {
            ++skipped;
            continue;
        }
        double ymax = 0;
        for (double c : raw) ymax = std::max(ymax, c);
        for (double c : resid) ymax = std::max(ymax, c);
        double y_lo = 0, y_hi = ymax > 0 ? ymax : 1;
        svg::nice_range(y_lo, y_hi, 4);
        double x_lo = *lo, x_hi = *hi;

        std::string tensor = text(h, "tensor", "?");
        for (char& ch : tensor) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
        std::string title = fmt::format("layer {}, KV head {}, {}", integer(h, "layer"), integer(h, "kv_head"), tensor);
        const double px0 = 62, px1 = 392, py0 = 30, py1 = 178;
        svg::Doc doc(410, 226, title);
        doc.text(px0, 16, title, "start", 12, "#111", 0, "bold");
        svg::LinearScale xs{x_lo, x_hi, px0, px1}, ys{y_lo, y_hi, py1, py0};
        std::vector<double> xt_px, yt_px;
        std::vector<std::string> xt_text, yt_text;
        for (double t : svg::nice_ticks(x_lo, x_hi, 5)) {
            xt_px.push_back(xs.map(t));
            xt_text.push_back(svg::format_tick(t));
        }
        for (double t : svg::nice_ticks(y_lo, y_hi, 4)) {
            yt_px.push_back(ys.map(t));
            yt_text.push_back(svg::format_tick(t));
        }
        doc.grid_horizontal(yt_px, px0, px1);
        doc.axis_bottom(py1, px0, px1, xt_px, xt_text, "value");
        doc.axis_left(px0, py0, py1, yt_px, yt_text, "count");
        if (!raw.empty()) step_line(doc, raw, xs, ys, x_lo, x_hi, "#2563eb");
        if (!resid.empty()) step_line(doc, resid, xs, ys, x_lo, x_hi, "#ea580c");
        doc.line(px1 - 92, py0 + 6, px1 - 72, py0 + 6, "#2563eb", 2);
        doc.text(px1 - 66, py0 + 10, "raw", "start", 10);
        doc.line(px1 - 92, py0 + 22, px1 - 72, py0 + 22, "#ea580c", 2);
        doc.text(px1 - 66, py0 + 26, "residual", "start", 10);
        out += figure(doc.str());
        ++drawn;
    }
    out += "</div>\n";
    if (skipped) out += note(fmt::format("{} histogram(s) left out: no valid range or no counts.", skipped));
    if (hists.size() > drawn + skipped)
        out += note(fmt::format("Showing {} of {} histograms.", drawn, hists.size() - skipped));
    return out;
}

}  // namespace pkv::report_detail
