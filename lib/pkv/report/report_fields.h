// pkv/report/report_fields.h — private to lib/pkv/report: lenient access to the
// fields of a report and the number formats both renderers share.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pkv::report_detail {

/// obj[key] when obj is an object holding it, else a null JSON value.
const nlohmann::json& field(const nlohmann::json& obj, const char* key);
/// A finite number at obj[key]; nullopt when missing, null, not a number, NaN or infinite.
std::optional<double> number(const nlohmann::json& obj, const char* key);
/// A string at obj[key], or `fallback`.
std::string text(const nlohmann::json& obj, const char* key, const std::string& fallback = "");
/// An integer at obj[key], or `fallback`.
int64_t integer(const nlohmann::json& obj, const char* key, int64_t fallback = -1);
/// A boolean at obj[key], or false.
bool flag(const nlohmann::json& obj, const char* key);

/// Scientific with four significant digits ("1.234e-03"); "n/a" for nullopt.
std::string sci(std::optional<double> v);
/// Fixed with `digits` decimals ("4.25"); "n/a" for nullopt.
std::string fixed(std::optional<double> v, int digits = 2);
/// Compact rendering of any JSON value for display: strings as is, arrays joined by
/// ", ", NaN and infinities as "n/a".
std::string display(const nlohmann::json& v);

/// "kivi", or "kivi+had" when rotate is true.
std::string method_label(const std::string& method, bool rotate);
/// "pkv 0.1.0 (commit abc), created 2025-01-01T00:00:00Z" and similar from provenance.
std::string provenance_line(const nlohmann::json& report);

/// report["layer_kinds"] when it is an object (the report has local sliding-window
/// layers, format 1.1 on), else a null JSON value (1.0 reports, all-global models).
const nlohmann::json& layer_kinds(const nlohmann::json& report);
/// Layer indices as sorted ranges: [0,1,2,3,5,7,8] -> "0-3, 5, 7-8"; non-integers are
/// skipped; "none" when nothing is left.
std::string layer_ranges(const nlohmann::json& layers);
/// The heading of one kind of layer_kinds: "Local layers (sliding window 512): 0-4, 6"
/// (window null: "sliding windows of several sizes") or "Global layers: 5, 11".
std::string kind_heading(const nlohmann::json& kinds, bool local);
/// Column titles of a per-kind summary table, and one row's cells in the same order,
/// unescaped: method label, bits, eff bits, K/V NMSE, attn KL, then K and V
/// range/std and K and V kurtosis, each cell "raw → resid" ("n/a" for what is undefined, one
/// "n/a" for the cell when both are).
const std::vector<std::string>& kind_columns();
std::vector<std::string> kind_cells(const nlohmann::json& row);
/// A fragile head's layer, with its kind when the report has local layers: "5 (global)",
/// "3 (local)"; just "5" otherwise. The kind comes from the head's "window", or from
/// layer_kinds.local.layers when the head has none.
std::string layer_with_kind(const nlohmann::json& report, const nlohmann::json& head);

}  // namespace pkv::report_detail
