// pkv/report/report.h — renders a `pkv analyze` report (format pkv.analyze_report,
// docs/formats/report.md, schemas/report.schema.json) for people to read.
//
// Both renderers only read the JSON document; they compute no metric. They are
// lenient: a field that is missing, null, of the wrong type or not finite is shown
// as "n/a" (or left out of a plot) instead of failing, so a report of an older or
// newer minor version still renders. Every string taken from the report is escaped
// for the output language.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "pkv/pipeline/analyze.h"
#include "pkv/pipeline/eval.h"

namespace pkv {

/// The `pkv analyze` report (format pkv.analyze_report 1.2, docs/formats/report.md) of
/// a result: per-configuration results (each with its layer's sliding window, 0 for a
/// global layer), means over heads, the same means per layer kind in `layer_kinds`
/// (null when no analysed layer is local), fragile heads (judged within each layer
/// kind when there are local layers), histograms and provenance (created now).
nlohmann::json analyze_report_json(const AnalyzeResult& result);
/// Format name and version of the `pkv eval` report (docs/formats/eval_report.md). 1.2 added
/// `by_position` to every figures object and `provenance.settings.position_buckets`.
constexpr const char* kEvalReportFormat = "pkv.eval_report";
constexpr const char* kEvalReportVersion = "1.4";

/// The `pkv eval` report (format kEvalReportFormat, version kEvalReportVersion,
/// docs/formats/eval_report.md, docs/eval.md) of a result.
nlohmann::json eval_report_json(const EvalResult& result);

/// A compact Markdown summary for the terminal: one provenance line, the summary
/// table (method x bits: effective bits, K/V NMSE, attention KL and output error),
/// when `layer_kinds` is an object one table per layer kind (local, global) with
/// flatness, the fragile heads with the layers suggested to keep in fp16, and the
/// warnings. A report without layer_kinds (1.0, or null) renders as 1.0 reports did.
/// Throws ErrorCode::invalid_argument when `report` is not a JSON object.
std::string render_markdown(const nlohmann::json& report);

/// One self-contained HTML5 page: inline CSS and SVG, no scripts and no external
/// resources. Sections: provenance, summary table, local and global layers (only when
/// `layer_kinds` is an object, as in Markdown), NMSE vs effective bits (K and V
/// panels, log y), per-layer x KV-head heatmaps of K and V NMSE on a shared log color
/// scale, raw vs residual histograms, fragile heads, warnings. The markup is
/// well-formed XML apart from the DOCTYPE (every element closed, void elements
/// written as <meta .../>). Throws ErrorCode::invalid_argument when `report` is not
/// a JSON object.
std::string render_html(const nlohmann::json& report);

/// The table of a `pkv eval` report (format pkv.eval_report, docs/eval.md) as Markdown:
/// one row per method, the fp16 reference first; then, for each method whose figures
/// hold a `by_position` array (1.2 on), a table of its position buckets beside the
/// reference's NLL in the same bucket.
std::string render_eval_markdown(const nlohmann::json& report);

}  // namespace pkv
