// pkv/report/svg.h — a small SVG writer for the report plots: scales (linear and
// log10), "nice" tick positions, axes with labels, and shapes.
//
// Coordinates are SVG user units (pixels), origin top left, y growing downwards.
// Every text that reaches the document goes through xml_escape(). Coordinates must
// be finite: a NaN or infinity reaching the writer is a bug in the caller (the
// plots filter undefined metrics first) and throws ErrorCode::internal.
#pragma once

#include <string>
#include <vector>

namespace pkv::svg {

/// Replaces & < > " ' by their entities; valid in both text and attribute values.
std::string xml_escape(const std::string& text);

/// Compact label of a tick value: "0", "0.5", "12", "1e-3", "2.5e+04".
std::string format_tick(double v);

/// Maps [d0, d1] (data) to [r0, r1] (pixels) linearly; r1 < r0 is allowed (y axes).
struct LinearScale {
    double d0 = 0, d1 = 1, r0 = 0, r1 = 1;
    double map(double v) const;
};

/// Maps [d0, d1] (data, both > 0) to [r0, r1] (pixels) linearly in log10(v).
/// Values <= 0 are clamped to d0.
struct LogScale {
    double d0 = 1, d1 = 10, r0 = 0, r1 = 1;
    double map(double v) const;
};

/// Tick values covering [lo, hi] with a step of 1, 2 or 5 times a power of ten, so
/// that there are at most about `target` of them; lo == hi gives one tick.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);
/// Widens [lo, hi] outwards to multiples of the step nice_ticks() would choose.
void nice_range(double& lo, double& hi, int target = 6);

/// Ticks for a log10 axis over [lo, hi] (lo > 0): whole decades, thinned to at most
/// `target`; when the range holds fewer than two decades, 2x and 5x are added.
std::vector<double> log_ticks(double lo, double hi, int target = 8);
/// Widens [lo, hi] (lo > 0) outwards to whole decades.
void log_range(double& lo, double& hi);

/// An SVG document built as text. Calls append elements in order; str() closes it.
class Doc {
public:
    /// A <svg> of width x height; `label` becomes its aria-label and <title>.
    Doc(double width, double height, const std::string& label);

    double width() const { return width_; }
    double height() const { return height_; }

    /// Rectangle; `fill`/`stroke` are CSS colors ("none" allowed); `tooltip`, when
    /// not empty, becomes a <title> child shown on hover.
    void rect(double x, double y, double w, double h, const std::string& fill, const std::string& stroke = "none",
              const std::string& tooltip = "");
    void line(double x1, double y1, double x2, double y2, const std::string& stroke, double stroke_width = 1,
              const std::string& dash = "");
    /// Open polyline through the points xs[i], ys[i] (same length).
    void polyline(const std::vector<double>& xs, const std::vector<double>& ys, const std::string& stroke,
                  double stroke_width = 1.5, const std::string& dash = "");
    void circle(double cx, double cy, double r, const std::string& fill, const std::string& stroke = "none",
                const std::string& tooltip = "");
    /// Text at (x, y) (the baseline); anchor is "start", "middle" or "end";
    /// rotate_deg turns it about (x, y).
    void text(double x, double y, const std::string& content, const std::string& anchor = "start", double size = 11,
              const std::string& fill = "#222", double rotate_deg = 0, const std::string& weight = "normal");

    /// Bottom axis at pixel row y from pixel x0 to x1: the line, a tick and a label
    /// at each pixel position tick_px[i] with text tick_text[i], and `label` centred
    /// below. Left axis likewise at column x from y0 to y1, label rotated.
    void axis_bottom(double y, double x0, double x1, const std::vector<double>& tick_px,
                     const std::vector<std::string>& tick_text, const std::string& label);
    void axis_left(double x, double y0, double y1, const std::vector<double>& tick_px,
                   const std::vector<std::string>& tick_text, const std::string& label);
    /// Light grid lines across the plot area at the given pixel positions.
    void grid_vertical(const std::vector<double>& x_px, double y0, double y1);
    void grid_horizontal(const std::vector<double>& y_px, double x0, double x1);

    /// The finished document.
    std::string str() const;

private:
    double width_, height_;
    std::string body_;
};

}  // namespace pkv::svg
