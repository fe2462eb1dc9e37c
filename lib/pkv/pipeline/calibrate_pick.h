// pkv/pipeline/calibrate_pick.h — `pkv calibrate --restart-pick attention`: which of the
// k-means runs of `--restarts` each (layer, KV head, K or V) keeps, chosen by the held-out
// attention-output error of the table each run gives instead of by training inertia.
// Shared by calibrate.cpp alone; not part of the public API.
//
// Why: the runs' training inertias differ by well under 1% while the tables they give
// differ by several points of perplexity (docs/calibration.md, "k-means restarts"), so
// inertia cannot tell them apart; the attention output of the head's query heads is
// what the model reads from the cache.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/core/rope.h"
#include "pkv/kmeans/kmeans.h"
#include "pkv/pipeline/calibrate.h"
#include "pkv/pipeline/calibrate_fit.h"

namespace pkv::calib {

/// One (layer, KV head) as the pick sees it; the pointers outlive the call.
struct PickHead {
    const Pooled* k = nullptr;                ///< keys in the mining basis (pre-RoPE with keys_pre)
    const Pooled* v = nullptr;                ///< values
    const std::vector<Pooled>* qs = nullptr;  ///< the query heads of its GQA group (post-RoPE)
    const Pooled* k_post = nullptr;           ///< pre-RoPE keys: the keys attention sees; else nullptr
    const RopeTable* rope = nullptr;          ///< with k_post: covers its longest sequence
    const KeyMetric* metric = nullptr;        ///< the key fit's metric (nullptr: the raw error)
    int64_t ring = 0;                         ///< the layer's sliding window (0: global)
};

/// The index of the smallest error, the first on ties. Requires a non-empty list.
size_t pick_lowest(const std::vector<double>& errors);

/// For every head i: each run of kres[i].runs (keys' centroids in the raw basis of
/// heads[i].k, objectives in the raw metric) and of vres[i].runs is fitted as
/// finish_tensor fits a table's tensor at c.bits (clip, gate z; no budget widths), then
/// measured by attention_errors on the head's held-out sequences (the other tensor
/// exact); the run of lowest error is kept (pick_lowest). kres[i] and vres[i] become that
/// run (centroids, assignments, objective, iterations, converged, restart) and lose
/// their runs. Requires every result to hold c.restarts runs with labels. Returns, per
/// head, {"k": {"restart": r, "restart_inertia": the run inertia keeps,
/// "restart_attn_errors": [one per run]}, "v": {...}} for its statistics. Deterministic; OpenMP over (head, tensor,
/// run) and over heads.
std::vector<nlohmann::json> pick_restarts(const CalibrateConfig& c, int D, const std::vector<PickHead>& heads,
                                          std::vector<KMeansResult>& kres, std::vector<KMeansResult>& vres);

}  // namespace pkv::calib
