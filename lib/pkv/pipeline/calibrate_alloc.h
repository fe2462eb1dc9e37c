// pkv/pipeline/calibrate_alloc.h — `pkv calibrate --bits-budget`: per-head code widths
// chosen from the fits at every width (calibrate_fit.h WidthFit) with bit_alloc.h, shared
// by calibrate.cpp alone; not part of the public API.
//
// Units: (calibrated layer, KV head, K then V), in table order. A unit's error at width w
// is its training NMSE with the residual quantizer fitted at w, or with
// bits_measure_attention the attention-output error of measure_attention (0 at 16, fp16);
// its cost is simulate.h table_element_bits, what pkv eval and analyze count per element.
#pragma once

#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/core/rope.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/pipeline/bit_alloc.h"
#include "pkv/pipeline/calibrate.h"
#include "pkv/pipeline/calibrate_fit.h"
#include "pkv/table/pattern_table.h"

namespace pkv::calib {

/// The costs of the K and V units of a head (errors left 0), from the settings alone.
AllocUnit alloc_costs(const CalibrateConfig& c, int D, bool value);

/// Refuses a budget outside [cheapest, 16] before any mining (bit_alloc.h's message).
void check_budget_early(const CalibrateConfig& c, int D, size_t n_layers, int H);

/// Training tokens (whole sequences, in order, at least one) and query stride the
/// attention measure uses per head: it costs about 2 x 8 x (query heads per KV head)
/// x n² D / stride multiply-adds per sequence of n tokens.
constexpr int64_t kAttnTokens = 2048;
constexpr int kAttnStride = 8;

/// Which tokens of a head the attention measure runs on: its first training sequences
/// (--bits-budget) or its held-out ones (--restart-pick attention), up to kAttnTokens.
enum class AttnTokens { train, heldout };

/// The attention-output errors of one KV head, one per view: k[i] with the keys cached
/// by kviews[i] and the values exact, v[i] with the values cached by vviews[i] and the
/// keys exact (0 where the tokens hold no sequence).
struct AttnErrors {
    std::vector<double> k, v;
};

/// The measure of measure_attention below for any set of cached tensors (table head
/// views: patterns, clip, gate, width), on `tokens`; each sequence simulated once per view.
AttnErrors attention_errors(const CalibrateConfig& c, int D, int64_t ring, AttnTokens tokens, const Pooled& k,
                            const Pooled& v, const std::vector<Pooled>& qs, const std::vector<TableHeadView>& kviews,
                            const std::vector<TableHeadView>& vviews, const Pooled* k_post = nullptr,
                            const RopeTable* rope = nullptr);

/// Fills kout.widths[].attn and vout.widths[].attn (fits already made) for one KV head:
/// on its first training sequences (kAttnTokens), each simulated as pkv eval caches it
/// (prefill half the sequence rounded down to a multiple of c.window, patternkv-table at
/// the width with its fitted clip and gate, the layer's sliding window `ring`), the mean
/// over the query heads qs and query rows t = 0, kAttnStride, ... of ||o − ô|| / ||o||,
/// the attention output with that tensor quantized and the other exact (accumulate_attention,
/// scale 1/sqrt(D)). k, v, qs: the head's pooled tensors in the mining basis. Pre-RoPE
/// keys (k_post and rope set): the cache attends with k_post + RoPE_t(k̃_pre − k_pre), as
/// pkv eval's `:pre` (kvcache/pre_rope.h); rope covers the longest training sequence.
void measure_attention(const CalibrateConfig& c, int D, int64_t ring, const Pooled& k, const Pooled& v,
                       const std::vector<Pooled>& qs, const float* k_patterns, const float* v_patterns,
                       HeadTensorResult& kout, HeadTensorResult& vout, const Pooled* k_post = nullptr,
                       const RopeTable* rope = nullptr);

/// Allocates the widths under c.bits_budget from the head records (calibrate.cpp's
/// head_record, with "k_widths" / "v_widths"; records[i] is head i % H of t.layers[i / H])
/// and applies them to t: k_bits / v_bits, and each head's clip ratios and gate z set to
/// their fit at its width (a 16-bit head keeps those of c.bits). heads (the per-head
/// statistics, same order) gain "bits" and "widths" under "k" and "v". Returns the
/// record of pkv.calibration's "allocation".
nlohmann::json apply_allocation(const CalibrateConfig& c, PatternTable& t,
                                const std::vector<const nlohmann::json*>& records, nlohmann::json& heads);

}  // namespace pkv::calib
