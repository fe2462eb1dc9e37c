// pkv/quant/ggml_kv.h — the q4_0 and q8_0 KV-cache types of llama.cpp, simulated.
//
// llama.cpp stores a quantized KV cache row per token: the head vectors of all KV
// heads lie side by side and are cut into 32-element blocks, so with head_dim a
// multiple of 32 every block lies inside one head. Each head vector of D channels
// is therefore D / 32 blocks of ggml's reference quantizers:
//   q4_0: d = m / -8 with m the element of largest magnitude (sign kept), codes
//         q = min(15, trunc(x * (1/d) + 8.5)), x̂ = (q - 8) * fp16(d); 18 bytes per 32 elements (4.5 bits)
//   q8_0: d = amax / 127, q = roundf(x * (1/d)) (ties away from zero), x̂ = q * fp16(d);
//         34 bytes per 32 elements (8.5 bits)
// Unlike pkv's min-max quantizer, ggml picks codes with the fp32 scale and only
// stores (and dequantizes with) its binary16 rounding; the simulation keeps that.
// (pkv/gguf/ggml_types.h holds the bit-exact block code; this file only arranges it.)
#pragma once

#include <cstdint>
#include <vector>

#include "pkv/gguf/ggml_types.h"

namespace pkv {

/// Bits of storage for T tokens of one head of D channels: T * D / 32 blocks of
/// 18 (q4_0) or 34 (q8_0) bytes. Throws invalid_argument for other types and for
/// D not a multiple of 32 ("head_dim 48: q4_0 needs a multiple of 32").
uint64_t ggml_kv_cost_bits(GgmlType type, int64_t T, int D);

/// Quantizes a row-major [T, D] matrix (one head, T tokens) into `type` blocks token
/// by token and dequantizes them into recon ([T, D]; may equal x). When `blocks` is
/// not null it receives the raw blocks, token-major (T * D / 32 blocks). Returns the
/// storage in bits (as ggml_kv_cost_bits).
uint64_t quantize_ggml_kv(GgmlType type, const float* x, int64_t T, int D, float* recon,
                          std::vector<uint8_t>* blocks = nullptr);

}  // namespace pkv
