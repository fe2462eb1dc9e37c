// pkv.quant.allocation (format 1.2): per-head widths round trip, tables without one stay
// 1.1 and read without one, and a malformed allocation is one data_loss line.
#include <functional>
#include <map>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/pipeline/export.h"
#include "pkv/table/pattern_table.h"
#include "pkv/table/safetensors.h"
#include "support/scratch_dir.h"
#include "table_fixture.h"

using namespace pkv;
using pkv_test::make_table;

namespace {

// The fixture (layers 0 and 2, 3 KV heads) with an allocation.
PatternTable allocated() {
    PatternTable t = make_table();
    t.alloc_budget = 3.25;
    t.alloc_bits = 3.2125;
    t.layers[0].k_bits = {2, 3, 16};
    t.layers[0].v_bits = {4, 2, 8};
    t.layers[1].k_bits = {2, 2, 2};
    t.layers[1].v_bits = {3, 3, 4};
    return t;
}

using Meta = std::map<std::string, std::string>;

// Reads `t` written with its metadata changed by `mutate`: "" or the error from "t.safetensors" on.
std::string read_error(const PatternTable& t, const std::function<void(Meta&)>& mutate) {
    const SafetensorsFile good = SafetensorsFile::parse(encode_pattern_table(t), "good");
    Meta meta = good.metadata();
    mutate(meta);
    SafetensorsWriter w;
    for (const std::string& n : good.names()) w.add(good.tensor(n).to_tensor());
    for (auto& [k, v] : meta) w.set_metadata(k, v);
    pkv_test::ScratchDir dir;
    const std::string p = dir.write("t.safetensors", w.encode());
    try {
        read_pattern_table(p);
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::data_loss);
        return std::string(e.what()).substr(p.size() - std::string("t.safetensors").size());
    }
    return "";
}

}  // namespace

TEST_CASE("allocation: round trip of the per-head widths, format 1.2", "[table][allocation]") {
    const PatternTable t = allocated();
    pkv_test::ScratchDir dir;
    const std::string p = dir.path("a.safetensors");
    write_pattern_table(t, p, false);
    const PatternTable back = read_pattern_table(p);
    CHECK(std::string(pattern_table_format_version(back)) == "1.2");
    REQUIRE(back.has_allocation());
    CHECK(back.alloc_budget == 3.25);
    CHECK(back.alloc_bits == 3.2125);
    for (size_t l = 0; l < t.layers.size(); ++l) {
        CHECK(back.layers[l].k_bits == t.layers[l].k_bits);
        CHECK(back.layers[l].v_bits == t.layers[l].v_bits);
    }
    CHECK(back.head_bits(0, 2, false) == 16);
    CHECK(back.head_bits(1, 2, true) == 4);
    CHECK(encode_pattern_table(back) == encode_pattern_table(t));
    const Meta meta = SafetensorsFile::parse(encode_pattern_table(t), "t").metadata();
    CHECK(meta.at("pkv.quant.allocation") ==
          R"({"bits":3.2125,"budget":3.25,"k":[[2,3,16],[2,2,2]],"v":[[4,2,8],[3,3,4]]})");
    CHECK(meta.at("pkv.format_version") == "1.2");
}

TEST_CASE("allocation: a table without one is 1.1 and reads its uniform width", "[table][allocation]") {
    const PatternTable t = make_table();
    const Meta meta = SafetensorsFile::parse(encode_pattern_table(t), "t").metadata();
    CHECK(meta.count("pkv.quant.allocation") == 0);
    CHECK(meta.at("pkv.format_version") == "1.1");
    CHECK_FALSE(t.has_allocation());
    CHECK(t.head_bits(1, 2, true) == t.bits);
    CHECK(read_error(t, [](Meta&) {}).empty());
}

TEST_CASE("allocation: malformed records are refused", "[table][allocation]") {
    const PatternTable t = allocated();
    const auto with = [&](const std::string& json) {
        return read_error(t, [&](Meta& m) { m["pkv.quant.allocation"] = json; });
    };
    CHECK(with(R"({"budget":3.25,"bits":3.2,"k":[[2,3,16],[2,2,2]],"v":[[4,2,8],[3,3,4]]})").empty());
    CHECK_THAT(with("{"), ContainsSubstring("t.safetensors::pkv.quant.allocation: expected a JSON object"));
    CHECK(with(R"({"bits":3.2,"k":[],"v":[]})") ==
          "t.safetensors::pkv.quant.allocation: expected a number \"budget\", got none");
    CHECK(with(R"({"budget":17,"bits":3.2,"k":[],"v":[]})") ==
          "t.safetensors::pkv.quant.allocation.budget: expected a number in (0, 16], got 17");
    CHECK(with(R"({"budget":3.25,"bits":3.2,"k":[[2,3,16]],"v":[[4,2,8],[3,3,4]]})") ==
          "t.safetensors::pkv.quant.allocation.k: expected 2 lists (one per entry of pkv.layers), got [[2,3,16]]");
    CHECK(with(R"({"budget":3.25,"bits":3.2,"k":[[2,3,16],[2,2,2]],"v":[[4,2,8],[3,5,4]]})") ==
          "t.safetensors::pkv.quant.allocation.v: layer 2: expected 3 widths of 2, 3, 4, 8 or 16, got [3,5,4]");
    CHECK_THAT(with(R"({"budget":3.25,"bits":3.2,"k":[[2,3],[2,2,2]],"v":[[4,2,8],[3,3,4]]})"),
               ContainsSubstring("allocation.k: layer 0: expected 3 widths"));
}

TEST_CASE("allocation: check_pattern_table wants one width per head of every layer", "[table][allocation]") {
    PatternTable t = allocated();
    CHECK_NOTHROW(check_pattern_table(t));
    t.layers[1].v_bits.pop_back();
    CHECK_THROWS_WITH(check_pattern_table(t), ContainsSubstring("layers[1].k_bits/v_bits: expected 3 widths"));
    PatternTable odd = allocated();
    odd.layers[0].k_bits[0] = 5;
    CHECK_THROWS_WITH(check_pattern_table(odd), ContainsSubstring("expected widths of 2, 3, 4, 8 or 16, got 5"));
    PatternTable stray = make_table();
    stray.layers[0].k_bits = {2, 2, 2};
    CHECK_THROWS_WITH(check_pattern_table(stray), ContainsSubstring("expected 0 widths"));
}

TEST_CASE("allocation: pkv info and the GGUF and JSON exports carry it", "[table][allocation][export]") {
    const PatternTable t = allocated();
    pkv_test::ScratchDir dir;
    const std::string p = dir.path("a.safetensors");
    write_pattern_table(t, p, false);
    CHECK_THAT(describe_pattern_table(p),
               ContainsSubstring("widths: allocated under a budget of 3.25 bits per element, 3.2125 reached; K/V "
                                 "heads at 2/3/4/8/16 bits: 5/3/2/1/1\n"));
    CHECK_THAT(describe_pattern_table(dir.write("u.safetensors", encode_pattern_table(make_table()))),
               !ContainsSubstring("widths:"));
    const auto g = GgufFile::open(dir.write("a.gguf", encode_table_gguf(t, PatternDtype::f32)));
    CHECK(g->get_string("pkv.format_version") == "1.2");
    CHECK(nlohmann::json::parse(g->get_string("pkv.quant.allocation")) == pattern_table_allocation_json(t));
    CHECK(table_to_json(t, PatternDtype::f32)["metadata"]["pkv.quant.allocation"] ==
          pattern_table_allocation_json(t).dump());
}

TEST_CASE("outliers: pkv.quant.outliers round trips as format 1.3; absent reads as 0", "[table][outliers]") {
    PatternTable t = make_table();
    CHECK(SafetensorsFile::parse(encode_pattern_table(t), "t").metadata().count("pkv.quant.outliers") == 0);
    t.outliers = 2;
    pkv_test::ScratchDir dir;
    const std::string p = dir.path("o.safetensors");
    write_pattern_table(t, p, false);
    const PatternTable back = read_pattern_table(p);
    CHECK(back.outliers == 2);
    CHECK(std::string(pattern_table_format_version(back)) == "1.3");
    CHECK(encode_pattern_table(back) == encode_pattern_table(t));
    CHECK(read_pattern_table(dir.write("n.safetensors", encode_pattern_table(make_table()))).outliers == 0);
    CHECK_THAT(read_error(t, [](Meta& m) { m["pkv.quant.outliers"] = "9"; }),
               ContainsSubstring("t.safetensors::pkv.quant.outliers: expected an integer in [1, 8], got 9"));
    t.outliers = 9;
    CHECK_THROWS_AS(encode_pattern_table(t), Error);
}

TEST_CASE("outliers: pkv info and the GGUF and JSON exports carry the count", "[table][outliers][export]") {
    PatternTable t = make_table();
    t.outliers = 3;
    pkv_test::ScratchDir dir;
    const std::string p = dir.write("o.safetensors", encode_pattern_table(t));
    CHECK_THAT(describe_pattern_table(p), ContainsSubstring(", 3 exact outliers per group\n"));
    const auto g = GgufFile::open(dir.write("o.gguf", encode_table_gguf(t, PatternDtype::f32)));
    CHECK(g->get_string("pkv.format_version") == "1.3");
    CHECK(g->get_u64("pkv.quant.outliers") == 3);
    CHECK(table_to_json(t, PatternDtype::f32)["metadata"]["pkv.quant.outliers"] == "3");
}
