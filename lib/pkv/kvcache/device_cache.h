// pkv/kvcache/device_cache.h — a method's KV cache that a forward engine simulates where
// its forward runs (ForwardEngine::run_batch_device_cache, model/engine.h), instead of
// handing every layer's K/V to a host hook (BatchCacheHook). Plain data: lib/ builds it
// (pkv eval's MethodCache::device_cache) and a device engine (cuda/pkv/cuda/
// forward_engine.h) interprets it; the CPU engine has no such path and keeps the hook.
// (model/ sees only the name: the layering keeps kvcache/ above it.)
//
// The cache it describes is the one MethodCache's hook hands the model, rule by rule:
//   - a layer in keep_fp16, and every layer under fp16, stays exact (no head is ever
//     flushed) and counts 16 bits per element its ring keeps;
//   - any other layer simulates every (sequence, KV head, K or V) with simulate_cache's
//     rules for `params` (method, bits, group, fp16 window R), the sequence's prefill and
//     the layer's sliding window as the ring (0 for a global layer);
//   - rotate: the head is simulated in the orthonormal Hadamard basis and its
//     reconstruction rotated back;
//   - keys_pre: keys are quantized before RoPE and the attention reads
//     k_post + RoPE_t(k̃_pre − k_pre) = RoPE_t(k̃_pre) with the layer's own RoPE (global or
//     local base); values are always the layer's V;
//   - patternkv-table: head h of layer l is simulated against tables[(l·H + h)·2] (keys) and
//     tables[(l·H + h)·2 + 1] (values), H = n_head_kv, patterns in the simulated basis.
//     Device engines run every head at params.bits: a view's own width (TableHeadView::bits,
//     a table's width allocation) is not carried over, so pkv eval keeps such a cache on
//     the host (MethodCache::host_only).
// The query at position t reads the reconstruction of token j when j's flush step is <= t,
// the exact K/V otherwise, as with a hook.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "pkv/kvcache/simulate.h"

namespace pkv {

struct DeviceKvCache {
    /// method, bits, group, window and patternkv's k-means fields as kv_spec_sim_params
    /// gives them; ring, table_k / table_v are unused (rings come from the model, tables
    /// from `tables`).
    SimParams params;
    bool rotate = false;
    bool keys_pre = false;
    std::vector<bool> keep_fp16;   ///< [n_layer]: the layer stays exact
    std::vector<int64_t> prefill;  ///< [sequence of the run_batch call]: P, 0 <= P <= its length
    /// patternkv-table: [n_layer · n_head_kv · 2] views; those of kept layers may be empty
    /// (patterns null). Empty for every other method.
    std::vector<TableHeadView> tables;
    /// Owns the memory the views point into (the pattern table); may be null.
    std::shared_ptr<const void> keep_alive;
};

/// Whether a device engine simulates method m itself: all of them (fp16, kivi, q4_0, q8_0,
/// fp8, patternkv-table, and patternkv, whose prefill k-means agrees with the host's
/// statistically, not bit for bit: cuda/pkv/cuda/sim_cache.h says why). The engine may
/// still refuse a shape or method (EngineSimCache::supports: patternkv with head_dim <=
/// 256 and at most 1024 patterns, and not with PKV_CUDA_PATTERNKV=0).
bool device_cache_method(KvMethod m);

}  // namespace pkv
