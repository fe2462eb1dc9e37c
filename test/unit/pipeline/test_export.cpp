// pkv export of pattern tables: key dim order permutation, safetensors / GGUF / JSON
// encodings, options and bad input; info and validate on tables.
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/gguf/gguf.h"
#include "pkv/pipeline/export.h"
#include "pkv/pipeline/inspect.h"
#include "pkv/table/safetensors.h"
#include "support/error_of.h"
#include "support/scratch_dir.h"
#include "unit/table/table_fixture.h"

using namespace pkv;
using pkv_test::make_table;

namespace {

std::vector<uint8_t> slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

using pkv_test::error_of;

}  // namespace

TEST_CASE("key dim order: hf[i] = gguf[2i], hf[i + D/2] = gguf[2i + 1]", "[table][export]") {
    const float g[6] = {0, 1, 2, 3, 4, 5};
    float h[6], back[6];
    key_dims_gguf_to_hf(g, h, 6);
    CHECK(std::vector<float>(h, h + 6) == std::vector<float>{0, 2, 4, 1, 3, 5});
    key_dims_hf_to_gguf(h, back, 6);
    CHECK(std::vector<float>(back, back + 6) == std::vector<float>(g, g + 6));

    const PatternTable t = make_table();
    const PatternTable hf = with_key_dim_order(t, "hf");
    CHECK(hf.key_dim_order == "hf_half_split");
    const int D = 8;
    for (size_t l = 0; l < t.layers.size(); ++l) {
        const auto &a = t.layers[l].k_patterns, &b = hf.layers[l].k_patterns;
        for (size_t r = 0; r < a.size(); r += D)
            for (int i = 0; i < D / 2; ++i) {
                CHECK(b[r + i] == a[r + 2 * i]);
                CHECK(b[r + i + D / 2] == a[r + 2 * i + 1]);
            }
        CHECK(hf.layers[l].v_patterns == t.layers[l].v_patterns);  // values never move
        CHECK(hf.layers[l].k_counts == t.layers[l].k_counts);
    }
    const PatternTable back_t = with_key_dim_order(hf, "gguf_interleaved");
    CHECK(encode_pattern_table(back_t) == encode_pattern_table(t));
    CHECK(encode_pattern_table(with_key_dim_order(t, "gguf")) == encode_pattern_table(t));  // already there

    CHECK_THROWS_WITH(with_key_dim_order(t, "neox"), ContainsSubstring("expected gguf or hf, got 'neox'"));
    PatternTable rot = make_table();
    rot.rotation = "hadamard";
    ErrorCode code{};
    CHECK_THAT(error_of([&] { with_key_dim_order(rot, "hf"); }, &code),
               ContainsSubstring("a table with pkv.rotation \"hadamard\" cannot be re-ordered"));
    CHECK(code == ErrorCode::unsupported);
}

TEST_CASE("export safetensors: hf and back is the same file, and f16 patterns", "[table][export]") {
    pkv_test::ScratchDir dir;
    const std::string in = dir.path("t.safetensors");
    write_pattern_table(make_table(), in, false);
    ExportOptions o;
    o.format = "safetensors";
    o.key_order = "hf";
    const ExportSummary s = export_pattern_table(in, dir.path("hf.safetensors"), o);
    CHECK(s.key_dim_order == "hf_half_split");
    CHECK(s.tensors == 14);
    CHECK(s.bytes == slurp(dir.path("hf.safetensors")).size());
    CHECK(read_pattern_table(dir.path("hf.safetensors")).key_dim_order == "hf_half_split");
    o.key_order = "gguf";
    export_pattern_table(dir.path("hf.safetensors"), dir.path("back.safetensors"), o);
    CHECK(slurp(dir.path("back.safetensors")) == slurp(in));

    o.key_order = "";
    o.dtype = "f16";
    export_pattern_table(in, dir.path("h.safetensors"), o);
    const SafetensorsFile f = SafetensorsFile::open(dir.path("h.safetensors"));
    CHECK(f.tensor("layers.2.v_patterns").dtype == "F16");
    CHECK(f.tensor("layers.2.v_clip").dtype == "F32");
    CHECK(validate_pattern_table(dir.path("h.safetensors")).empty());
}

TEST_CASE("export gguf: typed pkv.* keys, ne fastest first, every value", "[table][export]") {
    pkv_test::ScratchDir dir;
    PatternTable t = make_table();
    t.calibration["seed"] = 99;
    t.layers[0].window = 512;
    t.layers[0].rope_base = 10000.0;
    t.layers[1].rope_base = 0.1 + 0.2;  // f64 in the GGUF: every digit survives
    const std::string in = dir.path("t.safetensors");
    write_pattern_table(t, in, false);
    for (const char* dtype : {"f32", "f16"}) {
        INFO(dtype);
        ExportOptions o;
        o.format = "gguf";
        o.dtype = dtype;
        const std::string out = dir.path(std::string("t-") + dtype + ".gguf");
        export_pattern_table(in, out, o);
        const auto g = GgufFile::open(out);
        CHECK(g->get_string("general.type") == "pkv_patterns");
        CHECK(g->get_string("general.name") == "tiny-llama");
        CHECK(g->get_string("pkv.format") == "pkv.pattern_table");
        CHECK(g->get_string("pkv.format_version") == "1.1");
        CHECK(g->get_string("pkv.model.sha256") == t.model.sha256);
        CHECK(g->get_u64("pkv.model.head_dim") == 8);
        CHECK(g->get_u64("pkv.model.n_head_kv") == 3);
        CHECK(g->get_int_array("pkv.layers") == std::vector<int64_t>{0, 2});
        CHECK(g->get("pkv.layers.window").array_type == GgufType::I32);
        CHECK(g->get_int_array("pkv.layers.window") == std::vector<int64_t>{512, 0});
        const GgufValue& bases = g->get("pkv.layers.rope_base");
        REQUIRE(bases.array_type == GgufType::F64);
        const auto& items = std::get<std::vector<GgufValue>>(bases.value);
        REQUIRE(items.size() == 2);
        CHECK(std::get<double>(items[0].value) == 10000.0);
        CHECK(std::get<double>(items[1].value) == 0.1 + 0.2);
        CHECK(g->get_string("pkv.key.dim_order") == "gguf_interleaved");
        CHECK(g->get_u64("pkv.quant.bits") == 2);
        CHECK(g->get_u64("pkv.k_patterns") == 4);
        CHECK(g->get_u64("pkv.v_patterns") == 5);
        CHECK(nlohmann::json::parse(g->get_string("pkv.calibration")) == t.calibration);
        CHECK(g->tensors().size() == 14);
        const GgufTensorInfo& kp = g->tensor("blk.2.pkv_k_patterns");
        CHECK(kp.ne == std::vector<uint64_t>{8, 4, 3});
        const uint8_t* kd = g->tensor_data(kp);
        for (size_t i = 0; i < t.layers[1].k_patterns.size(); ++i) {
            float v;
            if (std::string(dtype) == "f16") {
                uint16_t h;
                std::memcpy(&h, kd + 2 * i, 2);
                v = half_to_float(h);
                CHECK(v == half_to_float(float_to_half(t.layers[1].k_patterns[i])));
            } else {
                std::memcpy(&v, kd + 4 * i, 4);
                CHECK(v == t.layers[1].k_patterns[i]);
            }
        }
        const GgufTensorInfo& vc = g->tensor("blk.0.pkv_v_counts");
        CHECK(vc.ne == std::vector<uint64_t>{5, 3});
        CHECK(vc.type_id == 27);
        std::vector<int64_t> counts(15);
        std::memcpy(counts.data(), g->tensor_data(vc), 15 * 8);
        CHECK(counts == t.layers[0].v_counts);
        const GgufTensorInfo& gz = g->tensor("blk.0.pkv_v_gate_z");
        CHECK(gz.ne == std::vector<uint64_t>{3});
        CHECK(gz.type_id == 0);
    }
}

TEST_CASE("export json: metadata with calibration parsed, tensors as nested arrays", "[table][export]") {
    PatternTable t = make_table();
    t.layers[0].v_patterns[1] = 0.1f;
    t.layers[0].window = 512;
    t.layers[0].rope_base = 10000.0;
    t.layers[1].rope_base = 1e6;
    const nlohmann::json j = table_to_json(t, PatternDtype::f32);
    CHECK(j["format"] == "pkv.pattern_table");
    CHECK(j["format_version"] == "1.1");
    CHECK(j["layers"] == nlohmann::json::parse(R"([{"layer": 0, "window": 512, "rope_base": 10000.0},
                                                   {"layer": 2, "window": 0, "rope_base": 1000000.0}])"));
    CHECK(j["metadata"]["pkv.layers.window"] == "512,0");
    CHECK(j["metadata"]["pkv.layers.rope_base"] == "10000,1000000");
    CHECK(j["metadata"]["pkv.quant.group"] == "32");
    CHECK(j["metadata"]["pkv.calibration"]["seed"] == 1234);
    CHECK(j["tensors"].size() == 14);
    const auto& kp = j["tensors"]["layers.2.k_patterns"];
    CHECK(kp["dtype"] == "F32");
    CHECK(kp["shape"] == nlohmann::json({3, 4, 8}));
    CHECK(kp["data"][2][3][7].get<float>() == t.layers[1].k_patterns[(2 * 4 + 3) * 8 + 7]);
    CHECK(j["tensors"]["layers.0.v_patterns"]["data"][0][0][1].dump() == "0.1");  // shortest float repr
    CHECK(j["tensors"]["layers.0.k_counts"]["data"][1][0] == t.layers[0].k_counts[4]);
    t.layers[0].k_clip[0] = std::numeric_limits<float>::quiet_NaN();
    CHECK(table_to_json(t, PatternDtype::f32)["tensors"]["layers.0.k_clip"]["data"][0].is_null());
}

TEST_CASE("export of a 1.0 table stays 1.0: no geometry is invented", "[table][export]") {
    pkv_test::ScratchDir dir;
    PatternTable t = make_table();
    t.layer_geometry = false;
    const std::string in = dir.path("t10.safetensors");
    write_pattern_table(t, in, false);
    CHECK(SafetensorsFile::open(in).metadata().at("pkv.format_version") == "1.0");
    CHECK(SafetensorsFile::open(in).metadata().count("pkv.layers.window") == 0);
    ExportOptions o;
    o.format = "gguf";
    export_pattern_table(in, dir.path("t.gguf"), o);
    const auto g = GgufFile::open(dir.path("t.gguf"));
    CHECK(g->get_string("pkv.format_version") == "1.0");
    CHECK_FALSE(g->has("pkv.layers.window"));
    CHECK_FALSE(g->has("pkv.layers.rope_base"));
    o.format = "safetensors";
    o.key_order = "hf";
    export_pattern_table(in, dir.path("hf.safetensors"), o);
    CHECK_FALSE(read_pattern_table(dir.path("hf.safetensors")).layer_geometry);
    const nlohmann::json j = table_to_json(read_pattern_table(in), PatternDtype::f32);
    CHECK(j["format_version"] == "1.0");
    CHECK(j["layers"][1] == nlohmann::json::parse(R"({"layer": 2, "window": null, "rope_base": null})"));
}

TEST_CASE("export refuses bad options, existing outputs and corrupt tables", "[table][export]") {
    pkv_test::ScratchDir dir;
    const std::string in = dir.path("t.safetensors");
    write_pattern_table(make_table(), in, false);
    ErrorCode code{};
    ExportOptions o;
    o.format = "onnx";
    CHECK(error_of([&] { export_pattern_table(in, dir.path("x"), o); }, &code) ==
          "--format: expected safetensors, gguf or json, got 'onnx'");
    CHECK(code == ErrorCode::invalid_argument);
    o.format = "json";
    o.key_order = "neox";
    CHECK(error_of([&] { export_pattern_table(in, dir.path("x"), o); }) ==
          "--key-order: expected gguf or hf, got 'neox'");
    o.key_order = "";
    o.dtype = "bf16";
    CHECK(error_of([&] { export_pattern_table(in, dir.path("x"), o); }) == "--dtype: expected f32 or f16, got 'bf16'");
    o.dtype = "f32";
    export_pattern_table(in, dir.path("x.json"), o);
    CHECK(error_of([&] { export_pattern_table(in, dir.path("x.json"), o); }, &code) ==
          dir.path("x.json") + ": output exists; pass --force to overwrite it");
    CHECK(code == ErrorCode::failed_precondition);
    o.force = true;
    export_pattern_table(in, dir.path("x.json"), o);
    std::vector<uint8_t> bytes = slurp(in);
    bytes.resize(bytes.size() - 3);
    const std::string cut = dir.write("cut.safetensors", bytes);
    CHECK_THAT(error_of([&] { export_pattern_table(cut, dir.path("y.json"), o); }, &code),
               ContainsSubstring("cut.safetensors: "));
    CHECK(code == ErrorCode::data_loss);
    CHECK_FALSE(std::ifstream(dir.path("y.json")).good());
}

TEST_CASE("info and validate recognise pattern tables", "[table][export]") {
    pkv_test::ScratchDir dir;
    PatternTable t = make_table();
    t.calibration["tokens"] = {{"train", 900}, {"holdout", 100}};
    t.calibration["heads"] = {
        {{"layer", 0}, {"head", 0}, {"k", {{"heldout", {{"nmse_minmax", 0.2}, {"nmse_fitted", 0.1}}}}}},
        {{"layer", 0}, {"head", 1}, {"k", {{"heldout", {{"nmse_minmax", 0.4}, {"nmse_fitted", 0.3}}}}}}};
    const std::string p = dir.path("t.safetensors");
    write_pattern_table(t, p, false);
    CHECK(detect_file_kind(p) == FileKind::pattern_table);
    std::string text = describe_file(p, false);
    CHECK_THAT(text, ContainsSubstring("pkv.pattern_table 1.1"));
    CHECK_THAT(text, ContainsSubstring("model: tiny-llama (llama), 4 layers, 6 heads, 3 KV heads, head_dim 8"));
    CHECK_THAT(text, ContainsSubstring("layers: 2 of 4 calibrated: 0,2"));
    CHECK(text.find("local") == std::string::npos);  // every layer global: no geometry line
    CHECK_THAT(text, ContainsSubstring("Mk 4 key, Mv 5 value per head (F32)"));
    CHECK_THAT(text, ContainsSubstring("tokens train 900 holdout 100"));
    CHECK_THAT(text, ContainsSubstring("held-out K (mean over 2 heads): nmse_fitted 0.2 nmse_minmax 0.3"));
    CHECK_THAT(text, ContainsSubstring("findings: none"));
    const nlohmann::json j = describe_file_json(p);
    CHECK(j["kind"] == "pattern_table");
    CHECK(j["metadata"]["pkv.calibration"]["tokens"]["train"] == 900);
    CHECK(j["tensors"]["layers.0.k_patterns"]["shape"] == nlohmann::json({3, 4, 8}));
    CHECK(validate_file(p).empty());
    {
        PatternTable g = make_table({0, 1, 2, 3});
        for (int l : {0, 1, 3}) g.layers[size_t(l)].window = 512, g.layers[size_t(l)].rope_base = 10000.0;
        g.layers[2].rope_base = 1e6;
        const std::string gp = dir.path("g.safetensors");
        write_pattern_table(g, gp, false);
        text = describe_file(gp, false);
        CHECK_THAT(text,
                   ContainsSubstring("layers: 3 local (window 512, RoPE base 10000), 1 global (RoPE base 1000000)\n"));
    }

    // A damaged table is still routed to the table reader, which names the problem.
    std::vector<uint8_t> bytes = slurp(p);
    bytes.resize(bytes.size() - 8);
    const std::string cut = dir.write("cut.safetensors", bytes);
    CHECK(detect_file_kind(cut) == FileKind::pattern_table);
    const auto problems = validate_file(cut);
    REQUIRE(problems.size() == 1);
    CHECK_THAT(problems[0], ContainsSubstring("run past the data buffer"));
}
