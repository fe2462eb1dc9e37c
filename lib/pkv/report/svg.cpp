#include "pkv/report/svg.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "pkv/core/error.h"

namespace pkv::svg {

namespace {

// Two decimals are finer than any screen pixel; trailing zeros are dropped to keep
// the page small when a plot has thousands of cells.
std::string num(double v) {
    PKV_ASSERT(std::isfinite(v));
    std::string s = fmt::format("{:.2f}", v);
    while (!s.empty() && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
    if (s == "-0") s = "0";
    return s;
}

std::string dash_attr(const std::string& dash) {
    return dash.empty() ? std::string() : fmt::format(" stroke-dasharray=\"{}\"", xml_escape(dash));
}

std::string title_child(const std::string& tooltip) {
    return tooltip.empty() ? std::string() : "<title>" + xml_escape(tooltip) + "</title>";
}

double step_for(double span, int target) {
    double raw = span / std::max(target, 1);
    double mag = std::pow(10.0, std::floor(std::log10(raw)));
    double f = raw / mag;
    double nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
    return nice * mag;
}

}  // namespace

std::string xml_escape(const std::string& text) {
    std::string out;
    out.reserve(text.size());
    for (char c : text) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&quot;"; break;
            case '\'': out += "&#39;"; break;
            default: out += c;
        }
    }
    return out;
}

std::string format_tick(double v) {
    if (!std::isfinite(v)) return "?";
    if (v == 0) return "0";
    double a = std::fabs(v);
    if (a >= 1e-3 && a < 1e5) return fmt::format("{:.6g}", v);
    int e = static_cast<int>(std::floor(std::log10(a)));
    double m = v / std::pow(10.0, e);
    // Round the mantissa to two significant digits; 9.96 would otherwise print as 10e-3.
    m = std::round(m * 10) / 10;
    if (std::fabs(m) >= 10) {
        m /= 10;
        ++e;
    }
    return fmt::format("{:g}e{}", m, e);
}

double LinearScale::map(double v) const {
    if (d1 == d0) return (r0 + r1) / 2;
    return r0 + (v - d0) / (d1 - d0) * (r1 - r0);
}

double LogScale::map(double v) const {
    double l0 = std::log10(d0), l1 = std::log10(d1);
    double lv = std::log10(std::max(v, d0));
    if (l1 == l0) return (r0 + r1) / 2;
    return r0 + (lv - l0) / (l1 - l0) * (r1 - r0);
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
    if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
    if (hi < lo) std::swap(lo, hi);
    if (hi == lo) return {lo};
    double step = step_for(hi - lo, target);
    std::vector<double> ticks;
    for (double k = std::ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k += 1) {
        double t = k * step;
        // k * step leaves rounding noise such as 1e-17 where the tick is zero.
        if (std::fabs(t) < step * 1e-9) t = 0;
        ticks.push_back(t);
    }
    return ticks;
}

void nice_range(double& lo, double& hi, int target) {
    if (!std::isfinite(lo) || !std::isfinite(hi)) return;
    if (hi < lo) std::swap(lo, hi);
    if (hi == lo) {
        double pad = lo == 0 ? 1 : std::fabs(lo) * 0.1;
        lo -= pad;
        hi += pad;
    }
    double step = step_for(hi - lo, target);
    lo = std::floor(lo / step + 1e-9) * step;
    hi = std::ceil(hi / step - 1e-9) * step;
}

std::vector<double> log_ticks(double lo, double hi, int target) {
    if (!(lo > 0) || !(hi > 0) || !std::isfinite(lo) || !std::isfinite(hi)) return {};
    if (hi < lo) std::swap(lo, hi);
    int d_lo = static_cast<int>(std::ceil(std::log10(lo) - 1e-9));
    int d_hi = static_cast<int>(std::floor(std::log10(hi) + 1e-9));
    std::vector<double> ticks;
    int n = d_hi - d_lo + 1;
    if (n >= 2) {
        int every = (n + target - 1) / std::max(target, 1);
        for (int d = d_lo; d <= d_hi; d += every) ticks.push_back(std::pow(10.0, d));
        return ticks;
    }
    for (int d = d_lo - 1; d <= d_hi + 1; ++d) {
        for (double m : {1.0, 2.0, 5.0}) {
            double t = m * std::pow(10.0, d);
            if (t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9)) ticks.push_back(t);
        }
    }
    return ticks;
}

void log_range(double& lo, double& hi) {
    if (!(lo > 0) || !(hi > 0)) return;
    if (hi < lo) std::swap(lo, hi);
    lo = std::pow(10.0, std::floor(std::log10(lo) + 1e-9));
    hi = std::pow(10.0, std::ceil(std::log10(hi) - 1e-9));
    if (hi <= lo) hi = lo * 10;
}

Doc::Doc(double width, double height, const std::string& label) : width_(width), height_(height) {
    body_ = fmt::format(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
        "role=\"img\" aria-label=\"{2}\" font-family=\"sans-serif\"><title>{2}</title>",
        num(width), num(height), xml_escape(label));
}

void Doc::rect(double x, double y, double w, double h, const std::string& fill, const std::string& stroke,
               const std::string& tooltip) {
    std::string head = fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"", num(x), num(y),
                                   num(std::max(w, 0.0)), num(std::max(h, 0.0)), xml_escape(fill));
    if (stroke != "none") head += fmt::format(" stroke=\"{}\"", xml_escape(stroke));
    body_ += tooltip.empty() ? head + "/>" : head + ">" + title_child(tooltip) + "</rect>";
}

void Doc::line(double x1, double y1, double x2, double y2, const std::string& stroke, double stroke_width,
               const std::string& dash) {
    body_ += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"{}\"{}/>", num(x1),
                         num(y1), num(x2), num(y2), xml_escape(stroke), num(stroke_width), dash_attr(dash));
}

void Doc::polyline(const std::vector<double>& xs, const std::vector<double>& ys, const std::string& stroke,
                   double stroke_width, const std::string& dash) {
    PKV_ASSERT(xs.size() == ys.size());
    if (xs.empty()) return;
    std::string pts;
    for (size_t i = 0; i < xs.size(); ++i) {
        if (i) pts += ' ';
        pts += num(xs[i]) + "," + num(ys[i]);
    }
    body_ += fmt::format(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" stroke-linejoin=\"round\"{}/>", pts,
        xml_escape(stroke), num(stroke_width), dash_attr(dash));
}

void Doc::circle(double cx, double cy, double r, const std::string& fill, const std::string& stroke,
                 const std::string& tooltip) {
    std::string head =
        fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{}\"", num(cx), num(cy), num(r), xml_escape(fill));
    if (stroke != "none") head += fmt::format(" stroke=\"{}\"", xml_escape(stroke));
    body_ += tooltip.empty() ? head + "/>" : head + ">" + title_child(tooltip) + "</circle>";
}

void Doc::text(double x, double y, const std::string& content, const std::string& anchor, double size,
               const std::string& fill, double rotate_deg, const std::string& weight) {
    std::string transform = rotate_deg == 0
                                ? std::string()
                                : fmt::format(" transform=\"rotate({} {} {})\"", num(rotate_deg), num(x), num(y));
    std::string bold = weight == "normal" ? std::string() : fmt::format(" font-weight=\"{}\"", xml_escape(weight));
    body_ +=
        fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"{}\" font-size=\"{}\" fill=\"{}\"{}{}>{}</text>", num(x),
                    num(y), xml_escape(anchor), num(size), xml_escape(fill), transform, bold, xml_escape(content));
}

void Doc::axis_bottom(double y, double x0, double x1, const std::vector<double>& tick_px,
                      const std::vector<std::string>& tick_text, const std::string& label) {
    PKV_ASSERT(tick_px.size() == tick_text.size());
    line(x0, y, x1, y, "#444");
    for (size_t i = 0; i < tick_px.size(); ++i) {
        line(tick_px[i], y, tick_px[i], y + 5, "#444");
        text(tick_px[i], y + 17, tick_text[i], "middle", 10, "#333");
    }
    if (!label.empty()) text((x0 + x1) / 2, y + 34, label, "middle", 12, "#111");
}

void Doc::axis_left(double x, double y0, double y1, const std::vector<double>& tick_px,
                    const std::vector<std::string>& tick_text, const std::string& label) {
    PKV_ASSERT(tick_px.size() == tick_text.size());
    line(x, y0, x, y1, "#444");
    for (size_t i = 0; i < tick_px.size(); ++i) {
        line(x - 5, tick_px[i], x, tick_px[i], "#444");
        text(x - 8, tick_px[i] + 3.5, tick_text[i], "end", 10, "#333");
    }
    if (!label.empty()) text(x - 46, (y0 + y1) / 2, label, "middle", 12, "#111", -90);
}

void Doc::grid_vertical(const std::vector<double>& x_px, double y0, double y1) {
    for (double x : x_px) line(x, y0, x, y1, "#e4e4e4");
}

void Doc::grid_horizontal(const std::vector<double>& y_px, double x0, double x1) {
    for (double y : y_px) line(x0, y, x1, y, "#e4e4e4");
}

std::string Doc::str() const { return body_ + "</svg>"; }

}  // namespace pkv::svg
