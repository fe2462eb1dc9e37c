// `pkv calibrate`'s summary of a table's per-head statistics: the contract is in calibrate.h.
#include <map>
#include <string>
#include <utility>

#include "pkv/pipeline/calibrate.h"

namespace pkv {

nlohmann::json calibration_means(const PatternTable& table) {
    nlohmann::json out = nlohmann::json::object();
    const nlohmann::json& heads = table.calibration.value("heads", nlohmann::json::array());
    for (const char* tensor : {"k", "v"}) {
        std::map<std::string, std::pair<double, int>> acc;
        auto add = [&](const std::string& key, const nlohmann::json& v) {
            if (!v.is_number()) return;
            auto& a = acc[key];
            a.first += v.get<double>();
            a.second += 1;
        };
        for (const auto& h : heads) {
            const nlohmann::json& s = h.at(tensor);
            for (const char* f : {"variance_explained", "dead_patterns", "clip", "gate_z", "gate_rate"})
                if (s.contains(f)) add(f, s[f]);
            for (const char* f : {"nmse_minmax", "nmse_minmax_clipped", "nmse_patterns", "nmse_fitted"})
                if (s.contains("heldout") && s["heldout"].contains(f))
                    add(std::string("heldout_") + f, s["heldout"][f]);
        }
        nlohmann::json m = nlohmann::json::object();
        for (const auto& [k, a] : acc) m[k] = a.second > 0 ? a.first / a.second : 0.0;
        out[tensor] = m;
    }
    return out;
}

}  // namespace pkv
