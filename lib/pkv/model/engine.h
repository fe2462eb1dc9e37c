// pkv/model/engine.h — a forward engine: runs batches of independent sequences through
// one model and hands every captured layer's activations to a sink.
//
// The CPU engine (make_cpu_engine) runs LlamaModel::forward once per sequence and is the
// reference every other engine is tested against. The CUDA engine (cuda/pkv/cuda/
// forward_engine.h) runs the same arithmetic on a GPU over whole batches; apps pick one
// with --device (apps/pkv/device_select.h) and hand the library an EngineFactory, so
// lib/ never sees a CUDA type.
//
// Sequences: each is its own prefill at positions 0..n-1 (1 <= n <= n_ctx_train), with
// no cache shared between them; sequences of one batch may differ in length.
//
// Sink: called from the thread that called run_batch, once per (sequence, captured
// layer), never concurrently. Calls for one sequence come in layer order; calls of
// different sequences may interleave. The pointers are valid only during the call.
// Each tensor arrives either as float (LayerActivations::k_pre, ...) or as binary16
// bits (EngineActivations::k_pre16, ...), never both; to_float() gives floats either way.
// binary16 values are the round-to-nearest-even rounding of the engine's float result,
// which is what a KV dump stores.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pkv/model/llama.h"

namespace pkv {

struct DeviceKvCache;  ///< kvcache/device_cache.h: a method's cache an engine simulates itself

/// One (sequence, layer) of a batch. `f32` carries the float tensors of LayerActivations
/// (its n_tokens and layer are set); the *16 pointers carry binary16 bits instead. The
/// layout of every tensor is that of LayerActivations: row-major [n_tokens, heads · head_dim].
struct EngineActivations {
    int sequence = 0;  ///< index into the batch
    LayerActivations f32;
    const uint16_t* k_pre16 = nullptr;
    const uint16_t* k_post16 = nullptr;
    const uint16_t* v16 = nullptr;
    const uint16_t* q16 = nullptr;
};
using EngineSink = std::function<void(const EngineActivations&)>;

/// A KV cache hook over a batch: the KvCacheHook (llama.h) of sequence `sequence` (its
/// index in the batch), called once per (sequence, layer, KV head, K or V) after the
/// layer's K/V exist and before its attention runs. Calls for distinct (sequence, layer,
/// KV head, tensor) may run concurrently on host threads, so the hook may only write
/// state owned by its tuple (e.g. one MethodCache per sequence). Every call of a layer
/// returns before that layer's attention runs; exceptions propagate out of run_batch.
using BatchCacheHook = std::function<void(int sequence, const KvHookInput&, KvHookOutput&)>;

/// The float values of one tensor of `a` (0: k_pre, 1: k_post, 2: v, 3: q): a pointer into
/// the engine's buffer when it gave floats, else `scratch` filled from the binary16 bits;
/// null when the tensor was not captured. `cols` is the tensor's row width.
const float* to_float(const EngineActivations& a, int tensor, int64_t cols, std::vector<float>& scratch);

/// Per-sequence outputs of a batch: ForwardResult::nll and argmax when opts.want_nll
/// (n - 1 values each); last_logits and hidden as LlamaModel::forward gives them.
using BatchResult = std::vector<ForwardResult>;

class ForwardEngine {
public:
    virtual ~ForwardEngine() = default;
    virtual const LlamaHparams& hparams() const = 0;
    /// "cpu (16 threads)", "cuda:0 NVIDIA H100 80GB HBM3 (bf16 weights)", ...
    virtual std::string description() const = 0;
    /// How many sequences of `ctx` tokens one run_batch call should carry (memory bound;
    /// 1 for the CPU engine, which runs sequences one after another).
    virtual int batch_sequences(int ctx) const = 0;
    /// Runs the batch. opts.pos0 must be 0 and opts.kv_cache empty (a batch takes its hook
    /// as `cache`, which knows the sequence); opts.capture / opts.layers select what reaches
    /// the sink. With `cache`, every layer's attention reads the cache it describes, as
    /// LlamaModel::forward with ForwardOptions::kv_cache does. Throws pkv::Error naming the
    /// model file for bad tokens or lengths, before any work.
    virtual BatchResult run_batch(const std::vector<std::vector<int32_t>>& sequences, const ForwardOptions& opts,
                                  const EngineSink& sink, const BatchCacheHook& cache) = 0;
    /// Whether run_batch_device_cache can run `cache` (its method and options) on this
    /// engine. The CPU engine: never (it keeps the hook path).
    virtual bool supports_device_cache(const DeviceKvCache& cache) const;
    /// run_batch with the cache that `cache` describes (kvcache/device_cache.h) simulated inside the
    /// engine, K/V never leaving the device: every layer's attention reads that cache, as it
    /// reads the cache of a hook that simulates the same method. Also sets each result's
    /// cache_k_bits / cache_v_bits. cache.prefill has one entry per sequence. Throws
    /// pkv::Error(unsupported) when supports_device_cache(cache) is false, invalid_argument
    /// naming the model file when `cache` does not fit the model or the batch.
    virtual BatchResult run_batch_device_cache(const std::vector<std::vector<int32_t>>& sequences,
                                               const ForwardOptions& opts, const EngineSink& sink,
                                               const DeviceKvCache& cache);
    /// The batch with plain attention over exact K/V.
    BatchResult run_batch(const std::vector<std::vector<int32_t>>& sequences, const ForwardOptions& opts,
                          const EngineSink& sink) {
        return run_batch(sequences, opts, sink, nullptr);
    }
};

/// The reference engine over a validated model (which must outlive it).
std::unique_ptr<ForwardEngine> make_cpu_engine(const LlamaModel& model);

/// Makes the engine a command runs on; the model is validated and outlives the engine.
using EngineFactory = std::function<std::unique_ptr<ForwardEngine>(const LlamaModel&)>;

}  // namespace pkv
