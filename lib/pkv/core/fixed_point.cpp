#include "pkv/core/fixed_point.h"

namespace pkv {

void fixed_to_double_n(const int64_t* src, double unit, double* dst, size_t n) {
    const int64_t m = static_cast<int64_t>(n);
#pragma omp parallel for schedule(static) if (m >= (int64_t{1} << 16))
    for (int64_t i = 0; i < m; ++i) dst[i] = static_cast<double>(src[i]) * unit;
}

}  // namespace pkv
