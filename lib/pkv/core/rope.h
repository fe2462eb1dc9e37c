// pkv/core/rope.h — rotary position embedding (RoPE): the one implementation in pkv,
// used by the model's forward pass, by `pkv eval` for pre-RoPE key caches and by
// `pkv analyze` to score pre-RoPE keys with post-RoPE queries.
//
// Position p rotates the pairs of a head by θ(p, i) = p · freq_scale · base^(-2i/n_rot) / f_i,
// i in [0, n_rot/2), where f_i are optional per-frequency factors (Llama 3's rope_freqs;
// 1 when absent); dimensions at or past n_rot are left alone. The pairs are
//   interleaved  (2i, 2i+1)           ggml's NORM mode, the GGUF dimension order;
//   half_split   (i, i + n_rot/2)     Hugging Face's rotate_half order.
// The angles and their cos/sin are computed in double and rounded once to float, so large
// positions keep full float accuracy (ggml accumulates the angle in float, so the two
// differ by about 1e-6 relative at small positions and more at large ones); the rotation
// itself runs in float.
#pragma once

#include <cstdint>
#include <vector>

namespace pkv {

enum class RopeLayout { interleaved, half_split };

struct RopeParams {
    int n_rot = 0;            ///< rotated dimensions per head: even, 2 <= n_rot <= head_dim
    double base = 10000.0;    ///< frequency base
    double freq_scale = 1.0;  ///< 1 / linear position scaling factor
    RopeLayout layout = RopeLayout::interleaved;
    std::vector<float> freq_factors;  ///< empty, or n_rot/2 positive divisors of the frequencies
};

/// cos/sin of θ(pos0 + p, i) for p in [0, n_pos), row-major [n_pos, n_rot/2].
struct RopeTable {
    int n_pos = 0;
    int n_pairs = 0;
    RopeLayout layout = RopeLayout::interleaved;
    std::vector<float> cos, sin;
};
RopeTable rope_table(const RopeParams& params, int n_pos, int64_t pos0 = 0);

/// Rotates, in place, each head of x = [n_tokens, n_heads * head_dim] (row-major) by the
/// table's angles of row (row0 + token). Needs row0 + n_tokens <= table.n_pos and
/// 2 * table.n_pairs <= head_dim.
void rope_apply(float* x, int64_t n_tokens, int n_heads, int head_dim, const RopeTable& table, int64_t row0 = 0);

}  // namespace pkv
