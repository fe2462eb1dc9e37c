// validate_kv_dump on good and deliberately broken files; describe/metadata JSON;
// the independent h5py checker and the JSON Schema.
#include <hdf5.h>

#include <cmath>
#include <fstream>

#include "catch.h"
#include "dump_fixture.h"
#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump.h"

using namespace pkv;
using namespace pkv::test;

namespace {

std::string joined(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += x + "\n";
    return s;
}

/// True if some problem contains every one of `parts`.
bool has_problem(const std::vector<std::string>& problems, std::initializer_list<const char*> parts) {
    for (const auto& p : problems) {
        bool all = true;
        for (const char* part : parts) all = all && p.find(part) != std::string::npos;
        if (all) return true;
    }
    return false;
}

#define CHECK_PROBLEM(problems, ...)                 \
    do {                                             \
        INFO("problems:\n" << joined(problems));     \
        CHECK(has_problem(problems, {__VA_ARGS__})); \
    } while (0)

void replace_i32(const std::string& path, const char* name, const std::vector<int32_t>& values) {
    h5::File f = h5::File::open_rw(path);
    REQUIRE(H5Ldelete(f.id(), name, H5P_DEFAULT) >= 0);
    h5::Id d = h5::create_1d(f, name, H5T_STD_I32LE, values.size());
    h5::write_1d(f, d.get(), name, H5T_NATIVE_INT32, 0, values.size(), values.data());
}

void replace_i64(const std::string& path, const char* name, const std::vector<int64_t>& values) {
    h5::File f = h5::File::open_rw(path);
    REQUIRE(H5Ldelete(f.id(), name, H5P_DEFAULT) >= 0);
    h5::Id d = h5::create_1d(f, name, H5T_STD_I64LE, values.size());
    h5::write_1d(f, d.get(), name, H5T_NATIVE_INT64, 0, values.size(), values.data());
}

int run_checker(const std::string& dump, const std::string& log) {
    const std::string cmd = std::string("/usr/bin/python3 '") + PKV_TEST_SOURCE_DIR +
                            "/test/python/check_dump_h5py.py' '" + dump + "' >'" + log + "' 2>&1";
    return exit_status(std::system(cmd.c_str()));
}

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST_CASE("a good dump validates with no problems", "[dump][validate]") {
    TempDir dir;
    const std::string path = dir.path + "/dump.h5";
    SynthSpec s;
    write_synth_dump(path, s);
    const auto problems = validate_kv_dump(path);
    INFO(joined(problems));
    CHECK(problems.empty());

    s.hf = true;
    s.capture = CaptureSet::parse("k_pre,k_post");
    write_synth_dump(dir.path + "/hf.h5", s);
    CHECK(validate_kv_dump(dir.path + "/hf.h5").empty());
}

TEST_CASE("validate_kv_dump reports every problem of a broken dump", "[dump][validate]") {
    TempDir dir;
    const std::string path = dir.path + "/dump.h5";
    write_synth_dump(path, SynthSpec{});

    SECTION("not an HDF5 file") {
        { std::ofstream(dir.path + "/x.h5") << "not hdf5"; }
        const auto p = validate_kv_dump(dir.path + "/x.h5");
        REQUIRE(p.size() == 1);
        CHECK_PROBLEM(p, "x.h5: not a readable HDF5 file");
    }
    SECTION("wrong rank") {
        {
            h5::File f = h5::File::open_rw(path);
            REQUIRE(H5Ldelete(f.id(), "/k_post", H5P_DEFAULT) >= 0);
            h5::Id t = h5::make_f16_type();
            const hsize_t dims[3] = {2, 2, 50};
            h5::Id sp(H5Screate_simple(3, dims, nullptr));
            h5::Id d(H5Dcreate2(f.id(), "/k_post", t.get(), sp.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        }
        const auto p = validate_kv_dump(path);
        CHECK_PROBLEM(p, "dump.h5::/k_post: expected rank 4, got 3");
    }
    SECTION("missing dataset") {
        {
            h5::File f = h5::File::open_rw(path);
            REQUIRE(H5Ldelete(f.id(), "/tokens/pos", H5P_DEFAULT) >= 0);
            REQUIRE(H5Ldelete(f.id(), "/q", H5P_DEFAULT) >= 0);
        }
        const auto p = validate_kv_dump(path);
        CHECK_PROBLEM(p, "dump.h5::/tokens/pos: missing dataset");
        CHECK_PROBLEM(p, "dump.h5::/q: missing dataset (attribute 'capture' is 'k_pre,k_post,v,q')");
    }
    SECTION("bad version and format") {
        {
            h5::File f = h5::File::open_rw(path);
            h5::write_attr_string(f.id(), "x", "format_version", "2.0");
            h5::write_attr_string(f.id(), "x", "format", "other");
        }
        const auto p = validate_kv_dump(path);
        CHECK_PROBLEM(p, "dump.h5::/: unknown format_version: expected 1.x, got '2.0'");
        CHECK_PROBLEM(p, "dump.h5::/: expected format 'pkv.kvdump', got 'other'");
    }
    SECTION("NaN and Inf in activations") {
        {
            h5::File f = h5::File::open_rw(path);
            h5::Id t = h5::make_f16_type();
            h5::Id d = h5::open_dataset(f, "/v");
            const uint16_t nan = 0x7e00, inf = 0xfc00;
            h5::write_block(f, d.get(), "/v", t.get(), {1, 1, 33, 5}, {1, 1, 1, 1}, &nan);
            h5::write_block(f, d.get(), "/v", t.get(), {1, 1, 49, 7}, {1, 1, 1, 1}, &inf);
        }
        const auto p = validate_kv_dump(path);
        CHECK_PROBLEM(p, "dump.h5::/v: expected finite values, got 2 NaN/Inf, first at [1, 1, 33, 5] = nan");
        CHECK(p.size() == 1);
    }
    SECTION("sequences that do not tile and positions that do not restart") {
        replace_i64(path, "/sequences/start", {0, 21, 40});
        std::vector<int32_t> pos(50);
        for (int t = 0; t < 50; ++t) pos[t] = t < 40 ? t : t - 40;  // no restart at 20
        replace_i32(path, "/tokens/pos", pos);
        const auto p = validate_kv_dump(path);
        CHECK_PROBLEM(
            p, "dump.h5::/sequences/start: expected sequences to tile [0, T): sequence 1 should start at 20, got 21");
        CHECK_PROBLEM(
            p, "dump.h5::/tokens/pos: expected position 0 (restarting at 0 in each sequence), got 20 at token 20");
    }
    SECTION("sequence lengths that do not add up") {
        replace_i32(path, "/sequences/length", {20, 20, 9});
        const auto p = validate_kv_dump(path);
        CHECK_PROBLEM(p, "dump.h5::/sequences/length: expected sequences to tile [0, T=50), got a total length of 49");
    }
    SECTION("inconsistent token counts") {
        replace_i32(path, "/tokens/id", std::vector<int32_t>(49, 1));
        {
            h5::File f = h5::File::open_rw(path);
            REQUIRE(H5Ldelete(f.id(), "/tokens/nll", H5P_DEFAULT) >= 0);
            h5::create_1d(f, "/tokens/nll", H5T_IEEE_F32LE, 51);
        }
        const auto p = validate_kv_dump(path);
        CHECK_PROBLEM(p, "dump.h5::/tokens/id: expected shape [T=50], got [49]");
        CHECK_PROBLEM(p, "dump.h5::/tokens/nll: expected shape [T=50], got [51]");
    }
    SECTION("activation shape and dtype") {
        {
            h5::File f = h5::File::open_rw(path);
            REQUIRE(H5Ldelete(f.id(), "/q", H5P_DEFAULT) >= 0);
            REQUIRE(H5Ldelete(f.id(), "/k_pre", H5P_DEFAULT) >= 0);
            h5::Id t = h5::make_f16_type();
            const hsize_t dq[4] = {2, 4, 48, 8}, dk[4] = {2, 2, 50, 8};
            h5::Id sq(H5Screate_simple(4, dq, nullptr)), sk(H5Screate_simple(4, dk, nullptr));
            h5::Id q(H5Dcreate2(f.id(), "/q", t.get(), sq.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
            h5::Id k(H5Dcreate2(f.id(), "/k_pre", H5T_IEEE_F32LE, sk.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        }
        const auto p = validate_kv_dump(path);
        CHECK_PROBLEM(p, "dump.h5::/q: expected shape [L=2, H=4, T=50, D=8], got [2, 4, 48, 8]");
        CHECK_PROBLEM(p, "dump.h5::/q: expected chunks [1, 1, Tc, 8], got a contiguous layout");
        CHECK_PROBLEM(p, "dump.h5::/q: missing attribute 'axes'");
        CHECK_PROBLEM(p, "dump.h5::/k_pre: expected dtype float16, got float32");
    }
    SECTION("layers not ascending or out of range") {
        replace_i32(path, "/layers", {2, 0});
        CHECK_PROBLEM(validate_kv_dump(path), "dump.h5::/layers: expected ascending layers, got 0 after 2 at index 1");
        replace_i32(path, "/layers", {0, 3});
        CHECK_PROBLEM(validate_kv_dump(path), "dump.h5::/layers: expected layers in [0, 3), got 3 at index 1");
    }
    SECTION("bad JSON and inconsistent attributes") {
        {
            h5::File f = h5::File::open_rw(path);
            h5::write_attr_string(f.id(), "x", "model", "{\"name\": ");
            h5::write_attr_string(f.id(), "x", "provenance", "[1, 2]");
            h5::write_attr_int(f.id(), "x", "n_head_kv", 3);
            h5::write_attr_string(f.id(), "x", "dim_order", "sideways");
            h5::Id d = h5::open_dataset(f, "/k_post");
            h5::write_attr_strings(d.get(), "x", "axes", {"a", "b"});
        }
        const auto p = validate_kv_dump(path);
        CHECK_PROBLEM(p, "dump.h5::/: attribute 'model': expected JSON text, got a parse error");
        CHECK_PROBLEM(p, "dump.h5::/: attribute 'provenance': expected a JSON object, got array");
        CHECK_PROBLEM(p, "dump.h5::/: expected n_head (4) to be a multiple of n_head_kv (3)");
        CHECK_PROBLEM(
            p, "dump.h5::/: attribute 'dim_order': expected 'gguf_interleaved' or 'hf_half_split', got 'sideways'");
        CHECK_PROBLEM(p, "dump.h5::/k_post: expected shape [L=2, H=3, T=50, D=8], got [2, 2, 50, 8]");
        CHECK_PROBLEM(p,
                      "dump.h5::/k_post: attribute 'axes': expected [\"layer\",\"kv_head\",\"token\",\"dim\"], got "
                      "[\"a\",\"b\"]");
    }
    SECTION("model record disagreeing with the root attributes") {
        {
            h5::File f = h5::File::open_rw(path);
            auto m = nlohmann::json::parse(h5::read_attr_string(f.id(), "x", "model"));
            m["head_dim"] = 16;
            m.erase("n_rot");
            h5::write_attr_string(f.id(), "x", "model", m.dump());
        }
        const auto p = validate_kv_dump(path);
        CHECK_PROBLEM(p, "dump.h5::/: attribute 'model': expected head_dim = 8 (the root attribute), got 16");
        CHECK_PROBLEM(p, "dump.h5::/: attribute 'model': expected integer field 'n_rot', got nothing");
    }
    SECTION("sources") {
        {
            h5::File f = h5::File::open_rw(path);
            REQUIRE(H5Ldelete(f.id(), "/sources/sha256", H5P_DEFAULT) >= 0);
            h5::Id t = h5::make_vlen_string_type();
            h5::Id d = h5::create_1d(f, "/sources/sha256", t.get(), 2);
            h5::write_1d_strings(f, d.get(), "/sources/sha256", {"xyz", std::string(64, 'e')});
        }
        replace_i64(path, "/sources/tokens", {40, 7});
        const auto p = validate_kv_dump(path);
        CHECK_PROBLEM(p, "dump.h5::/sources/sha256: expected 64 lowercase hex digits, got 'xyz' for source 0");
        CHECK_PROBLEM(p, "dump.h5::/sources/tokens: expected a total of T=50 tokens, got 47");
    }
    SECTION("many problems at once are all listed") {
        {
            h5::File f = h5::File::open_rw(path);
            h5::write_attr_string(f.id(), "x", "format_version", "9.1");
            REQUIRE(H5Ldelete(f.id(), "/tokens/seq", H5P_DEFAULT) >= 0);
            REQUIRE(H5Adelete(f.id(), "summary") >= 0);
            h5::Id t = h5::make_f16_type();
            h5::Id d = h5::open_dataset(f, "/k_pre");
            const uint16_t inf = 0x7c00;
            h5::write_block(f, d.get(), "/k_pre", t.get(), {0, 0, 0, 0}, {1, 1, 1, 1}, &inf);
        }
        replace_i64(path, "/sequences/start", {0, 20, 41});
        const auto p = validate_kv_dump(path);
        CHECK_PROBLEM(p, "unknown format_version");
        CHECK_PROBLEM(p, "::/tokens/seq: missing dataset");
        CHECK_PROBLEM(p, "::/: missing attribute 'summary' (the writer did not finish)");
        CHECK_PROBLEM(p, "::/k_pre: expected finite values, got 1 NaN/Inf, first at [0, 0, 0, 0] = inf");
        CHECK_PROBLEM(p, "::/sequences/start: expected sequences to tile");
        CHECK(p.size() == 5);
    }
}

TEST_CASE("an unfinished dump is reported as such", "[dump][validate]") {
    TempDir dir;
    const std::string path = dir.path + "/partial.h5";
    {
        KvDumpWriter w(path, synth_header(SynthSpec{}));
        (void)w;
    }
    const auto p = validate_kv_dump(path);
    CHECK_PROBLEM(p, "partial.h5::/: missing attribute 'summary' (the writer did not finish)");
    CHECK_PROBLEM(p, "partial.h5::/sequences/start: missing dataset");
}

TEST_CASE("metadata JSON, description and the JSON Schema", "[dump][info]") {
    TempDir dir;
    const std::string path = dir.path + "/dump.h5";
    write_synth_dump(path, SynthSpec{});
    const nlohmann::json j = kv_dump_metadata_json(path);
    CHECK(j.at("format") == "pkv.kvdump");
    CHECK(j.at("n_tokens") == 50);
    CHECK(j.at("model").at("rope_freq_base") == 10000.0);
    CHECK(j.at("summary").at("perplexity") == 2.5);
    CHECK(j.at("datasets").at("/q").at("shape") == nlohmann::json({2, 4, 50, 8}));
    CHECK(j.at("datasets").at("/q").at("dtype") == "float16");
    CHECK(j.at("datasets").at("/tokens/nll").at("dtype") == "float32");
    CHECK(j.at("datasets").at("/sources/path").at("dtype") == "string");

    const std::string d = describe_kv_dump(path);
    CHECK_THAT(d, ContainsSubstring("model:       synthetic (llama"));
    CHECK_THAT(d, ContainsSubstring("layers:      2 of 3 stored (0,2)"));
    CHECK_THAT(d, ContainsSubstring("tokens:      50 in 3 sequences (lengths 10-20)"));
    CHECK_THAT(d, ContainsSubstring("perplexity:  2.5000"));
    CHECK_THAT(d, ContainsSubstring("/k_post  [2, 2, 50, 8] float16, chunks [1, 1, 16, 8], shuffle+deflate(4)"));
    CHECK_THAT(d, ContainsSubstring("compression ratio"));

    if (!python_has("jsonschema")) PKV_SKIP("/usr/bin/python3 with jsonschema not available: schema check skipped");
    const std::string doc = dir.path + "/meta.json", bad = dir.path + "/bad.json";
    std::ofstream(doc) << j.dump(2);
    nlohmann::json broken = j;
    broken["datasets"]["/k_post"]["dtype"] = "float32";
    broken["model"].erase("n_rot");
    std::ofstream(bad) << broken.dump(2);
    const std::string schema = std::string(PKV_TEST_SOURCE_DIR) + "/schemas/kv_dump.schema.json";
    // Both validators: the schema promises to stay inside what draft-07 understands.
    auto validate = [&](const std::string& file, const char* cls) {
        const std::string cmd = std::string(
                                    "/usr/bin/python3 -c \"import json, sys, jsonschema; "
                                    "s = json.load(open(sys.argv[1])); jsonschema.") +
                                cls + ".check_schema(s); jsonschema." + cls +
                                "(s).validate(json.load(open(sys.argv[2])))\" '" + schema + "' '" + file +
                                "' >/dev/null 2>&1";
        return exit_status(std::system(cmd.c_str()));
    };
    CHECK(validate(doc, "Draft202012Validator") == 0);
    CHECK(validate(doc, "Draft7Validator") == 0);
    CHECK(validate(bad, "Draft202012Validator") != 0);
    CHECK(validate(bad, "Draft7Validator") != 0);
}

TEST_CASE("the independent h5py checker accepts pkv's dumps and catches a wrong rotation", "[dump][python]") {
    if (!python_has("h5py, numpy")) PKV_SKIP("/usr/bin/python3 with h5py and numpy not available: checker not run");
    TempDir dir;
    SynthSpec s;
    const std::string g = dir.path + "/gguf.h5", hf = dir.path + "/hf.h5", part = dir.path + "/part.h5";
    write_synth_dump(g, s);
    CHECK(run_checker(g, dir.path + "/g.log") == 0);
    INFO(slurp(dir.path + "/g.log"));
    CHECK_THAT(slurp(dir.path + "/g.log"), ContainsSubstring("k_post = RoPE(k_pre) holds"));

    s.hf = true;
    write_synth_dump(hf, s);
    CHECK(run_checker(hf, dir.path + "/hf.log") == 0);

    // Partial rotation (n_rot < head_dim) with a scaled frequency.
    SynthSpec p;
    p.n_rot = 4;
    p.rope_base = 500000.0;
    p.rope_scale = 0.5;
    write_synth_dump(part, p);
    CHECK(run_checker(part, dir.path + "/part.log") == 0);

    // Claiming the other dim order makes k_post wrong for the checker.
    {
        h5::File f = h5::File::open_rw(hf);
        h5::write_attr_string(f.id(), "x", "dim_order", "gguf_interleaved");
        for (const char* n : {"/k_pre", "/k_post", "/q"}) {
            h5::Id d = h5::open_dataset(f, n);
            h5::write_attr_string(d.get(), "x", "dim_order", "gguf_interleaved");
        }
    }
    CHECK(run_checker(hf, dir.path + "/bad.log") == 1);
    CHECK_THAT(slurp(dir.path + "/bad.log"), ContainsSubstring("hf.h5::/k_post: not RoPE(k_pre)"));
}
