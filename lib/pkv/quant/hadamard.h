// pkv/quant/hadamard.h — orthonormal Walsh–Hadamard rotation of head vectors.
//
// For D = 2^k, H_D is the Sylvester matrix (H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]],
// so H[i][j] = (-1)^popcount(i & j)) scaled by 1/sqrt(D). It is symmetric and
// orthonormal, hence its own inverse. Rotating each row before quantization spreads
// outlier channels over all channels (QuaRot / QuIP# style); because the rotation
// is orthonormal, errors measured after rotating back are errors in the original space.
//
// Randomized variant: y = H_D · diag(s) · x with a fixed pseudo-random sign vector
// s in {+1, -1}^D; its inverse is x = diag(s) · H_D · y. The signs come from
// std::mt19937_64 seeded with `seed` (a generator fully specified by the C++
// standard, so the same seed gives the same signs everywhere): s_i = -1 when the top
// bit of the i-th draw is set.
//
// The transform is the in-place butterfly (D log2 D additions) in fp32, followed by
// one multiplication by 1/sqrt(D). D must be a power of two (1 included); otherwise
// invalid_argument "head_dim 48: hadamard rotation needs a power of two".
#pragma once

#include <cstdint>
#include <vector>

namespace pkv {

/// Throws invalid_argument unless D is a positive power of two.
void check_hadamard_dim(int D);

/// D signs (+1.0f or -1.0f) for the randomized rotation, reproducible from seed.
std::vector<float> hadamard_signs(int D, uint64_t seed);

/// Applies H_D (orthonormal) in place to one vector of length D.
void hadamard_transform(float* v, int D);

/// Rotates each row of a row-major [rows, D] matrix in place: row <- H_D · diag(signs) · row,
/// or row <- H_D · row when signs is null. With inverse = true it applies the inverse
/// (row <- diag(signs) · H_D · row; identical to the forward map when signs is null).
void hadamard_rotate_rows(float* x, int64_t rows, int D, const float* signs = nullptr, bool inverse = false);

}  // namespace pkv
