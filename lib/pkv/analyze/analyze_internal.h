// pkv/analyze/analyze_internal.h — accumulators shared by analyze.cpp (the streaming
// loop) and analyze_report.cpp (turning them into the report). Not a public API.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/analyze/analyze.h"
#include "pkv/analyze/metrics.h"

namespace pkv::analyze_detail {

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
    FlatnessAccum flat_k, flat_v;   ///< patternkv only; others share the raw accumulators below
};

struct PairResult {
    int layer = 0, head = 0;
    std::vector<ConfigAccum> configs;      ///< parallel to the run list
    FlatnessAccum raw_k[2], raw_v[2];      ///< raw flatness over all tokens, [rotate]
    HistAccum hist_k, hist_v;              ///< filled for the histogram heads only
    bool has_hist = false;
};

struct ReportInputs {
    const AnalyzeConfig* config = nullptr;
    std::vector<RunSpec> runs;
    std::vector<PairResult> pairs;
    bool has_k = false, has_v = false, has_attn = false;
    int64_t n_tokens = 0;
    nlohmann::json model;                  ///< name, n_layer, n_head, n_head_kv, head_dim
    nlohmann::json dump_model, dump_provenance;
    std::vector<int> layers, heads;
    std::vector<std::string> warnings;
    nlohmann::json table;                  ///< patternkv-table: the table's path, settings and calibration provenance
};

/// Builds the report document from the accumulated results.
nlohmann::json build_report(const ReportInputs& in);

}  // namespace pkv::analyze_detail
