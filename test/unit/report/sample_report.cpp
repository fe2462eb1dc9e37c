#include "sample_report.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace pkv::test {

using nlohmann::json;

namespace {

struct Setting {
    std::string method;
    int bits;
    bool rotate;
};

// Deterministic "noise" in [0.75, 1.25] so heatmaps are not flat.
double jitter(int a, int b, int c) {
    unsigned h =
        static_cast<unsigned>(a * 73856093) ^ static_cast<unsigned>(b * 19349663) ^ static_cast<unsigned>(c * 83492791);
    h = (h ^ (h >> 13)) * 1274126177u;
    return 0.75 + 0.5 * ((h >> 8) % 1000) / 999.0;
}

double base_nmse(const Setting& s) {
    if (s.method == "fp16") return 2e-7;
    double nmse = 0.36 * std::pow(4.0, -s.bits);
    if (s.method == "patternkv") nmse *= 0.35;
    if (s.method == "q4_0" || s.method == "q8_0") nmse *= 1.4;
    if (s.method == "fp8") nmse = 3e-4;
    if (s.rotate) nmse *= 0.6;
    return nmse;
}

double eff_bits_of(const Setting& s) {
    if (s.method == "fp16") return 16;
    if (s.method == "fp8") return 8;
    if (s.method == "q4_0") return 4.5;
    if (s.method == "q8_0") return 8.5;
    double overhead = s.method == "patternkv" ? 0.75 : 0.5;
    return s.bits + overhead;
}

json flat_tensor(double spread) {
    return {{"range_over_std_raw", 9.5 * spread},
            {"range_over_std_resid", 5.1 * spread},
            {"kurtosis_raw", 6.2 * spread},
            {"kurtosis_resid", 0.4 * spread},
            {"var_explained", 0.62}};
}

const char* const kFlatFields[] = {"range_over_std_raw", "range_over_std_resid", "kurtosis_raw", "kurtosis_resid",
                                   "var_explained"};

// Sums over the heads of one layer kind for its summary rows.
struct KindSums {
    double k = 0, v = 0, kl = 0, out = 0;
    int n = 0, n_attn = 0;
    double flat[2][5] = {};
    int flat_n = 0;

    void add_flatness(const json& flatness) {
        if (!flatness.is_object()) return;
        for (int t = 0; t < 2; ++t)
            for (int f = 0; f < 5; ++f) flat[t][f] += flatness[t == 0 ? "k" : "v"][kFlatFields[f]].get<double>();
        ++flat_n;
    }
    json flatness_json() const {
        json out = json::object();
        for (int t = 0; t < 2; ++t) {
            json tensor = json::object();
            for (int f = 0; f < 5; ++f) tensor[kFlatFields[f]] = flat_n ? json(flat[t][f] / flat_n) : json(nullptr);
            out[t == 0 ? "k" : "v"] = tensor;
        }
        return out;
    }
};

}  // namespace

json make_sample_report(int n_layer, int n_kv_head, const std::vector<int>& bits, bool with_rotation, bool all_methods,
                        int local_window) {
    auto window_of = [&](int l) { return local_window > 0 && l % 6 != 5 ? local_window : 0; };
    std::vector<Setting> settings = {{"fp16", 16, false}};
    for (const char* m : {"kivi", "patternkv"})
        for (int b : bits)
            for (bool rot : {false, true})
                if (!rot || with_rotation) settings.push_back({m, b, rot});
    if (all_methods) settings.insert(settings.end(), {{"q4_0", 4, false}, {"q8_0", 8, false}, {"fp8", 8, false}});

    json layers = json::array(), heads = json::array(), methods = json::array(), bit_list = json::array();
    for (int l = 0; l < n_layer; ++l) layers.push_back(l);
    for (int h = 0; h < n_kv_head; ++h) heads.push_back(h);
    for (const Setting& s : settings) {
        if (std::find(methods.begin(), methods.end(), s.method) == methods.end()) methods.push_back(s.method);
        if (std::find(bit_list.begin(), bit_list.end(), s.bits) == bit_list.end()) bit_list.push_back(s.bits);
    }

    json results = json::array(), summary = json::array(), fragile_heads = json::array();
    json kind_summary[2] = {json::array(), json::array()};  // [local]
    for (size_t si = 0; si < settings.size(); ++si) {
        const Setting& s = settings[si];
        double sum_k = 0, sum_v = 0, sum_kl = 0, sum_out = 0;
        int n = 0, n_attn = 0;
        KindSums kinds[2];
        for (int l = 0; l < n_layer; ++l) {
            for (int h = 0; h < n_kv_head; ++h) {
                const int window = window_of(l);
                double layer_factor = (l == 0 ? 40 : l == 1 ? 12 : 1 + 0.05 * l) * (window > 0 ? 2 : 1);
                double k = base_nmse(s) * layer_factor * jitter(l, h, static_cast<int>(si));
                double v = base_nmse(s) * 0.7 * (l == 0 ? 3 : 1) * jitter(h, l, static_cast<int>(si) + 7);
                double eb = eff_bits_of(s);
                json r = {{"layer", l},
                          {"kv_head", h},
                          {"method", s.method},
                          {"bits", s.bits},
                          {"rotate", s.rotate},
                          {"k", {{"nmse", k}, {"snr_db", -10 * std::log10(k)}, {"eff_bits", eb}}},
                          {"v", {{"nmse", v}, {"snr_db", -10 * std::log10(v)}, {"eff_bits", eb}}},
                          {"eff_bits", eb}};
                if (local_window > 0) r["window"] = window;
                KindSums& kind = kinds[window > 0];
                bool no_attn = l == 1 && h == 0 && s.method == "kivi" && s.bits == 2 && !s.rotate;
                if (no_attn) {
                    r["attn"] = nullptr;
                } else {
                    r["attn"] = {{"kl", 0.8 * k}, {"out_rel_err", std::sqrt(v) * 0.9}};
                    sum_kl += 0.8 * k;
                    sum_out += std::sqrt(v) * 0.9;
                    ++n_attn;
                    kind.kl += 0.8 * k;
                    kind.out += std::sqrt(v) * 0.9;
                    ++kind.n_attn;
                }
                r["flatness"] = s.method == "patternkv" ? json{{"k", flat_tensor(1 + 0.1 * l)}, {"v", flat_tensor(0.8)}}
                                                        : json(nullptr);
                kind.add_flatness(r["flatness"]);
                results.push_back(r);
                sum_k += k;
                sum_v += v;
                ++n;
                kind.k += k;
                kind.v += v;
                ++kind.n;
                if (l == 0 && s.method == "kivi" && s.bits == bits.front() && !s.rotate) {
                    json head = {{"layer", l},     {"kv_head", h}, {"method", s.method},
                                 {"bits", s.bits}, {"k_nmse", k},  {"score", 8.5 + h}};
                    if (local_window > 0) head["window"] = window;
                    fragile_heads.push_back(head);
                }
            }
        }
        summary.push_back({{"method", s.method},
                           {"bits", s.bits},
                           {"rotate", s.rotate},
                           {"k_nmse", sum_k / n},
                           {"v_nmse", sum_v / n},
                           {"attn_kl", n_attn ? json(sum_kl / n_attn) : json(nullptr)},
                           {"attn_out_rel_err", n_attn ? json(sum_out / n_attn) : json(nullptr)},
                           {"eff_bits", eff_bits_of(s)}});
        for (int local = 0; local < 2; ++local) {
            const KindSums& ks = kinds[local];
            if (!ks.n) continue;
            kind_summary[local].push_back({{"method", s.method},
                                           {"bits", s.bits},
                                           {"rotate", s.rotate},
                                           {"k_nmse", ks.k / ks.n},
                                           {"v_nmse", ks.v / ks.n},
                                           {"attn_kl", ks.n_attn ? json(ks.kl / ks.n_attn) : json(nullptr)},
                                           {"attn_out_rel_err", ks.n_attn ? json(ks.out / ks.n_attn) : json(nullptr)},
                                           {"eff_bits", eff_bits_of(s)},
                                           {"flatness", ks.flatness_json()}});
        }
    }

    // Gaussian-like raw values with heavy tails, a narrower residual.
    json histograms = json::array();
    const int bins = 48;
    for (auto [l, h, t] :
         {std::tuple<int, int, const char*>{0, 0, "k"}, {0, 0, "v"}, {std::min(2, n_layer - 1), 0, "k"}}) {
        json raw = json::array(), resid = json::array();
        for (int i = 0; i < bins; ++i) {
            double x = -6 + 12.0 * (i + 0.5) / bins;
            raw.push_back(static_cast<int>(4000 * std::exp(-x * x / 8) + 60 * std::exp(-std::fabs(x))));
            resid.push_back(static_cast<int>(9000 * std::exp(-x * x / 1.5)));
        }
        histograms.push_back({{"layer", l},
                              {"kv_head", h},
                              {"tensor", t},
                              {"lo", -6.0},
                              {"hi", 6.0},
                              {"raw", raw},
                              {"residual", resid}});
    }

    json doc = {
        {"format", "pkv.analyze_report"},
        {"format_version", "1.0"},
        {"provenance",
         {{"tool", "pkv"},
          {"version", "0.1.0"},
          {"commit", "0123456789ab"},
          {"command", "analyze"},
          {"argv", {"pkv", "analyze", "dump.h5", "--html", "report.html"}},
          {"created_utc", "2025-01-02T03:04:05Z"},
          {"dump",
           {{"path", "dump.h5"},
            {"model", {{"name", "SmolLM2 135M Instruct"}, {"file", "model.gguf"}, {"sha256", std::string(64, 'a')}}},
            {"provenance", {{"tool", "pkv"}, {"version", "0.1.0"}, {"command", "dump"}}}}}}},
        {"settings",
         {{"methods", methods},
          {"bits", bit_list},
          {"group", 32},
          {"window", 0},
          {"keys", "post"},
          {"layers", layers},
          {"heads", heads},
          {"seed", 1}}},
        {"model",
         {{"name", "SmolLM2 135M Instruct"},
          {"n_layer", n_layer},
          {"n_head", 3 * n_kv_head},
          {"n_head_kv", n_kv_head},
          {"head_dim", 64}}},
        {"n_tokens", 4096},
        {"results", results},
        {"summary", summary},
        {"fragile",
         {{"rule", "K NMSE above 4x the median of all heads for the same method and bits"},
          {"heads", fragile_heads},
          {"keep_fp16_layers", {0}}}},
        {"histograms", histograms},
        {"warnings", {"layer 1 KV head 0: no queries for kivi 2-bit, attention metrics left null"}},
    };
    if (local_window > 0) {
        json local_layers = json::array(), global_layers = json::array();
        for (int l = 0; l < n_layer; ++l) (window_of(l) > 0 ? local_layers : global_layers).push_back(l);
        doc["format_version"] = "1.1";
        doc["model"]["name"] = "Gemma 3 1B IT";
        doc["layer_kinds"] = {
            {"local", {{"window", local_window}, {"layers", local_layers}, {"summary", kind_summary[1]}}},
            {"global", {{"layers", global_layers}, {"summary", kind_summary[0]}}}};
    }
    return doc;
}

}  // namespace pkv::test
