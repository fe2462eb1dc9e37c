// pkv/model/engine_cache.h — the host half of a batched engine's KV cache hook
// (ForwardEngine::run_batch with a BatchCacheHook): one layer's K/V of packed rows
// (engine_plan.h) in, the cache the hook describes for every sequence out, laid out for
// the device's cached attention. Plain C++, so it is tested without a GPU.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "pkv/model/engine.h"

namespace pkv {

/// Flush step of a key no query ever reads reconstructed (an exact head).
constexpr int32_t kNeverFlushed = std::numeric_limits<int32_t>::max();

/// One layer's cache over packed rows. k_hat / v_hat: [rows, n_head_kv · head_dim], the
/// layout of K and V (rows of an exact head are zero and never read). k_flush / v_flush:
/// [n_head_kv, rows], the flush step of row r relative to its sequence's first row
/// (query position t of that sequence reads the reconstruction when flush <= t), or
/// kNeverFlushed for a head the hook left exact.
struct PackedLayerCache {
    std::vector<float> k_hat, v_hat;
    std::vector<int32_t> k_flush, v_flush;
};

/// Calls `hook` once per (sequence, KV head, K or V) of layer `layer` of the packed rows
/// (row0: [n_seq + 1], sequence s holds rows row0[s] .. row0[s+1] - 1 and is sequence
/// seq_offset + s of the caller's batch), on OpenMP threads, with the head's rows copied
/// into contiguous [n, head_dim] arrays as LlamaModel's hooked path hands them; fills
/// `out` (resized). k_pre, k_post, v: [rows, n_head_kv · head_dim] floats. Throws
/// Error(internal) naming the layer, head and tensor when the hook returns other sizes
/// than recon [n, head_dim] and flush_step [n] (or both empty: exact), and rethrows the
/// first exception of a hook after every thread stopped.
void run_packed_cache_hook(const BatchCacheHook& hook, int layer, const std::vector<int64_t>& row0, int seq_offset,
                           int n_head_kv, int head_dim, const float* k_pre, const float* k_post, const float* v,
                           PackedLayerCache& out);

}  // namespace pkv
