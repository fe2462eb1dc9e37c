// The width allocation of a pattern table (kMetaAllocation, format 1.2): its JSON form
// and its reader; the contract is in pattern_table.h.
#include <cmath>
#include <map>
#include <string>

#include "pkv/core/error.h"
#include "pkv/table/pattern_table.h"

namespace pkv {

using nlohmann::json;

bool pattern_table_alloc_width(int w) { return w == 2 || w == 3 || w == 4 || w == 8 || w == 16; }

json pattern_table_allocation_json(const PatternTable& t) {
    json k = json::array(), v = json::array();
    for (const PatternLayer& l : t.layers) {
        k.push_back(l.k_bits);
        v.push_back(l.v_bits);
    }
    return {{"budget", t.alloc_budget}, {"bits", t.alloc_bits}, {"k", std::move(k)}, {"v", std::move(v)}};
}

void read_pattern_table_allocation(const std::map<std::string, std::string>& meta, const std::string& path,
                                   PatternTable& t) {
    namespace P = ptable;
    const auto it = meta.find(P::kMetaAllocation);
    if (it == meta.end()) return;
    json a;
    try {
        a = json::parse(it->second);
    } catch (const json::exception& e) {
        fail(ErrorCode::data_loss, "{}::{}: expected a JSON object, got text that does not parse ({})", path,
             P::kMetaAllocation, e.what());
    }
    const auto number = [&](const char* key, double lo) {
        PKV_CHECK(a.is_object() && a.contains(key) && a[key].is_number(), data_loss,
                  "{}::{}: expected a number \"{}\", got none", path, P::kMetaAllocation, key);
        const double x = a[key].get<double>();
        PKV_CHECK(std::isfinite(x) && x > lo && x <= 16.0, data_loss,
                  "{}::{}.{}: expected a number in ({}, 16], got {}", path, P::kMetaAllocation, key, lo, x);
        return x;
    };
    t.alloc_budget = number("budget", 0.0);
    t.alloc_bits = number("bits", 0.0);
    const size_t H = static_cast<size_t>(t.model.n_head_kv);
    for (const char* key : {"k", "v"}) {
        const json* rows = a.contains(key) ? &a[key] : nullptr;
        PKV_CHECK(rows && rows->is_array() && rows->size() == t.layers.size(), data_loss,
                  "{}::{}.{}: expected {} lists (one per entry of {}), got {}", path, P::kMetaAllocation, key,
                  t.layers.size(), P::kMetaLayers, rows ? rows->dump().substr(0, 40) : "none");
        for (size_t i = 0; i < t.layers.size(); ++i) {
            const json& row = (*rows)[i];
            std::vector<int>& out = key[0] == 'k' ? t.layers[i].k_bits : t.layers[i].v_bits;
            bool ok = row.is_array() && row.size() == H;
            for (size_t h = 0; ok && h < H; ++h) {
                ok = row[h].is_number_integer() && pattern_table_alloc_width(row[h].get<int>());
                if (ok) out.push_back(row[h].get<int>());
            }
            PKV_CHECK(ok, data_loss, "{}::{}.{}: layer {}: expected {} widths of 2, 3, 4, 8 or 16, got {}", path,
                      P::kMetaAllocation, key, t.layers[i].layer, H, row.dump().substr(0, 40));
        }
    }
}

}  // namespace pkv
