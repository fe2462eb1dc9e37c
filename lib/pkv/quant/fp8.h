// pkv/quant/fp8.h — OCP FP8 E4M3 ("E4M3FN") codes and a per-head scaled KV cache.
//
// E4M3 byte: sign bit, 4 exponent bits (bias 7), 3 mantissa bits.
//   exponent 0:          subnormal, value = m * 2^-9              (m = 0..7)
//   exponent 1..15:      normal,    value = (1 + m/8) * 2^(e - 7)
//   S.1111.111 (0x7F, 0xFF): NaN; there are no infinities, so 0x7E = 448 is the largest finite.
// Both zeros (0x00, 0x80) exist. The grid spacing is 2^-9 below 2^-6 and doubles at
// every power of two above.
#pragma once

#include <cstdint>

namespace pkv {

constexpr float kFp8E4m3Max = 448.0f;

/// Nearest E4M3 code to x, ties to the even code (the one whose mantissa LSB is 0),
/// including the subnormal range and the step from the largest subnormal to 2^-6.
/// Saturating: |x| >= 448 and +-infinity give +-448 (0x7E / 0xFE); NaN gives 0x7F with
/// x's sign bit. Magnitudes at or below 2^-10 (half the smallest subnormal) round to
/// a zero with x's sign (2^-10 itself is a tie and goes to the even code, zero).
uint8_t fp8_e4m3_encode(float x);
/// Exact value of an E4M3 code (NaN for 0x7F and 0xFF).
float fp8_e4m3_decode(uint8_t code);

/// Result of fake-quantizing one head's values with one scale.
struct Fp8Result {
    float scale = 0.0f;         ///< amax / 448 in fp32 (0 for an all-zero input)
    uint64_t storage_bits = 0;  ///< 8 per element plus 32 for the fp32 scale
};

/// Static per-head FP8 cache: scale = amax / 448 over all n values given (for a KV
/// head, its whole [T, D] sequence: the "static per-head scale" that a calibrated
/// runtime would load), codes c = encode(x / scale), x̂ = decode(c) * scale, written to
/// recon (may equal x). codes (n bytes) is optional. The scale is kept in fp32.
/// All-zero input gives scale 0, codes 0 and x̂ = 0. NaN or infinite input throws
/// invalid_argument.
Fp8Result quantize_fp8_e4m3(const float* x, int64_t n, float* recon, uint8_t* codes = nullptr);

}  // namespace pkv
