// pkv/pipeline/analyze_result.h — what `pkv analyze` measured, as typed accumulators:
// run_analyze (pipeline/analyze.cpp) fills it, report/analyze_json.cpp turns it into
// the report document (format pkv.analyze_report, docs/formats/report.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/kvcache/metrics.h"
#include "pkv/kvcache/simulate.h"

namespace pkv {

struct AnalyzeConfig;

namespace analyze {

/// One (method, bits, rotate) configuration.
struct RunSpec {
    KvMethod method;
    int bits;
    bool rotate;
};

/// Everything measured for one configuration of one (layer, KV head).
struct ConfigAccum {
    ErrorAccum k, v;
    AttnAccum attn;
    FlatnessAccum flat_k, flat_v;  ///< patternkv only; others share the raw accumulators below
};

struct PairResult {
    int layer = 0, head = 0;
    int window = 0;                    ///< the layer's sliding window (0: a global layer)
    std::vector<ConfigAccum> configs;  ///< parallel to the run list
    FlatnessAccum raw_k[2], raw_v[2];  ///< raw flatness over all tokens, [rotate]
    HistAccum hist_k, hist_v;          ///< filled for the histogram heads only
    bool has_hist = false;
};

}  // namespace analyze

/// Wall seconds of run_analyze's loop by part (they do not overlap; reading the next group
/// and the attention scorer's device work run meanwhile and show only as waits).
struct AnalyzeTimes {
    double read_wait = 0;  ///< waiting for the next sequences from the dump or the model
    double simulate = 0;   ///< cache simulation (the simulator's calls, or the host's threads)
    double measure = 0;    ///< errors, bits, flatness, histograms, rotations
    double attention = 0;  ///< attention metrics: scored here, or handed to the scorer and its finish
};

/// The result of run_analyze: the configuration it ran, the runs, and per analysed
/// (layer, KV head) the accumulated metrics of every run.
struct AnalyzeResult {
    std::shared_ptr<const AnalyzeConfig> config;
    std::vector<analyze::RunSpec> runs;
    std::vector<analyze::PairResult> pairs;
    bool has_k = false, has_v = false, has_attn = false;
    int64_t n_tokens = 0;
    nlohmann::json model;  ///< name, n_layer, n_head, n_head_kv, head_dim
    nlohmann::json dump_model, dump_provenance;
    std::string source = "dump";     ///< "dump" or "model" (streamed): where the activations came from
    std::string source_path;         ///< the dump or the model file
    std::string device = "cpu";      ///< where attention was scored (AttentionScorer::description)
    std::string sim_device = "cpu";  ///< where the caches were simulated (CacheSimulator::description)
    AnalyzeTimes times;
    std::vector<int> layers, heads;
    std::vector<int> layer_windows;  ///< [layers] sliding window of each analysed layer, 0: global
    std::vector<std::string> warnings;
    nlohmann::json table;  ///< patternkv-table: the table's path, settings and calibration provenance
};

}  // namespace pkv
