// Walsh–Hadamard rotation: orthonormality, agreement with the dense Sylvester
// matrix, and the randomized-sign variant.
#include <cmath>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/quant/hadamard.h"
#include "quant_test_util.h"

namespace {

int popcount(unsigned v) {
    int n = 0;
    for (; v; v &= v - 1) ++n;
    return n;
}

// y = H_D · diag(signs) · x with the dense Sylvester matrix, in double.
std::vector<double> dense_rotate(const float* x, int D, const float* signs) {
    std::vector<double> y(D, 0.0);
    const double norm = 1.0 / std::sqrt(static_cast<double>(D));
    for (int i = 0; i < D; ++i)
        for (int j = 0; j < D; ++j) {
            const double h = (popcount(static_cast<unsigned>(i & j)) & 1) ? -norm : norm;
            y[i] += h * x[j] * (signs ? signs[j] : 1.0f);
        }
    return y;
}

double norm2(const float* v, int D) {
    double s = 0.0;
    for (int i = 0; i < D; ++i) s += static_cast<double>(v[i]) * v[i];
    return std::sqrt(s);
}

}  // namespace

TEST_CASE("Hadamard transform is its own inverse on basis vectors", "[quant][hadamard]") {
    for (int D = 1; D <= 256; D *= 2)
        for (int i = 0; i < D; ++i) {
            std::vector<float> e(D, 0.0f);
            e[i] = 1.0f;
            pkv::hadamard_transform(e.data(), D);
            // Column i of the normalized Sylvester matrix.
            for (int j = 0; j < D; ++j)
                REQUIRE(e[j] == Approx(((popcount(static_cast<unsigned>(i & j)) & 1) ? -1.0 : 1.0) /
                                       std::sqrt(static_cast<double>(D)))
                                    .margin(1e-7));
            pkv::hadamard_transform(e.data(), D);
            for (int j = 0; j < D; ++j) REQUIRE(std::fabs(e[j] - (i == j ? 1.0f : 0.0f)) <= 1e-6f);
        }
}

TEST_CASE("Hadamard rotation matches the dense matrix product and keeps norms", "[quant][hadamard]") {
    const bool randomized = GENERATE(false, true);
    for (int D : {2, 8, 64, 128, 256}) {
        const int64_t rows = 20;
        const auto x = pkv_test::random_activations(rows * D, static_cast<uint32_t>(D), 3.0f, false);
        const auto signs = pkv::hadamard_signs(D, 1234);
        const float* s = randomized ? signs.data() : nullptr;
        auto y = x;
        pkv::hadamard_rotate_rows(y.data(), rows, D, s);
        for (int64_t r = 0; r < rows; ++r) {
            const auto ref = dense_rotate(x.data() + r * D, D, s);
            const double n = norm2(x.data() + r * D, D);
            for (int i = 0; i < D; ++i) REQUIRE(std::fabs(y[r * D + i] - ref[i]) <= 1e-6 * n);
            CHECK(std::fabs(norm2(y.data() + r * D, D) - n) <= 1e-6 * n);
        }
        pkv::hadamard_rotate_rows(y.data(), rows, D, s, /*inverse=*/true);
        for (int64_t r = 0; r < rows; ++r) {
            const double n = norm2(x.data() + r * D, D);
            for (int i = 0; i < D; ++i) REQUIRE(std::fabs(y[r * D + i] - x[r * D + i]) <= 1e-6 * n);
        }
    }
}

TEST_CASE("randomized Hadamard signs are seeded and reproducible", "[quant][hadamard]") {
    const auto a = pkv::hadamard_signs(128, 7), b = pkv::hadamard_signs(128, 7), c = pkv::hadamard_signs(128, 8);
    CHECK(a == b);
    CHECK(a != c);
    int neg = 0;
    for (float v : a) {
        CHECK((v == 1.0f || v == -1.0f));
        neg += v < 0;
    }
    CHECK(neg > 32);
    CHECK(neg < 96);
    // Without signs the inverse flag changes nothing.
    auto x = pkv_test::random_activations(64, 2), y = x;
    pkv::hadamard_rotate_rows(x.data(), 1, 64);
    pkv::hadamard_rotate_rows(y.data(), 1, 64, nullptr, true);
    CHECK(x == y);
}

TEST_CASE("Hadamard rejects dimensions that are not powers of two", "[quant][hadamard]") {
    std::vector<float> x(96);
    CHECK_THROWS_WITH(pkv::hadamard_rotate_rows(x.data(), 2, 48),
                      ContainsSubstring("head_dim 48: hadamard rotation needs a power of two"));
    CHECK_THROWS_WITH(pkv::hadamard_signs(0, 1), ContainsSubstring("head_dim 0"));
    CHECK_THROWS_AS(pkv::hadamard_transform(x.data(), 96), pkv::Error);
}
