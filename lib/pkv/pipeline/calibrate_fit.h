// pkv/pipeline/calibrate_fit.h — `pkv calibrate`'s fit of one head tensor after k-means
// (calibrate_fit.cpp), shared by calibrate.cpp alone; not part of the public API.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/kmeans/kmeans.h"
#include "pkv/kvcache/residual.h"
#include "pkv/pipeline/calibrate.h"
#include "pkv/table/pattern_table.h"

namespace pkv::calib {

/// The pooled tokens of one (layer, head) tensor: train and held-out parts with their sequences.
struct Pooled {
    std::vector<float> train, hold;
    std::vector<SeqRange> train_seqs, hold_seqs;
    int64_t n_train() const { return train_seqs.empty() ? 0 : train_seqs.back().start + train_seqs.back().length; }
    int64_t n_hold() const { return hold_seqs.empty() ? 0 : hold_seqs.back().start + hold_seqs.back().length; }
};

/// The residual quantizer of one tensor fitted at one code width (--bits-budget).
struct WidthFit {
    int bits = 2;
    float clip = 1.0f;
    double gate_z = ptable::kDefaultGateZ;
    double nmse = 0.0;  ///< training NMSE at the fit (keys under a qk objective: in its metric)
    /// With CalibrateConfig::bits_measure_attention: mean ||o - ô|| / ||o|| of the attention
    /// outputs of the head's query heads with this tensor at this width (the other exact); else -1.
    double attn = -1.0;
};

/// Everything the table and its metadata need about one tensor (K or V) of one head.
struct HeadTensorResult {
    std::vector<int64_t> counts;
    float clip = 1.0f;
    double gate_z = ptable::kDefaultGateZ;
    nlohmann::json stats;
    /// With --bits-budget: the fit at each width 2, 3, 4, 8 (c.bits' is the one above); else empty.
    std::vector<WidthFit> widths;
};

/// WidthFit as JSON and back (what a rank sends to rank 0 and the table's statistics record).
nlohmann::json width_fits_json(const std::vector<WidthFit>& w);
std::vector<WidthFit> width_fits_from_json(const nlohmann::json& j);

/// Assigns the train and held-out tokens their patterns, fits the tensor's clip ratio
/// (and the values' gate z) on the training tokens and measures the held-out ablation
/// (docs/numerics.md, "Pattern tables"). tasks: the fits' candidates become OpenMP tasks
/// that idle threads of the enclosing parallel region may take (a batch of fewer tensors
/// than threads); the result is the same either way. key_metric (keys only; nullptr: the
/// raw error): the qk objectives' metric (calibrate_objective.h); both key clip fits
/// minimise the error in it, "train" records it, and "heldout" adds the NMSE in it of the
/// same quantizers as qk_nmse_minmax, qk_nmse_patterns, qk_nmse_fitted.
HeadTensorResult finish_tensor(bool is_value, const Pooled& pool, const KMeansResult& km, int D, int M,
                               const CalibrateConfig& c, bool tasks, const KeyMetric* key_metric);

}  // namespace pkv::calib
