// pkv/kvcache/attention_scorer.h — where `pkv analyze` scores attention against its
// simulated caches: a plug-in that takes one sequence of one (layer, KV head) at a time,
// all its query heads and all its caches together, and adds the figures
// accumulate_attention (metrics.h) defines to each cache's AttnAccum.
//
// lib/ holds only the interface: the analysis calls accumulate_attention itself when no
// scorer is given (AnalyzeConfig::attention empty), and a GPU build hands it the CUDA
// scorer (cuda/pkv/cuda/analyze_attention.h). A scorer may work asynchronously: it must
// copy what it needs from the job before submit() returns (the caller frees the arrays
// right after), and every job's sums must be in their accumulators when finish() returns.
// Jobs are added in submission order, so a run is deterministic for a given scorer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pkv/kvcache/metrics.h"

namespace pkv {

/// One sequence of one (layer, KV head): `q` holds the G query heads that share the KV
/// head, each [n, D] row-major, in the basis of k; k, v [n, D] the exact keys and
/// values; caches as accumulate_attention takes them (k_hat, v_hat [n, D], flush steps
/// [n], an accumulator each; two caches may share an accumulator). stride, window and
/// kq_scale as in accumulate_attention.
struct AttentionJob {
    std::vector<const float*> q;
    const float* k = nullptr;
    const float* v = nullptr;
    int64_t n = 0;
    int D = 0;
    int stride = 1;
    int64_t window = 0;
    float kq_scale = 0.0f;
    std::vector<AttnCache> caches;
};

class AttentionScorer {
public:
    virtual ~AttentionScorer() = default;
    /// Where it runs, recorded in the report, e.g. "cuda:0 NVIDIA H100 80GB HBM3".
    virtual std::string description() const = 0;
    /// Scores every query head of the job against every cache: the sums that calling
    /// accumulate_attention once per query head (in order) would add, to the scorer's
    /// stated tolerance. The job's arrays may be freed once this returns.
    virtual void submit(const AttentionJob& job) = 0;
    /// Waits for every submitted job; their accumulators are complete afterwards.
    virtual void finish() = 0;
};

/// Makes the scorer for one analysis (called once, after the input is validated).
using AttentionScorerFactory = std::function<std::unique_ptr<AttentionScorer>()>;

}  // namespace pkv
