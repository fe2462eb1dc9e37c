// GgufWriter -> GgufFile round trips: every metadata type, every supported tensor
// type, alignments 32 and 64, typed getters and their errors.
#include <cmath>
#include <cstring>
#include <random>

#include "catch.h"
#include "gguf_test_util.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/gguf/gguf.h"
#include "pkv/gguf/gguf_writer.h"

using namespace pkv;
using pkv_test::ScratchDir;

namespace {

GgufValue uval(GgufType t, uint64_t v) {
    GgufValue g;
    g.type = t;
    g.value = v;
    return g;
}

GgufValue ival(GgufType t, int64_t v) {
    GgufValue g;
    g.type = t;
    g.value = v;
    return g;
}

GgufValue arr(GgufType elem, std::vector<GgufValue> items) {
    GgufValue g;
    g.type = GgufType::ARRAY;
    g.array_type = elem;
    g.value = std::move(items);
    return g;
}

const std::vector<GgufValue>& items(const GgufValue& v) { return std::get<std::vector<GgufValue>>(v.value); }

// Random but valid bytes for a tensor of n elements of type t: scales are finite
// binary16 values so that dequantized results can be compared exactly.
std::vector<uint8_t> random_tensor_bytes(GgmlType t, int64_t n, std::mt19937& rng) {
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    std::vector<uint8_t> b(ggml_row_size(t, n));
    for (auto& x : b) x = static_cast<uint8_t>(byte(rng));
    const size_t bs = ggml_type_size(t);
    const auto put_half = [&](size_t at) {
        const uint16_t h = float_to_half(uni(rng));
        std::memcpy(&b[at], &h, 2);
    };
    switch (t) {
        case GgmlType::F32:
            for (int64_t i = 0; i < n; ++i) {
                const float f = uni(rng);
                std::memcpy(&b[4 * i], &f, 4);
            }
            break;
        case GgmlType::F16:
            for (int64_t i = 0; i < n; ++i) put_half(2 * i);
            break;
        case GgmlType::BF16:
            for (int64_t i = 0; i < n; ++i) b[2 * i + 1] &= 0x7F;  // exponent never all ones
            break;
        case GgmlType::Q4_0:
        case GgmlType::Q5_0:
        case GgmlType::Q8_0:
            for (size_t o = 0; o < b.size(); o += bs) put_half(o);
            break;
        case GgmlType::Q4_1:
        case GgmlType::Q5_1:
        case GgmlType::Q4_K:
            for (size_t o = 0; o < b.size(); o += bs) put_half(o), put_half(o + 2);
            break;
        case GgmlType::Q6_K:
            for (size_t o = 0; o < b.size(); o += bs) put_half(o + 208);
            break;
    }
    return b;
}

}  // namespace

TEST_CASE("metadata of every type round-trips") {
    ScratchDir dir;
    GgufWriter w;
    w.set_u32("t.u32", 4000000000u);
    w.set_i32("t.i32", -7);
    w.set_u64("t.u64", 0xFFFFFFFFFFFFFFFFull);
    w.set_f32("t.f32", 0.1f);
    w.set_f64("t.f64", -1e300);
    w.set_bool("t.true", true);
    w.set_bool("t.false", false);
    w.set_string("t.str", "smollm");
    w.set_string("t.empty", "");
    w.set_string("t.binary", std::string("a\0b\xC3\xA9", 5));
    w.set("t.u8", uval(GgufType::U8, 255));
    w.set("t.i8", ival(GgufType::I8, -128));
    w.set("t.u16", uval(GgufType::U16, 65535));
    w.set("t.i16", ival(GgufType::I16, -32768));
    w.set("t.i64", ival(GgufType::I64, INT64_MIN));
    w.set_string_array("t.strs", {"a", "", "Ġthe", std::string(300, 'x')});
    w.set_i32_array("t.i32s", {1, -2, 3});
    w.set_f32_array("t.f32s", {0.5f, -0.25f});
    w.set("t.empty_arr", arr(GgufType::U32, {}));
    w.set("t.nested",
          arr(GgufType::ARRAY, {arr(GgufType::U16, {uval(GgufType::U16, 1), uval(GgufType::U16, 2)}),
                                arr(GgufType::STRING, {}), arr(GgufType::ARRAY, {arr(GgufType::BOOL, {})})}));
    w.set("t.bools", arr(GgufType::BOOL, {}));
    w.set_u32("t.replaced", 1);
    w.set_u32("t.replaced", 2);  // replaces in place, keeps the first position
    w.write(dir.path("m.gguf"));
    auto f = GgufFile::open(dir.path("m.gguf"));

    CHECK(f->version() == 3);
    CHECK(f->alignment() == 32);
    CHECK_FALSE(f->has("general.alignment"));
    REQUIRE(f->keys().size() == 22);
    CHECK(f->keys()[0] == "t.u32");
    CHECK(f->keys()[21] == "t.replaced");
    CHECK(f->get_u64("t.replaced") == 2);

    CHECK(f->get("t.u32").type == GgufType::U32);
    CHECK(f->get_u64("t.u32") == 4000000000u);
    CHECK(f->get("t.i32").type == GgufType::I32);
    CHECK(std::get<int64_t>(f->get("t.i32").value) == -7);
    CHECK(f->get_u64("t.u64") == 0xFFFFFFFFFFFFFFFFull);
    CHECK(f->get("t.f32").type == GgufType::F32);
    CHECK(f->get_f64("t.f32") == static_cast<double>(0.1f));
    CHECK(f->get_f64("t.f64") == -1e300);
    CHECK(f->get_bool("t.true"));
    CHECK_FALSE(f->get_bool("t.false"));
    CHECK(f->get_string("t.str") == "smollm");
    CHECK(f->get_string("t.empty").empty());
    CHECK(f->get_string("t.binary") == std::string("a\0b\xC3\xA9", 5));
    CHECK(f->get_u64("t.u8") == 255);
    CHECK(f->get("t.u8").type == GgufType::U8);
    CHECK(std::get<int64_t>(f->get("t.i8").value) == -128);
    CHECK(f->get_u64("t.u16") == 65535);
    CHECK(std::get<int64_t>(f->get("t.i16").value) == -32768);
    CHECK(std::get<int64_t>(f->get("t.i64").value) == INT64_MIN);
    CHECK(f->get_f64("t.u16") == 65535.0);  // integers widen to double too

    const auto strs = f->get_string_array("t.strs");
    REQUIRE(strs.size() == 4);
    CHECK(strs[2] == "Ġthe");
    CHECK(strs[3].size() == 300);
    CHECK(f->get_int_array("t.i32s") == std::vector<int64_t>{1, -2, 3});
    const auto& f32s = items(f->get("t.f32s"));
    REQUIRE(f32s.size() == 2);
    CHECK(std::get<double>(f32s[1].value) == -0.25);
    CHECK(items(f->get("t.empty_arr")).empty());
    CHECK(f->get("t.empty_arr").array_type == GgufType::U32);

    const GgufValue& nested = f->get("t.nested");
    CHECK(nested.array_type == GgufType::ARRAY);
    REQUIRE(items(nested).size() == 3);
    CHECK(items(nested)[0].array_type == GgufType::U16);
    CHECK(std::get<uint64_t>(items(items(nested)[0])[1].value) == 2);
    CHECK(items(nested)[1].array_type == GgufType::STRING);
    CHECK(items(items(nested)[2])[0].array_type == GgufType::BOOL);
    CHECK(GgufFile::to_string(nested) == "[[1, 2], [], [[]]]");
    CHECK(GgufFile::to_string(f->get("t.strs"), 2) == "['a', '', ... (4 string items)]");
    CHECK(GgufFile::to_string(f->get("t.binary")) == "'a\\x00b\\xC3\\xA9'");
    CHECK(GgufFile::to_string(f->get("t.i64")) == "-9223372036854775808");
    CHECK(GgufFile::to_string(f->get("t.true")) == "true");
}

TEST_CASE("typed getters name the key and both types") {
    ScratchDir dir;
    GgufWriter w;
    w.set_string("s", "x");
    w.set_i32("neg", -1);
    w.set_f32("f", 1.0f);
    w.set_i32_array("ints", {1});
    w.set("big", arr(GgufType::U64, {uval(GgufType::U64, 1ull << 63)}));
    const std::string p = dir.path("m.gguf");
    w.write(p);
    auto f = GgufFile::open(p);
    CHECK_THROWS_WITH(f->get_u64("s"), p + ": metadata 's': expected an integer, got string");
    CHECK_THROWS_WITH(f->get_u64("neg"), ContainsSubstring("metadata 'neg': expected a non-negative integer, got -1"));
    CHECK_THROWS_WITH(f->get_u64("f"), ContainsSubstring("expected an integer, got f32"));
    CHECK_THROWS_WITH(f->get_string("f"), ContainsSubstring("metadata 'f': expected string, got f32"));
    CHECK_THROWS_WITH(f->get_bool("s"), ContainsSubstring("expected bool, got string"));
    CHECK_THROWS_WITH(f->get_f64("s"), ContainsSubstring("expected a number, got string"));
    CHECK_THROWS_WITH(f->get_string_array("ints"), ContainsSubstring("expected array of string, got array of i32"));
    CHECK_THROWS_WITH(f->get_int_array("s"), ContainsSubstring("expected array of integers, got string"));
    CHECK_THROWS_WITH(f->get_int_array("big"), ContainsSubstring("does not fit in i64"));
    CHECK_THROWS_WITH(f->get("nope"), p + ": metadata key 'nope' is missing");
    CHECK_FALSE(f->find_u64("nope").has_value());
    CHECK_FALSE(f->find_string("nope").has_value());
    CHECK(f->find_f64("f").value() == 1.0);
    CHECK(f->find_string("s").value() == "x");
    try {
        f->get("nope");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::not_found);
    }
    CHECK_THROWS_WITH(f->tensor("w"), p + ": tensor 'w' is missing");
    CHECK(f->find_tensor("w") == nullptr);
}

TEST_CASE("tensors of every supported type round-trip") {
    const uint32_t alignment = GENERATE(32u, 64u);
    ScratchDir dir;
    std::mt19937 rng(7);
    const GgmlType types[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1,
                              GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K};
    GgufWriter w(alignment);
    w.set_string("general.architecture", "llama");
    std::vector<std::vector<uint8_t>> originals;
    for (GgmlType t : types) {
        // 3 rows of 256 (every block size divides it), plus an odd 1-D F32 tensor below
        originals.push_back(random_tensor_bytes(t, 3 * 256, rng));
        w.add_tensor("w." + ggml_type_name(static_cast<uint32_t>(t)), {256, 3}, t, originals.back());
    }
    w.add_tensor_f32("odd", {5}, {1, 2, 3, 4, 5});
    const std::string p = dir.path("m.gguf");
    w.write(p);
    auto f = GgufFile::open(p);
    CHECK(f->alignment() == alignment);
    CHECK(f->has("general.alignment") == (alignment != 32));
    CHECK(f->file_size() % alignment == 0);
    REQUIRE(f->tensors().size() == std::size(types) + 1);
    for (size_t i = 0; i < std::size(types); ++i) {
        const GgufTensorInfo& t = f->tensors()[i];
        INFO(t.name);
        CHECK(t.type() == types[i]);
        CHECK(t.ne == std::vector<uint64_t>{256, 3});
        CHECK(t.n_rows() == 3);
        CHECK(t.row_length() == 256);
        CHECK(t.n_elements() == 768);
        CHECK(t.offset % alignment == 0);
        CHECK(t.nbytes == originals[i].size());
        CHECK(std::memcmp(f->tensor_data(t), originals[i].data(), t.nbytes) == 0);
        CHECK(reinterpret_cast<uintptr_t>(f->tensor_data(t)) % alignment == 0);  // the mapping is page aligned

        std::vector<float> expect(768);
        dequantize_row_ref(types[i], originals[i].data(), expect.data(), 768);
        const std::vector<float> got = f->dequantize(t);
        CHECK(std::memcmp(got.data(), expect.data(), 768 * 4) == 0);
        std::vector<float> row(256);
        f->dequantize_rows(t, 2, 1, row.data());
        CHECK(std::memcmp(row.data(), expect.data() + 512, 256 * 4) == 0);
        CHECK_THROWS_WITH(f->dequantize_rows(t, 2, 2, row.data()),
                          ContainsSubstring("2 rows from row 2 requested, tensor has 3 rows"));
        CHECK_THROWS_WITH(f->dequantize_rows(t, 4, 0, row.data()), ContainsSubstring("tensor has 3 rows"));
        CHECK_THROWS_AS(f->dequantize_rows(t, 1, UINT64_MAX, row.data()), Error);
    }
    const GgufTensorInfo& odd = f->tensor("odd");
    CHECK(odd.n_rows() == 1);
    CHECK(f->dequantize(odd) == std::vector<float>{1, 2, 3, 4, 5});
}

TEST_CASE("large tensors dequantize the same in parallel") {
    ScratchDir dir;
    std::mt19937 rng(3);
    const auto bytes = random_tensor_bytes(GgmlType::Q4_1, 576 * 1024, rng);
    GgufWriter w;
    w.add_tensor("big", {576, 1024}, GgmlType::Q4_1, bytes);
    w.write(dir.path("m.gguf"));
    auto f = GgufFile::open(dir.path("m.gguf"));
    const std::vector<float> got = f->dequantize(f->tensor("big"));
    std::vector<float> expect(576 * 1024);
    dequantize_row_ref(GgmlType::Q4_1, bytes.data(), expect.data(), 576 * 1024);
    CHECK(std::memcmp(got.data(), expect.data(), expect.size() * 4) == 0);
}

TEST_CASE("writer checks its input and writes atomically") {
    ScratchDir dir;
    CHECK_THROWS_WITH(GgufWriter(12), ContainsSubstring("alignment must be a nonzero multiple of 8, got 12"));
    CHECK_THROWS_AS(GgufWriter(0), Error);
    GgufWriter w;
    CHECK_THROWS_WITH(w.set_u32("general.alignment", 64), ContainsSubstring("constructor"));
    CHECK_THROWS_WITH(w.add_tensor("q", {40}, GgmlType::Q8_0, std::vector<uint8_t>(34)),
                      ContainsSubstring("not a multiple of the Q8_0 block size 32"));
    CHECK_THROWS_WITH(w.add_tensor("q", {32}, GgmlType::Q8_0, std::vector<uint8_t>(33)),
                      ContainsSubstring("expected 34 bytes of data, got 33"));
    CHECK_THROWS_WITH(w.add_tensor("q", {1, 1, 1, 1, 1}, GgmlType::F32, std::vector<uint8_t>(4)),
                      ContainsSubstring("expected at most 4 dims, got 5"));
    GgufValue bad = arr(GgufType::U32, {uval(GgufType::U16, 1)});
    CHECK_THROWS_WITH(w.set("bad", bad), ContainsSubstring("array of u32 holds a u16 element"));
    w.add_tensor_f32("x", {2}, {1, 2});
    CHECK_THROWS_WITH(w.add_tensor_f32("x", {2}, {1, 2}), ContainsSubstring("tensor 'x' added twice"));

    const std::string p = dir.path("out.gguf");
    w.write(p);
    CHECK_THROWS_AS(w.write(p), Error);  // exists, no force
    w.set_u32("later", 5);
    w.write(p, true);
    CHECK(GgufFile::open(p)->get_u64("later") == 5);
    // encode() and write() produce the same bytes.
    std::ifstream in(p, std::ios::binary);
    std::vector<uint8_t> on_disk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(on_disk == w.encode());
    int leftovers = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir.path("")))
        leftovers += e.path().filename() != "out.gguf";
    CHECK(leftovers == 0);
}
