// pkv export's skip lists and KV precision plans (vllm-skip, modelopt, kv-plan-json):
// exact outputs for a small table, the report and option checks, the file writer and
// the plan's schema.
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>

#include <fmt/format.h>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/version.h"
#include "pkv/pipeline/analyze.h"
#include "pkv/pipeline/export_lists.h"
#include "pkv/report/report.h"
#include "support/error_of.h"
#include "support/scratch_dir.h"
#include "unit/kvdump/dump_fixture.h"
#include "unit/table/table_fixture.h"

using namespace pkv;
using nlohmann::json;
using pkv_test::make_table;

namespace {

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

using pkv_test::error_of;

// The fields of an analyze report that export reads, for make_table()'s model.
json tiny_report(std::vector<int> keep) {
    return {{"format", "pkv.analyze_report"},
            {"format_version", "1.3"},
            {"model", {{"name", "tiny-llama"}, {"n_layer", 4}, {"n_head", 6}, {"n_head_kv", 3}, {"head_dim", 8}}},
            {"provenance", {{"dump", {{"model", {{"sha256", std::string(64, 'A')}}}}}}},
            {"fragile", {{"rule", "robust z > 3"}, {"heads", json::array()}, {"keep_fp16_layers", keep}}}};
}

// Layers 0-2 of 4 calibrated; the report keeps 2, the option 3.
KvPlan sample_plan() {
    return make_kv_plan(make_table({0, 1, 2}), "t.safetensors", "r.json", {2}, std::vector<int>{3});
}

bool have_jsonschema() {
    return std::system("/usr/bin/python3 -c 'import jsonschema; jsonschema.Draft202012Validator' >/dev/null 2>&1") == 0;
}

// The messages of validating `doc` against schemas/kv_plan.schema.json as draft 2020-12
// and as draft-07; empty when valid.
std::string schema_errors(const json& doc) {
    pkv_test::ScratchDir dir;
    std::ofstream(dir.path("doc.json")) << doc.dump(1);
    std::ofstream(dir.path("check.py")) << R"(import json, sys
from jsonschema import Draft202012Validator, Draft7Validator
schema = json.load(open(sys.argv[1]))
doc = json.load(open(sys.argv[2]))
Draft202012Validator.check_schema(schema)
for cls in (Draft202012Validator, Draft7Validator):
    for e in cls(schema).iter_errors(doc):
        print(cls.__name__ + ": " + "/".join(str(p) for p in e.absolute_path) + ": " + e.message[:300])
)";
    const std::string cmd =
        fmt::format("/usr/bin/python3 '{}' '{}/schemas/kv_plan.schema.json' '{}' >'{}' 2>&1", dir.path("check.py"),
                    PKV_TEST_SOURCE_DIR, dir.path("doc.json"), dir.path("out.txt"));
    const int rc = std::system(cmd.c_str());
    std::string out = slurp(dir.path("out.txt"));
    if (rc != 0 && out.empty()) out = fmt::format("python exited with status {}", rc);
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
}

}  // namespace

TEST_CASE("kv plan: fp16 layers are the uncalibrated, the report's and the option's", "[export][kv_plan]") {
    const KvPlan p = sample_plan();
    REQUIRE(p.layers.size() == 4);
    CHECK(p.fp16_layers() == std::vector<int>{2, 3});
    CHECK(p.quantized_layers() == std::vector<int>{0, 1});
    CHECK(p.layers[0].bits == 2);
    CHECK(p.layers[2].bits == 16);
    CHECK(p.layers[3].not_calibrated);
    CHECK(p.layers[3].from_option);
    CHECK_FALSE(p.layers[3].from_report);
    CHECK(p.layers[2].from_report);
    CHECK_FALSE(p.layers[2].not_calibrated);

    // Nothing given: only what the table cannot quantize stays fp16.
    const KvPlan bare = make_kv_plan(make_table({0, 2}), "t.safetensors", "", {}, std::nullopt);
    CHECK(bare.fp16_layers() == std::vector<int>{1, 3});
    CHECK_FALSE(bare.option_layers.has_value());
    // Every layer's bits come from the table (one width for all layers today).
    PatternTable t4 = make_table({0, 1, 2, 3});
    t4.bits = 4;
    const KvPlan four = make_kv_plan(t4, "t.safetensors", "", {}, std::vector<int>{});
    CHECK(four.fp16_layers().empty());
    for (const KvLayerPlan& l : four.layers) CHECK(l.bits == 4);
    CHECK(kv_layer_bits(t4, 3) == 4);
}

TEST_CASE("kv plan: vllm-skip is the fp16 layers on one line", "[export][kv_plan]") {
    CHECK(vllm_skip_text(sample_plan()) == "2 3\n");
    CHECK(vllm_skip_text(make_kv_plan(make_table({0, 1, 2, 3}), "t", "", {}, std::nullopt)) == "\n");
    CHECK(vllm_skip_text(make_kv_plan(make_table({1}), "t", "", {}, std::vector<int>{1})) == "0 1 2 3\n");
}

TEST_CASE("kv plan: modelopt names each fp16 layer's attention module", "[export][kv_plan]") {
    const std::string want = std::string(R"({
    "producer": {
        "name": "pkv",
        "version": ")") + PKV_VERSION +
                             R"("
    },
    "quantization": {
        "exclude_modules": [
            "model.layers.2.self_attn",
            "model.layers.3.self_attn"
        ],
        "kv_cache_quant_algo": "FP8",
        "quant_algo": null
    }
}
)";
    CHECK(modelopt_kv_text(sample_plan(), "FP8") == want);
    CHECK(modelopt_kv_config(sample_plan(), "NVFP4")["quantization"]["kv_cache_quant_algo"] == "NVFP4");

    // Nothing quantized: no KV cache algorithm at all, as ModelOpt writes an unquantized cache.
    const json none = modelopt_kv_config(make_kv_plan(make_table({0}), "t", "", {}, std::vector<int>{0}), "FP8");
    CHECK(none["quantization"]["kv_cache_quant_algo"].is_null());
    CHECK(none["quantization"]["exclude_modules"].size() == 4);
    // Nothing fp16: no exclusion.
    const json all = modelopt_kv_config(make_kv_plan(make_table({0, 1, 2, 3}), "t", "", {}, std::nullopt), "INT8");
    CHECK(all["quantization"]["exclude_modules"] == json::array());
    CHECK(all["quantization"]["kv_cache_quant_algo"] == "INT8");

    ErrorCode code{};
    CHECK(error_of([] { modelopt_kv_config(sample_plan(), "fp8"); }, &code) ==
          "--kv-cache-algo: expected FP8, INT8, NVFP4, NVFP4_AFFINE, got 'fp8'");
    CHECK(code == ErrorCode::invalid_argument);
}

TEST_CASE("kv plan: kv-plan-json, every layer with its cache, bits and reasons", "[export][kv_plan]") {
    const json prov = {{"tool", "pkv"}, {"argv", {"pkv", "export"}}};
    const std::string want = R"({
 "format": "pkv.kv_plan",
 "format_version": "1.1",
 "provenance": {"argv":["pkv","export"],"tool":"pkv"},
 "table": {"format_version":"1.1","group":32,"path":"t.safetensors","window":16},
 "model": {"arch":"llama","head_dim":8,"n_head_kv":3,"n_layer":4,"name":"tiny-llama","sha256":")" +
                             std::string(64, 'a') + R"("},
 "sources": {"keep_fp16_layers":[3],"report":{"keep_fp16_layers":[2],"path":"r.json"}},
 "fp16_layers": [2,3],
 "quantized_layers": [0,1],
 "layers": [
  {"layer":0,"cache":"patternkv","bits":2,"reasons":[]},
  {"layer":1,"cache":"patternkv","bits":2,"reasons":[]},
  {"layer":2,"cache":"fp16","bits":16,"reasons":["report"]},
  {"layer":3,"cache":"fp16","bits":16,"reasons":["not_calibrated","keep_fp16_layers"]}
 ]
}
)";
    const json doc = kv_plan_json(sample_plan(), prov);
    CHECK(kv_plan_text(doc) == want);
    CHECK(json::parse(kv_plan_text(doc)) == doc);

    // Without a report or option the sources are null.
    const json bare = kv_plan_json(make_kv_plan(make_table({0, 2}), "t", "", {}, std::nullopt), prov);
    CHECK(bare["sources"] == json({{"report", nullptr}, {"keep_fp16_layers", nullptr}}));
    CHECK(bare["layers"][1]["reasons"] == json::array({"not_calibrated"}));
}

TEST_CASE("kv plan: the report must be an analyze report of the table's model", "[export][kv_plan]") {
    const PatternTable t = make_table();  // layers 0, 2 of 4; sha256 "aa..."
    auto layers_of = [&](const json& r) { return report_keep_fp16_layers(r, "r.json", t, "t.safetensors"); };
    // Upper-case hex matches; repeats collapse.
    CHECK(layers_of(tiny_report({3, 1, 3})) == std::vector<int>{1, 3});
    CHECK(layers_of(tiny_report({})).empty());
    json no_sha = tiny_report({1});
    no_sha.erase("provenance");
    CHECK(layers_of(no_sha) == std::vector<int>{1});

    auto refused = [&](json r, ErrorCode want_code) {
        ErrorCode code{};
        const std::string msg = error_of([&] { layers_of(r); }, &code);
        CHECK(code == want_code);
        return msg;
    };
    const auto inv = ErrorCode::invalid_argument;
    json r = tiny_report({1});
    r["format"] = "pkv.eval_report";
    CHECK(refused(r, inv) ==
          R"(r.json: format: expected "pkv.analyze_report" (a report of pkv analyze --json), got "pkv.eval_report")");
    r = tiny_report({1});
    r["format_version"] = "2.0";
    CHECK(refused(r, inv) == R"(r.json: format_version: expected major version 1 ("1.x"), got "2.0")");
    r = tiny_report({1});
    r["model"]["n_layer"] = 30;
    CHECK(refused(r, inv) ==
          "r.json: model.n_layer: expected 4 (as t.safetensors), got 30: the report is for another model");
    r = tiny_report({1});
    r["model"]["head_dim"] = 64;
    CHECK_THAT(refused(r, inv), ContainsSubstring("r.json: model.head_dim: expected 8 (as t.safetensors), got 64"));
    r = tiny_report({1});
    r["model"].erase("n_head_kv");
    CHECK(refused(r, inv) == "r.json: model.n_head_kv: expected an integer, got nothing");
    r = tiny_report({1});
    r["provenance"]["dump"]["model"]["sha256"] = std::string(64, 'b');
    CHECK(refused(r, inv) == fmt::format("r.json: provenance.dump.model.sha256: expected {} (as t.safetensors), got "
                                         "{}: the report is for another model file",
                                         std::string(64, 'a'), std::string(64, 'b')));
    r = tiny_report({1});
    r["fragile"].erase("keep_fp16_layers");
    CHECK(refused(r, inv) == "r.json: fragile.keep_fp16_layers: expected an array of layer indices, got nothing");
    r = tiny_report({1});
    r["fragile"]["keep_fp16_layers"] = json::array({1, "2"});
    CHECK(refused(r, inv) == R"(r.json: fragile.keep_fp16_layers: expected layer indices (integers), got "2")");
    CHECK(refused(tiny_report({1, 4}), ErrorCode::out_of_range) ==
          "r.json: fragile.keep_fp16_layers: layer 4 is out of range: expected 0-3");
    CHECK(refused(json::array(), inv) ==
          "r.json: format: expected \"pkv.analyze_report\" (a report of pkv analyze "
          "--json), got nothing");
}

TEST_CASE("kv plan: a report pkv analyze wrote is read as it is", "[export][kv_plan]") {
    test::TempDir dir;
    const std::string dump = dir.path + "/d.h5";
    const test::SynthSpec spec;  // model "synthetic": 3 layers, 2 KV heads, head_dim 8
    test::write_synth_dump(dump, spec);
    AnalyzeConfig c;
    c.dump_path = dump;
    c.methods = {KvMethod::fp16, KvMethod::kivi};
    c.bits = {2};
    c.group = 8;
    c.window = 8;
    json report = analyze_report_json(run_analyze(c));
    PatternTable t = make_table({0, 2}, spec.n_head_kv, 4, 5, spec.head_dim);
    t.model.n_layer = spec.n_layer_model;
    t.model.n_head = spec.n_head;
    const std::vector<int> natural = report["fragile"]["keep_fp16_layers"].get<std::vector<int>>();
    CHECK(report_keep_fp16_layers(report, "r.json", t, "t") == natural);
    report["fragile"]["keep_fp16_layers"] = {2};
    CHECK(report_keep_fp16_layers(report, "r.json", t, "t") == std::vector<int>{2});
    // The dump records the model's fingerprint, and another table's is refused.
    t.model.sha256 = std::string(64, 'c');
    CHECK_THAT(error_of([&] { report_keep_fp16_layers(report, "r.json", t, "t"); }),
               ContainsSubstring("provenance.dump.model.sha256: expected cccc"));
}

TEST_CASE("kv plan: option layers out of range are refused", "[export][kv_plan]") {
    ErrorCode code{};
    CHECK(error_of(
              [] {
                  make_kv_plan(make_table(), "t.safetensors", "", {}, std::vector<int>{0, 4});
              },
              &code) == "--keep-fp16-layers: layer 4 is out of range: t.safetensors is for a model with layers 0-3");
    CHECK(code == ErrorCode::out_of_range);
    CHECK_THAT(error_of([] { make_kv_plan(make_table(), "t.safetensors", "r.json", {9}, std::nullopt); }),
               ContainsSubstring("r.json: fragile.keep_fp16_layers: layer 9 is out of range"));
}

TEST_CASE("kv plan: export_kv_plan writes each format and refuses bad options", "[export][kv_plan]") {
    pkv_test::ScratchDir dir;
    const std::string table = dir.path("t.safetensors"), report = dir.path("r.json");
    write_pattern_table(make_table({0, 1, 2}), table, false);
    std::ofstream(report) << tiny_report({2}).dump(1);

    KvPlanOptions o;
    o.report_path = report;
    o.keep_fp16_layers = std::vector<int>{3};
    o.argv = {"pkv", "export", "--table", table};
    o.format = "vllm-skip";
    KvPlanSummary s = export_kv_plan(table, dir.path("skip.txt"), o);
    CHECK(slurp(dir.path("skip.txt")) == "2 3\n");
    CHECK(s.fp16_layers == std::vector<int>{2, 3});
    CHECK(s.quantized == 2);
    CHECK(s.n_layer == 4);
    CHECK(s.bytes == 4);

    o.format = "modelopt";
    export_kv_plan(table, dir.path("hf_quant_config.json"), o);
    CHECK(slurp(dir.path("hf_quant_config.json")) == modelopt_kv_text(sample_plan(), "FP8"));

    o.format = "kv-plan-json";
    export_kv_plan(table, dir.path("plan.json"), o);
    const json plan = json::parse(slurp(dir.path("plan.json")));
    CHECK(plan["provenance"]["command"] == "export");
    CHECK(plan["provenance"]["argv"] == json(o.argv));
    CHECK(plan["table"]["path"] == table);
    CHECK(plan["sources"]["report"]["path"] == report);
    CHECK(plan["fp16_layers"] == json::array({2, 3}));
    CHECK(plan["layers"][3]["reasons"] == json::array({"not_calibrated", "keep_fp16_layers"}));

    ErrorCode code{};
    CHECK(error_of([&] { export_kv_plan(table, dir.path("plan.json"), o); }, &code) ==
          dir.path("plan.json") + ": output exists; pass --force to overwrite it");
    CHECK(code == ErrorCode::failed_precondition);
    o.force = true;
    CHECK(error_of([&] { export_kv_plan(table, dir.path("plan.json"), o); }).empty());

    KvPlanOptions bad = o;
    bad.format = "vllm";
    CHECK(error_of([&] { export_kv_plan(table, dir.path("x"), bad); }) ==
          "--format: expected vllm-skip, modelopt or kv-plan-json, got 'vllm'");
    bad = o;
    bad.format = "vllm-skip";
    bad.kv_cache_algo = "FP8";
    CHECK(error_of([&] { export_kv_plan(table, dir.path("x"), bad); }, &code) ==
          "--kv-cache-algo: only with --format modelopt, got --format vllm-skip");
    CHECK(code == ErrorCode::invalid_argument);
    bad.format = "modelopt";
    bad.kv_cache_algo = "INT4";
    CHECK_THAT(error_of([&] { export_kv_plan(table, dir.path("x"), bad); }),
               ContainsSubstring("--kv-cache-algo: expected FP8, INT8, NVFP4, NVFP4_AFFINE, got 'INT4'"));
    bad = o;
    std::ofstream(dir.path("broken.json")) << "{\"format\": ";
    bad.report_path = dir.path("broken.json");
    CHECK_THAT(error_of([&] { export_kv_plan(table, dir.path("x"), bad); }, &code),
               ContainsSubstring(dir.path("broken.json") + ": not valid JSON"));
    CHECK(code == ErrorCode::invalid_argument);
    bad.report_path = dir.path("missing.json");
    CHECK(error_of([&] { export_kv_plan(table, dir.path("x"), bad); }) ==
          dir.path("missing.json") + ": cannot open the report");
    bad = o;
    bad.keep_fp16_layers = std::vector<int>{7};
    CHECK_THAT(error_of([&] { export_kv_plan(table, dir.path("x"), bad); }, &code),
               ContainsSubstring("--keep-fp16-layers: layer 7 is out of range"));
    CHECK(code == ErrorCode::out_of_range);
    // A refused export leaves no output behind.
    CHECK_FALSE(std::ifstream(dir.path("x")).good());
}

TEST_CASE("kv plan: kv-plan-json conforms to schemas/kv_plan.schema.json", "[export][kv_plan][schema]") {
    if (!have_jsonschema())
        PKV_SKIP("/usr/bin/python3 has no jsonschema with Draft202012Validator (python3-jsonschema)");
    const json prov = {{"tool", "pkv"},       {"version", "0.1.0"}, {"commit", "unknown"},
                       {"command", "export"}, {"argv", {"pkv"}},    {"created_utc", "2026-11-29T05:00:00Z"}};
    const json doc = kv_plan_json(sample_plan(), prov);
    CHECK(schema_errors(doc) == "");
    PatternTable synthetic = make_table({0, 2});
    synthetic.model.sha256 = "";
    CHECK(schema_errors(kv_plan_json(make_kv_plan(synthetic, "t", "", {}, std::nullopt), prov)) == "");
    // A table with a width allocation: per-head widths, a layer fp16 for a head kept fp16.
    PatternTable alloc = make_table({0, 2});
    alloc.alloc_budget = 4.0;
    alloc.alloc_bits = 3.9;
    alloc.layers[0].k_bits = alloc.layers[0].v_bits = {2, 3, 8};
    alloc.layers[1].k_bits = alloc.layers[1].v_bits = {2, 16, 2};
    const json with_widths = kv_plan_json(make_kv_plan(alloc, "t", "", {}, std::nullopt), prov);
    CHECK(with_widths["layers"][2]["reasons"] == json({"allocation"}));
    CHECK(schema_errors(with_widths) == "");
    json bad_width = with_widths;
    bad_width["layers"][0]["k_bits"][0] = 5;
    CHECK_THAT(schema_errors(bad_width), ContainsSubstring("layers/0/k_bits/0"));

    json bad = doc;
    bad["layers"][0]["cache"] = "fp8";
    CHECK_THAT(schema_errors(bad), ContainsSubstring("layers/0/cache"));
    bad = doc;
    bad["layers"][2]["reasons"] = json::array();  // an fp16 layer says why
    CHECK_THAT(schema_errors(bad), ContainsSubstring("layers/2"));
    bad = doc;
    bad["sources"]["extra"] = 1;
    CHECK_THAT(schema_errors(bad), ContainsSubstring("Additional properties"));
    bad = doc;
    bad.erase("fp16_layers");
    CHECK_THAT(schema_errors(bad), ContainsSubstring("'fp16_layers' is a required property"));
}
