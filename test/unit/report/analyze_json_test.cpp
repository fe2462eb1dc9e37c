// analyze_report_json on hand-built results: the layer window of every result, the
// per-kind means of layer_kinds (local sliding-window vs global layers) and fragile
// heads judged within each kind.
#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "catch.h"
#include "pkv/report/report.h"
#include "sample_result.h"

using nlohmann::json;
using pkv::test::make_sample_result;
using pkv::test::SampleMetrics;
using pkv::test::set_metrics;

namespace {

constexpr size_t kKivi = 1, kPattern = 2;  // run indices of make_sample_result

const json& kind_row(const json& report, const char* kind, const std::string& method) {
    for (const json& row : report["layer_kinds"][kind]["summary"])
        if (row["method"] == method) return row;
    FAIL("no " << method << " row in layer_kinds." << kind);
    static json none;
    return none;
}

std::set<std::pair<int, int>> fragile_heads(const json& report) {
    std::set<std::pair<int, int>> out;
    for (const json& h : report["fragile"]["heads"]) out.insert({h["layer"].get<int>(), h["kv_head"].get<int>()});
    return out;
}

// Robust z of x[i] within x, as the rule in docs/formats/report.md defines it.
double robust_z(std::vector<double> x, double value) {
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
    };
    const double med = median(x);
    for (double& v : x) v = std::fabs(v - med);
    return (value - med) / (1.4826 * median(x));
}

}  // namespace

TEST_CASE("layer_kinds: per-kind means over 2 local and 1 global layer, worked by hand", "[report][analyze_json]") {
    pkv::AnalyzeResult res = make_sample_result({512, 512, 0}, 2);
    // kivi K NMSE per (layer, head); V = K / 2; KL = K / 10; eff bits 2.5 local, 3 global.
    const double k[3][2] = {{0.01, 0.03}, {0.05, 0.07}, {0.2, 0.4}};
    for (auto& p : res.pairs) {
        SampleMetrics m;
        m.k_nmse = k[p.layer][p.head];
        m.v_nmse = m.k_nmse / 2;
        m.kl = m.k_nmse / 10;
        m.eff_bits = p.layer < 2 ? 2.5 : 3.0;
        m.ros_raw = 6 + 2 * p.layer + p.head;  // local 6, 7, 8, 9; global 10, 11
        m.ros_resid = m.ros_raw / 2;
        m.kurt_raw = 1 + p.layer;               // local 1, 1, 2, 2; global 3, 3
        m.var_explained = 0.2 + 0.1 * p.layer;  // local 0.2, 0.2, 0.3, 0.3; global 0.4, 0.4
        set_metrics(p, kKivi, m, false);
        m.k_nmse /= 4;
        set_metrics(p, kPattern, m, true);
    }
    const json rep = pkv::analyze_report_json(res);
    CHECK(rep["format_version"] == "1.4");
    for (const json& r : rep["results"]) CHECK(r["window"] == (r["layer"] == 2 ? 0 : 512));

    const json& kinds = rep["layer_kinds"];
    REQUIRE(kinds.is_object());
    CHECK(kinds["local"]["window"] == 512);
    CHECK(kinds["local"]["layers"] == json({0, 1}));
    CHECK(kinds["global"]["layers"] == json({2}));
    CHECK_FALSE(kinds["global"].contains("window"));
    CHECK(kinds["local"]["summary"].size() == 3);
    CHECK(kinds["global"]["summary"].size() == 3);

    const json& lk = kind_row(rep, "local", "kivi");
    CHECK(lk["bits"] == 2);
    CHECK(lk["rotate"] == false);
    CHECK(lk["k_nmse"].get<double>() == Approx((0.01 + 0.03 + 0.05 + 0.07) / 4));
    CHECK(lk["v_nmse"].get<double>() == Approx(0.02));
    CHECK(lk["attn_kl"].get<double>() == Approx(0.004));
    CHECK(lk["attn_out_rel_err"].get<double>() == Approx(0.05));
    CHECK(lk["eff_bits"].get<double>() == Approx(2.5));
    const json& gk = kind_row(rep, "global", "kivi");
    CHECK(gk["k_nmse"].get<double>() == Approx(0.3));
    CHECK(gk["v_nmse"].get<double>() == Approx(0.15));
    CHECK(gk["eff_bits"].get<double>() == Approx(3.0));
    // The top-level summary still averages every head.
    for (const json& row : rep["summary"])
        if (row["method"] == "kivi") {
            CHECK(row["k_nmse"].get<double>() == Approx((0.16 + 0.6) / 6));
            CHECK(row["eff_bits"].get<double>() == Approx((4 * 2.5 + 2 * 3.0) / 6));
        }

    // Flatness means: patternkv has residual statistics, kivi raw ones only.
    for (const char* t : {"k", "v"}) {
        const json& lf = kind_row(rep, "local", "patternkv")["flatness"][t];
        CHECK(lf["range_over_std_raw"].get<double>() == Approx(7.5));
        CHECK(lf["range_over_std_resid"].get<double>() == Approx(3.75));
        CHECK(lf["kurtosis_raw"].get<double>() == Approx(1.5));
        CHECK(lf["kurtosis_resid"].get<double>() == Approx(0.5));
        CHECK(lf["var_explained"].get<double>() == Approx(0.25));
        const json& gf = kind_row(rep, "global", "patternkv")["flatness"][t];
        CHECK(gf["range_over_std_raw"].get<double>() == Approx(10.5));
        CHECK(gf["range_over_std_resid"].get<double>() == Approx(5.25));
        CHECK(gf["kurtosis_raw"].get<double>() == Approx(3.0));
        CHECK(gf["var_explained"].get<double>() == Approx(0.4));
        const json& kf = kind_row(rep, "local", "kivi")["flatness"][t];
        CHECK(kf["range_over_std_raw"].get<double>() == Approx(7.5));
        CHECK(kf["range_over_std_resid"].is_null());
        CHECK(kf["kurtosis_resid"].is_null());
        CHECK(kf["var_explained"].is_null());
    }

    // Without values in the dump the kind rows say so, as the results do.
    res.has_v = false;
    const json no_v = pkv::analyze_report_json(res);
    CHECK(kind_row(no_v, "local", "patternkv")["flatness"]["v"].is_null());
    CHECK(kind_row(no_v, "local", "patternkv")["v_nmse"].is_null());
    CHECK(kind_row(no_v, "local", "patternkv")["flatness"]["k"].is_object());
}

TEST_CASE("layer_kinds: null without local layers, window null when local windows differ", "[report][analyze_json]") {
    pkv::AnalyzeResult all_global = make_sample_result({0, 0, 0}, 2);
    json rep = pkv::analyze_report_json(all_global);
    CHECK(rep.contains("layer_kinds"));
    CHECK(rep["layer_kinds"].is_null());
    for (const json& r : rep["results"]) CHECK(r["window"] == 0);
    CHECK(rep["fragile"]["rule"].get<std::string>().find("kind") == std::string::npos);

    // Without layer_windows the pairs' windows decide.
    pkv::AnalyzeResult no_table = make_sample_result({512, 0, 0}, 2);
    no_table.layer_windows.clear();
    rep = pkv::analyze_report_json(no_table);
    REQUIRE(rep["layer_kinds"].is_object());
    CHECK(rep["layer_kinds"]["local"]["layers"] == json({0}));
    CHECK(rep["layer_kinds"]["global"]["layers"] == json({1, 2}));

    rep = pkv::analyze_report_json(make_sample_result({512, 1024, 0}, 1));
    CHECK(rep["layer_kinds"]["local"]["window"].is_null());
    CHECK(rep["layer_kinds"]["local"]["layers"] == json({0, 1}));

    // Every analysed layer local: the global kind is empty.
    rep = pkv::analyze_report_json(make_sample_result({512, 512}, 1));
    CHECK(rep["layer_kinds"]["global"] == json({{"layers", json::array()}, {"summary", json::array()}}));
    CHECK(rep["layer_kinds"]["local"]["summary"].size() == 3);
}

TEST_CASE("fragile heads: robust z within each layer kind", "[report][analyze_json]") {
    // kivi K NMSE: 8 local heads (layers 0-3) and 4 global heads (layers 4-5). Within
    // its kind, 0.060 (layer 3, head 1) and 0.095 (layer 5, head 1) stand out; pooled,
    // every global head stands out and 0.060 does not.
    const std::vector<double> local = {0.040, 0.041, 0.042, 0.043, 0.044, 0.045, 0.046, 0.060};
    const std::vector<double> global = {0.080, 0.081, 0.082, 0.095};
    pkv::AnalyzeResult res = make_sample_result({512, 512, 512, 512, 0, 0}, 2);
    for (size_t p = 0; p < res.pairs.size(); ++p) {
        SampleMetrics m;
        m.k_nmse = p < 8 ? local[p] : global[p - 8];
        m.v_nmse = 0.01;  // equal everywhere: MAD 0, no V verdict
        set_metrics(res.pairs[p], kKivi, m, false);
        m.k_nmse = 0.01;
        set_metrics(res.pairs[p], kPattern, m, true);
    }
    const json rep = pkv::analyze_report_json(res);
    CHECK(fragile_heads(rep) == std::set<std::pair<int, int>>{{3, 1}, {5, 1}});
    CHECK(rep["fragile"]["keep_fp16_layers"] == json({3, 5}));
    for (const json& h : rep["fragile"]["heads"]) {
        CHECK(h["method"] == "kivi");
        const bool is_local = h["layer"] == 3;
        CHECK(h["window"] == (is_local ? 512 : 0));
        CHECK(h["score"].get<double>() == Approx(is_local ? robust_z(local, 0.060) : robust_z(global, 0.095)));
    }
    CHECK_THAT(rep["fragile"]["rule"].get<std::string>(), ContainsSubstring("local (sliding-window) heads against"));

    // The same values with every layer global: one pool, other verdicts.
    for (auto& p : res.pairs) p.window = 0;
    std::fill(res.layer_windows.begin(), res.layer_windows.end(), 0);
    const json pooled = pkv::analyze_report_json(res);
    CHECK(fragile_heads(pooled) == std::set<std::pair<int, int>>{{4, 0}, {4, 1}, {5, 0}, {5, 1}});
    CHECK(pooled["fragile"]["keep_fp16_layers"] == json({4, 5}));
    std::vector<double> all = local;
    all.insert(all.end(), global.begin(), global.end());
    for (const json& h : pooled["fragile"]["heads"]) {
        CHECK(h["window"] == 0);
        CHECK(h["score"].get<double>() == Approx(robust_z(all, h["k_nmse"].get<double>())));
    }
}
