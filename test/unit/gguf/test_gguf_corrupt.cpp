// Corrupt and unusual inputs: every one must raise pkv::Error naming the file and
// the field, never crash or read outside the mapping. Byte offsets patched below
// are worked out from the layout in docs/formats/gguf.md and checked before patching.
#include <random>

#include "catch.h"
#include "gguf_test_util.h"
#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/gguf/gguf_writer.h"

using namespace pkv;
using pkv_test::get_le;
using pkv_test::ScratchDir;
using pkv_test::set_le;

namespace {

ErrorCode code_of(const std::string& path) {
    try {
        GgufFile::open(path);
    } catch (const Error& e) {
        return e.code();
    }
    return ErrorCode::internal;  // opened fine: not what the callers expect
}

// Header (24 bytes), then one tensor info for "t" at offset 24:
//   24 name length, 32 'T', 33 n_dims, 37 ne[0], 45 type, 49 offset; then "u" from 57:
//   57 name length, 65 'u', 66 n_dims, 70 ne[0], 78 type, 82 offset.
std::vector<uint8_t> two_tensor_file() {
    GgufWriter w;
    w.add_tensor_f32("t", {16}, std::vector<float>(16, 1.0f));
    w.add_tensor_f32("u", {16}, std::vector<float>(16, 2.0f));
    auto b = w.encode();
    REQUIRE(get_le<uint64_t>(b, 24) == 1);
    REQUIRE(b[32] == 't');
    REQUIRE(get_le<uint64_t>(b, 37) == 16);
    REQUIRE(get_le<uint64_t>(b, 49) == 0);
    REQUIRE(b[65] == 'u');
    REQUIRE(get_le<uint64_t>(b, 82) == 64);
    return b;
}

}  // namespace

TEST_CASE("not a GGUF file") {
    ScratchDir dir;
    const std::string empty = dir.write("empty.gguf", {});
    CHECK_THROWS_WITH(GgufFile::open(empty), empty + ": not a GGUF file (the file is empty)");
    const std::string zip = dir.write("m.gguf", {'P', 'K', 3, 4, 0, 0, 0, 0});
    CHECK_THROWS_WITH(GgufFile::open(zip), zip + ": not a GGUF file (magic 'PK\\x03\\x04', expected 'GGUF')");
    CHECK(code_of(zip) == ErrorCode::data_loss);
    const std::string tiny = dir.write("tiny.gguf", {'G', 'G'});
    CHECK_THROWS_WITH(GgufFile::open(tiny), tiny + ": truncated: header magic needs 4 bytes at offset 0, file has 2");
    const std::string missing = dir.path("missing.gguf");
    CHECK_THROWS_WITH(GgufFile::open(missing), ContainsSubstring(missing + ": cannot open"));
    CHECK(code_of(missing) == ErrorCode::not_found);
    CHECK(code_of(dir.path("")) == ErrorCode::invalid_argument);  // a directory
}

TEST_CASE("versions other than 2 and 3 are rejected by number") {
    ScratchDir dir;
    auto b = GgufWriter().encode();
    REQUIRE(get_le<uint32_t>(b, 4) == 3);
    set_le<uint32_t>(b, 4, 2);
    CHECK(GgufFile::open(dir.write("v2.gguf", b))->version() == 2);
    set_le<uint32_t>(b, 4, 1);
    const std::string v1 = dir.write("v1.gguf", b);
    CHECK_THROWS_WITH(GgufFile::open(v1), v1 + ": GGUF version 1 is not supported (expected 2 or 3)");
    CHECK(code_of(v1) == ErrorCode::unsupported);
    set_le<uint32_t>(b, 4, 4);
    CHECK_THROWS_WITH(GgufFile::open(dir.write("v4.gguf", b)), ContainsSubstring("GGUF version 4 is not supported"));
    set_le<uint32_t>(b, 4, 0x03000000);
    CHECK_THROWS_WITH(GgufFile::open(dir.write("be.gguf", b)), ContainsSubstring("big-endian GGUF (version 3)"));
}

TEST_CASE("every truncation of a valid file is an error") {
    ScratchDir dir;
    GgufWriter w;
    w.set_string("general.architecture", "llama");
    w.set_u32("llama.block_count", 30);
    w.set_bool("flag", true);
    w.set_string_array("tokens", {"a", "bc", ""});
    GgufValue nested;
    nested.type = GgufType::ARRAY;
    nested.array_type = GgufType::ARRAY;
    GgufValue inner;
    inner.type = GgufType::ARRAY;
    inner.array_type = GgufType::F64;
    GgufValue one;
    one.type = GgufType::F64;
    one.value = 1.0;
    inner.value = std::vector<GgufValue>{one, one};
    nested.value = std::vector<GgufValue>{inner};
    w.set("nested", nested);
    // The last tensor fills whole alignment units, so no prefix ends in mere padding.
    w.add_tensor_f32("a", {3}, {1, 2, 3});
    w.add_tensor("q", {32}, GgmlType::Q8_0, std::vector<uint8_t>(34, 1));
    w.add_tensor_f32("b", {8, 2}, std::vector<float>(16, 0.5f));
    const auto full = w.encode();
    REQUIRE(GgufFile::open(dir.write("full.gguf", full))->tensors().size() == 3);
    int data_loss = 0;
    for (size_t n = 0; n < full.size(); ++n) {
        const std::string p = dir.write("cut.gguf", std::vector<uint8_t>(full.begin(), full.begin() + n));
        INFO("prefix of " << n << " bytes");
        try {
            GgufFile::open(p);
            FAIL("opened a file truncated to " << n << " of " << full.size() << " bytes");
        } catch (const Error& e) {
            data_loss += e.code() == ErrorCode::data_loss;
            CHECK(std::string(e.what()).rfind(p + ": ", 0) == 0);
        }
    }
    CHECK(data_loss == static_cast<int>(full.size()));
    // One truncation message in full: a value cut short names its key.
    const size_t key_end = 24 + 8 + std::string("general.architecture").size() + 4 + 8;
    const std::string p = dir.write("cut.gguf", std::vector<uint8_t>(full.begin(), full.begin() + key_end + 2));
    CHECK_THROWS_WITH(GgufFile::open(p),
                      p + ": corrupt: metadata key #0 ('general.architecture') has string length 5 at offset " +
                          std::to_string(key_end - 8) + ", but only 2 bytes remain");
    const size_t at = key_end + 5 + 8 + std::string("llama.block_count").size() + 4;
    const std::string p2 = dir.write("cut2.gguf", std::vector<uint8_t>(full.begin(), full.begin() + at + 1));
    CHECK_THROWS_WITH(GgufFile::open(p2), p2 +
                                              ": truncated: metadata key #1 ('llama.block_count') needs 4 bytes at "
                                              "offset " +
                                              std::to_string(at) + ", file has " + std::to_string(at + 1));
}

TEST_CASE("huge lengths and counts are caught before allocating") {
    ScratchDir dir;
    GgufWriter w;
    w.set_i32_array("a", {1, 2, 3});  // key length at 24, 'a' at 32, type at 33, elem type 37, count 41
    w.set_string("s", "hello");       // (values 49..61) key length at 61, 's' 69, type 70, string length 74
    auto b = w.encode();
    REQUIRE(get_le<uint64_t>(b, 41) == 3);
    REQUIRE(get_le<uint64_t>(b, 74) == 5);

    auto huge_count = b;
    set_le<uint64_t>(huge_count, 41, uint64_t{1} << 61);
    const std::string p1 = dir.write("count.gguf", huge_count);
    CHECK_THROWS_WITH(GgufFile::open(p1), ContainsSubstring(p1 + ": corrupt: metadata key #0 ('a') has array count "
                                                                 "2305843009213693952 at offset 41"));
    auto huge_str = b;
    set_le<uint64_t>(huge_str, 74, ~uint64_t{0});
    const std::string p2 = dir.write("str.gguf", huge_str);
    CHECK_THROWS_WITH(GgufFile::open(p2), ContainsSubstring("metadata key #1 ('s') has string length "
                                                            "18446744073709551615 at offset 74"));
    auto huge_key = b;
    set_le<uint64_t>(huge_key, 24, uint64_t{1} << 40);
    CHECK_THROWS_WITH(GgufFile::open(dir.write("key.gguf", huge_key)),
                      ContainsSubstring("metadata key #0 has string length 1099511627776"));
    auto huge_kv = b;
    set_le<uint64_t>(huge_kv, 16, uint64_t{1} << 60);
    CHECK_THROWS_WITH(GgufFile::open(dir.write("kv.gguf", huge_kv)),
                      ContainsSubstring("metadata count 1152921504606846976 cannot fit"));
    auto huge_tensors = b;
    set_le<uint64_t>(huge_tensors, 8, uint64_t{1} << 60);
    CHECK_THROWS_WITH(GgufFile::open(dir.write("nt.gguf", huge_tensors)),
                      ContainsSubstring("tensor count 1152921504606846976 cannot fit in the"));
    auto bad_type = b;
    set_le<uint32_t>(bad_type, 33, 13);
    CHECK_THROWS_WITH(GgufFile::open(dir.write("type.gguf", bad_type)),
                      ContainsSubstring("metadata key #0 ('a') has unknown value type 13 at offset 33"));
}

TEST_CASE("bad values, duplicates and alignment") {
    ScratchDir dir;
    {
        GgufWriter w;
        w.set_bool("b1", true);   // key length 24, "b1" 32, type 34, value 38
        w.set_bool("b2", false);  // key length 39, "b2" 47
        auto b = w.encode();
        REQUIRE(b[38] == 1);
        REQUIRE(b[48] == '2');
        b[38] = 2;
        CHECK_THROWS_WITH(
            GgufFile::open(dir.write("bool.gguf", b)),
            ContainsSubstring("metadata key #0 ('b1') is a bool with byte 2 at offset 38, expected 0 or 1"));
        b[38] = 1;
        b[48] = '1';
        CHECK_THROWS_WITH(GgufFile::open(dir.write("dup.gguf", b)),
                          ContainsSubstring("corrupt: metadata key 'b1' appears twice"));
    }
    {
        GgufWriter w(64);  // key length 24, "general.alignment" 32, type 49, value 53
        auto b = w.encode();
        REQUIRE(get_le<uint32_t>(b, 53) == 64);
        CHECK(GgufFile::open(dir.write("a64.gguf", b))->alignment() == 64);
        set_le<uint32_t>(b, 53, 12);
        CHECK_THROWS_WITH(GgufFile::open(dir.write("a12.gguf", b)),
                          ContainsSubstring("metadata 'general.alignment': expected a nonzero multiple of 8, got 12"));
        set_le<uint32_t>(b, 53, 0);
        CHECK_THROWS_WITH(GgufFile::open(dir.write("a0.gguf", b)), ContainsSubstring("got 0"));
        set_le<uint32_t>(b, 49, static_cast<uint32_t>(GgufType::F32));
        CHECK_THROWS_WITH(GgufFile::open(dir.write("af.gguf", b)), ContainsSubstring("expected an integer, got f32"));
    }
}

TEST_CASE("tensor infos are checked against the file") {
    ScratchDir dir;
    const auto good = two_tensor_file();
    REQUIRE(GgufFile::open(dir.write("good.gguf", good))->tensors().size() == 2);

    auto b = good;
    set_le<uint64_t>(b, 82, 1024);
    std::string p = dir.write("eof.gguf", b);
    CHECK_THROWS_WITH(GgufFile::open(p),
                      ContainsSubstring(p + ": tensor 'u': data [1120, 1184) runs past end of file"));

    b = good;
    set_le<uint64_t>(b, 82, 48);
    CHECK_THROWS_WITH(GgufFile::open(dir.write("mis.gguf", b)),
                      ContainsSubstring("tensor 'u': data offset 48 is not a multiple of the alignment 32"));

    b = good;
    set_le<uint64_t>(b, 82, 32);
    CHECK_THROWS_WITH(GgufFile::open(dir.write("over.gguf", b)),
                      ContainsSubstring("tensor 't': data [0, 64) overlaps tensor 'u' at offset 32"));

    b = good;
    set_le<uint64_t>(b, 82, 0);  // same place as 't'
    CHECK_THROWS_WITH(GgufFile::open(dir.write("same.gguf", b)), ContainsSubstring("overlaps"));

    b = good;
    b[65] = 't';
    CHECK_THROWS_WITH(GgufFile::open(dir.write("dupt.gguf", b)), ContainsSubstring("tensor name 't' appears twice"));

    b = good;
    set_le<uint32_t>(b, 33, 5);
    CHECK_THROWS_WITH(GgufFile::open(dir.write("dims.gguf", b)),
                      ContainsSubstring("tensor 't': expected at most 4 dims, got 5"));

    b = good;
    set_le<uint64_t>(b, 37, uint64_t{1} << 63);
    CHECK_THROWS_WITH(GgufFile::open(dir.write("ne.gguf", b)),
                      ContainsSubstring("tensor 't': ne[0] = 9223372036854775808"));

    b = good;
    set_le<uint64_t>(b, 37, (uint64_t{1} << 62) - 1);  // times 4 bytes overflows
    CHECK_THROWS_WITH(GgufFile::open(dir.write("bytes.gguf", b)), ContainsSubstring("overflows 64 bits"));

    b = good;
    set_le<uint32_t>(b, 45, static_cast<uint32_t>(GgmlType::Q8_0));  // 16 elements, block of 32
    CHECK_THROWS_WITH(GgufFile::open(dir.write("blk.gguf", b)),
                      ContainsSubstring("tensor 't': row of 16 elements is not a multiple of the Q8_0 block size 32"));
}

TEST_CASE("ne products that overflow are caught") {
    ScratchDir dir;
    GgufWriter w;
    w.add_tensor_f32("t", {2, 2}, {1, 2, 3, 4});  // ne[0] at 37, ne[1] at 45
    auto b = w.encode();
    REQUIRE(get_le<uint64_t>(b, 45) == 2);
    set_le<uint64_t>(b, 37, uint64_t{1} << 40);
    set_le<uint64_t>(b, 45, uint64_t{1} << 40);
    CHECK_THROWS_WITH(GgufFile::open(dir.write("ov.gguf", b)),
                      ContainsSubstring("tensor 't' element count: size 1099511627776 x 1099511627776 overflows"));
}

TEST_CASE("a tensor of empty rows dequantizes at once whatever its row count") {
    // [0, 2^53 + 3] once made the dequantizer walk 9e15 empty rows (a fuzzing timeout).
    ScratchDir dir;
    GgufWriter w;
    w.add_tensor_f32("t", {2, 2}, {1, 2, 3, 4});
    auto b = w.encode();
    set_le<uint64_t>(b, 37, 0);
    set_le<uint64_t>(b, 45, (uint64_t{1} << 53) + 3);
    const auto f = GgufFile::open(dir.write("empty_rows.gguf", b));
    CHECK(f->dequantize(f->tensors().at(0)).empty());
}

TEST_CASE("tensors of types pkv cannot read are listed but not dequantized") {
    ScratchDir dir;
    GgufWriter w;
    w.add_tensor("blk.0.attn_q.weight", {256, 2}, static_cast<GgmlType>(16), std::vector<uint8_t>(2 * 66));
    w.add_tensor_f32("x", {4}, {1, 2, 3, 4});  // type at 24+8+19+4+16 = 71
    auto b = w.encode();
    const std::string p = dir.write("iq.gguf", b);
    auto f = GgufFile::open(p);
    const GgufTensorInfo& t = f->tensor("blk.0.attn_q.weight");
    CHECK(t.type_id == 16);
    CHECK(t.nbytes == 132);
    CHECK_THROWS_WITH(f->dequantize(t), p + ": tensor 'blk.0.attn_q.weight' has unsupported type IQ2_XXS (id 16)");
    std::vector<float> row(256);
    CHECK_THROWS_WITH(f->dequantize_rows(t, 0, 1, row.data()), ContainsSubstring("unsupported type IQ2_XXS (id 16)"));
    try {
        f->dequantize(t);
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::unsupported);
    }
    CHECK(f->dequantize(f->tensor("x")) == std::vector<float>{1, 2, 3, 4});

    // An id ggml never assigned: size unknown, still listed, named by number.
    const size_t type_at = 24 + 8 + std::string("blk.0.attn_q.weight").size() + 4 + 16;
    REQUIRE(get_le<uint32_t>(b, type_at) == 16);
    set_le<uint32_t>(b, type_at, 200);
    const std::string p2 = dir.write("unknown.gguf", b);
    auto g = GgufFile::open(p2);
    CHECK(g->tensors()[0].nbytes == 0);
    CHECK_THROWS_WITH(g->dequantize(g->tensors()[0]),
                      p2 + ": tensor 'blk.0.attn_q.weight' has unsupported type type200 (id 200)");
}

TEST_CASE("random byte corruption never escapes as anything but pkv::Error") {
    ScratchDir dir;
    GgufWriter w;
    w.set_string("general.architecture", "llama");
    w.set_string_array("tokens", {"a", "bc", "def"});
    w.set_i32_array("types", {1, 2, 3});
    w.add_tensor("q", {32, 2}, GgmlType::Q4_1, std::vector<uint8_t>(40, 0x11));
    w.add_tensor_f32("f", {8}, std::vector<float>(8, 1.0f));
    const auto good = w.encode();
    std::mt19937 rng(99);
    int opened = 0, rejected = 0;
    for (int trial = 0; trial < 3000; ++trial) {
        auto b = good;
        const int flips = 1 + trial % 3;
        for (int k = 0; k < flips; ++k) {
            const size_t at = rng() % b.size();
            // Mostly small and extreme values, the kinds that break length and count fields.
            const uint8_t vals[] = {0x00, 0xFF, 0x01, 0x80, 0x7F, static_cast<uint8_t>(rng())};
            b[at] = vals[rng() % 6];
        }
        const std::string p = dir.write("fuzz.gguf", b);
        try {
            auto f = GgufFile::open(p);
            for (const auto& t : f->tensors()) {
                if (!ggml_type_supported(t.type_id)) continue;
                try {
                    (void)f->dequantize(t);
                } catch (const Error&) {
                }
            }
            ++opened;
        } catch (const Error&) {
            ++rejected;
        }
    }
    CHECK(opened + rejected == 3000);
    CHECK(rejected > 0);
}
