// pkv/model/llama.h — the Llama-family forward pass on the CPU (Eigen, OpenMP), for every
// architecture model/arch.h describes (llama incl. Llama 3.x and Mistral, qwen2, qwen3, gemma3).
//
// Block: h = x + Wo·Attn(RoPE(N(Wq·rms(x) + bq)), RoPE(N(Wk·rms(x) + bk)), Wv·rms(x) + bv) + bo;
//        out = h + Wdown·(silu(Wgate·rms(h)) ⊙ Wup·rms(h)).
// Biases are used when the file has them; N is the per-head Q/K RMSNorm of qwen3 (identity
// elsewhere). gemma3 adds RMSNorm on each sublayer's output before the residual add, GeGLU
// (tanh GELU) for SiLU, embeddings × sqrt(n_embd), and local layers that see only the last
// sliding_window keys with their own RoPE base. GQA (query head h uses KV head h / (n_head / n_head_kv)), causal
// softmax attention scaled by <arch>.attention.scale or 1/sqrt(head_dim), RoPE pairs as the architecture stores them
// (interleaved (2i, 2i+1) for llama, half split (i, i + n_rot/2) for qwen2/qwen3), θ_i =
// pos·freq_scale·base^(-2i/n_rot) / factor_i with the Llama-3 frequency factors of rope_freqs.weight (1 when absent),
// tied output when `output.weight` is absent. Every hyperparameter comes from the file's metadata; model_findings
// (arch.h) refuses whatever the file says that this pass would not apply.
//
// Memory: weights stay quantized in the file mapping and are dequantized one layer
// at a time per forward call, so memory is the model file plus one layer in fp32
// plus the activations of one sequence. The output matrix is dequantized in chunks
// of vocabulary rows once per call and the logits are reduced chunk by chunk
// (streaming log-sum-exp), so neither [n_vocab, n_embd] nor [n_tokens, n_vocab]
// floats are ever held.
//
// Numerics: fp32 activations and GEMMs; RMSNorm sums and the log-softmax across
// vocabulary chunks accumulate in double; RoPE angles and their cos/sin are computed
// in double and rounded once to float.
// Threads: OpenMP; token rows are split across threads inside one parallel region
// per call (set OMP_NUM_THREADS; on shared cores OMP_WAIT_POLICY=passive helps).
//
// Key/query head dimensions come out in GGUF order. For interleaved (llama) files the
// converter permuted Q/K rows so that NORM RoPE equals Hugging Face's half-split RoPE:
// GGUF dim 2i is HF dim i, GGUF dim 2i+1 is HF dim i + head_dim/2. Half-split (qwen)
// files are in HF order already. V is never permuted.
#pragma once

#include "pkv/core/rope.h"
#include "pkv/model/arch.h"

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace pkv {

class GgufFile;

struct LlamaHparams {
    std::string arch;          ///< general.architecture (see arch.h)
    std::string name;          ///< general.name (may be empty)
    uint32_t n_vocab = 0;      ///< rows of token_embd.weight
    uint32_t n_ctx_train = 0;  ///< <arch>.context_length
    uint32_t n_embd = 0;
    uint32_t n_layer = 0;
    uint32_t n_ff = 0;
    uint32_t n_head = 0;
    uint32_t n_head_kv = 0;
    uint32_t head_dim = 0;  ///< <arch>.attention.key_length or n_embd / n_head
    uint32_t n_rot = 0;     ///< <arch>.rope.dimension_count (default head_dim)
    float rope_freq_base = 10000.0f;
    float rope_freq_scale = 1.0f;  ///< 1 / linear scaling factor
    std::string rope_scaling = "none";
    RopeLayout rope_layout = RopeLayout::interleaved;  ///< the architecture's pairing
    std::vector<float> rope_freq_factors;              ///< rope_freqs.weight, n_rot/2 values; empty: none
    float attn_scale = 0.0f;                           ///< <arch>.attention.scale; 0: 1/sqrt(head_dim)
    uint32_t sliding_window = 0;  ///< <arch>.attention.sliding_window; 0: none (longer sequences are refused)
    float rms_eps = 1e-5f;
    bool tied_output = false;  ///< output.weight absent: token_embd reused
    bool qkv_bias = false;     ///< blk.N.attn_{q,k,v}.bias present
    bool out_bias = false;     ///< blk.N.attn_output.bias present
    bool qk_norm = false;      ///< blk.N.attn_{q,k}_norm.weight (qwen3, gemma3)
    bool post_norms = false;   ///< blk.N.post_attention_norm / post_ffw_norm.weight (gemma3)
    bool gelu_ffn = false;     ///< GeGLU with tanh GELU instead of SwiGLU (gemma3)
    float embd_scale = 0.0f;   ///< token embeddings × this (gemma3: sqrt(n_embd)); 0: none
    /// Per layer, 1 for a sliding-window (local) layer: its queries see only the last
    /// `sliding_window` keys and it rotates with rope_freq_base_swa. Empty: every layer is
    /// global (and a non-zero sliding_window then caps the sequence length instead).
    std::vector<uint8_t> swa_layer;
    float rope_freq_base_swa = 10000.0f;
};

/// Whether layer l is a sliding-window (local) layer, and whether the model has any.
bool is_local_layer(const LlamaHparams& hp, uint32_t l);
bool has_local_layers(const LlamaHparams& hp);
/// Layer l's sliding window in tokens (query t attends t - W + 1 .. t): sliding_window
/// for a local layer, 0 for a global one (it attends the whole prefix).
uint32_t layer_window(const LlamaHparams& hp, uint32_t l);

/// The model's RoPE: n_rot, base, linear scaling, frequency factors and pairing; with
/// `layer`, that layer's (a sliding-window layer has its own base).
RopeParams rope_params(const LlamaHparams& hp);
RopeParams rope_params(const LlamaHparams& hp, uint32_t layer);
/// The RoPE every local (sliding-window) layer shares: its own base, no scaling.
RopeParams local_rope_params(const LlamaHparams& hp);

/// Reads and validates the hyperparameters (metadata and which optional tensors exist);
/// throws unsupported for architectures arch.h does not describe (listing the supported
/// ones) and for settings the forward pass does not implement (e.g. YaRN), naming the file
/// and the key. It does not check the tensors: model_findings does.
LlamaHparams llama_hparams_from_gguf(const GgufFile& file);

/// What one layer produced for one sequence, handed to the sink before the next
/// layer runs. Row-major, n_tokens rows. Unrequested parts are empty.
struct LayerActivations {
    int layer = 0;
    int n_tokens = 0;
    const float* k_pre = nullptr;   ///< [n_tokens, n_head_kv * head_dim], before RoPE
    const float* k_post = nullptr;  ///< [n_tokens, n_head_kv * head_dim], after RoPE
    const float* v = nullptr;       ///< [n_tokens, n_head_kv * head_dim]
    const float* q = nullptr;       ///< [n_tokens, n_head * head_dim], after RoPE
};
using LayerSink = std::function<void(const LayerActivations&)>;

/// One (layer, KV head, tensor) handed to a KvCacheHook: what the layer computed
/// exactly for the whole sequence, contiguous row-major [n_tokens, head_dim].
struct KvHookInput {
    int layer = 0;
    int kv_head = 0;
    bool value = false;  ///< false: keys, true: values
    int n_tokens = 0;
    int head_dim = 0;
    const float* x = nullptr;      ///< keys after RoPE (GGUF dimension order), or values
    const float* k_pre = nullptr;  ///< keys only: the same keys before RoPE; null for values
};

/// The cache a runtime holds for that (layer, KV head, tensor) over the sequence:
/// query position t attends to recon[j] when flush_step[j] <= t and to the exact x[j]
/// otherwise (j <= t; the token is still in the fp16 window). recon is [n_tokens,
/// head_dim], flush_step [n_tokens]. Both left empty: the head stays exact.
struct KvHookOutput {
    std::vector<float> recon;
    std::vector<int32_t> flush_step;
};

/// Called once per layer for each KV head and each of K and V, after the layer's
/// K/V exist for every position and before its attention runs. Calls for one layer
/// may run concurrently on OpenMP threads (distinct head/tensor pairs), so the hook
/// must only write state owned by its (layer, kv_head, value) triple. Exceptions
/// propagate out of forward().
using KvCacheHook = std::function<void(const KvHookInput&, KvHookOutput&)>;

/// One (layer, KV head, tensor) through a hook: gathers head g's n rows (row width KD,
/// head_dim HD) of the keys after RoPE with their pre-RoPE twins, or of the values, calls
/// `hook` and checks its answer: both fields empty (the head stays exact) or recon of
/// n·HD and flush_step of n values, else Error(internal) naming the layer, head, tensor
/// and, when sequence >= 0, the sequence. The pointers start at the first row.
KvHookOutput call_kv_hook(const KvCacheHook& hook, int layer, int g, bool value, int n, int HD, int64_t KD,
                          const float* k_post, const float* k_pre, const float* v, int sequence = -1);

/// One layer of one sequence handed to an AttentionHook, after the layer's Q/K/V exist for
/// every position: row-major [n_tokens, heads · head_dim], q and k after RoPE (and qwen3's
/// per-head norm), GGUF dimension order. Query head h reads KV head h / (n_head / n_head_kv).
struct AttentionHookInput {
    int layer = 0;
    int n_tokens = 0;
    int n_head = 0, n_head_kv = 0, head_dim = 0;
    float kq_scale = 0.0f;     ///< the model's score scale; 0: 1/sqrt(head_dim)
    int window = 0;            ///< the layer's sliding window (layer_window); 0: the whole prefix
    const float* q = nullptr;  ///< [n_tokens, n_head · head_dim]
    const float* k = nullptr;  ///< [n_tokens, n_head_kv · head_dim]
    const float* v = nullptr;  ///< [n_tokens, n_head_kv · head_dim]
    /// [n_tokens, n_head · head_dim]: the hook writes every row, softmax(q kᵀ) v per query
    /// head (causal) as it computes it; the layer's output projection reads it.
    float* out = nullptr;
};

/// Computes one layer's attention instead of LlamaModel (e.g. through a runtime's cache).
/// Called once per layer, from one thread, with every row ready; the layer waits for it.
/// Exceptions propagate out of forward().
using AttentionHook = std::function<void(const AttentionHookInput&)>;

struct ForwardOptions {
    bool capture = false;      ///< call the sink for layers in `layers`
    std::vector<bool> layers;  ///< per layer; empty = all layers
    /// Which of k_pre, k_post, v, q (in that order) the sink needs: an engine may leave the
    /// others' pointers null and skip their copies (the CUDA engine does; the CPU gives all).
    std::array<bool, 4> tensors = {true, true, true, true};
    bool want_nll = true;           ///< compute next-token NLL of tokens[i+1] at position i
    bool want_last_logits = false;  ///< fill ForwardResult::last_logits
    bool want_hidden = false;       ///< fill ForwardResult::hidden (for compare_next_token)
    int pos0 = 0;                   ///< position of tokens[0]
    /// Empty: plain causal attention over exact K/V (the default path, unchanged).
    /// Set: every layer's attention reads the per-query cache the hook describes, so
    /// later layers see the effect of the quantized cache of earlier ones.
    KvCacheHook kv_cache;
    /// Set: every layer's attention output is what the hook writes (kv_cache must then be
    /// empty). Only LlamaModel::forward takes it; a ForwardEngine's run_batch refuses it.
    AttentionHook attention;
};

struct ForwardResult {
    std::vector<float> nll;          ///< n_tokens - 1 values (natural log) when want_nll
    std::vector<int32_t> argmax;     ///< n_tokens - 1 greedy predictions when want_nll
    std::vector<float> last_logits;  ///< n_vocab values for the last position
    std::vector<float> hidden;       ///< [n_tokens, n_embd] after output_norm when want_hidden
    /// ForwardEngine::run_batch_device_cache only: the storage of the sequence's final cache
    /// in bits, summed over layers and KV heads (keys, values), as MethodCache counts it.
    double cache_k_bits = 0.0, cache_v_bits = 0.0;
};

/// Next-token figures of one variant of a sequence (see compare_next_token), per
/// position i < n_tokens - 1 (predicting tokens[i+1]).
struct NextTokenStats {
    std::vector<float> nll;       ///< -log q(tokens[i+1]), natural log
    std::vector<int32_t> argmax;  ///< first argmax of the logits
    std::vector<float> kl;        ///< KL(p_0 || p_v) in nats against variant 0; empty for variant 0
};

class LlamaModel {
public:
    /// Checks the whole file up front (model_findings: metadata, every tensor's name,
    /// shape and type, nothing ignored) and throws naming the first problem.
    explicit LlamaModel(std::shared_ptr<const GgufFile> file);
    /// The same file run with a given description instead of the one read from it
    /// (e.g. a feature switched off, to show that a reference test notices); the tensors
    /// `hp` asks for must exist with their shapes.
    LlamaModel(std::shared_ptr<const GgufFile> file, const LlamaHparams& hp);
    ~LlamaModel();
    const LlamaHparams& hparams() const;
    const GgufFile& file() const;

    /// Runs one sequence (1 <= n <= n_ctx_train tokens, positions pos0..pos0+n-1,
    /// no cache) and returns the requested outputs; calls `sink` per captured layer.
    ForwardResult forward(const std::vector<int32_t>& tokens, const ForwardOptions& opts,
                          const LayerSink& sink = nullptr) const;

    /// Next-token statistics of several variants of one sequence (e.g. the same tokens
    /// run with different KV caches) from their final hidden states
    /// (ForwardResult::hidden, each [n_tokens, n_embd]); variant 0 is the reference
    /// the KL divergences are taken against. The output matrix is dequantized once per
    /// vocabulary chunk for all variants and nothing of size [n_tokens, n_vocab] is
    /// held. Variant 0's nll/argmax equal forward()'s for the same hidden state.
    std::vector<NextTokenStats> compare_next_token(const std::vector<int32_t>& tokens,
                                                   const std::vector<const float*>& hidden) const;

    /// Greedy continuation: returns `prompt` followed by n_new tokens, each the first
    /// argmax of the last position's logits (recomputes the prefix each step; meant
    /// for short checks, not serving).
    std::vector<int32_t> greedy(const std::vector<int32_t>& prompt, int n_new) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace pkv
