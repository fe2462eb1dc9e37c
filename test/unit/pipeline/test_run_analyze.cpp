// run_analyze end to end on small synthetic dumps: exact methods, metric sanity and
// bad input.
#include <string>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/int_list.h"
#include "pkv/pipeline/analyze.h"
#include "pkv/report/report.h"
#include "unit/kvdump/dump_fixture.h"

using namespace pkv;
using nlohmann::json;

namespace {

test::SynthSpec spec32() {
    test::SynthSpec s;
    s.head_dim = 32;
    s.n_rot = 32;
    s.seq_lengths = {40, 40, 24};
    return s;
}

AnalyzeConfig small_config(const std::string& path) {
    AnalyzeConfig c;
    c.dump_path = path;
    c.methods = {KvMethod::fp16, KvMethod::kivi, KvMethod::patternkv, KvMethod::q8_0};
    c.bits = {2, 8};
    c.group = 8;
    c.window = 8;
    c.patterns = 4;
    return c;
}

const json& row(const json& report, const std::string& method, int bits, bool rotate, int layer = 0, int head = 0) {
    for (const auto& r : report["results"])
        if (r["method"] == method && r["bits"] == bits && r["rotate"] == rotate && r["layer"] == layer &&
            r["kv_head"] == head)
            return r;
    FAIL("no result for " << method << " " << bits);
    static json none;
    return none;
}

}  // namespace

TEST_CASE("run_analyze on a synthetic dump", "[analyze]") {
    test::TempDir dir;
    const std::string path = dir.path + "/d.h5";
    test::write_synth_dump(path, spec32());
    AnalyzeConfig c = small_config(path);
    c.rotate = true;
    const json rep = analyze_report_json(run_analyze(c));
    CHECK(rep["format"] == "pkv.analyze_report");
    CHECK(rep["n_tokens"] == 104);
    CHECK(rep["warnings"].empty());
    for (bool rot : {false, true}) {
        const json& f = row(rep, "fp16", 16, rot);
        CHECK(f["k"]["nmse"] == 0.0);
        CHECK(f["v"]["nmse"] == 0.0);
        CHECK(f["k"]["snr_db"].is_null());
        CHECK(f["attn"]["kl"] == 0.0);
        CHECK(f["attn"]["out_rel_err"] == 0.0);
        CHECK(f["eff_bits"] == 16.0);
    }
    const json& k8 = row(rep, "kivi", 8, false);
    CHECK(k8["k"]["nmse"].get<double>() < 1e-4);
    CHECK(k8["v"]["nmse"].get<double>() < 1e-4);
    const json& k2 = row(rep, "kivi", 2, false);
    CHECK(k2["k"]["nmse"].get<double>() > k8["k"]["nmse"].get<double>());
    CHECK(k2["attn"]["kl"].get<double>() > 0.0);
    const json& p2 = row(rep, "patternkv", 2, false);
    CHECK(p2["flatness"]["k"]["range_over_std_resid"].is_number());
    CHECK(p2["flatness"]["k"]["var_explained"].is_number());
    CHECK(k2["flatness"]["k"]["range_over_std_resid"].is_null());
    CHECK(row(rep, "q8_0", 8, false)["eff_bits"] == 8.5);
    // Layers are model layers (the synthetic dump stores 0 and 2).
    CHECK(rep["settings"]["layers"] == json::array({0, 2}));
    CHECK(rep["results"].size() == 2 * 2 * 2 * 6);
    CHECK(rep["summary"].size() == 12);
}

TEST_CASE("attention KL is 0 when the cache is exact", "[analyze]") {
    test::TempDir dir;
    const std::string path = dir.path + "/d.h5";
    test::write_synth_dump(path, spec32());
    AnalyzeConfig c = small_config(path);
    // A window longer than every sequence keeps kivi in fp16 throughout.
    c.methods = {KvMethod::kivi};
    c.window = 64;
    c.prefill = 0;
    const json rep = analyze_report_json(run_analyze(c));
    for (const auto& r : rep["results"]) {
        CHECK(r["attn"]["kl"] == 0.0);
        CHECK(r["attn"]["out_rel_err"] == 0.0);
        CHECK(r["k"]["nmse"] == 0.0);
        CHECK(r["eff_bits"] == 16.0);
    }
}

TEST_CASE("bad input names the offending option", "[analyze]") {
    test::TempDir dir;
    const std::string path = dir.path + "/d.h5";
    test::write_synth_dump(path, spec32());
    SECTION("unknown method") {
        CHECK_THROWS_WITH(
            parse_method_list("fp16,foo"),
            ContainsSubstring("unknown method 'foo'") && ContainsSubstring("fp16, kivi, patternkv, q4_0, q8_0, fp8"));
    }
    SECTION("unsupported bits") {
        AnalyzeConfig c = small_config(path);
        c.bits = {5};
        CHECK_THROWS_WITH(run_analyze(c), ContainsSubstring("--bits 5: expected 2, 3, 4 or 8"));
    }
    SECTION("a group that does not fit the head") {
        test::SynthSpec s = spec32();
        s.head_dim = 64;
        s.n_rot = 64;
        const std::string p64 = dir.path + "/d64.h5";
        test::write_synth_dump(p64, s);
        AnalyzeConfig c = small_config(p64);
        c.group = 48;
        CHECK_THROWS_WITH(run_analyze(c), ContainsSubstring("--group 48") && ContainsSubstring("head_dim 64"));
    }
    SECTION("bad lists") {
        CHECK_THROWS_WITH(parse_int_list("--heads", "0,x"), ContainsSubstring("--heads '0,x'"));
        AnalyzeConfig c = small_config(path);
        c.heads = {7};
        CHECK_THROWS_WITH(run_analyze(c), ContainsSubstring("--heads 7"));
        c.heads = {};
        c.layers = {1};
        CHECK_THROWS_WITH(run_analyze(c), ContainsSubstring("--layers 1"));
    }
}

TEST_CASE("a dump without queries skips attention with one warning", "[analyze]") {
    test::TempDir dir;
    const std::string path = dir.path + "/noq.h5";
    test::SynthSpec s = spec32();
    s.capture = CaptureSet::parse("k_pre,k_post,v");
    test::write_synth_dump(path, s);
    const json rep = analyze_report_json(run_analyze(small_config(path)));
    for (const auto& r : rep["results"]) CHECK(r["attn"].is_null());
    for (const auto& r : rep["summary"]) CHECK(r["attn_kl"].is_null());
    REQUIRE(rep["warnings"].size() == 1);
    CHECK(rep["warnings"][0].get<std::string>().find("/q") != std::string::npos);
}

TEST_CASE("pre-RoPE keys score attention through RoPE of the key error", "[analyze]") {
    test::TempDir dir;
    const std::string path = dir.path + "/d.h5";
    test::write_synth_dump(path, spec32());
    AnalyzeConfig c = small_config(path);
    c.keys_pre = true;
    c.methods = {KvMethod::fp16, KvMethod::kivi};
    const json rep = analyze_report_json(run_analyze(c));
    CHECK(rep["warnings"].empty());
    CHECK(row(rep, "fp16", 16, false)["attn"]["kl"] == 0.0);
    CHECK(row(rep, "kivi", 2, false)["attn"]["kl"].get<double>() > 0.0);
    CHECK(rep["settings"]["keys"] == "pre");
}
