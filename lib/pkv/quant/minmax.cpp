#include "pkv/quant/minmax.h"

#include <algorithm>
#include <cmath>

#include "pkv/core/error.h"
#include "pkv/core/half.h"

namespace pkv {

const char* quant_axis_name(QuantAxis axis) { return axis == QuantAxis::token ? "token" : "channel"; }

double MinMaxCost::bits_per_element(int64_t elements) const {
    return elements > 0 ? static_cast<double>(total_bits()) / static_cast<double>(elements) : 0.0;
}

void check_minmax_bits(int bits) {
    PKV_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8, invalid_argument, "--bits {}: expected 2, 3, 4 or 8",
              bits);
}

MinMaxCost minmax_cost(int64_t T, int D, const MinMaxSpec& spec) {
    check_minmax_bits(spec.bits);
    PKV_CHECK(T >= 0, invalid_argument, "quantizer input: expected a non-negative token count, got {}", T);
    PKV_CHECK(D > 0, invalid_argument, "quantizer input: expected a positive head_dim, got {}", D);
    PKV_CHECK(spec.group > 0, invalid_argument, "group size {}: expected a positive number", spec.group);
    MinMaxCost c;
    if (spec.axis == QuantAxis::token) {
        PKV_CHECK(D % spec.group == 0, invalid_argument, "group size {} does not divide head_dim {}", spec.group, D);
        c.groups = T * (D / spec.group);
    } else {
        c.groups = (T + spec.group - 1) / spec.group * D;
    }
    c.code_bits = static_cast<uint64_t>(spec.bits) * static_cast<uint64_t>(T) * static_cast<uint64_t>(D);
    c.param_bits = 32u * static_cast<uint64_t>(c.groups);
    return c;
}

namespace {

// The range clip ratio a keeps, [c - a h, c + a h] about the centre c of [mn, mx]; the
// clamp of the codes saturates the elements that fall outside.
inline void clip_range(float& mn, float& mx, float clip) {
    if (clip < 1.0f) {
        const float c = 0.5f * mn + 0.5f * mx, h = 0.5f * mx - 0.5f * mn;
        mn = c - clip * h;
        mx = c + clip * h;
    }
}

}  // namespace

MinMaxGroup minmax_grid(float mn, float mx, int bits, float clip) {
    clip_range(mn, mx, clip);
    const int qmax = (1 << bits) - 1;
    const uint16_t zero_bits = float_to_half(mn);
    const uint16_t scale_bits = float_to_half((mx - mn) / static_cast<float>(qmax));
    PKV_CHECK(std::isfinite(half_to_float(zero_bits)) && std::isfinite(half_to_float(scale_bits)), out_of_range,
              "quantizer group: min {} and max {} give a zero or scale beyond the binary16 range", mn, mx);
    return {scale_bits, zero_bits};
}

void minmax_grids(const float* mn, const float* mx, const float* clip, int64_t n, int bits, float* zero, float* scale) {
    const float q = static_cast<float>((1 << bits) - 1);
    constexpr int64_t kChunk = 256;
    float lo[kChunk], step[kChunk];
    uint16_t zh[kChunk], sh[kChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
        const int64_t m = std::min(kChunk, n - i0);
        for (int64_t i = 0; i < m; ++i) {
            float a = mn[i0 + i], b = mx[i0 + i];
            clip_range(a, b, clip[i0 + i]);
            lo[i] = a;
            step[i] = (b - a) / q;
        }
        float_to_half_n(lo, zh, static_cast<size_t>(m));
        float_to_half_n(step, sh, static_cast<size_t>(m));
        half_to_float_n(zh, zero + i0, static_cast<size_t>(m));
        half_to_float_n(sh, scale + i0, static_cast<size_t>(m));
        for (int64_t i = 0; i < m; ++i)
            if (!std::isfinite(zero[i0 + i]) || !std::isfinite(scale[i0 + i]))
                minmax_grid(mn[i0 + i], mx[i0 + i], bits, clip[i0 + i]);  // throws its out_of_range
    }
}

MinMaxGroup quantize_minmax_group(const float* x, int64_t n, int64_t stride, int bits, float* recon, uint8_t* codes,
                                  float clip) {
    check_minmax_bits(bits);
    PKV_CHECK(clip > 0.0f && clip <= 1.0f, invalid_argument, "quantizer clip ratio {}: expected a value in (0, 1]",
              clip);
    PKV_CHECK(n >= 1, invalid_argument, "quantizer group: expected at least 1 element, got {}", n);
    float mn = x[0], mx = x[0];
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i * stride];
        PKV_CHECK(std::isfinite(v), invalid_argument, "quantizer input: element {} of a group is {}, expected finite",
                  i, v);
        mn = std::min(mn, v);
        mx = std::max(mx, v);
    }
    const MinMaxGroup grid = minmax_grid(mn, mx, bits, clip);
    const int qmax = (1 << bits) - 1;
    const uint16_t zero_bits = grid.zero, scale_bits = grid.scale;
    const float z = half_to_float(zero_bits);
    const float s = half_to_float(scale_bits);

    for (int64_t i = 0; i < n; ++i) {
        int q = 0;
        // s == 0 covers constant groups and ranges whose scale underflows binary16:
        // every element then maps to the zero point.
        if (s > 0.0f) {
            const float t = std::nearbyint((x[i * stride] - z) / s);  // default rounding mode: ties to even
            q = static_cast<int>(std::min(std::max(t, 0.0f), static_cast<float>(qmax)));
        }
        if (codes) codes[i * stride] = static_cast<uint8_t>(q);
        // q * s and the sum are exact in double (both binary16 values, q < 2^8), so
        // the single rounding to float is the same with or without FMA contraction.
        recon[i * stride] = static_cast<float>(static_cast<double>(q) * s + static_cast<double>(z));
    }
    return {scale_bits, zero_bits};
}

MinMaxCost quantize_minmax(const float* x, int64_t T, int D, const MinMaxSpec& spec, float* recon, MinMaxCodes* codes) {
    const MinMaxCost cost = minmax_cost(T, D, spec);
    const int64_t n = T * D;
    uint8_t* code_ptr = nullptr;
    if (codes) {
        codes->codes.assign(static_cast<size_t>(n), 0);
        codes->scales.assign(static_cast<size_t>(cost.groups), 0);
        codes->zeros.assign(static_cast<size_t>(cost.groups), 0);
        code_ptr = codes->codes.data();
    }
    const int G = spec.group;
    if (spec.axis == QuantAxis::token) {
        const int per_row = D / G;
        for (int64_t t = 0; t < T; ++t)
            for (int g = 0; g < per_row; ++g) {
                const int64_t at = t * D + static_cast<int64_t>(g) * G;
                const MinMaxGroup p = quantize_minmax_group(x + at, G, 1, spec.bits, recon + at,
                                                            code_ptr ? code_ptr + at : nullptr, spec.clip);
                if (codes) {
                    codes->scales[static_cast<size_t>(t * per_row + g)] = p.scale;
                    codes->zeros[static_cast<size_t>(t * per_row + g)] = p.zero;
                }
            }
    } else {
        const int64_t token_groups = (T + G - 1) / G;
        for (int64_t g = 0; g < token_groups; ++g) {
            const int64_t t0 = g * G;
            const int64_t len = std::min<int64_t>(G, T - t0);
            for (int c = 0; c < D; ++c) {
                const int64_t at = t0 * D + c;
                const MinMaxGroup p = quantize_minmax_group(x + at, len, D, spec.bits, recon + at,
                                                            code_ptr ? code_ptr + at : nullptr, spec.clip);
                if (codes) {
                    codes->scales[static_cast<size_t>(g * D + c)] = p.scale;
                    codes->zeros[static_cast<size_t>(g * D + c)] = p.zero;
                }
            }
        }
    }
    return cost;
}

}  // namespace pkv
