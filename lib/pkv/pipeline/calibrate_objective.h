// pkv/pipeline/calibrate_objective.h — what `pkv calibrate --objective` makes the key fit
// (and optionally the key mining) minimise; docs/calibration.md gives the reasoning and
// the measurements.
//
//   kv       the raw squared K/V reconstruction error (the default, and what tables
//            without an objective record were fitted with);
//   qk       keys: the squared error in the metric diag(w) of the KV head's queries,
//            w_c = E[q_c²] over the training tokens and the query heads of its GQA group.
//            For a key error e the score error is q·e, and E[(q·e)²] = Σ_c w_c e_c² when
//            the query channels are uncorrelated, so this is the expected squared error
//            of the attention logits (up to 1/D). Values keep the raw error.
//   qk-mine  qk, and the key k-means runs on k ⊙ √w (the centroids scaled back), so the
//            patterns, too, spend their accuracy where the queries look.
// Both qk objectives need the dump's queries (/q, post-RoPE). Pre-RoPE keys see the query
// through a rotation of each RoPE pair that varies with the relative position, so both
// channels of a pair get the pair's mean weight (RoPE preserves a pair's energy).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pkv {

enum class CalibObjective { kv, qk, qk_mine };

/// "kv", "qk", "qk-mine".
const char* calib_objective_name(CalibObjective o);
/// The inverse; anything else: invalid_argument "--objective: expected kv, qk or qk-mine, got 'x'".
CalibObjective parse_calib_objective(const std::string& name);
/// Whether the objective reads the queries (/q).
inline bool objective_needs_queries(CalibObjective o) { return o != CalibObjective::kv; }

namespace calib {

/// partner[c]: the other channel of c's RoPE pair in the given dump dimension order
/// ("gguf_interleaved": (2i, 2i+1); "hf_half_split": (i, i + n_rot/2)), c itself past
/// n_rot (not rotated). n_rot <= 0 or > D: D.
std::vector<int> rope_partners(int D, const std::string& dim_order, int n_rot);

/// Accumulates the query second moments of one KV head: sum[c] += Σ_t q[t, c]² over
/// the n rows of q ([n, D]); count += n.
void add_query_moments(const float* q, int64_t n, int D, std::vector<double>& sum, int64_t& count);

/// The channel weights from the accumulated moments: w_c = sum[c] / count, averaged over
/// the RoPE pair when partners is non-empty (pre-RoPE keys), then scaled to mean 1 (the
/// scale changes no choice) and floored at 1e-6 so that every channel can be scaled back
/// after mining. Throws invalid_argument (naming `what`) when count is 0 or every moment is 0.
std::vector<double> query_channel_weights(const std::vector<double>& sum, int64_t count,
                                          const std::vector<int>& partners, const std::string& what);

/// x[t, c] *= s[c] for n rows of [n, D].
void scale_rows(float* x, int64_t n, int D, const std::vector<double>& s);

/// Σ_t |x_t − centroids[labels[t]]|² (double), the k-means objective of given labels.
double assignment_objective(const float* x, int64_t n, int D, const float* centroids, const int32_t* labels);

}  // namespace calib
}  // namespace pkv
