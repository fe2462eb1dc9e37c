// test/unit/report/sample_result.h — a hand-built AnalyzeResult (what run_analyze
// returns) for the tests of analyze_report_json: every metric of every (layer, KV
// head, configuration) is set to a chosen value, so means and fragile heads can be
// worked out by hand.
#pragma once

#include <vector>

#include "pkv/pipeline/analyze.h"

namespace pkv::test {

/// The values one (layer, KV head) of one configuration reports.
struct SampleMetrics {
    double k_nmse = 0.01, v_nmse = 0.02;
    double kl = 1e-3, out_rel_err = 0.05;
    double eff_bits = 16;                   ///< of K and of V alike
    double ros_raw = 8, ros_resid = 4;      ///< mean range/std over groups
    double kurt_raw = 2, kurt_resid = 0.5;  ///< excess kurtosis, > -2
    double var_explained = 0.5;             ///< in [0, 1]
};

/// Sets K and V error, attention and (patternkv) flatness of `pair`'s configuration
/// `r`, and the pair's raw flatness (both rotations) to m's raw values. K and V get the
/// same flatness; pattern residual statistics only where `pattern` is true.
void set_metrics(analyze::PairResult& pair, size_t r, const SampleMetrics& m, bool pattern);

/// Runs fp16 (16 bits), kivi 2 and patternkv 2 (no rotation) over layers 0 ..
/// windows.size() - 1 (layer l has sliding window windows[l], 0: global) and KV heads
/// 0 .. n_kv_head - 1, K, V and attention measured. Defaults: fp16 NMSE 0; kivi K NMSE
/// 0.04 (local) or 0.08 (global), V half of it; patternkv a quarter of kivi; eff bits
/// 16, 2.5 and 2.75; flatness of SampleMetrics. Tests overwrite what they check.
AnalyzeResult make_sample_result(const std::vector<int>& windows, int n_kv_head);

}  // namespace pkv::test
