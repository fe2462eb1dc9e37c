#include "pkv/report/report_fields.h"

#include <algorithm>
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

const json& layer_kinds(const json& report) {
    static const json null_value;
    const json& k = field(report, "layer_kinds");
    return k.is_object() ? k : null_value;
}

std::string layer_ranges(const json& layers) {
    std::vector<int64_t> v;
    if (layers.is_array())
        for (const json& l : layers)
            if (l.is_number_integer()) v.push_back(l.get<int64_t>());
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    std::string out;
    for (size_t i = 0; i < v.size();) {
        size_t j = i;
        while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
        if (!out.empty()) out += ", ";
        out += j == i ? std::to_string(v[i]) : fmt::format("{}-{}", v[i], v[j]);
        i = j + 1;
    }
    return out.empty() ? "none" : out;
}

std::string kind_heading(const json& kinds, bool local) {
    const json& kind = field(kinds, local ? "local" : "global");
    const std::string layers = layer_ranges(field(kind, "layers"));
    if (!local) return "Global layers: " + layers;
    const int64_t w = integer(kind, "window");
    const std::string window = w > 0 ? fmt::format("sliding window {}", w) : "sliding windows of several sizes";
    return fmt::format("Local layers ({}): {}", window, layers);
}

const std::vector<std::string>& kind_columns() {
    static const std::vector<std::string> columns = {"method",     "bits",      "eff bits",    "K NMSE",
                                                     "V NMSE",     "attn KL",   "K range/std", "V range/std",
                                                     "K kurtosis", "V kurtosis"};
    return columns;
}

namespace {

// "raw → resid" of one flatness statistic of one tensor; "n/a" when the tensor is absent
// or both are undefined.
std::string raw_resid(const json& row, const char* tensor, const char* raw, const char* resid) {
    const json& t = field(field(row, "flatness"), tensor);
    const std::optional<double> r = number(t, raw), q = number(t, resid);
    if (!r && !q) return "n/a";
    return fixed(r) + " → " + fixed(q);
}

}  // namespace

std::vector<std::string> kind_cells(const json& row) {
    const int64_t bits = integer(row, "bits");
    return {method_label(text(row, "method", "?"), flag(row, "rotate")),
            bits < 0 ? "n/a" : std::to_string(bits),
            fixed(number(row, "eff_bits")),
            sci(number(row, "k_nmse")),
            sci(number(row, "v_nmse")),
            sci(number(row, "attn_kl")),
            raw_resid(row, "k", "range_over_std_raw", "range_over_std_resid"),
            raw_resid(row, "v", "range_over_std_raw", "range_over_std_resid"),
            raw_resid(row, "k", "kurtosis_raw", "kurtosis_resid"),
            raw_resid(row, "v", "kurtosis_raw", "kurtosis_resid")};
}

std::string layer_with_kind(const json& report, const json& head) {
    const int64_t layer = integer(head, "layer");
    const json& kinds = layer_kinds(report);
    if (kinds.is_null()) return std::to_string(layer);
    int64_t window = integer(head, "window");
    if (window < 0) {
        const json& local = field(field(kinds, "local"), "layers");
        window = 0;
        if (local.is_array())
            for (const json& l : local)
                if (l.is_number_integer() && l.get<int64_t>() == layer) window = 1;
    }
    return fmt::format("{} ({})", layer, window > 0 ? "local" : "global");
}

}  // namespace pkv::report_detail
