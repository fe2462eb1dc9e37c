#include "pkv/pipeline/inspect.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>

#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/model/llama.h"
#include "pkv/pipeline/export.h"
#include "pkv/tokenizer/tokenizer.h"

namespace pkv {

namespace {

// A u64 header length that fits the file followed by '{': a safetensors file, so that a
// damaged pattern table gets the reader's precise error instead of "unrecognised".
bool looks_like_safetensors(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return false;
    unsigned char head[9] = {0};
    const size_t n = std::fread(head, 1, sizeof head, f);
    std::fseek(f, 0, SEEK_END);
    const long size = std::ftell(f);
    std::fclose(f);
    if (n < 9 || head[8] != '{' || size < 9) return false;
    uint64_t len = 0;
    for (int i = 7; i >= 0; --i) len = (len << 8) | head[i];
    return len >= 2 && len <= static_cast<uint64_t>(size) - 8;
}

}  // namespace

FileKind detect_file_kind(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    PKV_CHECK(f != nullptr, not_found, "{}: cannot open: {}", path, std::strerror(errno));
    unsigned char magic[8] = {0};
    const size_t n = std::fread(magic, 1, sizeof magic, f);
    std::fclose(f);
    if (n >= 4 && std::memcmp(magic, "GGUF", 4) == 0) return FileKind::gguf;
    static const unsigned char hdf5_sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    if (n == 8 && std::memcmp(magic, hdf5_sig, 8) == 0) return FileKind::kv_dump;
    if (is_pattern_table_file(path) || looks_like_safetensors(path)) return FileKind::pattern_table;
    return FileKind::unknown;
}

namespace {

[[noreturn]] void unknown_kind(const std::string& path) {
    fail(ErrorCode::unsupported, "{}: not a GGUF model, a pkv KV dump or a pattern table (unrecognised file signature)",
         path);
}

std::string shape_str(const std::vector<uint64_t>& ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

std::string describe_gguf(const std::string& path, bool list_tensors) {
    auto f = GgufFile::open(path);
    std::string out =
        fmt::format("{}: GGUF v{}, {:.1f} MiB, {} tensors, {} metadata keys, alignment {}\n", path, f->version(),
                    f->file_size() / 1048576.0, f->tensors().size(), f->keys().size(), f->alignment());
    try {
        const LlamaHparams hp = llama_hparams_from_gguf(*f);
        const bool neox = hp.rope_layout == RopeLayout::half_split;
        out += fmt::format(
            "model: {} ({}), {} layers, n_embd {}, n_ff {}, {} heads, {} KV heads, head_dim {}, vocab {}, context {}\n"
            "rope: {}, n_rot {}, base {}, scaling {} (freq scale {}), {}\n"
            "block: Q/K/V biases {}, output bias {}, Q/K norm {}; attention scale {}; rms eps {:g}; output {}\n",
            hp.name.empty() ? "unnamed" : hp.name, hp.arch, hp.n_layer, hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv,
            hp.head_dim, hp.n_vocab, hp.n_ctx_train, neox ? "neox (pairs i,i+n_rot/2)" : "norm (pairs 2i,2i+1)",
            hp.n_rot, hp.rope_freq_base, hp.rope_scaling, hp.rope_freq_scale,
            hp.rope_freq_factors.empty()
                ? std::string("no frequency factors")
                : fmt::format("{} frequency factors (rope_freqs)", hp.rope_freq_factors.size()),
            hp.qkv_bias ? "yes" : "no", hp.out_bias ? "yes" : "no", hp.qk_norm ? "yes" : "no",
            hp.attn_scale > 0 ? fmt::format("{:g}", hp.attn_scale) : std::string("1/sqrt(head_dim)"), hp.rms_eps,
            hp.tied_output ? "tied to token_embd" : "separate");
        const auto findings = model_findings(*f);
        if (!findings.empty())
            out += fmt::format("model: not runnable by pkv ({} problems, `pkv validate` lists them): {}\n",
                               findings.size(), findings.front().message);
    } catch (const Error& e) {
        out += fmt::format("model: not runnable by pkv: {}\n", e.what());
    }
    std::map<std::string, std::pair<int, uint64_t>> by_type;
    for (const auto& t : f->tensors()) {
        auto& e = by_type[ggml_type_name(t.type_id)];
        e.first += 1;
        e.second += t.nbytes;
    }
    out += "tensor types:";
    for (const auto& [name, e] : by_type)
        out += fmt::format(" {} x{} ({:.1f} MiB);", name, e.first, e.second / 1048576.0);
    out += "\nmetadata:\n";
    for (const auto& k : f->keys()) out += fmt::format("  {} = {}\n", k, GgufFile::to_string(f->get(k)));
    if (list_tensors) {
        out += "tensors:\n";
        for (const auto& t : f->tensors())
            out += fmt::format("  {:<32} {:<6} {:<16} {:>10} bytes at {}\n", t.name, ggml_type_name(t.type_id),
                               shape_str(t.ne), t.nbytes, t.offset);
    }
    return out;
}

nlohmann::json describe_gguf_json(const std::string& path) {
    auto f = GgufFile::open(path);
    nlohmann::json j = {{"kind", "gguf"},
                        {"path", path},
                        {"version", f->version()},
                        {"bytes", f->file_size()},
                        {"alignment", f->alignment()}};
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& k : f->keys()) meta[k] = GgufFile::to_string(f->get(k), 16);
    j["metadata"] = meta;
    nlohmann::json tensors = nlohmann::json::array();
    for (const auto& t : f->tensors())
        tensors.push_back({{"name", t.name},
                           {"type", ggml_type_name(t.type_id)},
                           {"ne", t.ne},
                           {"offset", t.offset},
                           {"bytes", t.nbytes}});
    j["tensors"] = tensors;
    return j;
}

std::vector<std::string> validate_gguf(const std::string& path) {
    std::vector<std::string> problems;
    std::shared_ptr<GgufFile> f;
    try {
        f = GgufFile::open(path);
    } catch (const Error& e) {
        return {e.what()};
    }
    for (const ModelFinding& m : model_findings(*f)) problems.push_back(m.message);
    try {
        const VocabData v = vocab_from_gguf(*f);
        if (tokenizer_available()) Tokenizer tok(v);
    } catch (const Error& e) {
        problems.push_back(e.what());
    }
    return problems;
}

}  // namespace

std::string describe_file(const std::string& path, bool list_tensors) {
    switch (detect_file_kind(path)) {
        case FileKind::gguf: return describe_gguf(path, list_tensors);
        case FileKind::kv_dump: return describe_kv_dump(path);
        case FileKind::pattern_table: return describe_pattern_table(path);
        case FileKind::unknown: break;
    }
    unknown_kind(path);
}

nlohmann::json describe_file_json(const std::string& path) {
    switch (detect_file_kind(path)) {
        case FileKind::gguf: return describe_gguf_json(path);
        case FileKind::kv_dump: return kv_dump_metadata_json(path);
        case FileKind::pattern_table: return describe_pattern_table_json(path);
        case FileKind::unknown: break;
    }
    unknown_kind(path);
}

std::vector<std::string> validate_file(const std::string& path) {
    switch (detect_file_kind(path)) {
        case FileKind::gguf: return validate_gguf(path);
        case FileKind::kv_dump: return validate_kv_dump(path);
        case FileKind::pattern_table: return validate_pattern_table(path);
        case FileKind::unknown: break;
    }
    unknown_kind(path);
}

}  // namespace pkv
