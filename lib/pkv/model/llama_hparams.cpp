// pkv/model/llama_hparams.cpp — Llama hyperparameters from GGUF metadata.
#include <cmath>
#include <limits>

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

LlamaHparams llama_hparams_from_gguf(const GgufFile& f) {
    LlamaHparams hp;
    PKV_CHECK(f.has("general.architecture"), not_found, "{}: metadata key 'general.architecture' is missing", f.path());
    hp.arch = f.get_string("general.architecture");
    // Other architectures differ in ways this forward pass does not model (NEOX RoPE,
    // biases, extra norms), so they are refused rather than run wrongly.
    PKV_CHECK(hp.arch == "llama", unsupported, "{}: general.architecture: expected 'llama', got '{}'", f.path(),
              hp.arch);
    hp.name = f.find_string("general.name").value_or("");
    const std::string a = hp.arch + ".";

    hp.n_ctx_train = required_u32(f, a + "context_length");
    hp.n_embd = required_u32(f, a + "embedding_length");
    hp.n_layer = required_u32(f, a + "block_count");
    hp.n_ff = required_u32(f, a + "feed_forward_length");
    hp.n_head = required_u32(f, a + "attention.head_count");
    hp.n_head_kv = optional_u32(f, a + "attention.head_count_kv", hp.n_head);
    PKV_CHECK(hp.n_head % hp.n_head_kv == 0, unsupported,
              "{}: metadata '{}attention.head_count_kv': expected a divisor of head_count {}, got {}", f.path(), a,
              hp.n_head, hp.n_head_kv);

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
    hp.n_rot = optional_u32(f, a + "rope.dimension_count", hp.head_dim);
    PKV_CHECK(hp.n_rot <= hp.head_dim && hp.n_rot % 2 == 0, unsupported,
              "{}: metadata '{}rope.dimension_count': expected an even value <= head_dim {}, got {}", f.path(), a,
              hp.head_dim, hp.n_rot);

    hp.rope_freq_base = static_cast<float>(f.find_f64(a + "rope.freq_base").value_or(10000.0));
    PKV_CHECK(std::isfinite(hp.rope_freq_base) && hp.rope_freq_base > 1.0f, out_of_range,
              "{}: metadata '{}rope.freq_base': expected a finite value > 1, got {}", f.path(), a, hp.rope_freq_base);

    // Linear scaling may be given by rope.scaling.{type,factor} or by the older
    // rope.scale_linear; a factor of 0 means none, as in the files' writers.
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
        fail(ErrorCode::unsupported, "{}: metadata '{}rope.scaling.type': expected 'none' or 'linear', got '{}'",
             f.path(), a, hp.rope_scaling);
    }

    const std::string eps_key = a + "attention.layer_norm_rms_epsilon";
    PKV_CHECK(f.has(eps_key), not_found, "{}: metadata key '{}' is missing", f.path(), eps_key);
    hp.rms_eps = static_cast<float>(f.get_f64(eps_key));
    PKV_CHECK(std::isfinite(hp.rms_eps) && hp.rms_eps > 0.0f, out_of_range,
              "{}: metadata '{}': expected a positive value, got {}", f.path(), eps_key, hp.rms_eps);

    const GgufTensorInfo* embd = f.find_tensor("token_embd.weight");
    PKV_CHECK(embd != nullptr, not_found, "{}: tensor 'token_embd.weight' is missing", f.path());
    PKV_CHECK(embd->ne.size() == 2, data_loss, "{}: tensor 'token_embd.weight': expected 2 dims, got {}", f.path(),
              embd->ne.size());
    PKV_CHECK(embd->ne[1] > 0 && embd->ne[1] <= std::numeric_limits<int32_t>::max(), data_loss,
              "{}: tensor 'token_embd.weight': expected 1 to 2^31-1 rows, got {}", f.path(), embd->ne[1]);
    hp.n_vocab = static_cast<uint32_t>(embd->ne[1]);
    hp.tied_output = f.find_tensor("output.weight") == nullptr;
    return hp;
}

RopeParams rope_params(const LlamaHparams& hp) {
    RopeParams r;
    r.n_rot = static_cast<int>(hp.n_rot);
    r.base = hp.rope_freq_base;
    r.freq_scale = hp.rope_freq_scale;
    r.layout = RopeLayout::interleaved;
    return r;
}

}  // namespace pkv
