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
//   qk-full  the full metric M = E[q qᵀ] instead of its diagonal, in the fit and in the
//            mining (k-means on U k with UᵀU = M, the centroids solved back): the cross
//            terms carry the queries' mean direction, along which key errors add up
//            coherently in every score. Post-RoPE keys only (for pre-RoPE keys the
//            rotation averages the cross terms of different pairs away).
// The qk objectives need the dump's queries (/q, post-RoPE). Pre-RoPE keys see the query
// through a rotation of each RoPE pair that varies with the relative position, so both
// channels of a pair get the pair's mean weight (RoPE preserves a pair's energy).
// Measured on SmolLM2 (docs/calibration.md): qk-mine helps pre-RoPE tables clearly; on
// post-RoPE keys no objective beats kv by more than the k-means seed moves it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pkv/kvcache/residual.h"

namespace pkv {

enum class CalibObjective { kv, qk, qk_mine, qk_full };

/// "kv", "qk", "qk-mine", "qk-full".
const char* calib_objective_name(CalibObjective o);
/// The inverse; anything else: invalid_argument "--objective: expected kv, qk, qk-mine or qk-full, got 'x'".
CalibObjective parse_calib_objective(const std::string& name);
/// Whether the objective reads the queries (/q).
inline bool objective_needs_queries(CalibObjective o) { return o != CalibObjective::kv; }
/// Whether the key k-means runs in the objective's metric.
inline bool objective_mines(CalibObjective o) { return o == CalibObjective::qk_mine || o == CalibObjective::qk_full; }

namespace calib {

/// partner[c]: the other channel of c's RoPE pair in the given dump dimension order
/// ("gguf_interleaved": (2i, 2i+1); "hf_half_split": (i, i + n_rot/2)), c itself past
/// n_rot (not rotated). n_rot <= 0 or > D: D. (A head rotated only in part and stored
/// in HF order from a GGUF-ordered model pairs (i, i + D/2) instead; SmolLM2 and Gemma 3 rotate
/// the whole head, where the two agree.)
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

/// The full form: sum[c * D + c'] += Σ_t q[t, c] q[t, c'] for c <= c' (the upper
/// triangle of [D, D]; sum is sized on first use); count += n.
void add_query_products(const float* q, int64_t n, int D, std::vector<double>& sum, int64_t& count);

/// U (row-major [D, D], upper triangular, positive diagonal) with UᵀU = M + 1e-6 I, where
/// M = sum / count scaled to mean diagonal 1 (the scale changes no choice; the ridge
/// keeps U invertible). Throws invalid_argument (naming `what`) when count is 0 or the
/// diagonal is 0.
std::vector<double> query_metric_factor(const std::vector<double>& sum, int64_t count, int D, const std::string& what);

/// x_t <- U x_t for n rows of [n, D] (U as above).
void transform_rows(float* x, int64_t n, int D, const std::vector<double>& U);
/// The inverse: y_t <- U⁻¹ y_t (back substitution).
void untransform_rows(float* y, int64_t n, int D, const std::vector<double>& U);

/// Rows of [n, D] into the metric's space (forward: x ⊙ √w, or U x) or back; a raw
/// metric leaves them alone.
void to_metric(float* x, int64_t n, int D, const KeyMetric& m, bool forward);

/// x[t, c] *= s[c] for n rows of [n, D].
void scale_rows(float* x, int64_t n, int D, const std::vector<double>& s);

/// Σ_t |x_t − centroids[labels[t]]|² (double), the k-means objective of given labels.
double assignment_objective(const float* x, int64_t n, int D, const float* centroids, const int32_t* labels);

}  // namespace calib
}  // namespace pkv
