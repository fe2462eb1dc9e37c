// pkv/pipeline/eval_cache.h — the KV-cache hook of one method for `pkv eval`: per
// (layer, KV head, tensor) of one sequence it simulates the method's cache with
// simulate_cache() and hands LlamaModel the reconstruction and flush steps, keeping
// the storage each cache needs (SimBits) for the bit and memory figures.
//
// Rotation (`rot`): the head is rotated by the orthonormal Hadamard matrix, simulated,
// and the reconstruction rotated back, so attention runs in the model's own basis.
// Pre-RoPE keys (`pre`): the method quantizes the keys before RoPE and the cache holds
// k_post + RoPE_t(k̃_pre - k_pre) = RoPE_t(k̃_pre) (RoPE is linear), using the model's
// own RoPE table. Layers in the keep-fp16 list and the fp16 method leave the head
// exact and count 16 bits per element. A sliding-window layer's cache is the ring of its
// last W tokens (SimParams::ring): its bits count only what the ring keeps.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pkv/core/rope.h"
#include "pkv/kvcache/device_cache.h"
#include "pkv/kvcache/kv_spec.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/model/llama.h"
#include "pkv/table/pattern_table.h"

namespace pkv {
/// One tensor's bits (tensor 0: keys, 1: values) summed over a per-head storage array laid
/// out [layer][kv_head][k, v], as MethodCache and RuntimeAttention (eval_runtime.h) keep it.
double sum_tensor_bits(const std::vector<double>& bits, int tensor);

class MethodCache {
public:
    /// keep_fp16[l]: layer l stays exact. hp: the model (layers, heads, RoPE).
    /// table: patternkv-table's patterns, checked by check_table_for_eval (else null).
    MethodCache(const KvSpec& spec, uint64_t seed, std::vector<bool> keep_fp16, const LlamaHparams& hp,
                std::shared_ptr<const PatternTable> table = nullptr);

    /// Starts a sequence of n tokens with prefill P; clears the storage counters.
    void begin_sequence(int n, int64_t prefill);

    /// The hook for LlamaModel::forward; safe to call concurrently for distinct
    /// (layer, KV head, tensor) triples. The object must outlive the forward call.
    KvCacheHook hook();

    /// The cache this object's hook hands the model, described for an engine that simulates
    /// it on its device (ForwardEngine::run_batch_device_cache) for a batch whose sequences
    /// have prefills `prefill` (device_cache.h lists the rules it carries over). The
    /// description shares this object's pattern table.
    DeviceKvCache device_cache(std::vector<int64_t> prefill) const;

    /// Whether only the hook can simulate this cache (rotv64: no device engine rotates
    /// values in blocks), so eval runs it on the host whatever the engine.
    /// So does a table with a per-head width allocation (the device engines run one width),
    /// and exact sink tokens or outliers (sinkN, outN: no device cache keeps them).
    bool host_only() const {
        return spec_.rotate_v_block != 0 || spec_.sinks != 0 || spec_.outliers != 0 ||
               (table_ && table_->has_allocation());
    }

    /// Storage of this sequence's final cache in bits, summed over layers and KV
    /// heads: keys, values.
    double key_bits() const;
    double value_bits() const;

private:
    void run(const KvHookInput& in, KvHookOutput& out);

    KvSpec spec_;
    SimParams params_;
    std::vector<bool> keep_;
    int n_layer_ = 0, n_head_kv_ = 0;
    /// [layer] index into ropes_: local layers rotate with their own base.
    std::vector<int> rope_of_;
    std::vector<RopeParams> rope_params_;
    int n_ = 0;
    int64_t prefill_ = 0;
    std::vector<RopeTable> ropes_;
    std::vector<double> bits_;  ///< [layer][kv_head][k, v]
    std::shared_ptr<const PatternTable> table_;
    std::vector<TableHeadView> views_;  ///< [layer][kv_head][k, v] for patternkv-table
    std::vector<int64_t> ring_;         ///< [layer] sliding window, 0 for a global layer
};

/// Elements of one tensor (K or V) the cache of an n-token sequence holds at its end:
/// sum over layers of kept_tokens(n, W_l) * n_head_kv * head_dim.
double cached_elements(const LlamaHparams& hp, int64_t n);

/// Refuses a spec whose fp16 part does not fit the model's sliding window (--window R
/// above W: the block methods keep up to R tokens in fp16 inside the ring).
void check_spec_for_window(const KvSpec& spec, const LlamaHparams& hp, const std::string& model_path);

/// Refuses a table that does not describe what `spec` runs on this model: another
/// model (sha256 or shape), another key basis than the spec's, another key dim order
/// than the model computes (GGUF interleaved), a rotation the spec does not apply, other
/// bits than the spec's (a table with a width allocation: any width but auto), a missing layer that is not kept in
/// fp16, or (tables that record layer geometry, format 1.1) a calibrated layer whose sliding window differs from the
/// model's layer_window. Warns when the table was fitted with another group or window.
void check_table_for_eval(const KvSpec& spec, const PatternTable& table, const LlamaHparams& hp,
                          const std::string& model_sha256, const std::vector<bool>& keep_fp16);

}  // namespace pkv
