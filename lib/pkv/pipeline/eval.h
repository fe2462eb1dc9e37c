// pkv/pipeline/eval.h — `pkv eval` as one library call: the model's next-token quality
// when its KV cache is held as a runtime would hold it, for several methods side by
// side over the same tokens (docs/eval.md).
//
// Tokens: as `pkv dump` takes them (each text tokenized on its own, no special-token
// parsing, concatenated, the first n_tokens cut into independent sequences of ctx
// tokens, the last possibly shorter, each starting at position 0), so the fp16
// reference perplexity equals the dump's for the same --tokens/--ctx.
//
// Per sequence of n tokens with prefill P: the fp16 reference runs once (plain
// forward); every method then runs the whole model again with a KV-cache hook, layer
// by layer: layer l's exact K/V (computed from the layers below as they ran under
// that method) are simulated per KV head with simulate_cache(), and query t attends
// to recon[j] where flush_step[j] <= t and to the exact K/V otherwise. Finally the
// output matrix meets all variants' hidden states in one pass (compare_next_token),
// so KL and top-1 against fp16 never need [n, n_vocab] in memory.
//
// Scored positions: decode positions t in [P, n-2] (the query of token t predicting
// token t+1) give ppl, mean KL and top-1 agreement; ppl_all uses every t in [0, n-2].
// The same sums are also kept per position bucket: t counts in bucket i when
// edges[i] <= t < edges[i+1] (the last bucket: t >= edges.back()), t being the query's
// position within its sequence, so over all buckets they add up to the totals (the NLL
// and KL sums to double rounding).
// Default P: n/2 rounded down to a multiple of 128 (as `pkv analyze` with its
// default window). Memory: the model mapping, one layer in fp32, one sequence's
// activations, and [n, n_embd] floats per method for the final comparison.
//
// Engine: every forward pass (reference and methods) runs through a ForwardEngine
// (model/engine.h), as many sequences per run_batch call as the engine takes (the CPU
// engine: one; capped so the batch's hidden states of all variants stay within 2 GiB),
// each sequence with its own MethodCache per method. A method the engine can simulate
// itself (ForwardEngine::supports_device_cache: the CUDA engine for every method but
// patternkv) runs there, the K/V never leaving the device (run_batch_device_cache, with
// MethodCache::device_cache's description); any other method's simulation runs on host
// threads inside the engine's hook (always with host_cache). The CPU engine gives
// exactly the figures of LlamaModel::forward; on the CUDA engine the forward runs on the
// GPU and the hook's inputs differ from the CPU's by float rounding (docs/eval.md). The
// final comparison (compare_next_token) always runs on the CPU.
//
// Attention engine (EvalConfig::attention): `host` (the default) is the above. `runtime`
// runs every method's forward on the CPU with its attention computed by the packed cache a
// runtime holds (pipeline/eval_runtime.h: append, flush and decode_attention_ref on the
// simulation's schedule), so its figures are the runtime's; methods the packed cache cannot
// hold, models with sliding-window layers and device engines are refused before any forward
// pass. The fp16 reference is the same plain forward either way.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/kvcache/kv_spec.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/model/engine.h"

namespace pkv {

/// Who computes each method's attention: LlamaModel over the simulated cache, or the
/// runtime's packed cache (eval_runtime.h).
enum class EvalAttention { host, runtime };

/// "host", "runtime" (the names of `pkv eval --engine`).
const char* eval_attention_name(EvalAttention a);

struct EvalConfig {
    std::string model_path;
    std::vector<std::string> text_paths;
    /// Instead of text_paths: a file of token ids (pipeline/text_input.h gives its format).
    std::string token_ids_path;
    int64_t n_tokens = 4096;
    int ctx = 2048;                     ///< tokens per sequence, <= the model's context length
    std::vector<std::string> kv;        ///< method specs (kv_spec.h), each run against fp16
    std::vector<int> keep_fp16_layers;  ///< layers whose cache stays exact for every method
    int64_t prefill = -1;               ///< P per sequence (capped at its length); -1: default above
    uint64_t seed = 0;                  ///< patternkv k-means seed
    /// Write BOS over the first token of every sequence, as llama.cpp's llama-perplexity does
    /// when the vocabulary adds BOS (tokenizer.ggml.add_bos_token); refused when it does not.
    bool bos_each_sequence = false;
    /// Edges of the position buckets (first 0, strictly ascending; check_position_buckets):
    /// bucket i holds query positions [edges[i], edges[i+1]), the last [edges.back(), ctx).
    std::vector<int64_t> position_buckets = {0, 1024, 4096};
    std::vector<std::string> argv;  ///< recorded as provenance
    /// Makes the engine the forward passes run on; empty: the CPU reference engine.
    EngineFactory engine;
    /// Simulate every method's cache on host threads through the engine's hook even where
    /// the engine could keep it on its device (--host-cache: to compare the two paths).
    bool host_cache = false;
    /// runtime: every method attends through the packed cache (CPU engine only: `engine`
    /// must be empty).
    EvalAttention attention = EvalAttention::host;
};

/// Sums of one variant over the scored positions t of one position bucket (every
/// sequence): "dec" over t in [P, n-2], "all" over t in [0, n-2], as in EvalAccum.
struct EvalBucket {
    int64_t n_dec = 0, n_all = 0;  ///< scored positions in the bucket
    double nll_dec = 0, nll_all = 0, kl_dec = 0, kl_all = 0;
    int64_t top1_dec = 0, top1_all = 0;
};

/// Sums of one variant (the fp16 reference or a method) over the scored positions of
/// every sequence: "dec" over decode positions t in [P, n-2], "all" over t in [0, n-2].
struct EvalAccum {
    double nll_dec = 0, nll_all = 0, kl_dec = 0, kl_all = 0;  ///< nats
    int64_t top1_dec = 0, top1_all = 0;                       ///< positions whose argmax matches fp16's
    double seconds = 0, cpu = 0;                              ///< forward passes: wall and process CPU time
    double k_bits = 0, v_bits = 0, elements = 0;              ///< cache storage; elements of K (= of V)
    double kv_bytes_peak = 0;                                 ///< largest final cache of one sequence
    /// Parallel to EvalConfig::position_buckets. Counts and top-1 sums add up to the totals
    /// exactly; NLL and KL sums to within double rounding (they are added in another order).
    std::vector<EvalBucket> buckets;
    bool cache_on_device = false;  ///< the engine simulated the cache itself (run_batch_device_cache)
    bool runtime = false;          ///< attention came from the packed cache (EvalAttention::runtime)
};

/// What run_eval measured (report/report.h eval_report_json turns it into the report).
struct EvalResult {
    std::shared_ptr<const EvalConfig> config;
    std::vector<KvSpec> specs;  ///< parsed from config->kv, in order
    nlohmann::json model;       ///< the model record (pipeline/provenance.h model_json)
    std::string model_sha256, model_name;
    std::vector<TextSource> sources;
    std::string device;  ///< the engine's description(), e.g. "cpu (16 threads)"
    int64_t n_sequences = 0, scored_decode = 0, scored_all = 0;
    double seconds = 0, compare_seconds = 0;  ///< whole run; the final next-token comparison
    EvalAccum reference;
    std::vector<EvalAccum> methods;  ///< parallel to specs
};

/// Validates everything (files, numbers, specs against the model, layers) before any
/// forward pass and throws pkv::Error naming the offending input; then runs and
/// returns what it measured (docs/eval.md). Progress on stderr.
EvalResult run_eval(const EvalConfig& config);

/// Throws invalid_argument unless `edges` is a valid --position-buckets list: at least one
/// edge, the first 0, strictly ascending, e.g.
///   "--position-buckets 0,2048,512: edges must ascend, got 512 after 2048".
void check_position_buckets(const std::vector<int64_t>& edges);

/// "0,512,2048" -> {0, 512, 2048}, checked as above; items are decimal integers
/// (no ranges, no sorting: the order given is the order checked). Throws invalid_argument:
///   "--position-buckets '0,x': expected non-negative integers separated by commas, got 'x'".
std::vector<int64_t> parse_position_buckets(const std::string& list);

/// The bucket of query position t >= 0: the largest i with edges[i] <= t (edges valid).
size_t position_bucket(const std::vector<int64_t>& edges, int64_t t);

/// Default prefill of a sequence of n tokens: floor(n / 2 / 128) * 128; otherwise
/// min(n, prefill).
int64_t eval_prefill(int64_t n, int64_t prefill);

}  // namespace pkv
