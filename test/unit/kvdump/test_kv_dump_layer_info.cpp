// /layer_info (format 1.1): round trip of local and global layers, 1.0 files read with the
// geometry their model record implies, and corrupt values refused by the reader and
// reported by the validator, each naming the dataset.
#include <hdf5.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <tuple>

#include "catch.h"
#include "dump_fixture.h"
#include "pkv/core/error.h"
#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump.h"

using namespace pkv;
using namespace pkv::test;

namespace {

/// Gemma 3's shape in small: model layers 0-4 local (window 4, RoPE base 10000), layer 5
/// global (RoPE base 1e6); stored: 0, 1, 3 (local) and 5 (global).
SynthSpec mixed_spec() {
    SynthSpec s;
    s.n_layer_model = 6;
    s.layers = {0, 1, 3, 5};
    s.window = 4;
    s.swa_layers = {0, 1, 2, 3, 4};
    s.rope_base = 1000000.0;
    s.rope_base_swa = 10000.0;
    return s;
}

/// What the reader gives for layers of `s`, as tuples that compare and print.
std::vector<std::tuple<int, int, double, int, int>> tuples(const std::vector<KvDumpLayerInfo>& v) {
    std::vector<std::tuple<int, int, double, int, int>> out;
    for (const auto& li : v) out.emplace_back(li.layer, li.window, li.rope_base, li.n_head_kv, li.head_dim);
    return out;
}

/// Turns a 1.1 dump into what a 1.0 writer made: version "1.0", no /layer_info.
void make_v10(const std::string& path, bool keep_layer_info = false) {
    h5::File f = h5::File::open_rw(path);
    h5::write_attr_string(f.id(), "x", kvdump::kAttrFormatVersion, "1.0");
    if (!keep_layer_info) REQUIRE(H5Ldelete(f.id(), kvdump::kLayerInfo, H5P_DEFAULT) >= 0);
}

/// Replaces one /layer_info dataset by `values` stored as `file_type`.
template <typename T>
void replace(const std::string& path, const char* name, hid_t file_type, hid_t mem_type, const std::vector<T>& values) {
    h5::File f = h5::File::open_rw(path);
    REQUIRE(H5Ldelete(f.id(), name, H5P_DEFAULT) >= 0);
    h5::Id d = h5::create_1d(f, name, file_type, values.size());
    h5::write_1d(f, d.get(), name, mem_type, 0, values.size(), values.data());
}

/// The reader's error on `path` (code and message); fails the test when it opens.
std::pair<ErrorCode, std::string> open_error(const std::string& path) {
    try {
        KvDumpReader r(path);
    } catch (const Error& e) {
        return {e.code(), e.what()};
    }
    FAIL("the reader accepted " << path);
    return {};
}

void rewrite_model(const std::string& path, const std::function<void(nlohmann::json&)>& edit) {
    h5::File f = h5::File::open_rw(path);
    nlohmann::json m = nlohmann::json::parse(h5::read_attr_string(f.id(), "x", kvdump::kAttrModel));
    edit(m);
    h5::write_attr_string(f.id(), "x", kvdump::kAttrModel, m.dump());
}

}  // namespace

TEST_CASE("layer_info round-trips local and global layers", "[dump][layer_info]") {
    TempDir dir;
    const std::string path = dir.path + "/mixed.h5";
    const SynthSpec s = mixed_spec();
    write_synth_dump(path, s);

    KvDumpReader r(path);
    using T = std::tuple<int, int, double, int, int>;
    CHECK(tuples(r.layer_info()) ==
          std::vector<T>{{0, 4, 10000.0, 2, 8}, {1, 4, 10000.0, 2, 8}, {3, 4, 10000.0, 2, 8}, {5, 0, 1e6, 2, 8}});
    {
        h5::File f = h5::File::open_read(path);
        CHECK(h5::read_attr_string(f.id(), "x", kvdump::kAttrFormatVersion) == "1.1");
        h5::Id w = h5::open_dataset(f, kvdump::kLayerWindow), b = h5::open_dataset(f, kvdump::kLayerRopeBase);
        h5::Id tw = h5::type_of(f, w.get(), "w"), tb = h5::type_of(f, b.get(), "b");
        CHECK(h5::type_name(tw.get()) == "int32");
        CHECK(h5::type_name(tb.get()) == "float64");
    }
    const auto problems = validate_kv_dump(path);
    INFO((problems.empty() ? std::string() : problems[0]));
    CHECK(problems.empty());

    const nlohmann::json j = kv_dump_metadata_json(path);
    REQUIRE(j.at("layer_info").size() == 4);
    CHECK(j["layer_info"][0] ==
          nlohmann::json{{"layer", 0}, {"window", 4}, {"rope_base", 10000.0}, {"n_head_kv", 2}, {"head_dim", 8}});
    CHECK(j["layer_info"][3].at("window") == 0);
    CHECK(j["layer_info"][3].at("rope_base") == 1e6);
    CHECK(j.at("datasets").at(kvdump::kLayerRopeBase).at("dtype") == "float64");
    CHECK_THAT(describe_kv_dump(path),
               ContainsSubstring("geometry:    3 local (window 4, RoPE base 10000), 1 global (RoPE base 1000000)\n"));

    // All global: one group, said once.
    write_synth_dump(dir.path + "/global.h5", SynthSpec{});
    CHECK_THAT(describe_kv_dump(dir.path + "/global.h5"),
               ContainsSubstring("geometry:    all 2 layers global (RoPE base 10000)\n"));

    // The schema requires layer_info and describes its entries.
    if (python_has("jsonschema")) {
        auto fits = [&](const nlohmann::json& doc) {
            const std::string file = dir.path + "/meta.json";
            std::ofstream(file) << doc.dump(2);
            const std::string cmd =
                std::string(
                    "/usr/bin/python3 -c \"import json, sys, jsonschema; jsonschema.Draft7Validator("
                    "json.load(open(sys.argv[1]))).validate(json.load(open(sys.argv[2])))\" '") +
                PKV_TEST_SOURCE_DIR + "/schemas/kv_dump.schema.json' '" + file + "' >/dev/null 2>&1";
            return exit_status(std::system(cmd.c_str())) == 0;
        };
        CHECK(fits(j));
        nlohmann::json bad = j;
        bad["layer_info"][1]["window"] = -1;
        CHECK_FALSE(fits(bad));
        bad = j;
        bad.erase("layer_info");
        CHECK_FALSE(fits(bad));
    }

    // The independent checker rotates each layer with its own base, from /layer_info or,
    // in a 1.0 file, from the model record; a wrong base is caught.
    if (!python_has("h5py, numpy")) PKV_SKIP("/usr/bin/python3 with h5py and numpy not available: checker not run");
    auto checker = [](const std::string& file) {
        const std::string cmd = std::string("/usr/bin/python3 '") + PKV_TEST_SOURCE_DIR +
                                "/test/python/check_dump_h5py.py' '" + file + "' >/dev/null 2>&1";
        return exit_status(std::system(cmd.c_str()));
    };
    CHECK(checker(path) == 0);
    write_synth_dump(dir.path + "/old.h5", s);
    make_v10(dir.path + "/old.h5");
    CHECK(checker(dir.path + "/old.h5") == 0);
    replace<double>(path, kvdump::kLayerRopeBase, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {1e4, 1e4, 1e4, 1e4});
    CHECK(checker(path) == 1);
}

TEST_CASE("the writer refuses a header without the layers' geometry", "[dump][layer_info]") {
    TempDir dir;
    KvDumpHeader h = synth_header(mixed_spec());
    auto refused = [&](const char* part) {
        try {
            KvDumpWriter w(dir.path + "/x.h5", h);
            FAIL("no error");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::internal);
            CHECK_THAT(e.what(), ContainsSubstring(part));
        }
    };
    SECTION("empty") {
        h.layer_info.clear();
        refused("internal error: !h.layer_info.empty() failed");
    }
    SECTION("one entry short") {
        h.layer_info.pop_back();
        refused("x.h5::/layer_info: kv dump: expected layer_info for the 4 stored layers, got 3");
    }
    SECTION("another layer") {
        h.layer_info[1].layer = 2;
        refused("x.h5::/layer_info: kv dump: expected layer_info[1] for layer 1, got layer 2");
    }
    SECTION("a head_dim other than the header's") {
        h.layer_info[2].head_dim = 16;
        refused("x.h5::/layer_info/head_dim: kv dump: expected 8 (the root attribute head_dim), got 16 at index 2");
    }
}

TEST_CASE("a 1.0 dump gets its layers' geometry from the model record", "[dump][layer_info]") {
    TempDir dir;
    const std::string path = dir.path + "/old.h5";
    const SynthSpec s = mixed_spec();
    write_synth_dump(path, s);
    const auto written = tuples(KvDumpReader(path).layer_info());
    make_v10(path);
    using T = std::tuple<int, int, double, int, int>;

    SECTION("swa_layers, sliding_window and both RoPE bases") {
        CHECK(tuples(KvDumpReader(path).layer_info()) == written);
        const auto problems = validate_kv_dump(path);
        INFO((problems.empty() ? std::string() : problems[0]));
        CHECK(problems.empty());
        CHECK(kv_dump_metadata_json(path).at("layer_info").size() == 4);
        CHECK_THAT(describe_kv_dump(path), ContainsSubstring("3 local (window 4, RoPE base 10000), 1 global (RoPE "
                                                             "base 1000000) (format 1.0: from the model record)"));
    }
    SECTION("a record without local layers: all global") {
        rewrite_model(path, [](nlohmann::json& m) {
            m.erase("swa_layers");
            m.erase("sliding_window");
            m.erase("rope_freq_base_swa");
        });
        CHECK(tuples(KvDumpReader(path).layer_info()) ==
              std::vector<T>{{0, 0, 1e6, 2, 8}, {1, 0, 1e6, 2, 8}, {3, 0, 1e6, 2, 8}, {5, 0, 1e6, 2, 8}});
    }
    SECTION("a record without RoPE bases: unknown (0)") {
        rewrite_model(path, [](nlohmann::json& m) {
            m.erase("rope_freq_base");
            m["rope_freq_base_swa"] = nullptr;
        });
        CHECK(tuples(KvDumpReader(path).layer_info()) ==
              std::vector<T>{{0, 4, 0.0, 2, 8}, {1, 4, 0.0, 2, 8}, {3, 4, 0.0, 2, 8}, {5, 0, 0.0, 2, 8}});
        CHECK_THAT(describe_kv_dump(path), ContainsSubstring("3 local (window 4, RoPE base unknown)"));
    }
    SECTION("local layers without a window are refused, not called global") {
        rewrite_model(path, [](nlohmann::json& m) { m.erase("sliding_window"); });
        const auto [code, msg] = open_error(path);
        CHECK(code == ErrorCode::data_loss);
        CHECK_THAT(msg, ContainsSubstring("old.h5::/: attribute 'model': field 'sliding_window': expected an integer "
                                          "in [1, 2147483647] (swa_layers lists layer 0), got nothing"));
        const auto p = validate_kv_dump(path);
        REQUIRE(p.size() == 1);
        CHECK_THAT(p[0], ContainsSubstring("field 'sliding_window'"));
    }
    SECTION("a 1.0 file that has /layer_info is read from it") {
        write_synth_dump(path, s);
        make_v10(path, /*keep_layer_info=*/true);
        replace<int32_t>(path, kvdump::kLayerWindow, H5T_STD_I32LE, H5T_NATIVE_INT32, {7, 7, 7, 0});
        CHECK(std::get<1>(tuples(KvDumpReader(path).layer_info())[0]) == 7);
    }
}

TEST_CASE("a 1.1 dump without /layer_info is refused", "[dump][layer_info]") {
    TempDir dir;
    const std::string path = dir.path + "/dump.h5";
    write_synth_dump(path, SynthSpec{});
    {
        h5::File f = h5::File::open_rw(path);
        REQUIRE(H5Ldelete(f.id(), kvdump::kLayerInfo, H5P_DEFAULT) >= 0);
    }
    const auto [code, msg] = open_error(path);
    CHECK(code == ErrorCode::data_loss);
    CHECK_THAT(msg, ContainsSubstring("dump.h5::/layer_info/window: expected a dataset (format_version 1.1 requires "
                                      "/layer_info), got none"));
    const auto p = validate_kv_dump(path);
    REQUIRE(p.size() == 1);
    CHECK_THAT(p[0], ContainsSubstring("dump.h5::/layer_info: expected a group (format_version 1.1 requires "
                                       "/layer_info), got none"));
}

TEST_CASE("corrupt /layer_info is refused naming the dataset", "[dump][layer_info]") {
    TempDir dir;
    const std::string path = dir.path + "/dump.h5";
    write_synth_dump(path, SynthSpec{});
    std::string want;
    SECTION("wrong shape") {
        replace<int32_t>(path, kvdump::kLayerWindow, H5T_STD_I32LE, H5T_NATIVE_INT32, {0, 0, 0});
        want = "dump.h5::/layer_info/window: expected shape [L=2], got [3]";
    }
    SECTION("negative window") {
        replace<int32_t>(path, kvdump::kLayerWindow, H5T_STD_I32LE, H5T_NATIVE_INT32, {0, -5});
        want =
            "dump.h5::/layer_info/window: expected a window in [0, 2147483647] tokens (0: global layer), got -5 at "
            "index 1";
    }
    SECTION("window beyond int32, stored as int64") {
        replace<int64_t>(path, kvdump::kLayerWindow, H5T_STD_I64LE, H5T_NATIVE_INT64, {int64_t{1} << 33, 0});
        want =
            "dump.h5::/layer_info/window: expected a window in [0, 2147483647] tokens (0: global layer), got "
            "8589934592 at index 0";
    }
    SECTION("window stored as float") {
        replace<double>(path, kvdump::kLayerWindow, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {512.5, 0});
        want = "dump.h5::/layer_info/window: expected dtype an integer type, got float64";
    }
    SECTION("NaN RoPE base") {
        replace<double>(path, kvdump::kLayerRopeBase, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE,
                        {10000.0, std::numeric_limits<double>::quiet_NaN()});
        want = "dump.h5::/layer_info/rope_base: expected a finite RoPE base >= 0, got nan at index 1";
    }
    SECTION("negative RoPE base") {
        replace<double>(path, kvdump::kLayerRopeBase, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {-1.0, 10000.0});
        want = "dump.h5::/layer_info/rope_base: expected a finite RoPE base >= 0, got -1 at index 0";
    }
    SECTION("head_dim other than the root attribute") {
        replace<int32_t>(path, kvdump::kLayerHeadDim, H5T_STD_I32LE, H5T_NATIVE_INT32, {16, 8});
        want = "dump.h5::/layer_info/head_dim: expected 8 (the root attribute head_dim), got 16 at index 0";
    }
    SECTION("n_head_kv other than the root attribute") {
        replace<int32_t>(path, kvdump::kLayerNHeadKv, H5T_STD_I32LE, H5T_NATIVE_INT32, {2, 1});
        want = "dump.h5::/layer_info/n_head_kv: expected 2 (the root attribute n_head_kv), got 1 at index 1";
    }
    SECTION("one dataset missing") {
        h5::File f = h5::File::open_rw(path);
        REQUIRE(H5Ldelete(f.id(), kvdump::kLayerNHeadKv, H5P_DEFAULT) >= 0);
        want =
            "dump.h5::/layer_info/n_head_kv: expected a dataset (the other /layer_info datasets are present), got "
            "none";
    }
    const auto [code, msg] = open_error(path);
    CHECK(code == ErrorCode::data_loss);
    CHECK_THAT(msg, ContainsSubstring(want));
    CHECK(msg.find('\n') == std::string::npos);
    CHECK_THROWS_WITH(kv_dump_metadata_json(path), ContainsSubstring(want));

    // The validator reports the same problem (a missing dataset in its own words).
    const auto p = validate_kv_dump(path);
    INFO("problems: " << (p.empty() ? std::string("none") : p[0]));
    REQUIRE(p.size() == 1);
    if (want.find("expected a dataset") != std::string::npos)
        CHECK_THAT(p[0], ContainsSubstring("dump.h5::/layer_info/n_head_kv: missing dataset"));
    else CHECK_THAT(p[0], ContainsSubstring(want));
}
