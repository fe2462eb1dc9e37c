#include "pkv/quant/fp8.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "pkv/core/error.h"

namespace pkv {

uint8_t fp8_e4m3_encode(float x) {
    const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
    if (std::isnan(x)) return static_cast<uint8_t>(sign | 0x7F);
    const float a = std::fabs(x);
    if (a >= kFp8E4m3Max) return static_cast<uint8_t>(sign | 0x7E);
    // Codes of non-negative values are monotone in the value and the grid is uniform
    // within a binade, so code = base of the binade + rounded offset; a round-up that
    // reaches the next binade carries into the exponent field by plain addition.
    int code;
    if (a < 0.015625f) {
        // Below 2^-6 the grid is m * 2^-9; the product is exact and nearbyint ties to
        // even, which is the code with mantissa LSB 0. A result of 8 is 2^-6 = code 0x08.
        code = static_cast<int>(std::nearbyint(a * 512.0f));
    } else {
        int e;
        const float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
        // Binade [2^(e-1), 2^e): biased exponent e - 1 + 7, step 2^(e-1) / 8.
        const float frac = std::nearbyint((m * 2.0f - 1.0f) * 8.0f);  // exact, in [0, 8]
        code = ((e + 6) << 3) + static_cast<int>(frac);
    }
    // a < 448 rounds at most to 448 (0x7E): the largest binade's top tie is 464.
    return static_cast<uint8_t>(sign | code);
}

float fp8_e4m3_decode(uint8_t code) {
    const bool neg = (code & 0x80) != 0;
    const int e = (code >> 3) & 0x0F;
    const int m = code & 0x07;
    float v;
    if (e == 0x0F && m == 0x07) v = std::numeric_limits<float>::quiet_NaN();
    else if (e == 0) v = std::ldexp(static_cast<float>(m), -9);
    else v = std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
    return neg ? -v : v;
}

Fp8Result quantize_fp8_e4m3(const float* x, int64_t n, float* recon, uint8_t* codes) {
    PKV_CHECK(n >= 0, invalid_argument, "fp8 input: expected a non-negative element count, got {}", n);
    float amax = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        PKV_CHECK(std::isfinite(x[i]), invalid_argument, "fp8 input: element {} is {}, expected finite", i, x[i]);
        amax = std::max(amax, std::fabs(x[i]));
    }
    Fp8Result r;
    r.scale = amax / kFp8E4m3Max;
    r.storage_bits = 8u * static_cast<uint64_t>(n) + 32u;
    for (int64_t i = 0; i < n; ++i) {
        // x / scale can exceed 448 by an fp32 rounding for the largest element; the
        // encoder saturates it back to 448.
        const uint8_t c = r.scale > 0.0f ? fp8_e4m3_encode(x[i] / r.scale) : uint8_t{0};
        if (codes) codes[i] = c;
        recon[i] = fp8_e4m3_decode(c) * r.scale;
    }
    return r;
}

}  // namespace pkv
