// pkv/cuda/forward_engine.h — the CUDA forward engine: LlamaModel's forward pass on one
// GPU over whole batches of sequences (the ForwardEngine of lib/pkv/model/engine.h).
// No CUDA types here: apps and tests include it with the host compiler.
//
// Weights: uploaded once when the engine is made. Each tensor is dequantized on the host
// with the GGUF dequantizers (a bounded number of rows at a time) and converted to
// `weights` (round to nearest even); norms and biases stay float. The token embeddings
// stay on the host: a batch's rows are gathered there and uploaded.
// Arithmetic: every product is cuBLAS (weight-type inputs, float accumulation and float
// output); q, k and v come from one product over wq | wk | wv where the layout holds them
// back to back (qkv_adjacent), split by a kernel; with 16-bit weights the gated activation
// is rounded straight into the down product's input. The residual stream, norms, RoPE,
// the gated activation and the log-softmax over the vocabulary are float kernels, with
// the norms' sums and the log-sum-exp across vocabulary chunks in double as on the CPU.
// Attention is an online softmax in float: with f32 weights on float operands
// (forward_attention.cu), with bf16 or fp16 weights on the tensor cores with q, k, v (and
// a cache's reconstructions) and the probabilities rounded to binary16, as a runtime's
// fp16 KV cache holds them, and every sum in float (forward_attention_mma.cu). With f32
// weights the engine follows the CPU reference to float rounding; with bf16 or fp16 the
// products and attention see rounded operands.
// Batches: packed rows (engine_plan.h); every product runs over row slabs of one shape
// (the model's default_slab_rows unless CudaEngineOptions::slab_rows is set), so a
// sequence gives the same figures in any batch as alone. Captured activations are
// converted to binary16 on the device and copied to page-locked host memory on a second
// stream while the next layer computes; the sink receives them as EngineActivations::
// k_pre16, k_post16, v16, q16 (the f32 pointers are null). Only the tensors that
// ForwardOptions::tensors names are converted and copied; the others' pointers are null.
// Cache hook (run_batch's BatchCacheHook): per layer, once K (before and after RoPE) and V
// exist for the batch, they are copied to the host as float, the hook runs for every
// (sequence, KV head, K or V) on host threads (engine_cache.h), and its reconstructions
// and flush steps are uploaded for a cached attention kernel (query t reads recon[j]
// where flush_step[j] <= t, else the exact K/V). The device waits for the host here, so a
// hooked layer costs the copies and the slowest hook call.
// Device cache (run_batch_device_cache with a DeviceKvCache, kvcache/device_cache.h): per
// layer the same cache is simulated on the GPU from the forward's K/V buffers
// (engine_sim_cache.h, sim_cache.h) into the cached attention's buffers, nothing copied to
// the host; the host waits only for the simulation's kernels (they run on the default
// stream). Pre-RoPE keys are kept in a device copy before RoPE, and their reconstruction
// becomes k_post + RoPE_t(k̃_pre − k_pre) through the forward's own RoPE kernel.
// Outputs: nll/argmax (ForwardOptions::want_nll), last_logits and hidden as the CPU engine;
// with a device cache also each sequence's cache_k_bits / cache_v_bits.
#pragma once

#include <cstdint>
#include <memory>

#include "pkv/model/engine.h"
#include "pkv/model/engine_plan.h"

namespace pkv::cuda {

struct CudaEngineOptions {
    int device = 0;                         ///< CUDA device index
    WeightType weights = WeightType::bf16;  ///< f32 for exact parity with the CPU engine
    /// Packed rows one batch may hold (a whole number of row slabs); 0: sized from the
    /// device memory left after the weights (90% of it, at most 65536 rows). A longer
    /// single sequence still runs, alone.
    int64_t max_batch_tokens = 0;
    /// Rows per matrix-product slab (see engine_plan.h); every batch uses the same.
    /// 0: default_slab_rows of the model.
    int slab_rows = 0;
};

/// The engine over a validated model (which must outlive it). Throws Error(cuda) in one
/// line when there is no CUDA device or no device `device`, and when the device's free
/// memory cannot hold the weights (saying how much they need and how much is free).
std::unique_ptr<ForwardEngine> make_cuda_engine(const LlamaModel& model, const CudaEngineOptions& options = {});

}  // namespace pkv::cuda
