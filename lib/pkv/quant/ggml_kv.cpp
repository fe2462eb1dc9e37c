#include "pkv/quant/ggml_kv.h"

#include <algorithm>

#include "pkv/core/error.h"

namespace pkv {

uint64_t ggml_kv_cost_bits(GgmlType type, int64_t T, int D) {
    PKV_CHECK(type == GgmlType::Q4_0 || type == GgmlType::Q8_0, invalid_argument,
              "kv cache type {}: expected Q4_0 or Q8_0", ggml_type_name(static_cast<uint32_t>(type)));
    PKV_CHECK(T >= 0, invalid_argument, "quantizer input: expected a non-negative token count, got {}", T);
    PKV_CHECK(D > 0 && D % 32 == 0, invalid_argument, "head_dim {}: {} needs a multiple of 32", D,
              type == GgmlType::Q4_0 ? "q4_0" : "q8_0");
    const uint64_t blocks = static_cast<uint64_t>(T) * static_cast<uint64_t>(D / 32);
    return blocks * ggml_type_size(type) * 8u;
}

uint64_t quantize_ggml_kv(GgmlType type, const float* x, int64_t T, int D, float* recon, std::vector<uint8_t>* blocks) {
    const uint64_t bits = ggml_kv_cost_bits(type, T, D);
    const size_t row_bytes = ggml_row_size(type, D);
    std::vector<uint8_t> row(row_bytes);
    if (blocks) blocks->assign(static_cast<size_t>(T) * row_bytes, 0);
    for (int64_t t = 0; t < T; ++t) {
        // The row buffer decouples reading x from writing recon, so the two may alias.
        uint8_t* dst = blocks ? blocks->data() + static_cast<size_t>(t) * row_bytes : row.data();
        if (type == GgmlType::Q4_0) quantize_row_q4_0_ref(x + t * D, reinterpret_cast<block_q4_0*>(dst), D);
        else quantize_row_q8_0_ref(x + t * D, reinterpret_cast<block_q8_0*>(dst), D);
        dequantize_row_ref(type, dst, recon + t * D, D);
    }
    return bits;
}

}  // namespace pkv
