// pkv/pipeline/analyze.h — `pkv analyze` as one library call: simulate KV-cache
// methods on a KV dump and measure them (docs/numerics.md, docs/formats/report.md).
//
// Source: a KV dump, or the model run over text (AnalyzeConfig::stream), one block of
// sequences at a time; each (layer, head) adds the sequences of every block in order.
// Work is streamed one (layer, KV head) at a time and, inside it, one sequence at a
// time: two sequences' K, V and queries are in memory (the one analysed and the next,
// read meanwhile), so peak memory depends on the sequence length (--ctx of the dump) and
// not on the dump's token count.
// Every sequence (from /sequences/start, length) is an independent cache: its first
// P tokens are the prefill, the rest decode steps.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/kvcache/attention_scorer.h"
#include "pkv/kvcache/cache_simulator.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/pipeline/analyze_result.h"
#include "pkv/pipeline/kv_source.h"

namespace pkv {

struct AnalyzeConfig {
    std::string dump_path;
    /// Instead of a dump (exactly one of the two): the model run over text (kv_source.h),
    /// used when stream.model_path is set; model_path, text_paths, n_tokens, ctx,
    /// hf_dim_order and engine are read, the rest comes from this config. The report
    /// equals that of `pkv dump` + analyze on the same tokens.
    ModelSourceConfig stream;
    /// With the model: sequences run and held per block (whole sequences, at least one).
    /// Memory: block_tokens x stored layers x (2 n_head_kv + n_head) x head_dim x 2 bytes
    /// (keys, values, queries; keys_pre adds the post-RoPE keys: 3 n_head_kv).
    int64_t block_tokens = 8192;
    std::vector<KvMethod> methods = {KvMethod::fp16, KvMethod::kivi, KvMethod::patternkv,
                                     KvMethod::q4_0, KvMethod::q8_0, KvMethod::fp8};
    std::vector<int> bits = {2, 4};  ///< kivi / patternkv widths, each of 2, 3, 4, 8
    int group = 128;                 ///< G
    int window = 128;                ///< R
    int64_t prefill = -1;            ///< P per sequence (capped at its length); -1: n/2 rounded down to a multiple of R
    int patterns = 32;
    int pattern_cap = 0;      ///< 0: unbounded
    bool keys_pre = false;    ///< analyse /k_pre instead of /k_post
    bool assign_l2 = false;   ///< patternkv decode assignment by L2 instead of min-max
    bool rotate = false;      ///< also run every method on Hadamard-rotated heads
    std::vector<int> layers;  ///< model layers (empty: all stored)
    std::vector<int> heads;   ///< KV heads (empty: all)
    int attn_stride = 1;      ///< query positions t with t % stride == 0
    uint64_t seed = 0;
    /// Pattern table for patternkv-table (pkv calibrate). Its model must be the dump's,
    /// its key basis the analysed one (--keys), its key dim order the dump's; it runs at
    /// the table's bits (a table with a width allocation: each head at its own width; the
    /// run is labelled with pkv.quant.bits), with --group and --window. A rotated table
    /// needs `rotate`.
    std::string table_path;
    int hist_bins = 48;
    std::vector<std::string> argv;  ///< recorded as provenance
    /// Scores attention against the caches (kvcache/attention_scorer.h), made once the
    /// input is validated; empty: accumulate_attention on the CPU, the reference figures.
    /// The report records its description as provenance.device ("cpu" without one).
    AttentionScorerFactory attention;
    /// Simulates the caches (kvcache/cache_simulator.h), made once the input is validated;
    /// empty: simulate_cache on the host's threads, the reference. The report records its
    /// description as provenance.sim_device ("cpu" without one).
    CacheSimulatorFactory simulator;
};

/// Validates the configuration against the dump (methods, bits, group fit, layers,
/// heads, datasets) and throws pkv::Error naming the offending option before any work.
/// Then runs and returns what it measured (report/report.h analyze_report_json turns it
/// into the report, format pkv.analyze_report 1.3). Progress goes to stderr; warnings
/// are logged once each and kept in the result's `warnings`.
AnalyzeResult run_analyze(const AnalyzeConfig& config);

/// "fp16,kivi" -> methods; throws invalid_argument naming an unknown method.
std::vector<KvMethod> parse_method_list(const std::string& list);

/// Prefill length of a sequence of n tokens: min(n, prefill) when prefill >= 0, else
/// floor(n / 2 / R) * R.
int64_t analyze_prefill(int64_t n, int64_t prefill, int window);

}  // namespace pkv
