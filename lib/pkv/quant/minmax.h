// pkv/quant/minmax.h — asymmetric min-max ("affine", KIVI-style) uniform quantizer
// used to simulate quantized KV caches on float activations.
//
// One group of n values x_i with b bits is stored as b-bit codes plus a binary16
// scale and a binary16 zero point (the group minimum):
//   mn = min x_i, mx = max x_i
//   s16 = fp16(fp32(mx - mn) / (2^b - 1)),  z16 = fp16(mn)       (fp16: round to nearest even)
//   q_i = clamp(rint((x_i - z16) / s16), 0, 2^b - 1)             (fp32 arithmetic, ties to even)
//   x̂_i = fp32(q_i * s16 + z16)                                  (exact product and sum, one rounding)
// Because the scale and zero are rounded to binary16 before use, the top of the grid
// z16 + (2^b - 1) s16 may lie below or above mx and z16 may differ from mn; codes
// are therefore clamped. The error of every element obeys
//   |x_i - x̂_i| <= max(s16 / 2, mx - top, z16 - mn)  (+ fp32 rounding of x̂),
//   top = z16 + (2^b - 1) s16,
// which is s16 / 2 whenever s16 is a normal binary16 (s16 >= 2^-14) and mn is
// representable in binary16 (always so for activations read from a pkv dump).
// Edge cases:
//   - a constant group (mx == mn) gets s16 = 0, all codes 0 and x̂_i = z16 (exact
//     for binary16 inputs);
//   - a range so small that s16 rounds to zero is treated like a constant group;
//   - a scale or zero beyond the binary16 range (|value| > 65504) throws out_of_range;
//   - NaN or infinite inputs throw invalid_argument.
// docs/numerics.md states the formulas, the layouts and the storage accounting.
#pragma once

#include <cstdint>
#include <vector>

namespace pkv {

/// Along which axis of a row-major [T tokens, D channels] matrix a group runs.
enum class QuantAxis {
    token,    ///< per-token: G consecutive channels of one token share a scale (V in KIVI)
    channel,  ///< per-channel: G consecutive tokens of one channel share a scale (K in KIVI)
};

/// "token" or "channel".
const char* quant_axis_name(QuantAxis axis);

struct MinMaxSpec {
    int bits = 2;     ///< code width: 2, 3, 4 or 8
    int group = 128;  ///< elements per group along `axis` (G)
    QuantAxis axis = QuantAxis::token;
    /// Clip ratio a in (0, 1]: each group is quantized over [c - a h, c + a h] with
    /// c = (mn + mx) / 2, h = (mx - mn) / 2 instead of [mn, mx]; elements outside are
    /// clamped to the grid's ends. 1 (default) is plain min-max, bit for bit. Fitted per
    /// head by `pkv calibrate` (docs/numerics.md, "Clip ratio").
    float clip = 1.0f;
};

/// Storage of one quantized matrix, in bits. Codes are counted at `bits` each (as if
/// packed densely); every group adds a 16-bit scale and a 16-bit zero.
struct MinMaxCost {
    int64_t groups = 0;       ///< (scale, zero) pairs
    uint64_t code_bits = 0;   ///< bits * T * D
    uint64_t param_bits = 0;  ///< 32 * groups
    uint64_t total_bits() const { return code_bits + param_bits; }
    /// total_bits / (T * D); 0 for an empty matrix. E.g. b = 2, G = 128: 2.25.
    double bits_per_element(int64_t elements) const;
};

/// Everything stored for a matrix, for tests and inspection.
/// codes: [T, D] row-major, one code per element, values in [0, 2^b - 1].
/// scales, zeros: binary16 bit patterns (pkv::half_to_float reads them), laid out as
///   per-token:   [T, D / G]          (group g of token t at t * (D / G) + g)
///   per-channel: [ceil(T / G), D]    (token-group g of channel c at g * D + c)
struct MinMaxCodes {
    std::vector<uint8_t> codes;
    std::vector<uint16_t> scales;
    std::vector<uint16_t> zeros;
};

/// Throws invalid_argument "--bits 5: expected 2, 3, 4 or 8" unless bits is one of those.
void check_minmax_bits(int bits);

/// Validates spec against a [T, D] matrix and returns its storage cost without
/// quantizing. Per-token needs D % G == 0 ("group size 48 does not divide head_dim
/// 64"; callers that want one group per token pass G = D). Per-channel accepts any
/// G >= 1; the last ceil(T / G)-th group holds the remaining T mod G tokens (if any)
/// and is quantized on its own with its own scale and zero.
MinMaxCost minmax_cost(int64_t T, int D, const MinMaxSpec& spec);

/// Fake-quantizes a row-major [T, D] float matrix `x` group by group and writes the
/// reconstruction x̂ to `recon` ([T, D]; may equal `x` for in-place use). When `codes`
/// is not null it is resized and filled as described above. T may be 0.
/// Typical uses: a [128, D] block of keys per channel with G = 128, or one token's
/// value vector ([1, D]) per token with G = D.
MinMaxCost quantize_minmax(const float* x, int64_t T, int D, const MinMaxSpec& spec, float* recon,
                           MinMaxCodes* codes = nullptr);

/// One group of n strided values x[0], x[stride], ..., x[(n - 1) * stride] (n >= 1).
/// Writes reconstructions with the same stride to recon (may equal x) and, when not
/// null, codes with the same stride. Returns the binary16 scale and zero bits.
struct MinMaxGroup {
    uint16_t scale;
    uint16_t zero;
};
/// clip as in MinMaxSpec (values outside (0, 1] throw invalid_argument).
MinMaxGroup quantize_minmax_group(const float* x, int64_t n, int64_t stride, int bits, float* recon,
                                  uint8_t* codes = nullptr, float clip = 1.0f);

/// The binary16 scale and zero quantize_minmax_group gives a group whose minimum and
/// maximum are mn <= mx (finite), at `bits` (unchecked) and clip ratio `clip`
/// (unchecked); out_of_range as there. For callers that quantize one group many ways.
MinMaxGroup minmax_grid(float mn, float mx, int bits, float clip);
/// minmax_grid of n groups at once, bitwise: the zero and scale of group i (from mn[i],
/// mx[i], clip[i]) as floats, zero[i] and scale[i]; the binary16 conversions of many
/// groups run vectorized.
void minmax_grids(const float* mn, const float* mx, const float* clip, int64_t n, int bits, float* zero, float* scale);

}  // namespace pkv
