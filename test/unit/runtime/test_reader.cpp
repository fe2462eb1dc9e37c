// Runtime pattern-table reader: values read back exactly (F32 and F16), every refusal
// of a declaration mismatch, and every metadata / tensor rule.
#include <cmath>
#include <functional>

#include "catch.h"
#include "pkv/runtime/packed_cache.h"
#include "support/scratch_dir.h"
#include "table_fixture.h"

using namespace rt_test;
using pkv_rt::PatternTable;
using pkv_rt::RuntimeDecl;

namespace {

void check_values_equal(const TableSpec& s, const PatternTable& t) {
    REQUIRE(t.layers() == std::vector<int>{0, 2});
    for (const int l : {0, 2}) {
        const std::string p = "layers." + std::to_string(l) + ".";
        const std::vector<float> kp = float_values(s.tensors.at(p + "k_patterns"));
        const std::vector<float> vp = float_values(s.tensors.at(p + "v_patterns"));
        const std::vector<int64_t> kc = int64_values(s.tensors.at(p + "k_counts"));
        const std::vector<int64_t> vc = int64_values(s.tensors.at(p + "v_counts"));
        const std::vector<float> kclip = float_values(s.tensors.at(p + "k_clip"));
        const std::vector<float> vclip = float_values(s.tensors.at(p + "v_clip"));
        const std::vector<float> z = float_values(s.tensors.at(p + "v_gate_z"));
        for (int h = 0; h < kHeadsKv; ++h) {
            const pkv_rt::HeadView v = t.head(l, h);
            CHECK(v.layer == l);
            CHECK(v.head == h);
            CHECK(v.head_dim == kDim);
            CHECK(v.n_k_patterns == kMk);
            CHECK(v.n_v_patterns == kMv);
            CHECK(v.assign == pkv_rt::Assign::minmax);
            for (int i = 0; i < kMk * kDim; ++i) CHECK(v.k_patterns[i] == kp[static_cast<size_t>(h * kMk * kDim + i)]);
            for (int i = 0; i < kMv * kDim; ++i) CHECK(v.v_patterns[i] == vp[static_cast<size_t>(h * kMv * kDim + i)]);
            for (int i = 0; i < kMk; ++i) CHECK(v.k_counts[i] == kc[static_cast<size_t>(h * kMk + i)]);
            for (int i = 0; i < kMv; ++i) CHECK(v.v_counts[i] == vc[static_cast<size_t>(h * kMv + i)]);
            CHECK(v.k_pattern(2) == v.k_patterns + 2 * kDim);
            CHECK(v.v_pattern(1) == v.v_patterns + kDim);
            CHECK(v.k_clip == kclip[static_cast<size_t>(h)]);
            CHECK(v.v_clip == vclip[static_cast<size_t>(h)]);
            CHECK(v.v_gate_z == z[static_cast<size_t>(h)]);
        }
    }
}

}  // namespace

TEST_CASE("runtime reader: an F32 table reads back exactly, metadata included") {
    const TableSpec s = default_spec(false);
    const PatternTable t = parse(encode(s));
    check_values_equal(s, t);
    CHECK(t.label() == "t.safetensors");
    CHECK(t.model_name() == "tiny");
    CHECK(t.model_sha256() == kSha);
    CHECK(t.arch() == "llama");
    CHECK(t.n_layer() == kLayers);
    CHECK(t.n_head() == kHeads);
    CHECK(t.n_head_kv() == kHeadsKv);
    CHECK(t.head_dim() == kDim);
    CHECK(t.format_minor() == 1);
    CHECK(t.has_layer_geometry());
    CHECK(t.layer_window(0) == 512);
    CHECK(t.layer_window(2) == 0);
    CHECK(t.layer_rope_base(0) == 10000.0);
    CHECK(t.layer_rope_base(2) == 1e6);
    CHECK_THROWS_AS(t.layer_window(1), std::out_of_range);
    CHECK_THROWS_AS(t.layer_rope_base(3), std::out_of_range);
    CHECK(t.key_basis() == pkv_rt::KeyBasis::post_rope);
    CHECK(t.key_dim_order() == pkv_rt::DimOrder::gguf_interleaved);
    CHECK(t.rotation() == pkv_rt::Rotation::none);
    CHECK(t.rotation_seed() == 0);
    CHECK(t.bits() == 2);
    CHECK(t.group() == 128);
    CHECK(t.window() == 128);
    CHECK(t.assign() == pkv_rt::Assign::minmax);
    CHECK(t.n_k_patterns() == kMk);
    CHECK(t.n_v_patterns() == kMv);
    CHECK(t.metadata().at("pkv.calibration") == R"({"tokens": 4096})");
    CHECK(t.has_layer(0));
    CHECK_FALSE(t.has_layer(1));
    CHECK(t.has_layer(2));
    CHECK_FALSE(t.has_layer(3));
    CHECK_THROWS_AS(t.head(1, 0), std::out_of_range);
    CHECK_THROWS_AS(t.head(0, kHeadsKv), std::out_of_range);
    CHECK_THROWS_AS(t.head(0, -1), std::out_of_range);
}

TEST_CASE("runtime reader: F16 patterns widen exactly") {
    const TableSpec s = default_spec(true, 7);
    REQUIRE(s.tensors.at("layers.0.k_patterns").dtype == "F16");
    REQUIRE(s.tensors.at("layers.2.v_patterns").dtype == "F16");
    check_values_equal(s, parse(encode(s)));
}

TEST_CASE("runtime reader: F16 tensors holding subnormal halves read exactly") {
    TableSpec s = default_spec(true);
    std::vector<uint16_t> h(kHeadsKv * kMk * kDim);
    for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<uint16_t>((i * 37) % 0x400 | (i % 2 ? 0x8000 : 0));
    s.tensors["layers.0.k_patterns"].data = raw_bytes(h);
    const PatternTable t = parse(encode(s));  // a view lives only as long as its table
    const pkv_rt::HeadView v = t.head(0, 1);
    for (int i = 0; i < kMk * kDim; ++i)
        CHECK(v.k_patterns[i] == pkv::half_to_float(h[static_cast<size_t>(kMk * kDim + i)]));
}

TEST_CASE("runtime reader: f16_to_f32 equals pkv's half conversion on all 65536 halves") {
    int mismatches = 0;
    for (uint32_t u = 0; u <= 0xffff; ++u) {
        const float a = pkv_rt::f16_to_f32(static_cast<uint16_t>(u)), b = pkv::half_to_float(static_cast<uint16_t>(u));
        if (std::isnan(b) ? !std::isnan(a) : std::memcmp(&a, &b, 4) != 0) ++mismatches;
    }
    CHECK(mismatches == 0);
    CHECK(pkv_rt::f16_to_f32(0x0001) == std::ldexp(1.0f, -24));
    CHECK(pkv_rt::f16_to_f32(0x7bff) == 65504.0f);
    CHECK(std::signbit(pkv_rt::f16_to_f32(0x8000)));
}

TEST_CASE("runtime reader: open() reads a file, and names a missing one") {
    pkv_test::ScratchDir dir;
    const TableSpec s = default_spec();
    const std::string path = dir.write("t.safetensors", encode(s));
    PatternTable t = PatternTable::open(path, default_decl());
    CHECK(t.label() == path);
    check_values_equal(s, t);
    // Views survive a move of the table (buffers move with it).
    const float* p = t.head(2, 1).k_patterns;
    const PatternTable moved = std::move(t);
    CHECK(moved.head(2, 1).k_patterns == p);
    try {
        PatternTable::open(dir.path("nope.safetensors"), default_decl());
        FAIL("no error");
    } catch (const pkv_rt::TableError& e) {
        CHECK_THAT(e.what(), ContainsSubstring("nope.safetensors: cannot open"));
    }
}

TEST_CASE("runtime reader: every declaration mismatch is refused with field, table value and declared value") {
    struct Case {
        const char* what;
        std::function<void(RuntimeDecl&)> change;
        const char* message;
    };
    const std::vector<Case> cases = {
        {"sha256", [](RuntimeDecl& d) { d.model_sha256 = std::string(64, 'f'); },
         "model sha256 is 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef but the runtime declares "
         "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff; the patterns were mined on another model"},
        {"arch", [](RuntimeDecl& d) { d.arch = "qwen2"; }, "model arch is llama but the runtime declares qwen2"},
        {"n_layer", [](RuntimeDecl& d) { d.n_layer = 30; },
         "model n_layer is 3 but the runtime declares 30; the table's shapes do not fit this model"},
        {"n_head", [](RuntimeDecl& d) { d.n_head = 8; }, "model n_head is 4 but the runtime declares 8"},
        {"n_head_kv", [](RuntimeDecl& d) { d.n_head_kv = 4; }, "model n_head_kv is 2 but the runtime declares 4"},
        {"head_dim", [](RuntimeDecl& d) { d.head_dim = 64; }, "model head_dim is 8 but the runtime declares 64"},
        {"basis", [](RuntimeDecl& d) { d.key_basis = pkv_rt::KeyBasis::pre_rope; },
         "key basis is post_rope but the runtime declares pre_rope; applying it would corrupt attention"},
        {"dim order", [](RuntimeDecl& d) { d.key_dim_order = pkv_rt::DimOrder::hf_half_split; },
         "key dim order is gguf_interleaved but the runtime declares hf_half_split"},
        {"rotation", [](RuntimeDecl& d) { d.rotation = pkv_rt::Rotation::hadamard; },
         "rotation is none but the runtime declares hadamard"},
        {"seed", [](RuntimeDecl& d) { d.rotation_seed = 42; }, "rotation seed is 0 but the runtime declares 42"},
        {"bits", [](RuntimeDecl& d) { d.bits = 4; },
         "quant bits is 2 but the runtime declares 4; the clip ratios were fitted for the table's quantizer"},
        {"group", [](RuntimeDecl& d) { d.group = 64; }, "quant group is 128 but the runtime declares 64"},
        {"window", [](RuntimeDecl& d) { d.window = 32; }, "quant window is 128 but the runtime declares 32"},
    };
    const std::vector<uint8_t> bytes = encode(default_spec());
    for (const Case& c : cases) {
        INFO(c.what);
        RuntimeDecl d = default_decl();
        c.change(d);
        const std::string err = load_error(bytes, d);
        CHECK_THAT(err, ContainsSubstring(std::string("pattern table t.safetensors: ") + c.message));
        CHECK(err.find('\n') == std::string::npos);
    }
}

TEST_CASE("runtime reader: the table's own key basis, dim order and rotation are refused the other way round too") {
    TableSpec s = default_spec();
    s.meta["pkv.key.basis"] = "pre_rope";
    s.meta["pkv.key.dim_order"] = "hf_half_split";
    s.meta["pkv.rotation"] = "hadamard";
    s.meta["pkv.rotation.seed"] = "12345";
    const std::vector<uint8_t> bytes = encode(s);
    RuntimeDecl d = default_decl();
    CHECK_THAT(
        load_error(bytes, d),
        ContainsSubstring(
            "pattern table t.safetensors: key basis is pre_rope but the runtime declares post_rope; applying it would "
            "corrupt attention"));
    d.key_basis = pkv_rt::KeyBasis::pre_rope;
    CHECK_THAT(load_error(bytes, d),
               ContainsSubstring("key dim order is hf_half_split but the runtime declares gguf_interleaved"));
    d.key_dim_order = pkv_rt::DimOrder::hf_half_split;
    CHECK_THAT(load_error(bytes, d), ContainsSubstring("rotation is hadamard but the runtime declares none"));
    d.rotation = pkv_rt::Rotation::hadamard;
    CHECK_THAT(load_error(bytes, d), ContainsSubstring("rotation seed is 12345 but the runtime declares 0"));
    d.rotation_seed = 12345;
    const PatternTable t = parse(bytes, d);
    CHECK(t.key_basis() == pkv_rt::KeyBasis::pre_rope);
    CHECK(t.key_dim_order() == pkv_rt::DimOrder::hf_half_split);
    CHECK(t.rotation() == pkv_rt::Rotation::hadamard);
    CHECK(t.rotation_seed() == 12345);
}

TEST_CASE("runtime reader: optional declaration fields skip their checks") {
    TableSpec s = default_spec();
    s.meta["pkv.quant.bits"] = "4";
    s.meta["pkv.quant.group"] = "32";
    s.meta["pkv.quant.window"] = "64";
    s.meta["pkv.rotation"] = "hadamard";
    s.meta["pkv.rotation.seed"] = "18446744073709551615";
    RuntimeDecl d = default_decl();
    d.rotation = pkv_rt::Rotation::hadamard;
    d.model_sha256.clear();
    d.bits = d.group = d.window = 0;
    d.rotation_seed.reset();
    const PatternTable t = parse(encode(s), d);
    CHECK(t.bits() == 4);
    CHECK(t.group() == 32);
    CHECK(t.window() == 64);
    CHECK(t.rotation_seed() == 18446744073709551615ull);
    // The fingerprint compares case-insensitively.
    d = default_decl();
    d.bits = 4, d.group = 32, d.window = 64, d.rotation_seed.reset(), d.rotation = pkv_rt::Rotation::hadamard;
    for (char& c : d.model_sha256) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    CHECK(load_error(encode(s), d).empty());
    // A table without a fingerprint (synthetic data) loads only when the runtime asks for none.
    s.meta["pkv.model.sha256"] = "";
    CHECK_THAT(load_error(encode(s), d),
               ContainsSubstring("model sha256 is empty (a synthetic-data table) but the runtime declares"));
    d.model_sha256.clear();
    CHECK(parse(encode(s), d).model_sha256().empty());
}

TEST_CASE("runtime reader: format string and major version are checked first") {
    TableSpec s = default_spec();
    s.meta["pkv.format"] = "gguf.imatrix";
    CHECK_THAT(
        load_error(encode(s)),
        ContainsSubstring(R"(pattern table t.safetensors: format is "gguf.imatrix", expected "pkv.pattern_table")"));
    s = default_spec();
    s.meta.erase("pkv.format");
    CHECK_THAT(load_error(encode(s)), ContainsSubstring("missing metadata pkv.format"));
    s = default_spec();
    s.meta["pkv.format_version"] = "2.0";
    s.meta["pkv.model.n_layer"] = "garbage";  // not looked at: the version refuses first
    CHECK_THAT(
        load_error(encode(s)),
        ContainsSubstring(
            "pattern table t.safetensors: format version 2.0 is not supported (this reader reads major version 1)"));
    s.meta["pkv.format_version"] = "0.9";
    CHECK_THAT(load_error(encode(s)), ContainsSubstring("format version 0.9 is not supported"));
    for (const char* bad : {"1", "1.", ".0", "1.0.0", "v1.0", "01.0", "1.-1", ""}) {
        s.meta["pkv.format_version"] = bad;
        CHECK_THAT(load_error(encode(s)), ContainsSubstring("pkv.format_version: expected \"<major>.<minor>\""));
    }
    s = default_spec();
    s.meta["pkv.format_version"] = "1.7";  // a later minor version of major 1 loads
    CHECK(parse(encode(s)).format_minor() == 7);
}

TEST_CASE("runtime reader: malformed metadata values are refused with the key and the value") {
    const std::vector<std::pair<std::pair<const char*, const char*>, const char*>> cases = {
        {{"pkv.model.n_layer", "3 "}, "pkv.model.n_layer: expected a decimal integer in [1, 1073741824], got \"3 \""},
        {{"pkv.model.n_layer", "+3"}, "pkv.model.n_layer: expected a decimal integer"},
        {{"pkv.model.n_layer", "03"}, "pkv.model.n_layer: expected a decimal integer"},
        {{"pkv.model.n_layer", "0"}, "pkv.model.n_layer: expected a decimal integer in [1,"},
        {{"pkv.model.head_dim", "-8"}, "pkv.model.head_dim: expected a decimal integer"},
        {{"pkv.model.head_dim", "99999999999999999999999"}, "pkv.model.head_dim: expected a decimal integer"},
        {{"pkv.model.n_head_kv", "5"}, "pkv.model.n_head_kv: expected a decimal integer in [1, 4], got \"5\""},
        {{"pkv.model.n_head_kv", "3"}, "pkv.model.n_head_kv: 3 does not divide n_head 4"},
        {{"pkv.model.sha256", "abc"}, "pkv.model.sha256: expected 64 lower-case hex digits or \"\", got \"abc\""},
        {{"pkv.model.sha256", "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"},
         "pkv.model.sha256: expected 64 lower-case hex digits"},
        {{"pkv.model.head_dim", "7"}, "pkv.model.head_dim: expected an even D, got 7"},
        {{"pkv.rotation.seed", "5"}, "pkv.rotation.seed: expected 0 with pkv.rotation none, got 5"},
        {{"pkv.key.basis", "rope"}, "pkv.key.basis: expected pre_rope | post_rope, got \"rope\""},
        {{"pkv.key.dim_order", "gguf"}, "pkv.key.dim_order: expected gguf_interleaved | hf_half_split"},
        {{"pkv.rotation", "random"}, "pkv.rotation: expected none | hadamard"},
        {{"pkv.rotation.seed", "18446744073709551616"}, "pkv.rotation.seed: expected a decimal integer"},
        {{"pkv.quant.bits", "5"}, "pkv.quant.bits: expected 2, 3, 4 or 8, got 5"},
        {{"pkv.quant.bits", "16"}, "pkv.quant.bits: expected a decimal integer in [2, 8]"},
        {{"pkv.quant.group", "0"}, "pkv.quant.group: expected a decimal integer"},
        {{"pkv.assign", "cosine"}, "pkv.assign: expected l2 | minmax, got \"cosine\""},
        {{"pkv.k_patterns", "0"}, "pkv.k_patterns: expected a decimal integer"},
        {{"pkv.layers", ""}, "pkv.layers: expected ascending layer indices in [0, 3)"},
        {{"pkv.layers", "2,0"}, "pkv.layers: expected ascending layer indices"},
        {{"pkv.layers", "0,0,2"}, "pkv.layers: expected ascending layer indices"},
        {{"pkv.layers", "0,2,3"}, "pkv.layers: expected ascending layer indices in [0, 3)"},
        {{"pkv.layers", "0, 2"}, "pkv.layers: expected ascending layer indices"},
        {{"pkv.layers", "0,2,"}, "pkv.layers: expected ascending layer indices"},
    };
    {
        TableSpec s = default_spec();
        s.meta["pkv.rotation"] = "hadamard";
        s.meta["pkv.model.head_dim"] = "6";
        CHECK_THAT(load_error(encode(s)),
                   ContainsSubstring(
                       "metadata pkv.model.head_dim: expected a power of two with pkv.rotation hadamard, got 6"));
    }
    for (const auto& c : cases) {
        INFO(c.first.first << " = \"" << c.first.second << "\"");
        TableSpec s = default_spec();
        s.meta[c.first.first] = c.first.second;
        CHECK_THAT(load_error(encode(s)),
                   ContainsSubstring(std::string("pattern table t.safetensors: metadata ") + c.second));
    }
    for (const char* key : {"pkv.model.arch", "pkv.model.sha256", "pkv.model.head_dim", "pkv.layers", "pkv.key.basis",
                            "pkv.rotation.seed", "pkv.quant.window", "pkv.assign", "pkv.v_patterns"}) {
        INFO(key);
        TableSpec s = default_spec();
        s.meta.erase(key);
        CHECK_THAT(load_error(encode(s)), ContainsSubstring(std::string("missing metadata ") + key));
    }
    TableSpec s = default_spec();
    s.meta.erase("pkv.model.name");  // informational only
    CHECK(parse(encode(s)).model_name().empty());
}

TEST_CASE("runtime reader: layer geometry is required from 1.1 on, optional in 1.0, and checked") {
    {
        // 1.0 without the keys: every layer 0 / 0, and has_layer_geometry says it is unknown.
        TableSpec s = default_spec();
        s.meta["pkv.format_version"] = "1.0";
        s.meta.erase("pkv.layers.window");
        s.meta.erase("pkv.layers.rope_base");
        const PatternTable t = parse(encode(s));
        CHECK_FALSE(t.has_layer_geometry());
        CHECK((t.layer_window(0) == 0 && t.layer_window(2) == 0));
        CHECK((t.layer_rope_base(0) == 0.0 && t.layer_rope_base(2) == 0.0));
        // ... with a window list only: geometry recorded, RoPE bases not.
        s.meta["pkv.layers.window"] = "4096,0";
        const PatternTable w = parse(encode(s));
        CHECK(w.has_layer_geometry());
        CHECK(w.layer_window(0) == 4096);
        CHECK(w.layer_rope_base(0) == 0.0);
    }
    {
        TableSpec s = default_spec();
        s.meta["pkv.layers.rope_base"] = "0.30000000000000004,1e+20";  // exact: 17 digits, exponents
        const PatternTable t = parse(encode(s));
        CHECK(t.layer_rope_base(0) == 0.1 + 0.2);
        CHECK(t.layer_rope_base(2) == 1e20);
    }
    for (const char* key : {"pkv.layers.window", "pkv.layers.rope_base"}) {
        INFO(key);
        TableSpec s = default_spec();
        s.meta.erase(key);
        CHECK(load_error(encode(s)) == std::string("pattern table t.safetensors: missing metadata ") + key);
    }
    const std::vector<std::pair<std::pair<const char*, const char*>, const char*>> cases = {
        {{"pkv.layers.window", "512"}, "pkv.layers.window: expected 2 values (one per entry of pkv.layers), got 1"},
        {{"pkv.layers.window", "512,0,0"}, "pkv.layers.window: expected 2 values (one per entry of pkv.layers), got 3"},
        {{"pkv.layers.rope_base", ""}, "pkv.layers.rope_base: expected 2 values (one per entry of pkv.layers), got 1"},
        {{"pkv.layers.window", "-512,0"},
         "pkv.layers.window: layer 0: expected a window in [0, 1073741824] tokens, got \"-512\""},
        {{"pkv.layers.window", "512,0512"}, "pkv.layers.window: layer 2: expected a window in [0, 1073741824] tokens"},
        {{"pkv.layers.window", "512,1.5"}, "pkv.layers.window: layer 2: expected a window"},
        {{"pkv.layers.window", "512,2000000000"}, "pkv.layers.window: layer 2: expected a window"},
        {{"pkv.layers.rope_base", "-1,0"},
         "pkv.layers.rope_base: layer 0: expected a finite RoPE base >= 0, got \"-1\""},
        {{"pkv.layers.rope_base", "10000,nan"},
         "pkv.layers.rope_base: layer 2: expected a finite RoPE base >= 0, got \"nan\""},
        {{"pkv.layers.rope_base", "10000,inf"}, "pkv.layers.rope_base: layer 2: expected a finite RoPE base"},
        {{"pkv.layers.rope_base", "10000,1e400"}, "pkv.layers.rope_base: layer 2: expected a finite RoPE base"},
        {{"pkv.layers.rope_base", "10000,1e"}, "pkv.layers.rope_base: layer 2: expected a finite RoPE base"},
        {{"pkv.layers.rope_base", "10000,+5"}, "pkv.layers.rope_base: layer 2: expected a finite RoPE base"},
        {{"pkv.layers.rope_base", "10000,1,5"}, "pkv.layers.rope_base: expected 2 values"},
        {{"pkv.layers.rope_base", "10000, 5"}, "pkv.layers.rope_base: layer 2: expected a finite RoPE base"},
    };
    for (const auto& c : cases) {
        INFO(c.first.first << " = \"" << c.first.second << "\"");
        TableSpec s = default_spec();
        s.meta[c.first.first] = c.first.second;
        CHECK_THAT(load_error(encode(s)),
                   ContainsSubstring(std::string("pattern table t.safetensors: metadata ") + c.second));
    }
}

TEST_CASE("runtime reader: tensor rules name the tensor, the expected and the actual") {
    struct Case {
        const char* what;
        std::function<void(TableSpec&)> change;
        const char* message;
    };
    auto set_float = [](TableSpec& s, const std::string& name, size_t i, float v) {
        std::memcpy(s.tensors[name].data.data() + 4 * i, &v, 4);
    };
    const std::vector<Case> cases = {
        {"missing", [](TableSpec& s) { s.tensors.erase("layers.2.v_counts"); }, "missing tensor layers.2.v_counts"},
        {"shape",
         [](TableSpec& s) {
             s.tensors["layers.0.k_patterns"].shape = {2, 8, 4};
         },
         "layers.0.k_patterns: expected shape [2, 4, 8], got [2, 8, 4]"},
        {"rank",
         [](TableSpec& s) {
             s.tensors["layers.0.k_clip"].shape = {1, 2};
         },
         "layers.0.k_clip: expected shape [2], got [1, 2]"},
        {"Mk differs from metadata", [](TableSpec& s) { s.meta["pkv.k_patterns"] = "2"; },
         "layers.0.k_patterns: expected shape [2, 2, 8], got [2, 4, 8]"},
        {"bf16",
         [](TableSpec& s) {
             auto& t = s.tensors["layers.0.v_patterns"];
             t.dtype = "BF16";
             t.data.resize(t.data.size() / 2);
         },
         "layers.0.v_patterns: expected dtype F32 or F16, got BF16"},
        {"f16 clip",
         [](TableSpec& s) {
             auto& t = s.tensors["layers.2.k_clip"];
             t = float_tensor(t.name, t.shape, float_values(t), true);
         },
         "layers.2.k_clip: expected dtype F32, got F16"},
        {"f16 counts",
         [](TableSpec& s) {
             auto& t = s.tensors["layers.0.v_counts"];
             t.dtype = "F16";
             t.data.resize(t.data.size() / 4);
         },
         "layers.0.v_counts: expected dtype I64, got F16"},
        {"counts dtype",
         [](TableSpec& s) {
             auto& t = s.tensors["layers.0.k_counts"];
             t.dtype = "I32";
             t.data.resize(t.data.size() / 2);
         },
         "layers.0.k_counts: expected dtype I64, got I32"},
        {"negative count",
         [](TableSpec& s) {
             const int64_t v = -1;
             std::memcpy(s.tensors["layers.2.k_counts"].data.data() + 8 * 5, &v, 8);
         },
         "layers.2.k_counts: element 5 is negative"},
        {"nan pattern", [&](TableSpec& s) { set_float(s, "layers.2.v_patterns", 3, std::nanf("")); },
         "layers.2.v_patterns: element 3 is not finite"},
        {"inf pattern", [&](TableSpec& s) { set_float(s, "layers.0.k_patterns", 0, INFINITY); },
         "layers.0.k_patterns: element 0 is not finite"},
        {"clip 0", [&](TableSpec& s) { set_float(s, "layers.0.k_clip", 1, 0.0f); },
         "layers.0.k_clip: 0.000000 of KV head 1 is outside (0, 1]"},
        {"clip > 1", [&](TableSpec& s) { set_float(s, "layers.2.v_clip", 0, 1.5f); },
         "layers.2.v_clip: 1.500000 of KV head 0 is outside (0, 1]"},
        {"negative z", [&](TableSpec& s) { set_float(s, "layers.2.v_gate_z", 1, -0.5f); },
         "layers.2.v_gate_z: -0.500000 of KV head 1 is negative"},
        {"stray layer",
         [](TableSpec& s) {
             auto t = s.tensors["layers.0.k_clip"];
             t.name = "layers.1.k_clip";
             s.tensors[t.name] = t;
         },
         "tensor layers.1.k_clip belongs to no layer of pkv.layers \"0,2\""},
        {"listed layer without tensors", [](TableSpec& s) { s.meta["pkv.layers"] = "0,1,2"; },
         "missing tensor layers.1.k_patterns"},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        TableSpec s = default_spec();
        c.change(s);
        CHECK_THAT(load_error(encode(s)), ContainsSubstring(std::string("pattern table t.safetensors: ") + c.message));
    }
    // Tensors a later minor version may add are ignored.
    TableSpec s = default_spec();
    s.tensors["layers.0.k_scale_hint"] = {"layers.0.k_scale_hint", "F32", {2}, raw_bytes(std::vector<float>{1, 2})};
    s.tensors["global.extra"] = {"global.extra", "U8", {3}, {1, 2, 3}};
    CHECK(load_error(encode(s)).empty());
}

TEST_CASE("runtime reader: a head view assigns with the table's pkv.assign") {
    // x is a constant shift of pattern 1 (min-max distance 0) but L2-closer to pattern 0.
    TableSpec s = default_spec();
    std::vector<float> kp(static_cast<size_t>(kHeadsKv * kMk * kDim), 0.0f);
    std::vector<float> x(kDim, 0.0f);
    for (int d = 0; d < kDim; ++d) {
        x[static_cast<size_t>(d)] = d % 2 ? 0.5f : -0.5f;
        kp[static_cast<size_t>(kMk * kDim + kDim + d)] = x[static_cast<size_t>(d)] + 10.0f;  // head 1, pattern 1
    }
    s.tensors["layers.0.k_patterns"] = float_tensor("layers.0.k_patterns", {kHeadsKv, kMk, kDim}, kp, false);
    CHECK(parse(encode(s)).head(0, 1).nearest_k(x.data()) == 1);
    s.meta["pkv.assign"] = "l2";
    const PatternTable t = parse(encode(s));
    const pkv_rt::HeadView v = t.head(0, 1);
    CHECK(v.assign == pkv_rt::Assign::l2);
    CHECK(v.nearest_k(x.data()) == 0);  // patterns 0, 2, 3 are all zero: the lowest index wins
}

TEST_CASE("runtime reader: a default-constructed table is empty, and copies own their buffers") {
    const PatternTable empty;
    CHECK(empty.layers().empty());
    CHECK_FALSE(empty.has_layer(0));
    CHECK_THROWS_AS(empty.head(0, 0), std::out_of_range);
    PatternTable t = parse(encode(default_spec()));
    const PatternTable copy = t;
    CHECK(copy.head(0, 1).k_patterns != t.head(0, 1).k_patterns);
    CHECK(copy.head(0, 1).k_patterns[5] == t.head(0, 1).k_patterns[5]);
    t = empty;  // the copy's views stay valid after the original is reassigned
    CHECK(copy.has_layer(2));
    CHECK(copy.head(2, 0).v_gate_z == Approx(1.6448536f));
}

TEST_CASE("runtime reader: a width allocation gives each head its widths; a fixed width is refused") {
    TableSpec s = default_spec();
    s.meta["pkv.format_version"] = "1.2";
    const PatternTable plain = parse(encode(s));  // 1.2 without an allocation reads: every head at pkv.quant.bits
    CHECK_FALSE(plain.has_allocation());
    CHECK(plain.head(2, 1).k_bits == 2);
    CHECK(plain.head(2, 1).v_bits == 2);
    s.meta["pkv.quant.allocation"] = R"({"bits":2.4375,"budget":2.5,"k":[[2,3],[2,16]],"v":[[2,2],[8,4]]})";
    CHECK_THAT(load_error(encode(s)),
               ContainsSubstring("quant bits is allocated per KV head (pkv.quant.allocation) but the runtime declares "
                                 "2; each head's clip ratios were fitted at its own width"));
    pkv_rt::RuntimeDecl any = default_decl();
    any.bits = 0;
    const PatternTable t = parse(encode(s), any);
    REQUIRE(t.has_allocation());
    CHECK(t.allocation_budget() == 2.5);
    CHECK(t.allocation_bits() == 2.4375);
    CHECK(t.head(0, 0).k_bits == 2);
    CHECK(t.head(0, 1).k_bits == 3);
    CHECK(t.head(2, 1).k_bits == 16);
    CHECK(t.head(2, 0).v_bits == 8);
    CHECK(t.head(2, 1).v_bits == 4);
    // Malformed allocations: one line naming the field and what was expected.
    const std::vector<std::pair<std::string, std::string>> bad = {
        {R"({"bits":2.5,"budget":2.5,"k":[[2,3]],"v":[[2,2],[2,4]]})",
         "metadata pkv.quant.allocation.k: expected 2 lists (one per entry of pkv.layers), got [[2,3]]"},
        {R"({"bits":2.5,"budget":2.5,"k":[[2,3],[2,2]],"v":[[2,2],[2,5]]})",
         "metadata pkv.quant.allocation.v: layer 2: expected 2 widths of 2, 3, 4, 8 or 16, got [2,5]"},
        {R"({"bits":2.5,"budget":2.5,"k":[[2,3],[2,2,2]],"v":[[2,2],[2,4]]})",
         "metadata pkv.quant.allocation.k: layer 2: expected 2 widths of 2, 3, 4, 8 or 16, got [2,2,2]"},
        {R"({"bits":2.5,"budget":0,"k":[[2,3],[2,2]],"v":[[2,2],[2,4]]})",
         "metadata pkv.quant.allocation.budget: expected a number in (0, 16], got 0"},
        {R"({"bits":2.5,"k":[[2,3],[2,2]],"v":[[2,2],[2,4]]})", "metadata pkv.quant.allocation: missing \"budget\""},
        {R"([2,3])", "metadata pkv.quant.allocation: expected a JSON object"},
        {R"({"bits":2.5e,"budget":2.5})",
         "metadata pkv.quant.allocation: malformed JSON at byte 12: expected a digit in the exponent"},
    };
    for (const auto& b : bad) {
        s.meta["pkv.quant.allocation"] = b.first;
        CHECK_THAT(load_error(encode(s), any), ContainsSubstring(b.second));
    }
}

TEST_CASE("runtime reader: a packed cache takes an allocation of its one width and refuses others") {
    TableSpec s = default_spec();
    s.meta["pkv.format_version"] = "1.2";
    s.meta["pkv.layers"] = "0,1,2";
    s.meta["pkv.layers.window"] = "0,0,0";
    s.meta["pkv.layers.rope_base"] = "10000,10000,10000";
    for (const char* t : {"k_patterns", "v_patterns", "k_counts", "v_counts", "k_clip", "v_clip", "v_gate_z"}) {
        pkv::StTensor copy = s.tensors.at(std::string("layers.0.") + t);
        copy.name = std::string("layers.1.") + t;
        s.tensors[copy.name] = copy;
    }
    pkv_rt::RuntimeDecl any = default_decl();
    any.bits = 0;
    pkv_rt::CacheConfig c;
    c.n_layer = kLayers, c.n_head = kHeads, c.n_head_kv = kHeadsKv, c.head_dim = kDim;
    c.max_tokens = 64, c.window = 16, c.group = 16, c.bits = 2, c.k_patterns = kMk, c.v_patterns = kMv;
    s.meta["pkv.quant.allocation"] = R"({"bits":2.0,"budget":2.0,"k":[[2,2],[2,2],[2,2]],"v":[[2,2],[2,2],[2,2]]})";
    pkv_rt::PackedCache uniform(c);
    CHECK_NOTHROW(uniform.set_table(parse(encode(s), any)));
    s.meta["pkv.quant.allocation"] = R"({"bits":2.1,"budget":2.5,"k":[[2,2],[2,2],[2,2]],"v":[[2,2],[2,3],[2,2]]})";
    pkv_rt::PackedCache mixed(c);
    const PatternTable t = parse(encode(s), any);
    CHECK_THROWS_WITH(mixed.set_table(t),
                      "packed cache: set_table: the table allocates a width per KV head (layer 1 KV head 1: K 2, V 3 "
                      "bits) but a packed cache holds one width, 2 bits");
}

TEST_CASE("runtime reader: pkv.quant.outliers must match what the runtime holds out") {
    TableSpec s = default_spec();
    CHECK(parse(encode(s)).outliers() == 0);  // absent: none
    RuntimeDecl d = default_decl();
    d.outliers = 2;
    CHECK_THAT(load_error(encode(s), d),
               ContainsSubstring("quant outliers per group is 0 but the runtime declares 2; the clip ratios were "
                                 "fitted for the table's quantizer"));
    s.meta["pkv.quant.outliers"] = "2";
    const std::vector<uint8_t> bytes = encode(s);
    CHECK_THAT(load_error(bytes), ContainsSubstring("quant outliers per group is 2 but the runtime declares 0"));
    CHECK(parse(bytes, d).outliers() == 2);
    for (const char* bad : {"0", "9", "x"}) {
        s.meta["pkv.quant.outliers"] = bad;
        d.outliers = 0;
        CHECK_THAT(load_error(encode(s), d), ContainsSubstring("metadata pkv.quant.outliers"));
    }
}
