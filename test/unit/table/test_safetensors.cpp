// SafetensorsWriter / SafetensorsFile: round trips, every validation rule, truncation
// and byte-flip robustness, and a cross-check with the reference Python package.
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sys/wait.h>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/table/safetensors.h"
#include "support/scratch_dir.h"

using namespace pkv;

namespace {

template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
    std::vector<uint8_t> out(v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
    return out;
}

template <typename T>
std::vector<T> values_of(const StTensorView& t) {
    std::vector<T> out(t.size / sizeof(T));
    if (!out.empty()) std::memcpy(out.data(), t.data, t.size);
    return out;
}

/// A file from a raw header text and a data buffer (header not padded).
std::vector<uint8_t> raw_file(const std::string& header, size_t data_len) {
    std::vector<uint8_t> out;
    const uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
    out.insert(out.end(), header.begin(), header.end());
    out.resize(out.size() + data_len, 0x5a);
    return out;
}

/// The message of the pkv::Error that parsing `bytes` throws ("" if none).
std::string parse_error(const std::vector<uint8_t>& bytes, ErrorCode* code = nullptr) {
    try {
        SafetensorsFile::parse(bytes, "t.safetensors");
    } catch (const Error& e) {
        if (code) *code = e.code();
        return e.what();
    }
    return "";
}

/// Contents shared with test/python/check_safetensors.py (expected_from_pkv).
SafetensorsWriter make_cross_check_writer() {
    SafetensorsWriter w;
    w.add({"f.f64", "F64", {2, 1}, bytes_of(std::vector<double>{1e300, -3.0})});
    w.add({"a.f32", "F32", {2, 3}, bytes_of(std::vector<float>{0, 0.5f, 1, 1.5f, 2, 2.5f})});
    w.add({"b.i32", "I32", {4}, bytes_of(std::vector<int32_t>{-2, -1, 0, 7})});
    w.add({"c.u8", "U8", {}, {200}});
    w.add({"d.empty", "F32", {0, 4}, {}});
    w.add({"e.f16",
           "F16",
           {3},
           bytes_of(std::vector<uint16_t>{float_to_half(1.0f), float_to_half(-2.5f), float_to_half(0.125f)})});
    w.set_metadata("format", "pkv.pattern_table");
    w.set_metadata("format_version", "1");
    w.set_metadata("config", R"({"n_layer": 2})");
    return w;
}

std::string data_python() { return std::string(PKV_TEST_DATA_DIR) + "/venv/bin/python"; }

int run(const std::string& cmd) {
    const int st = std::system(cmd.c_str());
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST_CASE("safetensors round trip of several dtypes and shapes", "[table][safetensors]") {
    SafetensorsWriter w = make_cross_check_writer();
    w.add({"g.bf16", "BF16", {2}, bytes_of(std::vector<uint16_t>{float_to_bf16(3.0f), float_to_bf16(-0.5f)})});
    w.add({"h.i64", "I64", {1, 1, 1}, bytes_of(std::vector<int64_t>{-1234567890123LL})});
    w.add({"i.empty_rank1", "U8", {0}, {}});
    const std::vector<uint8_t> bytes = w.encode();

    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
    CHECK(header_len % 8 == 0);
    CHECK(bytes[8] == '{');

    SafetensorsFile f = SafetensorsFile::parse(bytes, "x.safetensors");
    CHECK(f.names() == std::vector<std::string>{"a.f32", "b.i32", "c.u8", "d.empty", "e.f16", "f.f64", "g.bf16",
                                                "h.i64", "i.empty_rank1"});
    CHECK(f.metadata().at("format") == "pkv.pattern_table");
    CHECK(f.metadata().at("config") == R"({"n_layer": 2})");
    CHECK(f.metadata().size() == 3);

    const StTensorView& a = f.tensor("a.f32");
    CHECK(a.dtype == "F32");
    CHECK(a.shape == std::vector<uint64_t>{2, 3});
    CHECK(values_of<float>(a) == std::vector<float>{0, 0.5f, 1, 1.5f, 2, 2.5f});
    CHECK(values_of<int32_t>(f.tensor("b.i32")) == std::vector<int32_t>{-2, -1, 0, 7});
    const StTensorView& c = f.tensor("c.u8");
    CHECK(c.shape.empty());
    CHECK(c.numel() == 1);
    CHECK(c.size == 1);
    CHECK(c.data[0] == 200);
    CHECK(f.tensor("d.empty").size == 0);
    CHECK(f.tensor("d.empty").numel() == 0);
    CHECK(f.tensor("d.empty").shape == std::vector<uint64_t>{0, 4});
    CHECK(half_to_float(values_of<uint16_t>(f.tensor("e.f16"))[1]) == -2.5f);
    CHECK(values_of<double>(f.tensor("f.f64"))[0] == 1e300);
    CHECK(bf16_to_float(values_of<uint16_t>(f.tensor("g.bf16"))[0]) == 3.0f);
    CHECK(values_of<int64_t>(f.tensor("h.i64"))[0] == -1234567890123LL);
    StTensor copy = f.tensor("b.i32").to_tensor();
    CHECK(copy.name == "b.i32");
    CHECK(copy.data.size() == 16);

    CHECK_THROWS_WITH(f.tensor("nope"), ContainsSubstring("x.safetensors: no tensor 'nope'"));

    SECTION("deterministic: the same tensors added in another order give the same bytes") {
        SafetensorsWriter w2;
        w2.add({"z", "U8", {1}, {1}});
        w2.add({"a", "U8", {1}, {2}});
        SafetensorsWriter w3;
        w3.add({"a", "U8", {1}, {2}});
        w3.add({"z", "U8", {1}, {1}});
        CHECK(w2.encode() == w3.encode());
        CHECK(SafetensorsFile::parse(w2.encode(), "y").metadata().empty());
    }
    SECTION("an empty writer gives a valid file") {
        SafetensorsFile e = SafetensorsFile::parse(SafetensorsWriter().encode(), "e");
        CHECK(e.names().empty());
    }
    SECTION("write and open through the file system; no overwrite without force") {
        pkv_test::ScratchDir dir;
        const std::string p = dir.path("t.safetensors");
        w.write(p, false);
        SafetensorsFile g = SafetensorsFile::open(p);
        CHECK(g.names().size() == 9);
        CHECK(values_of<float>(g.tensor("a.f32"))[5] == 2.5f);
        CHECK_THROWS_AS(w.write(p, false), Error);
        w.write(p, true);
        CHECK_THROWS_WITH(SafetensorsFile::open(dir.path("missing.safetensors")),
                          ContainsSubstring("missing.safetensors: cannot open"));
    }
}

TEST_CASE("safetensors writer rejects bad tensors", "[table][safetensors]") {
    SafetensorsWriter w;
    w.add({"a", "F32", {2}, std::vector<uint8_t>(8)});
    CHECK_THROWS_WITH(w.add({"a", "F32", {2}, std::vector<uint8_t>(8)}), ContainsSubstring("'a': added twice"));
    CHECK_THROWS_WITH(w.add({"__metadata__", "U8", {}, {1}}), ContainsSubstring("reserved"));
    CHECK_THROWS_WITH(w.add({"", "U8", {}, {1}}), ContainsSubstring("empty tensor name"));
    CHECK_THROWS_WITH(w.add({"b", "F4", {1}, {1}}), ContainsSubstring("unknown dtype 'F4'"));
    CHECK_THROWS_WITH(w.add({"b", "F32", {3, 8}, std::vector<uint8_t>(100)}),
                      ContainsSubstring("'b': expected 3 x 8 x F32 = 96 bytes, got 100"));
    CHECK_THROWS_WITH(w.add({"b", "F32", {1ull << 32, 1ull << 32}, {}}), ContainsSubstring("overflow"));
}

TEST_CASE("safetensors reader enforces every validation rule", "[table][safetensors]") {
    auto err = [](const std::string& header, size_t data_len) { return parse_error(raw_file(header, data_len)); };
    const std::string ok_entry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    REQUIRE(err(R"({"a":)" + ok_entry + "}", 8).empty());

    // Length prefix and header bounds.
    CHECK_THAT(parse_error({1, 2, 3}), ContainsSubstring("t.safetensors: expected at least 8 bytes"));
    std::vector<uint8_t> huge = raw_file("{}", 0);
    huge[0] = 0x01, huge[1] = 0xe1, huge[2] = 0xf5, huge[3] = 0x05;  // 100'000'001
    CHECK_THAT(parse_error(huge), ContainsSubstring("exceeds the 100 MB limit"));
    std::vector<uint8_t> past = raw_file("{}", 0);
    past[0] = 3;
    CHECK_THAT(parse_error(past), ContainsSubstring("header length 3 runs past end of file (10 bytes)"));

    // JSON shape.
    CHECK_THAT(err("{\"a\":", 0), ContainsSubstring("header is not valid JSON"));
    CHECK_THAT(err("[1,2]", 0), ContainsSubstring("expected a JSON object, got array"));
    CHECK_THAT(err(R"({"a":)" + ok_entry + R"(,"a":)" + ok_entry + "}", 8), ContainsSubstring("duplicate key 'a'"));
    CHECK_THAT(err(R"({"a":{"dtype":"F32","dtype":"U8","shape":[2],"data_offsets":[0,8]}})", 8),
               ContainsSubstring("duplicate key 'dtype'"));
    CHECK_THAT(err(R"({"a":[1]})", 0), ContainsSubstring("tensor 'a': expected an object, got array"));

    // Entry fields.
    CHECK_THAT(err(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), ContainsSubstring("expected a string 'dtype'"));
    CHECK_THAT(err(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8),
               ContainsSubstring("expected a string 'dtype'"));
    CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8),
               ContainsSubstring("expected an array 'shape'"));
    CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
               ContainsSubstring("shape: expected non-negative integers, got -2"));
    CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
               ContainsSubstring("shape: expected non-negative integers"));
    CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2]}})", 8),
               ContainsSubstring("expected 'data_offsets' as [begin, end]"));
    CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", 8),
               ContainsSubstring("expected 'data_offsets' as [begin, end]"));
    CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-1,8]}})", 8),
               ContainsSubstring("data_offsets: expected non-negative integers"));
    ErrorCode code{};
    CHECK_THAT(parse_error(raw_file(R"({"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1), &code),
               ContainsSubstring("tensor 'a': unknown dtype 'F4'"));
    CHECK(code == ErrorCode::unsupported);

    // Sizes and offsets.
    CHECK_THAT(err(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[5,4]}})", 8),
               ContainsSubstring("end before begin"));
    CHECK_THAT(err(R"({"a":{"dtype":"U8","shape":[9],"data_offsets":[0,9]}})", 8),
               ContainsSubstring("data_offsets [0, 9) run past the data buffer (8 bytes)"));
    CHECK(err(R"({"layers.0.k.centroids":{"dtype":"F32","shape":[3,8],"data_offsets":[0,100]}})", 100) ==
          "t.safetensors: tensor 'layers.0.k.centroids': data_offsets [0, 100) hold 100 bytes, expected 3 x 8 x F32 = "
          "96");
    CHECK_THAT(err(R"({"s":{"dtype":"F64","shape":[],"data_offsets":[0,4]}})", 4),
               ContainsSubstring("hold 4 bytes, expected F64 = 8"));
    CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
               ContainsSubstring("overflow"));
    CHECK_THAT(err(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", 8),
               ContainsSubstring("leave a gap [0, 4)"));
    CHECK_THAT(
        err(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
            6),
        ContainsSubstring("tensor 'b': data_offsets [2, 6) overlap tensor 'a' (ends at 4)"));
    CHECK_THAT(err(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 6),
               ContainsSubstring("tensors cover 4 bytes of the data buffer, expected all 6"));
    CHECK_THAT(err("{}", 1), ContainsSubstring("tensors cover 0 bytes"));
    // Empty tensors may share an offset with anything.
    CHECK(
        err(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"f":{"dtype":"F32","shape":[2,0],"data_offsets":[4,4]}})",
            4)
            .empty());

    // Metadata.
    CHECK_THAT(err(R"({"__metadata__":[1]})", 0), ContainsSubstring("__metadata__: expected an object, got array"));
    CHECK_THAT(err(R"({"__metadata__":{"k":1}})", 0),
               ContainsSubstring("__metadata__: key 'k': expected a string value, got number"));
    CHECK(err(R"({"__metadata__":{"k":"v"}})", 0).empty());
}

TEST_CASE("safetensors reader: every truncation and byte flip is an error, never a crash", "[table][safetensors]") {
    const std::vector<uint8_t> good = make_cross_check_writer().encode();
    REQUIRE(parse_error(good).empty());
    for (size_t len = 0; len < good.size(); ++len) {
        INFO("prefix length " << len);
        CHECK_FALSE(parse_error(std::vector<uint8_t>(good.begin(), good.begin() + len)).empty());
    }
    std::vector<uint8_t> extra = good;
    extra.push_back(0);
    CHECK_FALSE(parse_error(extra).empty());

    // A flipped byte may still give a valid file (inside data, or a digit in a name), but
    // must never escape as anything other than pkv::Error.
    size_t rejected = 0;
    for (size_t i = 0; i < good.size(); ++i) {
        for (uint8_t mask : {uint8_t(0x01), uint8_t(0x80), uint8_t(0xff)}) {
            std::vector<uint8_t> bad = good;
            bad[i] ^= mask;
            try {
                SafetensorsFile::parse(bad, "t");
            } catch (const Error&) {
                ++rejected;
            }
        }
    }
    CHECK(rejected > good.size());
}

TEST_CASE("safetensors cross-check with the Python safetensors package", "[table][safetensors][python]") {
    const std::string py = data_python();
    if (run("'" + py + "' -c 'import safetensors, numpy' >/dev/null 2>&1") != 0)
        PKV_SKIP(py + " with the safetensors package not available (run scripts/fetch-data.sh): cross-check skipped");
    const std::string script = std::string(PKV_TEST_SOURCE_DIR) + "/test/python/check_safetensors.py";
    pkv_test::ScratchDir dir;

    SECTION("the package loads what pkv writes") {
        const std::string p = dir.path("from_pkv.safetensors");
        make_cross_check_writer().write(p, false);
        const std::string log = dir.path("check.log");
        const int rc = run("'" + py + "' '" + script + "' check '" + p + "' >'" + log + "' 2>&1");
        INFO(slurp(log));
        CHECK(rc == 0);
    }
    SECTION("pkv reads what the package writes") {
        const std::string p = dir.path("from_python.safetensors");
        const std::string log = dir.path("write.log");
        const int rc = run("'" + py + "' '" + script + "' write '" + p + "' >'" + log + "' 2>&1");
        INFO(slurp(log));
        REQUIRE(rc == 0);
        SafetensorsFile f = SafetensorsFile::open(p);
        CHECK(f.names() == std::vector<std::string>{"v", "w", "x", "y", "z"});
        CHECK(f.metadata() == std::map<std::string, std::string>{{"who", "python"}, {"n", "3"}});
        CHECK(f.tensor("x").dtype == "F32");
        CHECK(f.tensor("x").shape == std::vector<uint64_t>{2, 2});
        CHECK(values_of<float>(f.tensor("x")) == std::vector<float>{1, 2, 3, 4});
        CHECK(f.tensor("y").dtype == "I64");
        CHECK(values_of<int64_t>(f.tensor("y")) == std::vector<int64_t>{5, -6, 7});
        CHECK(f.tensor("z").dtype == "U8");
        CHECK(f.tensor("z").shape.empty());
        CHECK(f.tensor("z").data[0] == 9);
        CHECK(f.tensor("w").dtype == "F16");
        CHECK(f.tensor("w").shape == std::vector<uint64_t>{0});
        CHECK(f.tensor("w").size == 0);
        const std::vector<uint16_t> v = values_of<uint16_t>(f.tensor("v"));
        REQUIRE(v.size() == 2);
        CHECK(half_to_float(v[0]) == 0.5f);
        CHECK(half_to_float(v[1]) == -0.25f);
    }
}

TEST_CASE("safetensors reader refuses a file larger than the memory budget before reading it", "[table][safetensors]") {
    pkv_test::ScratchDir dir;
    const std::string path = dir.str() + "/big.safetensors";
    {
        std::ofstream f(path, std::ios::binary);
        const std::string zeros(3 << 20, '\0');
        f.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
    }
    setenv("PKV_MEMORY_BUDGET", "2M", 1);
    std::string msg;
    try {
        SafetensorsFile::open(path);
    } catch (const Error& e) {
        msg = e.what();
    }
    unsetenv("PKV_MEMORY_BUDGET");
    CHECK_THAT(msg, ContainsSubstring("big.safetensors: needs 3.0 MiB of memory, above the budget of 2.0 MiB"));
}
