#include "pkv/quant/hadamard.h"

#include <cmath>
#include <random>

#include "pkv/core/error.h"

namespace pkv {

void check_hadamard_dim(int D) {
    PKV_CHECK(D > 0 && (D & (D - 1)) == 0, invalid_argument, "head_dim {}: hadamard rotation needs a power of two", D);
}

std::vector<float> hadamard_signs(int D, uint64_t seed) {
    check_hadamard_dim(D);
    std::mt19937_64 gen(seed);
    std::vector<float> s(static_cast<size_t>(D));
    for (auto& v : s) v = (gen() >> 63) ? -1.0f : 1.0f;
    return s;
}

void hadamard_transform(float* v, int D) {
    check_hadamard_dim(D);
    // Stage h combines entries h apart; after all stages entry i holds
    // sum_j (-1)^popcount(i & j) v_j, the Sylvester ordering.
    for (int h = 1; h < D; h <<= 1)
        for (int i = 0; i < D; i += 2 * h)
            for (int j = i; j < i + h; ++j) {
                const float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
    const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    for (int i = 0; i < D; ++i) v[i] *= norm;
}

void hadamard_rotate_rows(float* x, int64_t rows, int D, const float* signs, bool inverse) {
    check_hadamard_dim(D);
    PKV_CHECK(rows >= 0, invalid_argument, "hadamard input: expected a non-negative row count, got {}", rows);
    for (int64_t r = 0; r < rows; ++r) {
        float* row = x + r * D;
        if (signs && !inverse)
            for (int i = 0; i < D; ++i) row[i] *= signs[i];
        hadamard_transform(row, D);
        if (signs && inverse)
            for (int i = 0; i < D; ++i) row[i] *= signs[i];
    }
}

}  // namespace pkv
