#include "pkv/core/rope.h"

#include <cmath>

#include "pkv/core/error.h"

namespace pkv {

RopeTable rope_table(const RopeParams& params, int n_pos, int64_t pos0) {
    PKV_ASSERT(params.n_rot >= 2 && params.n_rot % 2 == 0 && n_pos >= 0);
    PKV_ASSERT(params.freq_factors.empty() || params.freq_factors.size() == static_cast<size_t>(params.n_rot / 2));
    RopeTable t;
    t.n_pos = n_pos;
    t.n_pairs = params.n_rot / 2;
    t.layout = params.layout;
    t.cos.resize(static_cast<size_t>(n_pos) * t.n_pairs);
    t.sin.resize(t.cos.size());
    std::vector<double> inv_freq(t.n_pairs);
    for (int i = 0; i < t.n_pairs; ++i) {
        inv_freq[i] = std::pow(params.base, -2.0 * i / params.n_rot);
        if (!params.freq_factors.empty()) inv_freq[i] /= params.freq_factors[i];
    }
    for (int p = 0; p < n_pos; ++p) {
        const double pos = static_cast<double>(pos0 + p) * params.freq_scale;
        for (int i = 0; i < t.n_pairs; ++i) {
            const double theta = pos * inv_freq[i];
            t.cos[static_cast<size_t>(p) * t.n_pairs + i] = static_cast<float>(std::cos(theta));
            t.sin[static_cast<size_t>(p) * t.n_pairs + i] = static_cast<float>(std::sin(theta));
        }
    }
    return t;
}

void rope_apply(float* x, int64_t n_tokens, int n_heads, int head_dim, const RopeTable& table, int64_t row0) {
    PKV_ASSERT(row0 >= 0 && row0 + n_tokens <= table.n_pos && 2 * table.n_pairs <= head_dim);
    const int64_t width = static_cast<int64_t>(n_heads) * head_dim;
    // Pair i is (i * a_step, i * a_step + b_off): interleaved (2i, 2i+1), half split (i, i + n_pairs).
    const bool inter = table.layout == RopeLayout::interleaved;
    const int a_step = inter ? 2 : 1, b_off = inter ? 1 : table.n_pairs;
    for (int64_t p = 0; p < n_tokens; ++p) {
        const float* c = table.cos.data() + static_cast<size_t>(row0 + p) * table.n_pairs;
        const float* s = table.sin.data() + static_cast<size_t>(row0 + p) * table.n_pairs;
        for (int h = 0; h < n_heads; ++h) {
            float* v = x + p * width + static_cast<int64_t>(h) * head_dim;
            for (int i = 0; i < table.n_pairs; ++i) {
                const int a = i * a_step, b = a + b_off;
                const float x0 = v[a], x1 = v[b];
                v[a] = x0 * c[i] - x1 * s[i];
                v[b] = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

}  // namespace pkv
