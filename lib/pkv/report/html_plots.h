// pkv/report/html_plots.h — private to lib/pkv/report: the SVG figures of the HTML
// report. Each function returns an HTML fragment (one or more <figure> elements, or
// a <p> saying why there is nothing to draw). Undefined values (null, NaN, <= 0 on
// a log axis) are left out and counted in the caption.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace pkv::report_detail {

/// Two panels, K and V: mean NMSE (log y) against effective bits (log2-spaced x) of
/// every summary row, one line per (method, rotate), markers at each bits setting.
std::string figure_error_vs_bits(const nlohmann::json& report);

/// Layer x KV-head heatmaps of K and V NMSE for up to `max_maps` (method, bits,
/// rotate) combinations from the results (fp16 left out while others exist), all on
/// one log color scale drawn once as a legend.
std::string figure_heatmaps(const nlohmann::json& report, size_t max_maps = 12);

/// One overlaid step plot of raw vs residual counts per histogram entry (at most
/// `max_plots`).
std::string figure_histograms(const nlohmann::json& report, size_t max_plots = 24);

/// The color of a method's line: fixed for the known methods, from a palette otherwise.
std::string method_color(const std::string& method, size_t fallback_index);

}  // namespace pkv::report_detail
