// pkv/pipeline/eval_runtime.h — `pkv eval --engine runtime`: one method's attention
// computed through the packed cache a runtime holds (pkv/runtime/packed_cache.h) instead of
// by LlamaModel over the simulated cache (eval_cache.h), so the perplexity is that of the
// runtime's own cache layout and decode attention.
//
// Per layer of one sequence of n tokens with prefill P (LlamaModel's AttentionHook, every
// row ready) and per KV head: a PackedCache of that one layer and head (n_seq 1, max_tokens
// n, window R, group G and bits of the spec) takes the head's post-RoPE K and its V on eval's
// simulation schedule:
//   - the prompt's P tokens are appended, then end_prefill() quantizes its whole R-blocks;
//     queries t < P attend in full precision over the exact K/V (ops::causal_attention_rows),
//     as the simulation's do (no prompt token is quantized before step P);
//   - decode step t = P .. n-1 appends token t (which first flushes what step t - 1
//     completed) and its query attends through decode_attention_ref, one query per call.
// A layer kept in fp16 (--keep-fp16-layers) and the fp16 method use an fp16 packed cache.
// One cache per layer (not one of n_layer layers): the forward runs layer after layer over
// the whole sequence, while end_prefill wants every layer of a cache at the same length; and
// one per KV head, so that heads decode on their own threads (a cache's query heads of one
// KV head are the same arithmetic either way).
//
// Numerics against the simulated path (docs/eval.md, "The runtime engine"): the packed
// cache rounds each appended row to binary16 and quantizes from those values, where the
// simulation quantizes the exact fp32 K/V and attends to them in its window; decode
// attention works on the packed codes (q·c once per pattern, then q·r̂) in its own fp32
// order. Both are float rounding, but a low-bit quantizer turns the rare element moved
// across a code boundary (or a pattern tie) into a whole step, and later layers compound
// it: the figures agree statistically with the simulated ones, not to the last digit
// (test/unit/pipeline/test_eval_runtime.cpp bounds both comparisons).
// Scores are scaled by the model's attention.scale as q·(scale·sqrt(D)) when it has one.
//
// Memory: one layer's packed caches at a time (fp16: a ring of n binary16 rows per head).
// Threads: the hook is called from one thread (the layer's other threads wait for it); it
// runs the KV heads and blocks of the prompt's queries on up to omp_get_max_threads()
// std::threads.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "pkv/kvcache/kv_spec.h"
#include "pkv/model/llama.h"

namespace pkv_rt {
class PatternTable;
}

namespace pkv {

/// Refuses, in one line naming the spec and why, a method the packed cache cannot hold:
/// online patternkv, q4_0 / q8_0 / fp8, rotations (rot, rotv64), pre-RoPE keys (:pre), code
/// widths other than 2, 3, 4, a group that does not divide the window; and any method on a
/// model with sliding-window (local) layers. Throws pkv::Error(unsupported). (run_eval
/// refuses a table with a width per KV head once it has read it.)
void check_runtime_spec(const KvSpec& spec, const LlamaHparams& hp, const std::string& model_path);

/// Opens spec's pattern table with the runtime's reader (pattern_table_reader.h), declaring
/// this model (fingerprint, geometry, post-RoPE keys in its own dim order, no rotation, the
/// spec's bits); the reader's refusal becomes invalid_argument "--kv '<spec>': <why>".
std::shared_ptr<const pkv_rt::PatternTable> open_runtime_table(const KvSpec& spec, const LlamaHparams& hp,
                                                               const std::string& model_sha256);

/// One method's packed caches for the sequences of an eval, one sequence at a time.
class RuntimeAttention {
public:
    /// spec passed check_runtime_spec; keep_fp16[l]: layer l stays in an fp16 cache; table:
    /// open_runtime_table's for patternkv-table (else null).
    RuntimeAttention(const KvSpec& spec, std::vector<bool> keep_fp16, const LlamaHparams& hp,
                     std::shared_ptr<const pkv_rt::PatternTable> table = nullptr);
    ~RuntimeAttention();

    /// Starts a sequence of n tokens with prefill P (0 <= P <= n); clears the storage counters.
    void begin_sequence(int n, int64_t prefill);

    /// The hook for ForwardOptions::attention; the object must outlive the forward call.
    AttentionHook hook();

    /// Storage of the sequence's final cache (after the last step's flush) in bits, summed
    /// over layers and KV heads, as the packed cache counts it (PackedCache::counted_bits).
    double key_bits() const;
    double value_bits() const;

private:
    void run_layer(const AttentionHookInput& in);
    /// KV head g of one layer: its packed cache, prompt and decode steps, and its bits.
    void run_head(const AttentionHookInput& in, int g);

    KvSpec spec_;
    std::vector<bool> keep_;
    int n_head_kv_ = 0;
    std::shared_ptr<const pkv_rt::PatternTable> table_;
    int n_ = 0;
    int64_t prefill_ = 0;
    std::vector<double> bits_;  ///< [layer][kv_head][k, v]
};

}  // namespace pkv
