#include "pkv/kvcache/outliers.h"

#include <algorithm>
#include <numeric>

#include "pkv/core/error.h"

namespace pkv {

int outlier_bits(int64_t m) {
    int b = 0;
    while ((int64_t{1} << b) < m) ++b;
    return kOutlierValueBits + b;
}

int group_outliers(const float* v, int64_t m, int64_t stride, int count, std::vector<int64_t>& idx, int64_t* pos,
                   float* kept) {
    if (!group_holds_out(m, count)) return 0;
    // Sorted by value, ties by position, so that the choice is deterministic.
    idx.resize(static_cast<size_t>(m));
    std::iota(idx.begin(), idx.end(), int64_t{0});
    const auto at = [v, stride](int64_t i) { return v[i * stride]; };
    std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return at(a) < at(b) || (at(a) == at(b) && a < b); });
    int best = 0;
    float best_range = 0.0f;
    for (int a = 0; a <= count; ++a) {
        const float r = at(idx[static_cast<size_t>(m - 1 - (count - a))]) - at(idx[static_cast<size_t>(a)]);
        if (a == 0 || r < best_range) best = a, best_range = r;
    }
    int n = 0;
    for (int i = 0; i < best; ++i) pos[n++] = idx[static_cast<size_t>(i)];
    for (int i = 0; i < count - best; ++i) pos[n++] = idx[static_cast<size_t>(m - 1 - i)];
    kept[0] = at(idx[static_cast<size_t>(best)]);
    kept[1] = at(idx[static_cast<size_t>(m - 1 - (count - best))]);
    return n;
}

namespace {

// One group of m values at x[base + i * stride]: held-out positions appended to out as flat
// indices, their xs entries set to the group's kept minimum.
void hold_out_group(const float* x, int64_t base, int64_t m, int64_t stride, int count, float* xs,
                    std::vector<int64_t>& idx, std::vector<int64_t>& out) {
    int64_t pos[kMaxOutliers];
    float kept[2];
    const int n = group_outliers(x + base, m, stride, count, idx, pos, kept);
    for (int i = 0; i < n; ++i) {
        out.push_back(base + pos[i] * stride);
        xs[out.back()] = kept[0];
    }
}

}  // namespace

std::vector<int64_t> hold_out_outliers(const float* x, int64_t T, int D, const MinMaxSpec& spec, int count, float* xs) {
    PKV_CHECK(count >= 0 && count <= kMaxOutliers, invalid_argument, "outliers per group: expected 0..{}, got {}",
              kMaxOutliers, count);
    PKV_CHECK(spec.group >= 1, invalid_argument, "outliers: group {} must be at least 1", spec.group);
    std::copy(x, x + T * D, xs);
    std::vector<int64_t> out, idx;
    if (spec.axis == QuantAxis::channel) {
        for (int64_t a = 0; a < T; a += spec.group) {
            const int64_t m = std::min<int64_t>(spec.group, T - a);
            for (int c = 0; c < D; ++c) hold_out_group(x, a * D + c, m, D, count, xs, idx, out);
        }
    } else {
        PKV_CHECK(D % spec.group == 0, invalid_argument, "outliers: group size {} does not divide head_dim {}",
                  spec.group, D);
        for (int64_t t = 0; t < T; ++t)
            for (int g0 = 0; g0 < D; g0 += spec.group)
                hold_out_group(x, t * D + g0, spec.group, 1, count, xs, idx, out);
    }
    return out;
}

}  // namespace pkv
