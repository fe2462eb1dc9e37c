// Block layouts checked on hand-built blocks whose values were worked out by hand,
// and round trips through the reference quantizers.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/gguf/ggml_types.h"

using namespace pkv;

namespace {

// binary16 bit patterns used below.
constexpr uint8_t H_ONE[2] = {0x00, 0x3C};    // 1.0
constexpr uint8_t H_HALF[2] = {0x00, 0x38};   // 0.5
constexpr uint8_t H_QUART[2] = {0x00, 0x34};  // 0.25
constexpr uint8_t H_MTWO[2] = {0x00, 0xC0};   // -2.0

std::vector<float> deq(GgmlType t, const std::vector<uint8_t>& bytes, int64_t n) {
    REQUIRE(bytes.size() == ggml_row_size(t, n));
    std::vector<float> out(static_cast<size_t>(n), -999.0f);
    dequantize_row_ref(t, bytes.data(), out.data(), n);
    return out;
}

void put(std::vector<uint8_t>& b, size_t at, const uint8_t (&h)[2]) {
    b[at] = h[0];
    b[at + 1] = h[1];
}

}  // namespace

TEST_CASE("ggml type table") {
    CHECK(ggml_type_name(3) == "Q4_1");
    CHECK(ggml_type_name(16) == "IQ2_XXS");
    CHECK(ggml_type_name(4) == "type4");
    CHECK(ggml_type_name(1000) == "type1000");
    CHECK(ggml_type_supported(0));
    CHECK(ggml_type_supported(30));
    CHECK_FALSE(ggml_type_supported(16));
    CHECK_FALSE(ggml_type_supported(4));
    uint64_t b = 0, s = 0;
    REQUIRE(ggml_type_layout(16, b, s));
    CHECK(b == 256);
    CHECK(s == 66);
    CHECK_FALSE(ggml_type_layout(4, b, s));
    CHECK(ggml_block_size(GgmlType::Q6_K) == 256);
    CHECK(ggml_type_size(GgmlType::Q4_K) == 144);
    CHECK(ggml_type_size(GgmlType::BF16) == 2);
    CHECK(ggml_row_size(GgmlType::Q4_1, 576) == 18 * 20);
    CHECK(ggml_row_size(GgmlType::F32, 3) == 12);
    CHECK_THROWS_WITH(ggml_row_size(GgmlType::Q8_0, 40), ContainsSubstring("not a multiple of the block size 32"));
    CHECK_THROWS_WITH(ggml_block_size(static_cast<GgmlType>(16)),
                      ContainsSubstring("IQ2_XXS (id 16) is not supported"));
}

TEST_CASE("dequantize F32, F16, BF16") {
    const float f[2] = {1.5f, -0.125f};
    std::vector<uint8_t> b(8);
    std::memcpy(b.data(), f, 8);
    auto y = deq(GgmlType::F32, b, 2);
    CHECK(y[0] == 1.5f);
    CHECK(y[1] == -0.125f);

    // 1.0, -2.0, the smallest subnormal 2^-24, +inf
    y = deq(GgmlType::F16, {0x00, 0x3C, 0x00, 0xC0, 0x01, 0x00, 0x00, 0x7C}, 4);
    CHECK(y[0] == 1.0f);
    CHECK(y[1] == -2.0f);
    CHECK(y[2] == std::ldexp(1.0f, -24));
    CHECK(std::isinf(y[3]));

    // 0x3F80 = 1.0, 0x4049 = 0x40490000 as f32 = 3.140625, 0xC000 = -2.0
    y = deq(GgmlType::BF16, {0x80, 0x3F, 0x49, 0x40, 0x00, 0xC0}, 3);
    CHECK(y[0] == 1.0f);
    CHECK(y[1] == 3.140625f);
    CHECK(y[2] == -2.0f);
}

TEST_CASE("dequantize Q4_0 block") {
    std::vector<uint8_t> b(18, 0x88);  // every nibble 8 -> 0
    put(b, 0, H_HALF);                 // d = 0.5
    b[2] = 0x8F;                       // elem 0: (15-8)*0.5 = 3.5; elem 16: 0
    b[3] = 0x10;                       // elem 1: (0-8)*0.5 = -4; elem 17: (1-8)*0.5 = -3.5
    auto y = deq(GgmlType::Q4_0, b, 32);
    CHECK(y[0] == 3.5f);
    CHECK(y[16] == 0.0f);
    CHECK(y[1] == -4.0f);
    CHECK(y[17] == -3.5f);
    for (int j : {2, 15, 18, 31}) CHECK(y[j] == 0.0f);
}

TEST_CASE("dequantize Q4_1 block") {
    std::vector<uint8_t> b(20, 0x00);
    put(b, 0, H_ONE);   // d = 1
    put(b, 2, H_MTWO);  // m = -2
    b[4] = 0x5A;        // elem 0: 10 - 2 = 8; elem 16: 5 - 2 = 3
    auto y = deq(GgmlType::Q4_1, b, 32);
    CHECK(y[0] == 8.0f);
    CHECK(y[16] == 3.0f);
    for (int j : {1, 15, 17, 31}) CHECK(y[j] == -2.0f);
}

TEST_CASE("dequantize Q5_0 block") {
    std::vector<uint8_t> b(22, 0x00);
    put(b, 0, H_ONE);
    // qh as a little-endian u32 = 0x80010001: fifth bit set for elements 0, 16 and 31
    b[2] = 0x01, b[3] = 0x00, b[4] = 0x01, b[5] = 0x80;
    b[6] = 0x3F;       // elem 0: 15|16 = 31 -> 15; elem 16: 3|16 = 19 -> 3
    b[6 + 15] = 0x21;  // elem 15: 1 -> -15; elem 31: 2|16 = 18 -> 2
    auto y = deq(GgmlType::Q5_0, b, 32);
    CHECK(y[0] == 15.0f);
    CHECK(y[16] == 3.0f);
    CHECK(y[15] == -15.0f);
    CHECK(y[31] == 2.0f);
    for (int j : {1, 14, 17, 30}) CHECK(y[j] == -16.0f);
}

TEST_CASE("dequantize Q5_1 block") {
    std::vector<uint8_t> b(24, 0x00);
    put(b, 0, H_HALF);  // d = 0.5
    put(b, 2, H_ONE);   // m = 1
    b[4] = 0x02;        // fifth bit of element 1
    b[8 + 1] = 0x47;    // elem 1: (7|16)*0.5 + 1 = 12.5; elem 17: 4*0.5 + 1 = 3
    auto y = deq(GgmlType::Q5_1, b, 32);
    CHECK(y[1] == 12.5f);
    CHECK(y[17] == 3.0f);
    for (int j : {0, 2, 16, 31}) CHECK(y[j] == 1.0f);
}

TEST_CASE("dequantize Q8_0 block") {
    std::vector<uint8_t> b(34, 0x00);
    put(b, 0, H_QUART);  // d = 0.25
    b[2] = 127;          // 31.75
    b[3] = 0x80;         // -128 -> -32
    b[4] = 4;            // 1
    b[33] = 0xFF;        // -1 -> -0.25 (last element)
    auto y = deq(GgmlType::Q8_0, b, 32);
    CHECK(y[0] == 31.75f);
    CHECK(y[1] == -32.0f);
    CHECK(y[2] == 1.0f);
    CHECK(y[3] == 0.0f);
    CHECK(y[31] == -0.25f);
}

TEST_CASE("dequantize Q4_K super-block") {
    std::vector<uint8_t> b(144, 0x00);
    put(b, 0, H_ONE);   // d = 1
    put(b, 2, H_HALF);  // dmin = 0.5
    // scales[12]; sub-block j: scale sc_j, min m_j
    //   j=0: sc = s0&63 = 2, m = s4&63 = 4      j=1: sc = s1 = 3, m = s5&63 = 0
    //   j=2,3: sc = 1, m = 0
    //   j=4: sc = (s8&15) | (s0>>6)<<4 = 1|16 = 17, m = (s8>>4) | (s4>>6)<<4 = 2
    //   j=5: sc = s9&15 = 1, m = (s9>>4) | (s5>>6)<<4 = 48
    //   j=6,7: sc = 1, m = 0
    const uint8_t s[12] = {0x42, 0x03, 0x01, 0x01, 0x04, 0xC0, 0x00, 0x00, 0x21, 0x01, 0x01, 0x01};
    std::memcpy(&b[4], s, 12);
    uint8_t* qs = &b[16];
    qs[0] = 0x15;   // elem 0 = 1*2*5 - 0.5*4 = 8; elem 32 = 1*3*1 - 0 = 3
    qs[64] = 0xF1;  // elem 128 = 17*1 - 0.5*2 = 16; elem 160 = 1*15 - 0.5*48 = -9
    auto y = deq(GgmlType::Q4_K, b, 256);
    CHECK(y[0] == 8.0f);
    CHECK(y[1] == -2.0f);
    CHECK(y[31] == -2.0f);
    CHECK(y[32] == 3.0f);
    CHECK(y[33] == 0.0f);
    CHECK(y[64] == 0.0f);
    CHECK(y[127] == 0.0f);
    CHECK(y[128] == 16.0f);
    CHECK(y[129] == -1.0f);
    CHECK(y[160] == -9.0f);
    CHECK(y[161] == -24.0f);
    CHECK(y[191] == -24.0f);
    CHECK(y[192] == 0.0f);
    CHECK(y[255] == 0.0f);
}

TEST_CASE("dequantize Q6_K super-block") {
    std::vector<uint8_t> b(210, 0x00);
    uint8_t* ql = &b[0];
    uint8_t* qh = &b[128];
    auto* sc = reinterpret_cast<int8_t*>(&b[192]);
    put(b, 208, H_HALF);  // d = 0.5, stored last
    // qh bits 0b10 in every 2-bit field and ql 0 give q = 32, i.e. 0 after the -32 offset.
    std::memset(qh, 0xAA, 64);
    for (int i = 0; i < 16; ++i) sc[i] = 1;
    sc[0] = 2, sc[3] = -1, sc[9] = 4;
    ql[0] = 0x35;        // y0 = 0.5*sc0*(5) = 5; y64 = 0.5*sc4*(3) = 1.5
    qh[1] = 0xA9;        // y1: q = 0 | 1<<4 = 16 -> -16, times 0.5*sc0 = -16
    ql[49] = 0x0F;       // l=17 (is=1): y49 = 0.5*sc3*15 = -7.5
    ql[64 + 20] = 0x07;  // second half, l=20 (is=1): y148 = 0.5*sc9*7 = 14
    auto y = deq(GgmlType::Q6_K, b, 256);
    CHECK(y[0] == 5.0f);
    CHECK(y[64] == 1.5f);
    CHECK(y[1] == -16.0f);
    CHECK(y[49] == -7.5f);
    CHECK(y[148] == 14.0f);
    int nonzero = 0;
    for (float v : y) nonzero += v != 0.0f;
    CHECK(nonzero == 5);
}

TEST_CASE("quantize known blocks") {
    std::vector<float> x(32);
    for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j - 16);  // -16 .. 15

    // Q4_0: the signed extreme is -16, so d = -16 / -8 = 2 and q = (int)(x / 2 + 8.5), at most 15
    block_q4_0 q4{};
    quantize_row_q4_0_ref(x.data(), &q4, 32);
    CHECK(q4.d == 0x4000);     // 2.0
    CHECK(q4.qs[0] == 0x80);   // x=-16 -> 0;  x=0 -> 8
    CHECK(q4.qs[1] == 0x91);   // x=-15 -> 1;  x=1 -> 9
    CHECK(q4.qs[15] == 0xF8);  // x=-1 -> 8;   x=15 -> min(15, 16)

    // Q4_1: min -16, max 15, d = 31/15, codes (int)((x + 16) * 15/31 + 0.5)
    block_q4_1 q41{};
    quantize_row_q4_1_ref(x.data(), &q41, 32);
    CHECK(q41.m == float_to_half(-16.0f));
    CHECK(q41.d == float_to_half(31.0f / 15.0f));
    CHECK((q41.qs[0] & 15) == 0);    // x=-16
    CHECK((q41.qs[15] >> 4) == 15);  // x=15
    CHECK((q41.qs[0] >> 4) == 8);    // x=0: 16*15/31 = 7.74 -> 8

    // Q8_0: amax 16, d = 16/127, q = round(x * 127/16)
    block_q8_0 q8{};
    quantize_row_q8_0_ref(x.data(), &q8, 32);
    CHECK(q8.d == float_to_half(16.0f / 127.0f));
    CHECK(q8.qs[0] == -127);
    CHECK(q8.qs[15] == -8);  // x=-1: -7.94
    CHECK(q8.qs[16] == 0);
    CHECK(q8.qs[17] == 8);
    CHECK(q8.qs[31] == 119);  // 15 * 7.9375 = 119.06

    // A zero block gives d = 0 and codes that decode to 0.
    std::vector<float> zeros(32, 0.0f), back(32, 1.0f);
    block_q5_0 q5{};
    quantize_row_q5_0_ref(zeros.data(), &q5, 32);
    CHECK(half_to_float(q5.d) == 0.0f);  // -0 in fact: 0 / -16
    dequantize_row_ref(GgmlType::Q5_0, &q5, back.data(), 32);
    for (float v : back) CHECK(v == 0.0f);
}

namespace {

// Quantizes random values with `quant`, dequantizes, and checks every element is
// within half a quantization step of the input. The step is the stored (binary16) d;
// rounding d and m to binary16 moves the grid by at most |q| * |d - d_h| + |m - m_h|.
// Q4_0/Q5_0 map the signed extreme to the lowest code, so values near the opposite
// extreme are clamped to the highest code (7d or 15d) and may be off by a full step.
template <typename Block, typename Quant>
void check_round_trip(GgmlType t, Quant quant, int max_code, bool has_min, bool symmetric_clamp = false) {
    std::mt19937 rng(42);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int64_t n_blocks = 512, n = n_blocks * 32;
    std::vector<float> x(n);
    for (int64_t b = 0; b < n_blocks; ++b) {
        const float scale = std::pow(10.0f, static_cast<float>(b % 7) - 3.0f);
        const float shift = has_min ? static_cast<float>(b % 5) * scale : 0.0f;
        for (int j = 0; j < 32; ++j) x[b * 32 + j] = normal(rng) * scale + shift;
    }
    std::vector<Block> q(n_blocks);
    quant(x.data(), q.data(), n);
    std::vector<float> y(n);
    dequantize_row_ref(t, q.data(), y.data(), n);
    int bad = 0;
    for (int64_t b = 0; b < n_blocks; ++b) {
        const float* xb = &x[b * 32];
        float lo = xb[0], hi = xb[0], amax = 0.0f;
        for (int j = 0; j < 32; ++j) {
            lo = std::min(lo, xb[j]);
            hi = std::max(hi, xb[j]);
            amax = std::max(amax, std::fabs(xb[j]));
        }
        const float d = std::fabs(half_to_float(q[b].d));
        const float d_exact = has_min ? (hi - lo) / max_code : amax / (max_code / 2.0f);
        float slack = max_code * std::fabs(d - d_exact) + 1e-6f * amax;
        if (has_min) slack += std::fabs(lo) * 1e-3f;  // m rounded to binary16 (relative 2^-11)
        const float d_signed = half_to_float(q[b].d);
        for (int j = 0; j < 32; ++j) {
            const bool clamped =
                symmetric_clamp && d_signed != 0.0f && std::lround(y[b * 32 + j] / d_signed) == max_code / 2 - 1;
            const float allowed = (clamped ? 1.0f : 0.5f) * d + slack;
            if (std::fabs(y[b * 32 + j] - xb[j]) > allowed) ++bad;
        }
    }
    CHECK(bad == 0);
}

}  // namespace

TEST_CASE("quantizer round trips stay within half a step") {
    SECTION("Q4_0") { check_round_trip<block_q4_0>(GgmlType::Q4_0, quantize_row_q4_0_ref, 16, false, true); }
    SECTION("Q4_1") { check_round_trip<block_q4_1>(GgmlType::Q4_1, quantize_row_q4_1_ref, 15, true); }
    SECTION("Q5_0") { check_round_trip<block_q5_0>(GgmlType::Q5_0, quantize_row_q5_0_ref, 32, false, true); }
    SECTION("Q5_1") { check_round_trip<block_q5_1>(GgmlType::Q5_1, quantize_row_q5_1_ref, 31, true); }
    SECTION("Q8_0") { check_round_trip<block_q8_0>(GgmlType::Q8_0, quantize_row_q8_0_ref, 254, false); }
}

TEST_CASE("quantizers reject rows that are not whole blocks") {
    std::vector<float> x(40, 1.0f);
    std::vector<block_q8_0> q(2);
    CHECK_THROWS_AS(quantize_row_q8_0_ref(x.data(), q.data(), 40), pkv::Error);
}
