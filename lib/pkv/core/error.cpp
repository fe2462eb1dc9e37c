#include "pkv/core/error.h"

#include <limits>

namespace pkv {

uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& what) {
    if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a)
        fail(ErrorCode::data_loss, "{}: size {} x {} overflows 64 bits", what, a, b);
    return a * b;
}

uint64_t checked_add(uint64_t a, uint64_t b, const std::string& what) {
    if (b > std::numeric_limits<uint64_t>::max() - a)
        fail(ErrorCode::data_loss, "{}: size {} + {} overflows 64 bits", what, a, b);
    return a + b;
}

int64_t saturating_add(int64_t a, int64_t b) {
    int64_t r = 0;
    if (!__builtin_add_overflow(a, b, &r)) return r;
    return b > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
}

}  // namespace pkv
