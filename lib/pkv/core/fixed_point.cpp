#include "pkv/core/fixed_point.h"

namespace pkv {

void fixed_to_double_n(const int64_t* src, double unit, double* dst, size_t n) {
    // One thread, vectorised. Many values at once go through fixed_to_double_runs
    // (bulk_copy.h), which spreads pieces of this over the threads.
    for (size_t i = 0; i < n; ++i) dst[i] = static_cast<double>(src[i]) * unit;
}

}  // namespace pkv
