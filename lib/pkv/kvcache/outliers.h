// pkv/kvcache/outliers.h — dense-and-sparse quantization of a cache's groups: in every
// min-max group the few elements that stretch its range most stay exact (a binary16 value
// and its position in the group), the rest are quantized over the narrower range.
//
// Groups follow pkv/quant/minmax.h: per-channel (K: one channel over G consecutive tokens,
// the last group of a matrix possibly shorter) or per-token (V: G consecutive channels of
// one token). In a group of m values sorted v_0 <= .. <= v_{m-1}, holding out `count` of
// them leaves the range v_{m-1-(count-a)} - v_a for a taken from the bottom and count - a
// from the top; the a of the smallest range is chosen (ties: the smaller a). Groups of at
// most `count` + 1 values hold out none. Storage: each held-out element costs
// kOutlierValueBits for its value plus ceil(log2 m) for its position in the group.
#pragma once

#include <cstdint>
#include <vector>

#include "pkv/quant/minmax.h"

namespace pkv {

/// Bits of a held-out element's value (binary16).
constexpr int kOutlierValueBits = 16;
/// The most elements a group may hold out (eval's outN, calibrate --outliers).
constexpr int kMaxOutliers = 8;

/// Bits of one held-out element of a group of m values: its value and its position.
int outlier_bits(int64_t m);

/// Whether a group of m values holds out `count` elements (it needs more than count + 1).
inline bool group_holds_out(int64_t m, int count) { return count > 0 && m > count + 1; }

/// Bits a group of m values pays for its held-out elements (0 where it holds none).
inline double outlier_group_bits(int64_t m, int count) {
    return group_holds_out(m, count) ? static_cast<double>(count) * outlier_bits(m) : 0.0;
}

/// The held-out elements of one group of m values v[0], v[stride], .., v[(m-1) stride]:
/// writes their positions in the group (0..m-1) to pos and returns how many (count, or 0
/// where the group holds none) and, when it holds some, the range of the values it keeps
/// to kept[0] (minimum) and kept[1] (maximum). idx is scratch. hold_out_outliers and the
/// fit of a table's clip ratios (pkv/kvcache/residual.h) choose with this.
int group_outliers(const float* v, int64_t m, int64_t stride, int count, std::vector<int64_t>& idx, int64_t* pos,
                   float* kept);

/// Chooses the held-out elements of every group of the row-major [T, D] matrix x and
/// writes into xs (same shape) a copy of x whose held-out elements repeat a kept value of
/// their group (so a min-max quantizer of xs sees only the kept range). Returns the flat
/// indices of the held-out elements, group by group. count in [0, kMaxOutliers]; spec as for
/// quantize_minmax (bits and clip unused).
std::vector<int64_t> hold_out_outliers(const float* x, int64_t T, int D, const MinMaxSpec& spec, int count, float* xs);

}  // namespace pkv
