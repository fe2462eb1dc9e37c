// pkv/model/arch.h — what pkv knows about each model architecture, one description per
// `general.architecture`, and the check that a GGUF file holds nothing pkv would ignore.
//
// The forward pass (llama.h) is one decoder block whose differences between architectures
// are options of this description:
//
//   arch    RoPE pairs                Q/K norm      rope_freqs.weight   Q/K/V biases
//   llama   interleaved (ggml NORM)   —             optional (Llama 3)  optional
//   qwen2   half split (ggml NEOX)    —             —                   optional (present in Qwen2.5)
//   qwen3   half split (ggml NEOX)    per head      —                   optional
//   gemma3  half split (ggml NEOX)    per head      —                   optional
// gemma3 also has post-norms on both sublayers, a GeGLU (tanh GELU) feed-forward, token
// embeddings scaled by sqrt(n_embd), and sliding-window (local) layers with their own RoPE
// base between global ones.
//
// Interleaved pairs are (2i, 2i+1): the GGUF converter permutes the rows of Q and K of
// `llama` files so that this equals Hugging Face's rotate_half; NEOX files are not permuted
// and pair (i, i + n_rot/2). Mistral models are written as `llama` (head_dim may differ from
// n_embd / n_head: <arch>.attention.key_length).
//
// Nothing is silently ignored: every metadata key under `<arch>.` is either applied by the
// forward pass or on the description's list of keys that do not change the math, and every
// tensor is either read or on the description's list of known, unused tensors. Anything else
// is refused naming the file, the key or tensor and its value. Keys outside `<arch>.`
// (general.*, tokenizer.*, quantize.*, ...) describe the file, not the math.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "pkv/core/error.h"
#include "pkv/core/rope.h"

namespace pkv {

class GgufFile;
struct LlamaHparams;

struct ArchDesc {
    const char* name = "";                             ///< general.architecture
    RopeLayout rope_layout = RopeLayout::interleaved;  ///< how RoPE pairs head dimensions
    bool qk_norm = false;     ///< blk.N.attn_{q,k}_norm.weight [head_dim] required: RMSNorm per head before RoPE
    bool rope_freqs = false;  ///< rope_freqs.weight [n_rot/2] allowed: θ_i is divided by its factor i
    /// blk.N.post_attention_norm / post_ffw_norm.weight [n_embd] required: RMSNorm of each
    /// sublayer's output before it is added to the residual stream.
    bool post_norms = false;
    bool gelu_ffn = false;    ///< feed-forward gate is GELU (tanh approximation), not SiLU
    bool embd_scale = false;  ///< token embeddings are multiplied by sqrt(n_embd)
    /// attention.sliding_window applies to the local layers only: attention.sliding_window_pattern
    /// (a bool per layer, or n: every n-th layer global; default 6, as llama.cpp) says which,
    /// and they rotate with rope.freq_base_swa (default 10000). Without it, a sliding window
    /// applies to every layer and longer sequences are refused.
    bool swa_layers = false;
    /// Metadata keys (without the `<arch>.` prefix) the forward pass applies or checks.
    std::vector<std::string> applied_keys;
    /// Metadata keys (without the prefix) that never change the math (informational).
    std::vector<std::string> neutral_keys;
    /// Tensors that may be present and are known not to matter for the forward pass
    /// (`blk.%d.` stands for every layer).
    std::vector<std::string> unused_tensors;
};

/// The description of `arch`, or nullptr when pkv does not support it.
const ArchDesc* find_arch(const std::string& arch);
/// "llama, qwen2, qwen3": for messages.
std::string supported_archs();

/// The parts of one decoder block, in the order the forward pass keeps them.
enum class LayerPart {
    attn_norm,
    wq,
    wk,
    wv,
    wo,
    ffn_norm,
    ffn_gate,
    ffn_up,
    ffn_down,
    bq,
    bk,
    bv,
    bo,
    q_norm,
    k_norm,
    post_attn_norm,
    post_ffn_norm
};
constexpr int kLayerParts = 17;
/// The tensor name after `blk.N.`, e.g. "attn_q.weight".
const char* layer_part_name(LayerPart part);

/// One tensor the forward pass reads: its name and shape (ggml order, fastest first);
/// `layer` is -1 for the tensors outside the blocks.
struct TensorReq {
    std::string name;
    std::vector<uint64_t> ne;
    int layer = -1;
    LayerPart part = LayerPart::attn_norm;  ///< when layer >= 0
};
/// Every tensor the forward pass of `hp` reads (optional blocks as `hp` found them).
std::vector<TensorReq> model_tensor_plan(const LlamaHparams& hp);

/// One problem found in a model file; `message` is a complete one-line error naming the file.
struct ModelFinding {
    ErrorCode code = ErrorCode::unsupported;
    std::string message;
};

/// The problem with one planned tensor (missing, other shape, unreadable type, rows not
/// whole blocks), or nullopt when the forward pass can read it.
std::optional<ModelFinding> tensor_finding(const GgufFile& file, const TensorReq& req);

/// Every reason pkv cannot run `file` faithfully, all at once (empty: it can): unsupported
/// architecture (naming the supported ones), bad or missing hyperparameters, metadata keys
/// that would change the math and are not applied, missing tensors, wrong shapes and types,
/// and tensors that would be ignored. `pkv validate model.gguf` prints them; the model refuses
/// the file with the first.
std::vector<ModelFinding> model_findings(const GgufFile& file);

}  // namespace pkv
