// pkv/model/llama_hparams.cpp — the forward pass's hyperparameters from GGUF metadata.
#include <algorithm>
#include <cmath>
#include <limits>
#include <variant>

#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/llama.h"

namespace pkv {

namespace {

uint32_t positive_u32(const GgufFile& f, const std::string& key, uint64_t v) {
    PKV_CHECK(v > 0 && v <= std::numeric_limits<int32_t>::max(), out_of_range,
              "{}: metadata '{}': expected a value in [1, 2^31), got {}", f.path(), key, v);
    return static_cast<uint32_t>(v);
}

uint32_t required_u32(const GgufFile& f, const std::string& key) {
    PKV_CHECK(f.has(key), not_found, "{}: metadata key '{}' is missing", f.path(), key);
    return positive_u32(f, key, f.get_u64(key));
}

uint32_t optional_u32(const GgufFile& f, const std::string& key, uint32_t fallback) {
    const auto v = f.find_u64(key);
    return v ? positive_u32(f, key, *v) : fallback;
}

}  // namespace

namespace {

// general.architecture, resolved to a description pkv has.
const ArchDesc& read_arch(const GgufFile& f, LlamaHparams& hp) {
    PKV_CHECK(f.has("general.architecture"), not_found, "{}: metadata key 'general.architecture' is missing", f.path());
    hp.arch = f.get_string("general.architecture");
    const ArchDesc* d = find_arch(hp.arch);
    PKV_CHECK(d != nullptr, unsupported, "{}: general.architecture: '{}' is not supported (supported: {})", f.path(),
              hp.arch, supported_archs());
    hp.name = f.find_string("general.name").value_or("");
    return *d;
}

// Sizes of the blocks and heads.
void read_sizes(const GgufFile& f, const std::string& a, LlamaHparams& hp) {
    hp.n_ctx_train = required_u32(f, a + "context_length");
    hp.n_embd = required_u32(f, a + "embedding_length");
    hp.n_layer = required_u32(f, a + "block_count");
    // Per-layer tables are sized by it before any tensor is looked at; the deepest released
    // models have a few hundred blocks, so a count beyond this is a corrupt file.
    constexpr uint32_t kMaxLayers = 65536;
    PKV_CHECK(hp.n_layer <= kMaxLayers, data_loss, "{}: metadata '{}block_count' = {}: expected at most {}", f.path(),
              a, hp.n_layer, kMaxLayers);
    hp.n_ff = required_u32(f, a + "feed_forward_length");
    hp.n_head = required_u32(f, a + "attention.head_count");
    hp.n_head_kv = optional_u32(f, a + "attention.head_count_kv", hp.n_head);
    PKV_CHECK(hp.n_head % hp.n_head_kv == 0, unsupported,
              "{}: metadata '{}attention.head_count_kv': expected a divisor of head_count {}, got {}", f.path(), a,
              hp.n_head, hp.n_head_kv);
    // Mixture-of-experts blocks have other tensors and routing this pass does not have.
    for (const char* k : {"expert_count", "expert_used_count"}) {
        const auto v = f.find_u64(a + k);
        PKV_CHECK(!v || *v == 0, unsupported, "{}: metadata '{}{}' = {}: mixture-of-experts models are not supported",
                  f.path(), a, k, *v);
    }

    PKV_CHECK(hp.n_embd % hp.n_head == 0 || (f.has(a + "attention.key_length")), unsupported,
              "{}: metadata '{}embedding_length': expected a multiple of head_count {} when key_length is absent, "
              "got {}",
              f.path(), a, hp.n_head, hp.n_embd);
    const uint32_t default_hd = hp.n_embd / hp.n_head;
    const uint32_t k_len = optional_u32(f, a + "attention.key_length", default_hd);
    const uint32_t v_len = optional_u32(f, a + "attention.value_length", default_hd);
    PKV_CHECK(k_len == v_len, unsupported, "{}: metadata '{}attention.value_length': expected key_length {}, got {}",
              f.path(), a, k_len, v_len);
    hp.head_dim = k_len;
}

// Linear scaling may be given by rope.scaling.{type,factor} or by the older
// rope.scale_linear; a factor of 0 means none, as in the files' writers.
void read_rope_scaling(const GgufFile& f, const std::string& a, LlamaHparams& hp) {
    auto factor = f.find_f64(a + "rope.scaling.factor");
    if (!factor) factor = f.find_f64(a + "rope.scale_linear");
    const auto type = f.find_string(a + "rope.scaling.type");
    hp.rope_scaling = type ? *type : (factor && *factor != 0.0 && *factor != 1.0 ? "linear" : "none");
    if (hp.rope_scaling == "linear") {
        const double fac = factor.value_or(1.0);
        PKV_CHECK(std::isfinite(fac) && fac >= 0.0, out_of_range,
                  "{}: metadata '{}rope.scaling.factor': expected a positive value, got {}", f.path(), a, fac);
        hp.rope_freq_scale = fac == 0.0 ? 1.0f : static_cast<float>(1.0 / fac);
    } else if (hp.rope_scaling != "none") {
        fail(ErrorCode::unsupported,
             "{}: metadata '{}rope.scaling.type' = '{}': not supported (supported: none, linear; Llama 3's factors "
             "come as rope_freqs.weight)",
             f.path(), a, hp.rope_scaling);
    }
}

// Llama 3's per-frequency divisors: one positive factor per rotated pair.
void read_rope_freqs(const GgufFile& f, const ArchDesc& d, LlamaHparams& hp) {
    const GgufTensorInfo* t = f.find_tensor("rope_freqs.weight");
    if (t == nullptr || !d.rope_freqs) return;  // present but not allowed: model_findings names it
    const uint64_t want = hp.n_rot / 2;
    PKV_CHECK(t->ne.size() == 1 && t->ne[0] == want, data_loss,
              "{}: tensor 'rope_freqs.weight': expected shape [{}] (rope.dimension_count / 2), got {} values", f.path(),
              want, t->n_elements());
    PKV_CHECK(t->type() == GgmlType::F32 || t->type() == GgmlType::F16, unsupported,
              "{}: tensor 'rope_freqs.weight': expected type F32 or F16, got {}", f.path(), ggml_type_name(t->type_id));
    hp.rope_freq_factors = f.dequantize(*t);
    for (size_t i = 0; i < hp.rope_freq_factors.size(); ++i)
        PKV_CHECK(std::isfinite(hp.rope_freq_factors[i]) && hp.rope_freq_factors[i] > 0.0f, data_loss,
                  "{}: tensor 'rope_freqs.weight': value {}: expected a finite factor > 0, got {}", f.path(), i,
                  hp.rope_freq_factors[i]);
}

// Rotation: dims, base, scaling, pairing, frequency factors.
void read_rope(const GgufFile& f, const std::string& a, const ArchDesc& d, LlamaHparams& hp) {
    hp.n_rot = optional_u32(f, a + "rope.dimension_count", hp.head_dim);
    PKV_CHECK(hp.n_rot <= hp.head_dim && hp.n_rot % 2 == 0, unsupported,
              "{}: metadata '{}rope.dimension_count': expected an even value <= head_dim {}, got {}", f.path(), a,
              hp.head_dim, hp.n_rot);
    hp.rope_freq_base = static_cast<float>(f.find_f64(a + "rope.freq_base").value_or(10000.0));
    PKV_CHECK(std::isfinite(hp.rope_freq_base) && hp.rope_freq_base > 1.0f, out_of_range,
              "{}: metadata '{}rope.freq_base': expected a finite value > 1, got {}", f.path(), a, hp.rope_freq_base);
    read_rope_scaling(f, a, hp);
    hp.rope_layout = d.rope_layout;
    read_rope_freqs(f, d, hp);
}

// Norm epsilon, attention scale and window.
void read_attention(const GgufFile& f, const std::string& a, LlamaHparams& hp) {
    const std::string eps_key = a + "attention.layer_norm_rms_epsilon";
    PKV_CHECK(f.has(eps_key), not_found, "{}: metadata key '{}' is missing", f.path(), eps_key);
    hp.rms_eps = static_cast<float>(f.get_f64(eps_key));
    PKV_CHECK(std::isfinite(hp.rms_eps) && hp.rms_eps > 0.0f, out_of_range,
              "{}: metadata '{}': expected a positive value, got {}", f.path(), eps_key, hp.rms_eps);
    if (const auto s = f.find_f64(a + "attention.scale")) {
        PKV_CHECK(std::isfinite(*s) && *s > 0.0, out_of_range,
                  "{}: metadata '{}attention.scale': expected a finite value > 0, got {}", f.path(), a, *s);
        hp.attn_scale = static_cast<float>(*s);
    }
    if (const auto w = f.find_u64(a + "attention.sliding_window"))
        hp.sliding_window = static_cast<uint32_t>(std::min<uint64_t>(*w, std::numeric_limits<uint32_t>::max()));
}

// Which layers are local: a bool (or 0/1) per layer, or n (every n-th layer, the last of each
// n, is global), as llama.cpp reads attention.sliding_window_pattern; 6 when absent.
std::vector<uint8_t> swa_pattern(const GgufFile& f, const std::string& key, uint32_t n_layer) {
    std::vector<uint8_t> swa(n_layer);
    if (f.has(key) && f.get(key).type == GgufType::ARRAY) {
        const auto& items = std::get<std::vector<GgufValue>>(f.get(key).value);
        PKV_CHECK(items.size() == n_layer, data_loss, "{}: metadata '{}': expected {} values (one per layer), got {}",
                  f.path(), key, n_layer, items.size());
        for (uint32_t l = 0; l < n_layer; ++l) {
            const auto& v = items[l].value;
            PKV_CHECK(std::holds_alternative<bool>(v) || std::holds_alternative<uint64_t>(v) ||
                          std::holds_alternative<int64_t>(v),
                      data_loss, "{}: metadata '{}': expected booleans or integers, got {}", f.path(), key,
                      GgufFile::to_string(f.get(key)));
            swa[l] = std::holds_alternative<bool>(v)       ? std::get<bool>(v)
                     : std::holds_alternative<uint64_t>(v) ? std::get<uint64_t>(v) != 0
                                                           : std::get<int64_t>(v) != 0;
        }
        return swa;
    }
    const uint64_t n = f.find_u64(key).value_or(6);
    for (uint32_t l = 0; l < n_layer; ++l) swa[l] = n == 0 || l % n < n - 1;
    return swa;
}

// Local (sliding-window) layers and their RoPE base, for architectures that have them.
void read_swa(const GgufFile& f, const std::string& a, const ArchDesc& d, LlamaHparams& hp) {
    if (!d.swa_layers || hp.sliding_window == 0) return;
    PKV_CHECK(hp.sliding_window <= hp.n_ctx_train, out_of_range,
              "{}: metadata '{}attention.sliding_window': expected at most context_length {}, got {}", f.path(), a,
              hp.n_ctx_train, hp.sliding_window);
    hp.swa_layer = swa_pattern(f, a + "attention.sliding_window_pattern", hp.n_layer);
    hp.rope_freq_base_swa = static_cast<float>(f.find_f64(a + "rope.freq_base_swa").value_or(10000.0));
    PKV_CHECK(std::isfinite(hp.rope_freq_base_swa) && hp.rope_freq_base_swa > 1.0f, out_of_range,
              "{}: metadata '{}rope.freq_base_swa': expected a finite value > 1, got {}", f.path(), a,
              hp.rope_freq_base_swa);
}

// The vocabulary from the embedding, and which optional tensors the blocks have.
void read_tensor_options(const GgufFile& f, const std::string& a, const ArchDesc& d, LlamaHparams& hp) {
    const GgufTensorInfo* embd = f.find_tensor("token_embd.weight");
    PKV_CHECK(embd != nullptr, not_found, "{}: tensor 'token_embd.weight' is missing", f.path());
    PKV_CHECK(embd->ne.size() == 2, data_loss, "{}: tensor 'token_embd.weight': expected 2 dims, got {}", f.path(),
              embd->ne.size());
    PKV_CHECK(embd->ne[1] > 0 && embd->ne[1] <= std::numeric_limits<int32_t>::max(), data_loss,
              "{}: tensor 'token_embd.weight': expected 1 to 2^31-1 rows, got {}", f.path(), embd->ne[1]);
    hp.n_vocab = static_cast<uint32_t>(embd->ne[1]);
    if (const auto nv = f.find_u64(a + "vocab_size"))
        PKV_CHECK(*nv == hp.n_vocab, data_loss, "{}: metadata '{}vocab_size': expected {} (rows of token_embd), got {}",
                  f.path(), a, hp.n_vocab, *nv);
    hp.tied_output = f.find_tensor("output.weight") == nullptr;
    // Layer 0 decides; model_findings then requires the same tensors in every layer.
    hp.qkv_bias =
        f.find_tensor("blk.0.attn_q.bias") || f.find_tensor("blk.0.attn_k.bias") || f.find_tensor("blk.0.attn_v.bias");
    hp.out_bias = f.find_tensor("blk.0.attn_output.bias") != nullptr;
    hp.qk_norm = d.qk_norm;
    hp.post_norms = d.post_norms;
    hp.gelu_ffn = d.gelu_ffn;
    hp.embd_scale = d.embd_scale ? std::sqrt(static_cast<float>(hp.n_embd)) : 0.0f;
}

}  // namespace

LlamaHparams llama_hparams_from_gguf(const GgufFile& f) {
    LlamaHparams hp;
    const ArchDesc& d = read_arch(f, hp);
    const std::string a = hp.arch + ".";
    read_sizes(f, a, hp);
    read_rope(f, a, d, hp);
    read_attention(f, a, hp);
    read_swa(f, a, d, hp);
    read_tensor_options(f, a, d, hp);
    return hp;
}

bool is_local_layer(const LlamaHparams& hp, uint32_t l) { return l < hp.swa_layer.size() && hp.swa_layer[l]; }

bool has_local_layers(const LlamaHparams& hp) {
    return std::find(hp.swa_layer.begin(), hp.swa_layer.end(), 1) != hp.swa_layer.end();
}

uint32_t layer_window(const LlamaHparams& hp, uint32_t l) { return is_local_layer(hp, l) ? hp.sliding_window : 0; }

RopeParams rope_params(const LlamaHparams& hp, uint32_t layer) {
    return is_local_layer(hp, layer) ? local_rope_params(hp) : rope_params(hp);
}

RopeParams local_rope_params(const LlamaHparams& hp) {
    RopeParams r = rope_params(hp);
    r.base = hp.rope_freq_base_swa;
    r.freq_scale = 1.0;
    return r;
}

RopeParams rope_params(const LlamaHparams& hp) {
    RopeParams r;
    r.n_rot = static_cast<int>(hp.n_rot);
    r.base = hp.rope_freq_base;
    r.freq_scale = hp.rope_freq_scale;
    r.layout = hp.rope_layout;
    r.freq_factors = hp.rope_freq_factors;
    return r;
}

}  // namespace pkv
