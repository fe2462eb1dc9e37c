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

namespace {

// One group: the elements at idx[0..m) of x. Sorts a copy by value (ties by index, so
// the choice is deterministic), picks the split of the smallest remaining range.
void hold_out_group(const float* x, std::vector<int64_t>& idx, int count, float* xs, std::vector<int64_t>& out) {
    const int64_t m = static_cast<int64_t>(idx.size());
    if (!group_holds_out(m, count)) return;
    std::sort(idx.begin(), idx.end(), [x](int64_t a, int64_t b) { return x[a] < x[b] || (x[a] == x[b] && a < b); });
    int best = 0;
    float best_range = 0.0f;
    for (int a = 0; a <= count; ++a) {
        const float r = x[idx[static_cast<size_t>(m - 1 - (count - a))]] - x[idx[static_cast<size_t>(a)]];
        if (a == 0 || r < best_range) best = a, best_range = r;
    }
    const float keep = x[idx[static_cast<size_t>(best)]];  // the kept minimum
    for (int i = 0; i < best; ++i) out.push_back(idx[static_cast<size_t>(i)]);
    for (int i = 0; i < count - best; ++i) out.push_back(idx[static_cast<size_t>(m - 1 - i)]);
    for (size_t i = out.size() - static_cast<size_t>(count); i < out.size(); ++i) xs[out[i]] = keep;
}

}  // namespace

std::vector<int64_t> hold_out_outliers(const float* x, int64_t T, int D, const MinMaxSpec& spec, int count, float* xs) {
    PKV_CHECK(count >= 0 && count <= 8, invalid_argument, "outliers per group: expected 0..8, got {}", count);
    PKV_CHECK(spec.group >= 1, invalid_argument, "outliers: group {} must be at least 1", spec.group);
    std::copy(x, x + T * D, xs);
    std::vector<int64_t> out, idx;
    if (spec.axis == QuantAxis::channel) {
        for (int64_t a = 0; a < T; a += spec.group) {
            const int64_t m = std::min<int64_t>(spec.group, T - a);
            for (int c = 0; c < D; ++c) {
                idx.resize(static_cast<size_t>(m));
                for (int64_t i = 0; i < m; ++i) idx[static_cast<size_t>(i)] = (a + i) * D + c;
                hold_out_group(x, idx, count, xs, out);
            }
        }
    } else {
        PKV_CHECK(D % spec.group == 0, invalid_argument, "outliers: group size {} does not divide head_dim {}",
                  spec.group, D);
        for (int64_t t = 0; t < T; ++t)
            for (int g0 = 0; g0 < D; g0 += spec.group) {
                idx.resize(static_cast<size_t>(spec.group));
                std::iota(idx.begin(), idx.end(), t * D + g0);
                hold_out_group(x, idx, count, xs, out);
            }
    }
    return out;
}

}  // namespace pkv
