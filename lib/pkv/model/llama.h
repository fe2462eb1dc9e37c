// pkv/model/llama.h — the Llama-family forward pass on the CPU (Eigen, OpenMP).
//
// Block: h = x + Wo·Attn(RoPE(Wq·rms(x)), RoPE(Wk·rms(x)), Wv·rms(x));
//        out = h + Wdown·(silu(Wgate·rms(h)) ⊙ Wup·rms(h)).
// GQA (query head h uses KV head h / (n_head / n_head_kv)), causal softmax
// attention scaled by 1/sqrt(head_dim), RoPE as GGUF stores it for arch "llama"
// (ggml NORM mode: pairs (2i, 2i+1), θ_i = pos·base^(-2i/n_rot), optional linear
// scaling), tied output when `output.weight` is absent. Every hyperparameter comes
// from the file's metadata.
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
// Key/query head dimensions come out in GGUF order (the converter permutes Q/K rows
// so that NORM RoPE equals Hugging Face's half-split RoPE): GGUF dim 2i is HF dim i,
// GGUF dim 2i+1 is HF dim i + head_dim/2. V is not permuted.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace pkv {

class GgufFile;

struct LlamaHparams {
    std::string arch;            ///< general.architecture ("llama")
    std::string name;            ///< general.name (may be empty)
    uint32_t n_vocab = 0;        ///< rows of token_embd.weight
    uint32_t n_ctx_train = 0;    ///< <arch>.context_length
    uint32_t n_embd = 0;
    uint32_t n_layer = 0;
    uint32_t n_ff = 0;
    uint32_t n_head = 0;
    uint32_t n_head_kv = 0;
    uint32_t head_dim = 0;       ///< <arch>.attention.key_length or n_embd / n_head
    uint32_t n_rot = 0;          ///< <arch>.rope.dimension_count (default head_dim)
    float rope_freq_base = 10000.0f;
    float rope_freq_scale = 1.0f;  ///< 1 / linear scaling factor
    std::string rope_scaling = "none";
    float rms_eps = 1e-5f;
    bool tied_output = false;    ///< output.weight absent: token_embd reused
};

/// Reads and validates the hyperparameters; throws unsupported for architectures
/// other than llama-family, naming the file and general.architecture.
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

struct ForwardOptions {
    bool capture = false;               ///< call the sink for layers in `layers`
    std::vector<bool> layers;           ///< per layer; empty = all layers
    bool want_nll = true;               ///< compute next-token NLL of tokens[i+1] at position i
    bool want_last_logits = false;      ///< fill ForwardResult::last_logits
    int pos0 = 0;                       ///< position of tokens[0]
};

struct ForwardResult {
    std::vector<float> nll;             ///< n_tokens - 1 values (natural log) when want_nll
    std::vector<int32_t> argmax;        ///< n_tokens - 1 greedy predictions when want_nll
    std::vector<float> last_logits;     ///< n_vocab values for the last position
};

class LlamaModel {
public:
    /// Checks every tensor the forward pass needs (name, shape, supported type) up
    /// front and throws naming the first problem.
    explicit LlamaModel(std::shared_ptr<const GgufFile> file);
    ~LlamaModel();
    const LlamaHparams& hparams() const;
    const GgufFile& file() const;

    /// Runs one sequence (1 <= n <= n_ctx_train tokens, positions pos0..pos0+n-1,
    /// no cache) and returns the requested outputs; calls `sink` per captured layer.
    ForwardResult forward(const std::vector<int32_t>& tokens, const ForwardOptions& opts,
                          const LayerSink& sink = nullptr) const;

    /// Greedy continuation: returns `prompt` followed by n_new tokens, each the first
    /// argmax of the last position's logits (recomputes the prefix each step; meant
    /// for short checks, not serving).
    std::vector<int32_t> greedy(const std::vector<int32_t>& prompt, int n_new) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace pkv
