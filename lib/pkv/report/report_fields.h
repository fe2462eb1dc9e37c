// pkv/report/report_fields.h — private to lib/pkv/report: lenient access to the
// fields of a report and the number formats both renderers share.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

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

}  // namespace pkv::report_detail
