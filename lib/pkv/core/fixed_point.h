// pkv/core/fixed_point.h — 64-bit fixed-point values (the GPU k-means sums: integers in
// units of 2^-e) back to double.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pkv {

/// dst[i] = src[i] * unit for i in [0, n). With unit a power of two the product is exact
/// (to double's 53 bits: the integer rounds once, as any int64 to double does). Compiled
/// with the host's vector units, unlike the CUDA sources' host code. The GPU k-means
/// converts a pass's sums through fixed_to_double_runs (bulk_copy.h), pieces of this.
void fixed_to_double_n(const int64_t* src, double unit, double* dst, size_t n);

}  // namespace pkv
