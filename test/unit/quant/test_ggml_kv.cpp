// q4_0 / q8_0 KV storage: the same bytes and values as ggml's reference round trip.
#include <cmath>
#include <cstring>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/gguf/ggml_types.h"
#include "pkv/quant/ggml_kv.h"
#include "quant_test_util.h"

using pkv::GgmlType;

TEST_CASE("q4_0 and q8_0 KV storage equals ggml's reference round trip", "[quant][ggml]") {
    const GgmlType type = GENERATE(GgmlType::Q4_0, GgmlType::Q8_0);
    const int64_t T = 9;
    const int D = 64;
    const auto x = pkv_test::random_activations(T * D, 7);
    std::vector<float> r(x.size());
    std::vector<uint8_t> blocks;
    const uint64_t bits = pkv::quantize_ggml_kv(type, x.data(), T, D, r.data(), &blocks);
    const size_t row_bytes = pkv::ggml_row_size(type, D);
    REQUIRE(blocks.size() == T * row_bytes);
    for (int64_t t = 0; t < T; ++t) {
        std::vector<uint8_t> ref(row_bytes);
        std::vector<float> ref_r(D);
        if (type == GgmlType::Q4_0)
            pkv::quantize_row_q4_0_ref(x.data() + t * D, reinterpret_cast<pkv::block_q4_0*>(ref.data()), D);
        else pkv::quantize_row_q8_0_ref(x.data() + t * D, reinterpret_cast<pkv::block_q8_0*>(ref.data()), D);
        pkv::dequantize_row_ref(type, ref.data(), ref_r.data(), D);
        CHECK(std::memcmp(ref.data(), blocks.data() + t * row_bytes, row_bytes) == 0);
        CHECK(std::memcmp(ref_r.data(), r.data() + t * D, D * sizeof(float)) == 0);
    }
    const double bpe = static_cast<double>(bits) / (T * D);
    CHECK(bpe == (type == GgmlType::Q4_0 ? 4.5 : 8.5));
    CHECK(bits == pkv::ggml_kv_cost_bits(type, T, D));

    // Independent sanity: each block's error stays within its stored step. q4_0 can
    // lose a whole step at the clamped end (code 15 = +7d while the range reaches +8d),
    // q8_0 half a step; both pick codes with the fp32 scale but reconstruct with the
    // binary16 one, which can add up to 128 * 2^-11 * d at the largest element.
    for (int64_t b = 0; b < T * D / 32; ++b) {
        uint16_t dbits;
        std::memcpy(&dbits, blocks.data() + b * pkv::ggml_type_size(type), 2);
        const double d = std::fabs(pkv::half_to_float(dbits));
        for (int j = 0; j < 32; ++j) {
            const double e = std::fabs(static_cast<double>(x[b * 32 + j]) - r[b * 32 + j]);
            CHECK(e <= d * ((type == GgmlType::Q4_0 ? 1.0 : 0.5) + 128.0 / 2048.0) + 1e-6);
        }
    }

    // In place gives the same values.
    auto y = x;
    pkv::quantize_ggml_kv(type, y.data(), T, D, y.data());
    CHECK(std::memcmp(y.data(), r.data(), r.size() * sizeof(float)) == 0);
}

TEST_CASE("ggml KV storage argument errors", "[quant][ggml]") {
    std::vector<float> x(48 * 2), r(x.size());
    CHECK_THROWS_WITH(pkv::quantize_ggml_kv(GgmlType::Q4_0, x.data(), 2, 48, r.data()),
                      ContainsSubstring("head_dim 48: q4_0 needs a multiple of 32"));
    CHECK_THROWS_WITH(pkv::ggml_kv_cost_bits(GgmlType::Q8_0, 2, 40),
                      ContainsSubstring("head_dim 40: q8_0 needs a multiple of 32"));
    CHECK_THROWS_WITH(pkv::ggml_kv_cost_bits(GgmlType::Q4_1, 2, 64), ContainsSubstring("expected Q4_0 or Q8_0"));
    CHECK(pkv::ggml_kv_cost_bits(GgmlType::Q4_0, 128, 64) == 128u * 64u * 9u / 2u);
    CHECK(pkv::ggml_kv_cost_bits(GgmlType::Q8_0, 0, 64) == 0u);
}
