// pkv/model/arch.cpp — the architecture descriptions and the whole-file check.
#include "pkv/model/arch.h"

#include <algorithm>
#include <map>
#include <optional>

#include "pkv/gguf/gguf.h"
#include "pkv/model/llama.h"

namespace pkv {

namespace {

// Keys every supported architecture's forward pass reads (llama_hparams.cpp applies each,
// or refuses the values it does not implement).
const std::vector<std::string> kAppliedKeys = {
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "vocab_size",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "attention.scale",
    "attention.sliding_window",
    "rope.dimension_count",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scale_linear",
    "expert_count",
    "expert_used_count",
};
// Only YaRN and LongRoPE read these, and pkv refuses both scalings; with none or linear
// scaling (and Llama 3's factors, which the file carries precomputed) they change nothing.
const std::vector<std::string> kNeutralKeys = {"rope.scaling.original_context_length", "rope.scaling.finetuned"};

ArchDesc arch(const char* name, RopeLayout rope) {
    ArchDesc d;
    d.name = name;
    d.rope_layout = rope;
    d.applied_keys = kAppliedKeys;
    d.neutral_keys = kNeutralKeys;
    return d;
}

const std::vector<ArchDesc>& archs() {
    static const std::vector<ArchDesc> a = [] {
        ArchDesc llama = arch("llama", RopeLayout::interleaved);
        llama.rope_freqs = true;
        ArchDesc qwen2 = arch("qwen2", RopeLayout::half_split);
        ArchDesc qwen3 = arch("qwen3", RopeLayout::half_split);
        qwen3.qk_norm = true;
        ArchDesc gemma3 = arch("gemma3", RopeLayout::half_split);
        gemma3.qk_norm = gemma3.post_norms = gemma3.gelu_ffn = gemma3.embd_scale = gemma3.swa_layers = true;
        gemma3.applied_keys.insert(gemma3.applied_keys.end(),
                                   {"attention.sliding_window_pattern", "rope.freq_base_swa"});
        return std::vector<ArchDesc>{llama, qwen2, qwen3, gemma3};
    }();
    return a;
}

bool contains(const std::vector<std::string>& v, const std::string& x) {
    return std::find(v.begin(), v.end(), x) != v.end();
}

std::string shape_string(const std::vector<uint64_t>& ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

// `blk.<digits>.rest` → `blk.%d.rest`, to match the descriptions' unused-tensor patterns.
std::string layer_pattern(const std::string& name) {
    if (name.rfind("blk.", 0) != 0) return name;
    size_t i = 4;
    while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
    if (i == 4 || i >= name.size() || name[i] != '.') return name;
    return "blk.%d" + name.substr(i);
}

// Keys under `<arch>.` that the description neither applies nor declares neutral.
void check_keys(const GgufFile& f, const ArchDesc& d, std::vector<ModelFinding>& out) {
    const std::string prefix = std::string(d.name) + ".";
    for (const std::string& key : f.keys()) {
        if (key.rfind(prefix, 0) != 0) continue;
        const std::string rest = key.substr(prefix.size());
        if (contains(d.applied_keys, rest) || contains(d.neutral_keys, rest)) continue;
        out.push_back({ErrorCode::unsupported,
                       fmt::format("{}: metadata '{}' = {}: not applied by pkv's {} forward pass (it may change the "
                                   "math), refused",
                                   f.path(), key, GgufFile::to_string(f.get(key)), d.name)});
    }
}

// Each planned tensor: present, of the planned shape and of a type pkv reads.
void check_planned(const GgufFile& f, const std::vector<TensorReq>& plan, std::vector<ModelFinding>& out) {
    for (const TensorReq& r : plan)
        if (auto problem = tensor_finding(f, r)) out.push_back(std::move(*problem));
}

// Tensors in the file that the forward pass would not read and the description does not list.
void check_unused(const GgufFile& f, const ArchDesc& d, const std::vector<TensorReq>& plan,
                  std::vector<ModelFinding>& out) {
    std::map<std::string, bool> planned;
    for (const TensorReq& r : plan) planned[r.name] = true;
    for (const GgufTensorInfo& t : f.tensors()) {
        if (planned.count(t.name) || contains(d.unused_tensors, layer_pattern(t.name))) continue;
        out.push_back(
            {ErrorCode::unsupported, fmt::format("{}: tensor '{}' {}: not used by pkv's {} forward pass, refused",
                                                 f.path(), t.name, shape_string(t.ne), d.name)});
    }
}

}  // namespace

std::optional<ModelFinding> tensor_finding(const GgufFile& f, const TensorReq& r) {
    const GgufTensorInfo* t = f.find_tensor(r.name);
    if (t == nullptr)
        return ModelFinding{ErrorCode::not_found, fmt::format("{}: tensor '{}' is missing", f.path(), r.name)};
    if (t->ne != r.ne)
        return ModelFinding{ErrorCode::data_loss, fmt::format("{}: tensor '{}': expected shape {}, got {}", f.path(),
                                                              r.name, shape_string(r.ne), shape_string(t->ne))};
    if (!ggml_type_supported(t->type_id))
        return ModelFinding{ErrorCode::unsupported,
                            fmt::format("{}: tensor '{}': type {} (id {}) is not supported", f.path(), r.name,
                                        ggml_type_name(t->type_id), t->type_id)};
    if (r.ne[0] % ggml_block_size(t->type()) != 0)
        return ModelFinding{
            ErrorCode::data_loss,
            fmt::format("{}: tensor '{}': row length {} is not a multiple of the {} block size {}", f.path(), r.name,
                        r.ne[0], ggml_type_name(t->type_id), ggml_block_size(t->type()))};
    return std::nullopt;
}

const ArchDesc* find_arch(const std::string& arch) {
    for (const ArchDesc& d : archs())
        if (arch == d.name) return &d;
    return nullptr;
}

std::string supported_archs() {
    std::string s;
    for (const ArchDesc& d : archs()) s += (s.empty() ? "" : ", ") + std::string(d.name);
    return s;
}

const char* layer_part_name(LayerPart part) {
    static const char* const names[kLayerParts] = {
        "attn_norm.weight",    "attn_q.weight",      "attn_k.weight",      "attn_v.weight",
        "attn_output.weight",  "ffn_norm.weight",    "ffn_gate.weight",    "ffn_up.weight",
        "ffn_down.weight",     "attn_q.bias",        "attn_k.bias",        "attn_v.bias",
        "attn_output.bias",    "attn_q_norm.weight", "attn_k_norm.weight", "post_attention_norm.weight",
        "post_ffw_norm.weight"};
    return names[static_cast<int>(part)];
}

std::vector<TensorReq> model_tensor_plan(const LlamaHparams& hp) {
    const uint64_t E = hp.n_embd, V = hp.n_vocab, F = hp.n_ff, HD = hp.head_dim;
    const uint64_t QD = uint64_t{hp.n_head} * HD, KD = uint64_t{hp.n_head_kv} * HD;
    std::vector<TensorReq> plan = {{"token_embd.weight", {E, V}}, {"output_norm.weight", {E}}};
    if (!hp.tied_output) plan.push_back({"output.weight", {E, V}});
    if (!hp.rope_freq_factors.empty()) plan.push_back({"rope_freqs.weight", {uint64_t{hp.n_rot} / 2}});
    using P = LayerPart;
    std::vector<std::pair<P, std::vector<uint64_t>>> parts = {
        {P::attn_norm, {E}}, {P::wq, {E, QD}},      {P::wk, {E, KD}},    {P::wv, {E, KD}},     {P::wo, {QD, E}},
        {P::ffn_norm, {E}},  {P::ffn_gate, {E, F}}, {P::ffn_up, {E, F}}, {P::ffn_down, {F, E}}};
    if (hp.qkv_bias) parts.insert(parts.end(), {{P::bq, {QD}}, {P::bk, {KD}}, {P::bv, {KD}}});
    if (hp.out_bias) parts.push_back({P::bo, {E}});
    if (hp.qk_norm) parts.insert(parts.end(), {{P::q_norm, {HD}}, {P::k_norm, {HD}}});
    if (hp.post_norms) parts.insert(parts.end(), {{P::post_attn_norm, {E}}, {P::post_ffn_norm, {E}}});
    for (uint32_t l = 0; l < hp.n_layer; ++l)
        for (const auto& [part, ne] : parts)
            plan.push_back({"blk." + std::to_string(l) + "." + layer_part_name(part), ne, static_cast<int>(l), part});
    return plan;
}

std::vector<ModelFinding> model_findings(const GgufFile& f) {
    std::vector<ModelFinding> out;
    const auto arch = f.find_string("general.architecture");
    if (!arch)
        return {{ErrorCode::not_found, fmt::format("{}: metadata key 'general.architecture' is missing", f.path())}};
    const ArchDesc* d = find_arch(*arch);
    if (d == nullptr)
        return {{ErrorCode::unsupported, fmt::format("{}: general.architecture: '{}' is not supported (supported: {})",
                                                     f.path(), *arch, supported_archs())}};
    check_keys(f, *d, out);
    LlamaHparams hp;
    try {
        hp = llama_hparams_from_gguf(f);
    } catch (const Error& e) {
        out.push_back({e.code(), e.what()});
        return out;
    }
    // The plan names every tensor of every layer: a block count no file of this size could
    // hold is refused before that list is made (a corrupt count would exhaust memory).
    if (hp.n_layer > f.tensors().size()) {
        out.push_back({ErrorCode::data_loss,
                       fmt::format("{}: metadata '{}.block_count' = {}: the file holds {} tensors, fewer than one per "
                                   "layer",
                                   f.path(), hp.arch, hp.n_layer, f.tensors().size())});
        return out;
    }
    const std::vector<TensorReq> plan = model_tensor_plan(hp);
    check_planned(f, plan, out);
    check_unused(f, *d, plan, out);
    return out;
}

}  // namespace pkv
