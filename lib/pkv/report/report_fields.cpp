#include "pkv/report/report_fields.h"

#include <cmath>

#include <fmt/format.h>

namespace pkv::report_detail {

using nlohmann::json;

const json& field(const json& obj, const char* key) {
    static const json null_value;
    if (!obj.is_object()) return null_value;
    auto it = obj.find(key);
    return it == obj.end() ? null_value : *it;
}

std::optional<double> number(const json& obj, const char* key) {
    const json& v = field(obj, key);
    if (!v.is_number()) return std::nullopt;
    double d = v.get<double>();
    if (!std::isfinite(d)) return std::nullopt;
    return d;
}

std::string text(const json& obj, const char* key, const std::string& fallback) {
    const json& v = field(obj, key);
    return v.is_string() ? v.get<std::string>() : fallback;
}

int64_t integer(const json& obj, const char* key, int64_t fallback) {
    const json& v = field(obj, key);
    if (v.is_number_integer()) return v.get<int64_t>();
    // A float that holds a whole number (as some writers emit) still counts.
    if (v.is_number_float()) {
        double d = v.get<double>();
        if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
    }
    return fallback;
}

bool flag(const json& obj, const char* key) {
    const json& v = field(obj, key);
    return v.is_boolean() && v.get<bool>();
}

std::string sci(std::optional<double> v) { return v ? fmt::format("{:.3e}", *v) : "n/a"; }

std::string fixed(std::optional<double> v, int digits) { return v ? fmt::format("{:.{}f}", *v, digits) : "n/a"; }

std::string display(const json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_null()) return "null";
    if (v.is_number_float()) {
        double d = v.get<double>();
        return std::isfinite(d) ? fmt::format("{:g}", d) : "n/a";
    }
    if (v.is_array()) {
        std::string out;
        for (const auto& item : v) {
            if (!out.empty()) out += ", ";
            out += display(item);
        }
        return out;
    }
    // nlohmann writes NaN and infinities inside objects as null, so dump() is safe here.
    return v.dump();
}

std::string method_label(const std::string& method, bool rotate) { return rotate ? method + "+had" : method; }

std::string provenance_line(const json& report) {
    const json& prov = field(report, "provenance");
    std::string line = fmt::format("{} {}", text(prov, "tool", "pkv"), text(prov, "version", "?"));
    std::string commit = text(prov, "commit");
    if (!commit.empty()) line += fmt::format(" (commit {})", commit);
    std::string created = text(prov, "created_utc");
    if (!created.empty()) line += ", created " + created;
    return line;
}

}  // namespace pkv::report_detail
