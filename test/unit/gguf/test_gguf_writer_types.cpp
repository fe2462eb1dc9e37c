// GgufWriter's float conversions (BF16, Q8_0) and streamed tensors, read back through
// GgufFile: values, file bytes equal to those of the same tensors given in memory, and
// failures of a row source.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>

#include "catch.h"
#include "gguf_test_util.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/gguf/gguf.h"
#include "pkv/gguf/gguf_writer.h"

using namespace pkv;
using pkv_test::ScratchDir;

namespace {

std::vector<float> normals(size_t n, uint32_t seed, float scale) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

}  // namespace

TEST_CASE("gguf writer: BF16 tensors round to nearest even and read back exactly") {
    ScratchDir dir;
    std::vector<float> x = normals(64 * 3, 1, 0.02f);
    // Halfway cases: 1 + 2^-8 lies between bf16 1.0 and 1 + 2^-7 and rounds to the even one;
    // 1 + 3 * 2^-8 rounds up to 1 + 2^-6.
    x[0] = 1.0f + std::ldexp(1.0f, -8);
    x[1] = 1.0f + 3.0f * std::ldexp(1.0f, -8);
    x[2] = -0.0f;
    GgufWriter w;
    w.set_string("general.architecture", "test");
    w.add_tensor_bf16("t", {64, 3}, x);
    const std::string path = dir.path("bf16.gguf");
    w.write(path);
    const auto f = GgufFile::open(path);
    const GgufTensorInfo* t = f->find_tensor("t");
    REQUIRE(t != nullptr);
    CHECK(t->type() == GgmlType::BF16);
    const std::vector<float> y = f->dequantize(*t);
    REQUIRE(y.size() == x.size());
    CHECK(y[0] == 1.0f);
    CHECK(y[1] == 1.0f + std::ldexp(1.0f, -6));
    CHECK(std::signbit(y[2]));
    for (size_t i = 0; i < x.size(); ++i) {
        CHECK(y[i] == bf16_to_float(float_to_bf16(x[i])));
        CHECK(std::fabs(y[i] - x[i]) <= std::fabs(x[i]) * std::ldexp(1.0f, -8));
    }
}

TEST_CASE("gguf writer: Q8_0 tensors hold fp16 scales and int8 values that read back as q * d") {
    ScratchDir dir;
    const std::vector<float> x = normals(96 * 2, 2, 0.02f);
    GgufWriter w;
    w.add_tensor_q8_0("q", {96, 2}, x);
    const std::string path = dir.path("q8.gguf");
    w.write(path);
    const auto f = GgufFile::open(path);
    const GgufTensorInfo* t = f->find_tensor("q");
    REQUIRE(t != nullptr);
    CHECK(t->type() == GgmlType::Q8_0);
    const std::vector<float> y = f->dequantize(*t);
    REQUIRE(y.size() == x.size());
    const auto* blocks = reinterpret_cast<const block_q8_0*>(f->tensor_data(*t));
    for (size_t b = 0; b < x.size() / QK8_0; ++b) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(x[b * QK8_0 + j]));
        const float d = half_to_float(blocks[b].d);
        CHECK(d == half_to_float(float_to_half(amax / 127.0f)));
        for (int j = 0; j < QK8_0; ++j) {
            const size_t i = b * QK8_0 + j;
            CHECK(y[i] == static_cast<float>(blocks[b].qs[j]) * d);
            CHECK(static_cast<int>(blocks[b].qs[j]) == static_cast<int>(std::lround(x[i] / (amax / 127.0f))));
            // Half a step of rounding, plus the scale's own fp16 rounding over 127 steps.
            CHECK(std::fabs(y[i] - x[i]) <= 0.5f * d + 127.0f * std::fabs(d - amax / 127.0f) + 1e-7f);
        }
    }
    GgufWriter bad;
    CHECK_THROWS_WITH(bad.add_tensor_q8_0("q", {48, 1}, std::vector<float>(48)),
                      ContainsSubstring("row of 48 elements is not a multiple of the Q8_0 block size 32"));
    CHECK_THROWS_WITH(bad.add_tensor_bf16("b", {4, 2}, std::vector<float>(7)),
                      ContainsSubstring("expected 8 values, got 7"));
}

TEST_CASE("gguf writer: a streamed tensor writes the same file as the tensor given in memory") {
    ScratchDir dir;
    // 36 MiB of F32 rows between two small tensors: more than one 32 MiB run, so the next run
    // is made on another thread while one is written.
    const uint64_t n_in = 1024, n_out = 768 * 12;
    const std::vector<float> big = normals(n_in * n_out, 3, 1.0f);
    const std::vector<float> small = normals(64, 4, 1.0f);
    const auto make = [&](bool streamed, uint64_t* rows_seen) {
        GgufWriter w(64);
        w.set_string("general.name", "streamed");
        w.add_tensor_f32("a", {64}, small);
        if (streamed) {
            w.add_tensor_streamed("big", {n_in, n_out}, GgmlType::F32,
                                  [&, rows_seen](uint64_t r0, uint64_t n, uint8_t* dst) {
                                      // In order, each row once (no Catch2 assertion here:
                                      // this may run on another thread).
                                      if (r0 != *rows_seen) throw std::logic_error("rows out of order");
                                      *rows_seen += n;
                                      std::memcpy(dst, big.data() + r0 * n_in, n * n_in * sizeof(float));
                                  });
        } else {
            w.add_tensor_f32("big", {n_in, n_out}, big);
        }
        w.add_tensor_bf16("c", {64}, small);
        return w;
    };
    uint64_t seen = 0;
    const GgufWriter streamed = make(true, &seen);
    const GgufWriter in_memory = make(false, nullptr);
    const std::string p1 = dir.path("streamed.gguf"), p2 = dir.path("memory.gguf");
    streamed.write(p1);
    CHECK(seen == n_out);
    in_memory.write(p2);
    seen = 0;
    const std::vector<uint8_t> encoded = streamed.encode();
    CHECK(seen == n_out);
    CHECK(encoded == in_memory.encode());
    std::ifstream a(p1, std::ios::binary), b(p2, std::ios::binary);
    const std::vector<uint8_t> fa((std::istreambuf_iterator<char>(a)), std::istreambuf_iterator<char>());
    const std::vector<uint8_t> fb((std::istreambuf_iterator<char>(b)), std::istreambuf_iterator<char>());
    CHECK(fa == fb);
    CHECK(fa == encoded);
    const auto f = GgufFile::open(p1);
    const GgufTensorInfo* t = f->find_tensor("big");
    REQUIRE(t != nullptr);
    std::vector<float> row(n_in);
    f->dequantize_rows(*t, n_out - 1, 1, row.data());
    CHECK(std::memcmp(row.data(), big.data() + (n_out - 1) * n_in, n_in * sizeof(float)) == 0);
}

TEST_CASE("gguf writer: a streamed Q8_0 tensor is made of whole rows of blocks") {
    ScratchDir dir;
    const uint64_t n_in = 64, n_out = 5;
    const std::vector<float> x = normals(n_in * n_out, 5, 0.02f);
    GgufWriter w;
    w.add_tensor_streamed("q", {n_in, n_out}, GgmlType::Q8_0, [&](uint64_t r0, uint64_t n, uint8_t* dst) {
        quantize_row_q8_0_ref(x.data() + r0 * n_in, reinterpret_cast<block_q8_0*>(dst), static_cast<int64_t>(n * n_in));
    });
    GgufWriter ref;
    ref.add_tensor_q8_0("q", {n_in, n_out}, x);
    CHECK(w.encode() == ref.encode());
}

TEST_CASE("gguf writer: a failing row source leaves no file") {
    ScratchDir dir;
    GgufWriter w;
    w.add_tensor_streamed("big", {1024, 16384}, GgmlType::F32, [](uint64_t r0, uint64_t, uint8_t*) {
        if (r0 > 0) throw Error(ErrorCode::io, "source failed");
    });
    const std::string path = dir.path("fail.gguf");
    CHECK_THROWS_WITH(w.write(path), ContainsSubstring("source failed"));
    CHECK_FALSE(std::filesystem::exists(path));
    CHECK_THROWS_WITH(w.add_tensor_streamed("big", {32}, GgmlType::F32, [](uint64_t, uint64_t, uint8_t*) {}),
                      ContainsSubstring("tensor 'big' added twice"));
    CHECK_THROWS_WITH(w.add_tensor_streamed("none", {32}, GgmlType::F32, nullptr), ContainsSubstring("no row source"));
}
