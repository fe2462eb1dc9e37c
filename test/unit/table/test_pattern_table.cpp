// Pattern table v1: round trip, every check_pattern_table failure, every read failure
// and every pattern_table_findings finding (none on a clean table).
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/pipeline/export.h"
#include "pkv/table/pattern_table.h"
#include "pkv/table/safetensors.h"
#include "support/scratch_dir.h"
#include "table_fixture.h"

using namespace pkv;
using pkv_test::make_table;

namespace {

std::string check_error(const PatternTable& t) {
    try {
        check_pattern_table(t);
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::internal);  // inputs are checked before a table is built
        return e.what();
    }
    return "";
}

using Tensors = std::map<std::string, StTensor>;
using Meta = std::map<std::string, std::string>;

/// Writes the fixture table after `mutate` changed its tensors or metadata, reads it back
/// and returns the error ("" when it reads). The file is named t.safetensors.
std::string read_error(const std::function<void(Tensors&, Meta&)>& mutate, ErrorCode* code = nullptr) {
    const SafetensorsFile good = SafetensorsFile::parse(encode_pattern_table(make_table()), "good");
    Tensors tensors;
    for (const std::string& n : good.names()) tensors[n] = good.tensor(n).to_tensor();
    Meta meta = good.metadata();
    mutate(tensors, meta);
    SafetensorsWriter w;
    for (auto& [n, t] : tensors) w.add(t);
    for (auto& [k, v] : meta) w.set_metadata(k, v);
    pkv_test::ScratchDir dir;
    const std::string p = dir.path("t.safetensors");
    w.write(p, false);
    try {
        read_pattern_table(p);
    } catch (const Error& e) {
        if (code) *code = e.code();
        return std::string(e.what()).substr(p.size() - std::string("t.safetensors").size());
    }
    return "";
}

std::vector<std::string> findings_of(const std::function<void(PatternTable&)>& mutate) {
    PatternTable t = make_table();
    mutate(t);
    return pattern_table_findings(t);
}

}  // namespace

TEST_CASE("pattern table: tensor names", "[table]") {
    CHECK(ptable::tensor_name(0, ptable::kKPatterns) == "layers.0.k_patterns");
    CHECK(ptable::tensor_name(17, ptable::kVGateZ) == "layers.17.v_gate_z");
}

TEST_CASE("pattern table round trip: every field, bit for bit", "[table]") {
    pkv_test::ScratchDir dir;
    PatternTable t = make_table({1, 3}, 2, 3, 4, 16);
    t.key_basis = ptable::kBasisPre;
    t.key_dim_order = "hf_half_split";
    t.rotation = ptable::kRotationHadamard;
    t.rotation_seed = 18446744073709551615ull;
    t.bits = 3;
    t.assign = ptable::kAssignL2;
    t.layers[0].k_patterns[5] = -0.0f;
    t.layers[1].v_patterns[2] = std::numeric_limits<float>::denorm_min();
    t.layers[1].k_counts[0] = int64_t(1) << 40;
    t.layers[1].k_counts[3] = (int64_t(1) << 40) + 1;  // keeps head totals equal
    t.layers[0].window = 512;
    t.layers[0].rope_base = 10000.0;
    t.layers[1].rope_base = 0.1 + 0.2;  // 0.30000000000000004: needs all 17 digits
    const std::string p = dir.path("t.safetensors");
    write_pattern_table(t, p, false);
    CHECK(is_pattern_table_file(p));

    const PatternTable r = read_pattern_table(p);
    CHECK(r.model.name == t.model.name);
    CHECK(r.model.arch == "llama");
    CHECK(r.model.sha256 == t.model.sha256);
    CHECK(r.model.n_layer == 4);
    CHECK(r.model.n_head == 4);
    CHECK(r.model.n_head_kv == 2);
    CHECK(r.model.head_dim == 16);
    CHECK(r.key_basis == "pre_rope");
    CHECK(r.key_dim_order == "hf_half_split");
    CHECK(r.rotation == "hadamard");
    CHECK(r.rotation_seed == 18446744073709551615ull);
    CHECK(r.bits == 3);
    CHECK(r.group == 32);
    CHECK(r.window == 16);
    CHECK(r.assign == "l2");
    CHECK(r.k_patterns == 3);
    CHECK(r.v_patterns == 4);
    CHECK(r.calibration == t.calibration);
    REQUIRE(r.layers.size() == 2);
    for (size_t i = 0; i < 2; ++i) {
        const PatternLayer &a = t.layers[i], &b = r.layers[i];
        CHECK(b.layer == a.layer);
        CHECK(b.window == a.window);
        CHECK(b.rope_base == a.rope_base);
        CHECK(std::memcmp(b.k_patterns.data(), a.k_patterns.data(), a.k_patterns.size() * 4) == 0);
        CHECK(std::memcmp(b.v_patterns.data(), a.v_patterns.data(), a.v_patterns.size() * 4) == 0);
        CHECK(b.k_counts == a.k_counts);
        CHECK(b.v_counts == a.v_counts);
        CHECK(b.k_clip == a.k_clip);
        CHECK(b.v_clip == a.v_clip);
        CHECK(b.v_gate_z == a.v_gate_z);
    }
    CHECK(std::signbit(r.layers[0].k_patterns[5]));
    CHECK(pattern_table_findings(r).empty());

    // Deterministic bytes; a second write needs force.
    CHECK(encode_pattern_table(t) == encode_pattern_table(r));
    CHECK_THROWS_WITH(write_pattern_table(t, p, false), ContainsSubstring("output exists; pass --force"));
    write_pattern_table(t, p, true);

    // The metadata as written: integers in decimal, layers as a comma list.
    const SafetensorsFile f = SafetensorsFile::open(p);
    CHECK(f.metadata().at("pkv.format") == "pkv.pattern_table");
    CHECK(f.metadata().at("pkv.format_version") == "1.1");
    CHECK(f.metadata().at("pkv.layers") == "1,3");
    CHECK(f.metadata().at("pkv.layers.window") == "512,0");
    CHECK(f.metadata().at("pkv.layers.rope_base") == "10000,0.30000000000000004");
    CHECK(f.metadata().at("pkv.quant.bits") == "3");
    CHECK(f.metadata().size() == 23);
    CHECK(f.names().size() == 14);
    CHECK(f.tensor("layers.3.k_counts").dtype == "I64");
    CHECK(f.tensor("layers.3.k_patterns").shape == std::vector<uint64_t>{2, 3, 16});
}

TEST_CASE("is_pattern_table_file recognises tables only", "[table]") {
    pkv_test::ScratchDir dir;
    SafetensorsWriter other;
    other.add({"x", "U8", {1}, {1}});
    other.set_metadata("pkv.format", "pkv.kvdump");
    const std::string p1 = dir.write("other.safetensors", other.encode());
    CHECK_FALSE(is_pattern_table_file(p1));
    CHECK_FALSE(is_pattern_table_file(dir.write("junk.bin", {1, 2, 3})));
    CHECK_FALSE(is_pattern_table_file(dir.path("missing")));
    std::vector<uint8_t> bytes = encode_pattern_table(make_table());
    CHECK(is_pattern_table_file(dir.write("t.safetensors", bytes)));
    bytes.resize(bytes.size() - 4);  // truncated data: still recognised (the reader reports it)
    CHECK(is_pattern_table_file(dir.write("cut.safetensors", bytes)));
}

TEST_CASE("check_pattern_table names every bad field", "[table]") {
    REQUIRE(check_error(make_table()).empty());
    struct Case {
        std::function<void(PatternTable&)> mutate;
        std::string message;
    };
    const std::vector<Case> cases = {
        {[](PatternTable& t) { t.model.arch = ""; }, "pattern table: model.arch: expected a non-empty architecture"},
        {[](PatternTable& t) { t.model.sha256 = "ABC"; },
         "model.sha256: expected 64 lowercase hex digits or empty, got \"ABC\""},
        {[](PatternTable& t) { t.model.n_layer = 0; }, "model.n_layer: expected at least 1, got 0"},
        {[](PatternTable& t) { t.model.n_head = 0; }, "model.n_head: expected at least 1, got 0"},
        {[](PatternTable& t) { t.model.n_head_kv = 4; },
         "model.n_head_kv: expected a positive divisor of n_head 6, got 4"},
        {[](PatternTable& t) { t.model.head_dim = 7; }, "model.head_dim: expected an even number >= 2, got 7"},
        {[](PatternTable& t) { t.key_basis = "rope"; },
         "key_basis: expected \"pre_rope\" or \"post_rope\", got \"rope\""},
        {[](PatternTable& t) { t.key_dim_order = "hf"; },
         "key_dim_order: expected \"gguf_interleaved\" or \"hf_half_split\""},
        {[](PatternTable& t) { t.rotation = "random"; }, "rotation: expected \"none\" or \"hadamard\", got \"random\""},
        {[](PatternTable& t) {
             t.rotation = "hadamard";
             t.model.head_dim = 6;
             for (auto& l : t.layers) l.k_patterns.resize(3 * 4 * 6), l.v_patterns.resize(3 * 5 * 6);
         },
         "rotation: expected a power-of-two head_dim for \"hadamard\", got head_dim 6"},
        {[](PatternTable& t) { t.rotation_seed = 5; }, "rotation_seed: expected 0 without rotation, got 5"},
        {[](PatternTable& t) { t.bits = 5; }, "bits: expected 2, 3, 4 or 8, got 5"},
        {[](PatternTable& t) { t.group = 0; }, "group: expected at least 1, got 0"},
        {[](PatternTable& t) { t.window = -1; }, "window: expected at least 1, got -1"},
        {[](PatternTable& t) { t.assign = "cosine"; }, "assign: expected \"l2\" or \"minmax\", got \"cosine\""},
        {[](PatternTable& t) { t.k_patterns = 0; }, "k_patterns: expected at least 1, got 0"},
        {[](PatternTable& t) { t.v_patterns = 0; }, "v_patterns: expected at least 1, got 0"},
        {[](PatternTable& t) { t.calibration = nlohmann::json::array(); },
         "calibration: expected a JSON object, got array"},
        {[](PatternTable& t) { t.layers.clear(); }, "layers: expected at least one calibrated layer, got none"},
        {[](PatternTable& t) { t.layers[1].layer = 4; }, "layers[1].layer: expected a model layer in [0, 4), got 4"},
        {[](PatternTable& t) { t.layers[1].layer = 0; },
         "layers: expected strictly ascending layer indices, got \"0,0\""},
        {[](PatternTable& t) { t.layers[0].k_patterns.pop_back(); },
         "layers.0.k_patterns: expected 96 values [3, 4, 8], got 95"},
        {[](PatternTable& t) { t.layers[1].v_patterns.push_back(0); },
         "layers.2.v_patterns: expected 120 values [3, 5, 8], got 121"},
        {[](PatternTable& t) { t.layers[0].k_counts.clear(); }, "layers.0.k_counts: expected 12 values [3, 4], got 0"},
        {[](PatternTable& t) { t.layers[0].v_counts.pop_back(); },
         "layers.0.v_counts: expected 15 values [3, 5], got 14"},
        {[](PatternTable& t) { t.layers[0].k_clip.pop_back(); }, "layers.0.k_clip: expected 3 values [3], got 2"},
        {[](PatternTable& t) { t.layers[0].v_clip.push_back(1); }, "layers.0.v_clip: expected 3 values [3], got 4"},
        {[](PatternTable& t) { t.layers[1].v_gate_z.clear(); }, "layers.2.v_gate_z: expected 3 values [3], got 0"},
        {[](PatternTable& t) { t.layers[1].window = -1; },
         "layers[1].window: expected a sliding window >= 0 (0: global), got -1"},
        {[](PatternTable& t) { t.layers[0].rope_base = -10000.0; },
         "layers[0].rope_base: expected a finite RoPE base >= 0 (0: not recorded), got -10000"},
        {[](PatternTable& t) { t.layers[0].rope_base = std::numeric_limits<double>::infinity(); },
         "layers[0].rope_base: expected a finite RoPE base >= 0 (0: not recorded), got inf"},
        {[](PatternTable& t) {
             t.layer_geometry = false;
             t.layers[1].window = 512;
         },
         "layers[1].window/rope_base: expected 0 / 0 in a table without layer geometry (format 1.0), got 512 / 0"},
    };
    for (const Case& c : cases) {
        PatternTable t = make_table();
        c.mutate(t);
        INFO(c.message);
        CHECK_THAT(check_error(t), ContainsSubstring(c.message));
        // The writer refuses the same tables.
        CHECK_THROWS_AS(encode_pattern_table(t), Error);
    }
    // An empty sha256 is allowed (synthetic data).
    PatternTable t = make_table();
    t.model.sha256.clear();
    CHECK(check_error(t).empty());
}

TEST_CASE("read_pattern_table: every read failure is one data_loss line naming file and object", "[table]") {
    REQUIRE(read_error([](Tensors&, Meta&) {}).empty());
    ErrorCode code{};
    // Tensors.
    CHECK(read_error([](Tensors& t, Meta&) { t.erase("layers.2.v_clip"); }, &code) ==
          "t.safetensors::layers.2.v_clip: expected a F32 tensor of shape [3], got none");
    CHECK(code == ErrorCode::data_loss);
    CHECK(read_error([](Tensors& t, Meta&) { t["layers.0.k_counts"].dtype = "F64"; }) ==
          "t.safetensors::layers.0.k_counts: expected dtype I64, got F64");
    CHECK(read_error([](Tensors& t, Meta&) {
              auto& x = t["layers.0.k_patterns"];
              x.dtype = "F64";
              x.shape = {3, 2, 8};
          }) == "t.safetensors::layers.0.k_patterns: expected dtype F32 or F16, got F64");
    CHECK(read_error([](Tensors& t, Meta&) {
              t["layers.0.k_patterns"].shape = {3, 8, 4};
          }) == "t.safetensors::layers.0.k_patterns: expected shape [3, 4, 8], got [3, 8, 4]");
    CHECK(read_error([](Tensors& t, Meta&) {
              auto& x = t["layers.0.k_patterns"];
              x.shape = {3, 2, 8};
              x.data.resize(3 * 2 * 8 * 4);
          }) == "t.safetensors::layers.0.k_patterns: expected shape [3, 4, 8], got [3, 2, 8]");
    CHECK(read_error([](Tensors& t, Meta&) {
              t["layers.2.v_gate_z"].shape = {3, 1};
          }) == "t.safetensors::layers.2.v_gate_z: expected shape [3], got [3, 1]");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.layers"] = "0,1,2"; }) ==
          "t.safetensors::layers.1.k_patterns: expected a F32 tensor of shape [3, 4, 8], got none");
    // Metadata enumerations, versions and format.
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.key.basis"] = "rotated"; }) ==
          "t.safetensors::pkv.key.basis: expected \"pre_rope\" or \"post_rope\", got \"rotated\"");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.key.dim_order"] = "hf"; }) ==
          "t.safetensors::pkv.key.dim_order: expected \"gguf_interleaved\" or \"hf_half_split\", got \"hf\"");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.rotation"] = "givens"; }) ==
          "t.safetensors::pkv.rotation: expected \"none\" or \"hadamard\", got \"givens\"");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.assign"] = "dot"; }) ==
          "t.safetensors::pkv.assign: expected \"l2\" or \"minmax\", got \"dot\"");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.format_version"] = "2.0"; }, &code) ==
          "t.safetensors::pkv.format_version: expected major version 1 (\"1.x\"), got \"2.0\"");
    CHECK(code == ErrorCode::data_loss);
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.format_version"] = "1.7"; }).empty());  // minor versions read
    CHECK_THAT(read_error([](Tensors&, Meta& m) { m["pkv.format_version"] = "1"; }), ContainsSubstring("got \"1\""));
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.format"] = "pkv.kvdump"; }) ==
          "t.safetensors::pkv.format: expected \"pkv.pattern_table\", got \"pkv.kvdump\"");
    // Missing and malformed entries.
    CHECK(read_error([](Tensors&, Meta& m) { m.erase("pkv.quant.window"); }) ==
          "t.safetensors::pkv.quant.window: expected a metadata entry, got none");
    CHECK(read_error([](Tensors&, Meta& m) { m.erase("pkv.format"); }) ==
          "t.safetensors::pkv.format: expected a metadata entry, got none");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.quant.bits"] = "two"; }) ==
          "t.safetensors::pkv.quant.bits: expected a decimal integer, got \"two\"");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.quant.bits"] = "6"; }) ==
          "t.safetensors::pkv.quant.bits: expected 2, 3, 4 or 8, got 6");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.quant.bits"] = "16"; }) ==
          "t.safetensors::pkv.quant.bits: expected an integer in [2, 8], got 16");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.k_patterns"] = "-4"; }) ==
          "t.safetensors::pkv.k_patterns: expected a decimal integer, got \"-4\"");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.model.n_head_kv"] = "4"; }) ==
          "t.safetensors::pkv.model.n_head_kv: expected a divisor of n_head 6, got 4");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.model.head_dim"] = "9"; }) ==
          "t.safetensors::pkv.model.head_dim: expected an even head dimension, got 9");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.model.sha256"] = "xyz"; }) ==
          "t.safetensors::pkv.model.sha256: expected 64 lowercase hex digits or \"\", got \"xyz\"");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.layers"] = "2,0"; }) ==
          "t.safetensors::pkv.layers: expected strictly ascending layers, got \"2,0\"");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.layers"] = "0,4"; }) ==
          "t.safetensors::pkv.layers: expected layers below n_layer 4, got 4");
    CHECK_THAT(read_error([](Tensors&, Meta& m) { m["pkv.layers"] = "0, 2"; }),
               ContainsSubstring("pkv.layers: expected ascending decimal layer indices separated by commas"));
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.rotation.seed"] = "3"; }) ==
          "t.safetensors::pkv.rotation.seed: expected 0 without rotation, got 3");
    CHECK_THAT(
        read_error([](Tensors&, Meta& m) { m["pkv.calibration"] = "{\"tool\":"; }),
        ContainsSubstring("t.safetensors::pkv.calibration: expected a JSON object, got text that does not parse"));
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.calibration"] = "[1]"; }) ==
          "t.safetensors::pkv.calibration: expected a JSON object, got array");
    // Container damage comes from the safetensors reader, with the path.
    pkv_test::ScratchDir dir;
    std::vector<uint8_t> bytes = encode_pattern_table(make_table());
    bytes.resize(bytes.size() - 1);
    const std::string cut = dir.write("cut.safetensors", bytes);
    CHECK_THROWS_WITH(read_pattern_table(cut), ContainsSubstring("cut.safetensors: "));
    // Extra tensors (a later minor version's) are ignored.
    CHECK(read_error([](Tensors& t, Meta&) {
              t["layers.0.k_extra"] = StTensor{"layers.0.k_extra", "U8", {1}, {7}};
          }).empty());
}

TEST_CASE("layer geometry: 1.1 requires and checks both lists, 1.0 reads without them", "[table]") {
    // The fixture (every layer global, no RoPE base) as written, then with `mutate` applied.
    const auto read_with = [](const std::function<void(Meta&)>& mutate) {
        const SafetensorsFile good = SafetensorsFile::parse(encode_pattern_table(make_table()), "good");
        Meta meta = good.metadata();
        mutate(meta);
        SafetensorsWriter w;
        for (const std::string& n : good.names()) w.add(good.tensor(n).to_tensor());
        for (auto& [k, v] : meta) w.set_metadata(k, v);
        pkv_test::ScratchDir dir;
        const std::vector<uint8_t> bytes = w.encode();
        return std::make_pair(read_pattern_table(dir.write("t.safetensors", bytes)), bytes);
    };
    {
        const auto [t, bytes] = read_with([](Meta& m) {
            CHECK(m.at("pkv.layers.window") == "0,0");
            CHECK(m.at("pkv.layers.rope_base") == "0,0");
            m["pkv.layers.window"] = "1024,0";
            m["pkv.layers.rope_base"] = "10000,1e+06";  // any plain decimal, exponents too
        });
        CHECK(t.layer_geometry);
        CHECK(t.layers[0].window == 1024);
        CHECK(t.layers[1].window == 0);
        CHECK(t.layers[0].rope_base == 10000.0);
        CHECK(t.layers[1].rope_base == 1e6);
        const SafetensorsFile again = SafetensorsFile::parse(encode_pattern_table(t), "again");
        CHECK(again.metadata().at("pkv.layers.rope_base") == "10000,1000000");
    }
    {
        // A 1.0 table: no keys, zeros (unknown), and it is written back as the same 1.0 file.
        const auto [t, bytes] = read_with([](Meta& m) {
            m["pkv.format_version"] = "1.0";
            m.erase("pkv.layers.window");
            m.erase("pkv.layers.rope_base");
        });
        CHECK_FALSE(t.layer_geometry);
        for (const PatternLayer& l : t.layers) CHECK((l.window == 0 && l.rope_base == 0.0));
        CHECK(std::string(pattern_table_format_version(t)) == "1.0");
        CHECK(encode_pattern_table(t) == bytes);
    }
    {
        // A 1.0 table that does carry a window list records the geometry (rope bases optional).
        const auto [t, bytes] = read_with([](Meta& m) {
            m["pkv.format_version"] = "1.0";
            m["pkv.layers.window"] = "512,0";
            m.erase("pkv.layers.rope_base");
        });
        CHECK(t.layer_geometry);
        CHECK(t.layers[0].window == 512);
        CHECK(t.layers[0].rope_base == 0.0);
    }
    ErrorCode code{};
    CHECK(read_error([](Tensors&, Meta& m) { m.erase("pkv.layers.window"); }, &code) ==
          "t.safetensors::pkv.layers.window: expected a metadata entry, got none");
    CHECK(code == ErrorCode::data_loss);
    CHECK(read_error([](Tensors&, Meta& m) { m.erase("pkv.layers.rope_base"); }) ==
          "t.safetensors::pkv.layers.rope_base: expected a metadata entry, got none");
    CHECK(read_error([](Tensors&, Meta& m) {
              m["pkv.format_version"] = "1.7";  // later minors too
              m.erase("pkv.layers.rope_base");
          }) == "t.safetensors::pkv.layers.rope_base: expected a metadata entry, got none");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.layers.window"] = "512"; }) ==
          "t.safetensors::pkv.layers.window: expected 2 values, got 1 (one per entry of pkv.layers)");
    CHECK(read_error([](Tensors&, Meta& m) { m["pkv.layers.rope_base"] = "1,2,3"; }) ==
          "t.safetensors::pkv.layers.rope_base: expected 2 values, got 3 (one per entry of pkv.layers)");
    CHECK(read_error([](Tensors&, Meta& m) {
              m["pkv.format_version"] = "1.0";
              m["pkv.layers.window"] = "0,0,0";
          }) == "t.safetensors::pkv.layers.window: expected 2 values, got 3 (one per entry of pkv.layers)");
    for (const char* bad : {"-512", "512.0", "1e3", "0512", " 512", "", "2000000000"}) {
        INFO(bad);
        CHECK(read_error([&](Tensors&, Meta& m) { m["pkv.layers.window"] = std::string("0,") + bad; }) ==
              "t.safetensors::pkv.layers.window: expected a decimal integer in [0, 2^30] (0: global) for layer 2, got "
              "\"" +
                  std::string(bad) + "\"");
    }
    for (const char* bad : {"-1", "nan", "inf", "1e400", "+5", "1.", ".5", "01", "1e", "0x10"}) {
        INFO(bad);
        CHECK(read_error([&](Tensors&, Meta& m) { m["pkv.layers.rope_base"] = std::string(bad) + ",0"; }) ==
              "t.safetensors::pkv.layers.rope_base: expected a finite number >= 0 for layer 0, got \"" +
                  std::string(bad) + "\"");
    }
}

TEST_CASE("read_pattern_table accepts F16 patterns and widens them exactly", "[table]") {
    pkv_test::ScratchDir dir;
    const PatternTable t = make_table();
    const std::string p = dir.write("h.safetensors", encode_table_safetensors(t, PatternDtype::f16));
    CHECK(SafetensorsFile::open(p).tensor("layers.0.k_patterns").dtype == "F16");
    CHECK(SafetensorsFile::open(p).tensor("layers.0.k_counts").dtype == "I64");
    const PatternTable r = read_pattern_table(p);
    for (size_t i = 0; i < t.layers.size(); ++i)
        for (size_t j = 0; j < t.layers[i].v_patterns.size(); ++j)
            CHECK(r.layers[i].v_patterns[j] == half_to_float(float_to_half(t.layers[i].v_patterns[j])));
    CHECK(r.layers[1].k_clip == t.layers[1].k_clip);
}

TEST_CASE("pattern_table_findings: none on a clean table, one line per degenerate content", "[table]") {
    CHECK(pattern_table_findings(make_table()).empty());
    struct Case {
        std::function<void(PatternTable&)> mutate;
        std::string finding;
    };
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    const std::vector<Case> cases = {
        {[&](PatternTable& t) { t.layers[1].k_patterns[1 * 4 * 8 + 2 * 8 + 5] = nan; },
         "layers.2.k_patterns: 1 non-finite value(s) (NaN/Inf), first at head 1, pattern 2, dim 5 (nan)"},
        {[&](PatternTable& t) { t.layers[0].v_patterns[3] = -inf, t.layers[0].v_patterns[9] = inf; },
         "layers.0.v_patterns: 2 non-finite value(s) (NaN/Inf), first at head 0, pattern 0, dim 3 (-inf)"},
        {[&](PatternTable& t) { t.layers[0].k_clip[2] = inf; },
         "layers.0.k_clip: 1 non-finite value(s) (NaN/Inf), first at head 2 (inf)"},
        {[&](PatternTable& t) { t.layers[0].v_gate_z[1] = nan; },
         "layers.0.v_gate_z: 1 non-finite value(s) (NaN/Inf), first at head 1"},
        {[](PatternTable& t) { t.layers[0].k_clip[1] = 0.0f; },
         "layers.0.k_clip: head 1: expected a clip ratio in (0, 1], got 0"},
        {[](PatternTable& t) { t.layers[1].v_clip[0] = 1.5f; },
         "layers.2.v_clip: head 0: expected a clip ratio in (0, 1], got 1.5"},
        {[](PatternTable& t) { t.layers[1].v_clip[2] = -0.25f; },
         "layers.2.v_clip: head 2: expected a clip ratio in (0, 1], got -0.25"},
        {[](PatternTable& t) {
             for (auto& l : t.layers)
                 std::fill(l.k_clip.begin(), l.k_clip.end(), 1.0f), std::fill(l.v_clip.begin(), l.v_clip.end(), 1.0f);
         },
         "k_clip/v_clip: every clip ratio of the table is exactly 1 (nothing fitted)"},
        {[](PatternTable& t) { t.layers[0].v_gate_z[2] = -0.5f; },
         "layers.0.v_gate_z: head 2: expected a gate z >= 0, got -0.5"},
        {[](PatternTable& t) {
             auto& c = t.layers[0].k_counts;  // head 1: move pattern 3's tokens to pattern 0, totals unchanged
             c[4 + 0] += c[4 + 3];
             c[4 + 3] = 0;
         },
         "layers.0.k_counts: head 1: 1 dead pattern(s) of 4 (count 0): 3"},
        {[](PatternTable& t) {
             auto& c = t.layers[1].v_counts;
             c[0] += c[1] + c[4];
             c[1] = c[4] = 0;
         },
         "layers.2.v_counts: head 0: 2 dead pattern(s) of 5 (count 0): 1, 4"},
        {[](PatternTable& t) {
             auto& c = t.layers[0].k_counts;
             c[1] += c[2] + 5;
             c[2] = -5;
         },
         "layers.0.k_counts: head 0: expected counts >= 0, got negative counts at pattern(s) 2"},
        {[](PatternTable& t) {
             auto& p = t.layers[0].v_patterns;  // head 2, pattern 4 := pattern 1 (+ a sub-1e-6 nudge)
             for (int d = 0; d < 8; ++d) p[(2 * 5 + 4) * 8 + d] = p[(2 * 5 + 1) * 8 + d] * (1.0f + 1e-7f);
         },
         "layers.0.v_patterns: head 2: 1 duplicate pattern pair(s) (equal within 1e-6 relative): 1=4"},
        {[](PatternTable& t) {
             auto& p = t.layers[1].k_patterns;  // two all-zero rows are duplicates too
             for (int d = 0; d < 8; ++d) p[0 * 8 + d] = 0, p[2 * 8 + d] = 0;
         },
         "layers.2.k_patterns: head 0: 1 duplicate pattern pair(s) (equal within 1e-6 relative): 0=2"},
        {[](PatternTable& t) { t.layers[1].k_counts[2 * 4 + 1] += 1; },
         "layers.2.k_counts: expected the same count total in every head, got 46, 46, 47"},
    };
    for (const Case& c : cases) {
        const auto f = findings_of(c.mutate);
        INFO(c.finding);
        REQUIRE(f.size() == 1);
        CHECK_THAT(f[0], ContainsSubstring(c.finding));
    }
    // Rows that differ by more than 1e-6 relative are not duplicates.
    CHECK(findings_of([](PatternTable& t) {
              auto& p = t.layers[0].v_patterns;
              for (int d = 0; d < 8; ++d) p[(2 * 5 + 4) * 8 + d] = p[(2 * 5 + 1) * 8 + d] * (1.0f + 1e-5f);
          }).empty());
}

TEST_CASE("validate_pattern_table: read errors and findings as lines, nothing when clean", "[table]") {
    pkv_test::ScratchDir dir;
    const std::string good = dir.path("good.safetensors");
    write_pattern_table(make_table(), good, false);
    CHECK(validate_pattern_table(good).empty());

    PatternTable t = make_table();
    t.layers[0].k_clip[0] = 2.0f;
    t.layers[1].v_gate_z[1] = -1.0f;
    const std::string bad = dir.path("bad.safetensors");
    write_pattern_table(t, bad, false);
    const auto lines = validate_pattern_table(bad);
    REQUIRE(lines.size() == 2);
    CHECK(lines[0] == bad + "::layers.0.k_clip: head 0: expected a clip ratio in (0, 1], got 2");
    CHECK(lines[1] == bad + "::layers.2.v_gate_z: head 1: expected a gate z >= 0, got -1");

    std::vector<uint8_t> bytes = encode_pattern_table(make_table());
    bytes.push_back(0);
    const auto corrupt = validate_pattern_table(dir.write("corrupt.safetensors", bytes));
    REQUIRE(corrupt.size() == 1);
    CHECK_THAT(corrupt[0], ContainsSubstring("corrupt.safetensors: tensors cover"));
}
