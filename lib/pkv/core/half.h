// pkv/core/half.h — IEEE binary16 and bfloat16 conversions done by pkv itself.
//
// HDF5 1.10's soft float->half converter rounds wrongly after subnormals, so pkv
// converts activations here and hands HDF5 bytes whose memory and file types match.
// float_to_half rounds to nearest, ties to even; overflow gives +-inf; NaN stays NaN
// (quiet, sign kept). Subnormal halves are produced and read exactly.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pkv {

uint16_t float_to_half(float f);
float half_to_float(uint16_t h);
/// bfloat16 is the top 16 bits of a float32.
float bf16_to_float(uint16_t b);
/// Round to nearest even; NaN stays NaN.
uint16_t float_to_bf16(float f);

/// Array forms: bitwise the scalar functions on every value (F16C where the build has
/// it); arrays of 128 Ki values and more are split over OpenMP threads.
void float_to_half_n(const float* src, uint16_t* dst, size_t n);
void half_to_float_n(const uint16_t* src, float* dst, size_t n);
void float_to_bf16_n(const float* src, uint16_t* dst, size_t n);

}  // namespace pkv
