// pkv/kvcache/metrics.h — error, attention and flatness metrics of a simulated
// cache, accumulated over the sequences of a dump. Formulas: docs/numerics.md,
// "Metrics". All inputs are one (layer, KV head) of one sequence, row-major [n, D].
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/kvcache/simulate.h"

namespace pkv {

/// Sum of squared errors and of squared references: NMSE = err2 / ref2.
struct ErrorAccum {
    double err2 = 0.0, ref2 = 0.0;
    double bits = 0.0;      ///< stored bits of the final cache states
    double elements = 0.0;  ///< tokens * D
    void add(const float* x, const float* recon, int64_t count);
};

/// Moments and group statistics of a set of values (raw or residual).
struct FlatAccum {
    double ros_sum = 0.0;  ///< sum over groups of range / std
    int64_t groups = 0;
    double s1 = 0, s2 = 0, s3 = 0, s4 = 0;  ///< power sums of the elements
    int64_t count = 0;
    double mean_ros() const;  ///< NaN when no group had a positive std
    double kurtosis() const;  ///< excess kurtosis; NaN when the variance is 0
};

/// Flatness of one tensor: raw values, residuals (patternkv) and explained variance.
struct FlatnessAccum {
    FlatAccum raw, resid;
    bool has_resid = false;
    double resid2 = 0.0;      ///< sum ||x - c(x)||^2 over the pattern tokens
    std::vector<double> sum;  ///< [D] per-dim sums of x over the same tokens
    double sq = 0.0;          ///< sum ||x||^2 over the same tokens
    int64_t tokens = 0;
    double var_explained() const;  ///< 1 - resid2 / total variance, clamped to [0, 1]; NaN when undefined
};

/// Adds one sequence. K groups: G consecutive tokens of one channel; V groups:
/// min(G, D) channels of one token. With a patternkv result the statistics cover the
/// tokens holding a pattern (the residual is x - c for K, x - g*c for V; they run from
/// sim->stored_from, the first token a sliding-window ring stored); otherwise
/// every token, raw only.
void accumulate_flatness(FlatnessAccum& acc, KvTensor tensor, const float* x, int64_t n, int D, int group,
                         const SimResult* sim);

/// Attention error of one query head: mean KL(p || p_hat) over query rows and mean
/// ||o - o_hat|| / ||o|| (rows with o = 0 left out).
struct AttnAccum {
    double kl_sum = 0.0;
    int64_t kl_rows = 0;
    double rel_sum = 0.0;
    int64_t rel_rows = 0;
};

/// One simulated cache as the attention metric sees it. k_hat/v_hat: [n, D] values
/// used from flush step on (flush_k/flush_v); k_hat is in the basis of the queries.
struct AttnCache {
    const float* k_hat = nullptr;
    const int32_t* flush_k = nullptr;
    const float* v_hat = nullptr;
    const int32_t* flush_v = nullptr;
    AttnAccum* acc = nullptr;
};

/// Causal attention of query rows t = 0, stride, 2*stride, ... < n of q against the
/// exact k, v and against each cache (key j reads k_hat[j] when flush_k[j] <= t, else
/// k[j]; same for values), scale kq_scale (0: 1/sqrt(D)). window > 0 (a sliding-window
/// layer): query t attends keys t - window + 1 .. t only. The exact side is computed
/// once per row block and shared by all caches. Work: O(n^2 D / stride) per cache.
void accumulate_attention(const float* q, const float* k, const float* v, int64_t n, int D, int stride,
                          const std::vector<AttnCache>& caches, int64_t window = 0, float kq_scale = 0.0f);

/// Histogram of raw and residual values over fixed bins (lo, hi from the first data seen).
struct HistAccum {
    bool ready = false;
    double lo = 0, hi = 0;
    std::vector<int64_t> raw, resid;
    /// raw[0..n_raw) and resid[0..n_resid) values; the first call fixes lo/hi to the raw range.
    void add(const float* raw, int64_t n_raw, const float* resid, int64_t n_resid, int bins);
};

/// NaN-aware JSON number: null when not finite.
nlohmann::json json_number(double v);

}  // namespace pkv
