#include "pkv/pipeline/provenance.h"

#include "pkv/gguf/gguf.h"
#include "pkv/model/llama.h"

namespace pkv {

nlohmann::json model_json(const LlamaHparams& hp, const GgufFile& file, const std::string& path,
                          const std::string& sha256) {
    nlohmann::json j = {
        {"name", hp.name},
        {"file", path},
        {"sha256", sha256},
        {"arch", hp.arch},
        {"n_layer", hp.n_layer},
        {"n_head", hp.n_head},
        {"n_head_kv", hp.n_head_kv},
        {"head_dim", hp.head_dim},
        {"n_rot", hp.n_rot},
        {"n_embd", hp.n_embd},
        {"n_ff", hp.n_ff},
        {"n_vocab", hp.n_vocab},
        {"n_ctx_train", hp.n_ctx_train},
        {"rope_freq_base", hp.rope_freq_base},
        {"rope_freq_scale", hp.rope_freq_scale},
        {"rope_scaling", hp.rope_scaling},
        {"rope_type", hp.rope_layout == RopeLayout::half_split ? "neox" : "norm"},
        {"rms_eps", hp.rms_eps},
        {"tied_output", hp.tied_output},
        {"attn_scale", hp.attn_scale},
        {"sliding_window", hp.sliding_window},
        {"qkv_bias", hp.qkv_bias},
        {"out_bias", hp.out_bias},
        {"qk_norm", hp.qk_norm},
        {"post_norms", hp.post_norms},
        {"gelu_ffn", hp.gelu_ffn},
        {"embd_scale", hp.embd_scale},
    };
    // Local layers: their window and RoPE base (rope_freq_base is the global layers').
    nlohmann::json local = nlohmann::json::array();
    for (size_t l = 0; l < hp.swa_layer.size(); ++l)
        if (hp.swa_layer[l]) local.push_back(l);
    j["swa_layers"] = local;
    j["rope_freq_base_swa"] = local.empty() ? nlohmann::json(nullptr) : nlohmann::json(hp.rope_freq_base_swa);
    // What a reader needs to undo or redo RoPE: null when the model has no factors.
    j["rope_freq_factors"] =
        hp.rope_freq_factors.empty() ? nlohmann::json(nullptr) : nlohmann::json(hp.rope_freq_factors);
    j["file_type"] = file.find_u64("general.file_type") ? nlohmann::json(*file.find_u64("general.file_type"))
                                                        : nlohmann::json(nullptr);
    j["tokenizer_pre"] = file.find_string("tokenizer.ggml.pre").value_or("");
    return j;
}

std::vector<KvDumpLayerInfo> layer_info_of(const LlamaHparams& hp, const std::vector<int32_t>& layers) {
    std::vector<KvDumpLayerInfo> out;
    for (int32_t l : layers) {
        KvDumpLayerInfo li;
        li.layer = l;
        const auto ul = static_cast<uint32_t>(l);
        li.window = is_local_layer(hp, ul) ? static_cast<int32_t>(hp.sliding_window) : 0;
        li.rope_base = rope_params(hp, ul).base;
        li.n_head_kv = static_cast<int32_t>(hp.n_head_kv);
        li.head_dim = static_cast<int32_t>(hp.head_dim);
        out.push_back(li);
    }
    return out;
}

nlohmann::json sources_json(const std::vector<TextSource>& sources) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& s : sources)
        a.push_back({{"path", s.path}, {"sha256", s.sha256}, {"bytes", s.bytes}, {"tokens", s.tokens}});
    return a;
}

}  // namespace pkv
