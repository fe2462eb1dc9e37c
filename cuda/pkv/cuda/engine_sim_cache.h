// pkv/cuda/engine_sim_cache.h — internal to the CUDA forward engine: the device-resident
// KV cache of ForwardEngine::run_batch_device_cache. Per layer it turns the cache a
// DeviceKvCache describes (kvcache/device_cache.h) into simulate_cache_batch_on_device
// calls over the forward's K and V buffers, writing the reconstructions and flush steps
// straight into the buffers the cached attention reads. No CUDA types.
//
// Layout. K and V are the forward's packed rows [rows, n_head_kv · head_dim]. Problems go
// head-major, then sequence (head g of sequence s: rows row0[s] .. row0[s+1] - 1, columns
// g · D ..), so the plan's flush steps, problem after problem, are exactly the
// [n_head_kv, rows] array of the attention (row r of head g at g · rows + r, relative to
// its sequence's first row), and the simulation writes them there in one copy.
//
// Rules (those of MethodCache::run): kept layers and fp16 stay exact (layer() returns false
// and the caller marks every row never flushed) and count 16 bits per kept element; the
// others use the layer's sliding window as the ring, the sequence's prefill, the spec's
// rotation, and patternkv-table's views of (layer, head). With keys_pre the caller passes
// the pre-RoPE keys and turns k_hat into k_post + RoPE_t(k_hat − k_pre) after layer().
//
// Plans depend only on (lengths, prefills, ring, tensor, pattern count), so one plan per
// (ring, tensor) serves every layer of a group; bits are summed per sequence as
// MethodCache::key_bits / value_bits sum them (integer-valued doubles, so exactly).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "pkv/cuda/sim_cache.h"
#include "pkv/kvcache/device_cache.h"
#include "pkv/model/engine_plan.h"
#include "pkv/model/llama.h"

namespace pkv::cuda {

class EngineSimCache {
public:
    explicit EngineSimCache(const LlamaHparams& hp) : hp_(hp) {}

    /// Whether the device simulation runs this description on the model: a method of
    /// device_cache_method, and with rotate a head_dim that is a power of two <= 1024.
    static bool supports(const DeviceKvCache& c, const LlamaHparams& hp);
    /// Refuses (invalid_argument, one line naming `model_path`) a description that does
    /// not fit the model or the batch: keep_fp16 of another length, a prefill count other
    /// than the sequences', a prefill outside [0, n], table views of another count, or a
    /// simulated layer without patterns.
    static void check(const DeviceKvCache& c, const LlamaHparams& hp,
                      const std::vector<std::vector<int32_t>>& sequences, const std::string& model_path);

    /// Starts a group of the batch: b packs sequences s_begin .. s_begin + b.n_seq() - 1 of
    /// the run_batch call. Clears the bits.
    void begin_group(const DeviceKvCache& c, const PackedBatch& b, int64_t s_begin);

    /// Layer l. Exact layer: adds its bits, returns false (the caller marks every row of
    /// both flush arrays never flushed). Otherwise simulates K from d_k (pre-RoPE keys with
    /// keys_pre, else post-RoPE) and V from d_v into k_hat / v_hat ([rows, n_head_kv · D],
    /// every element written) and k_flush / v_flush ([n_head_kv, rows]), adds the bits and
    /// returns true. The kernels run on the legacy default stream: the caller's stream must
    /// have finished writing d_k and d_v, and the call returns once the cache is written.
    bool layer(int l, const float* d_k, const float* d_v, float* k_hat, float* v_hat, int32_t* k_flush,
               int32_t* v_flush, SimCacheWorkspace& ws);

    /// Storage of sequence s of the group (0-based) over the layers run so far, in bits.
    double k_bits(int s) const { return bits_[static_cast<size_t>(s) * 2]; }
    double v_bits(int s) const { return bits_[static_cast<size_t>(s) * 2 + 1]; }

private:
    struct Planned {
        SimBatch batch;
        SimBatchPlan plan;
    };
    Planned& planned(int64_t ring, KvTensor tensor, int l);

    const LlamaHparams& hp_;
    const DeviceKvCache* c_ = nullptr;
    std::vector<int64_t> row0_, n_, prefill_;  ///< per sequence of the group
    std::map<std::pair<int64_t, int>, Planned> plans_;
    std::vector<double> bits_;  ///< [sequence][k, v]
};

}  // namespace pkv::cuda
