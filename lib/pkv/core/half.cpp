#include "pkv/core/half.h"

#include <algorithm>
#include <cstring>

#ifdef __F16C__
#include <immintrin.h>
#endif

namespace pkv {

namespace {
uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
float float_of(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
}  // namespace

uint16_t float_to_half(float f) {
    const uint32_t x = bits_of(f);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {  // inf or NaN
        if (ax == 0x7f800000u) return sign | 0x7c00u;
        return sign | 0x7e00u | static_cast<uint16_t>((ax >> 13) & 0x3ffu);
    }
    if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: overflow
    if (ax < 0x38800000u) {
        // Result is subnormal (or zero): scale the value so that the half's
        // subnormal step (2^-24) becomes 1 and round the integer to even.
        if (ax < 0x33000000u) return sign;  // below half the smallest subnormal
        const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
        const int shift = 126 - static_cast<int>(ax >> 23);  // 14..24 + 1
        const uint32_t q = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1u);
        const uint32_t half = 1u << (shift - 1);
        uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
        return sign | static_cast<uint16_t>(r);
    }
    // Normal: rebias the exponent, round the 13 dropped mantissa bits to even.
    // A carry out of the mantissa correctly bumps the exponent.
    uint32_t r = ax - 0x38000000u;  // (127-15) << 23
    const uint32_t rem = r & 0x1fffu;
    r >>= 13;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
}

float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        // subnormal or zero: mant * 2^-24, exact in float
        float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (exp == 31) return float_of(sign | 0x7f800000u | (mant << 13));
    return float_of(sign | ((exp + 112u) << 23) | (mant << 13));
}

float bf16_to_float(uint16_t b) { return float_of(static_cast<uint32_t>(b) << 16); }

uint16_t float_to_bf16(float f) {
    uint32_t x = bits_of(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return static_cast<uint16_t>(x >> 16);
}

namespace {

// Long arrays are split over OpenMP threads in blocks of this many values (each value
// converts alone, so the split cannot change a result).
constexpr size_t kParallelBlock = size_t{1} << 16;

// Runs f(begin, end) over [0, n), in parallel blocks when n is large.
template <typename F>
void blocks(size_t n, F&& f) {
    if (n < 2 * kParallelBlock) {
        f(size_t{0}, n);
        return;
    }
    const int64_t nb = static_cast<int64_t>((n + kParallelBlock - 1) / kParallelBlock);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; ++b) {
        const size_t lo = static_cast<size_t>(b) * kParallelBlock;
        f(lo, std::min(n, lo + kParallelBlock));
    }
}

}  // namespace

// F16C converts with round-to-nearest-even, overflow to inf, subnormals exactly and NaN
// to a quiet NaN keeping the payload's top bits: the scalar functions' rules, so both
// paths give the same bits (checked by test_half.cpp).
void float_to_half_n(const float* src, uint16_t* dst, size_t n) {
    blocks(n, [&](size_t lo, size_t hi) {
        size_t i = lo;
#ifdef __F16C__
        for (; i + 8 <= hi; i += 8)
            _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                             _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
        for (; i < hi; ++i) dst[i] = float_to_half(src[i]);
    });
}

void half_to_float_n(const uint16_t* src, float* dst, size_t n) {
    blocks(n, [&](size_t lo, size_t hi) {
        size_t i = lo;
#ifdef __F16C__
        for (; i + 8 <= hi; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
        for (; i < hi; ++i) dst[i] = half_to_float(src[i]);
    });
}

void float_to_bf16_n(const float* src, uint16_t* dst, size_t n) {
    // The scalar rule on every value; written so that the compiler vectorizes it.
    blocks(n, [&](size_t lo, size_t hi) {
        for (size_t i = lo; i < hi; ++i) dst[i] = float_to_bf16(src[i]);
    });
}

}  // namespace pkv
