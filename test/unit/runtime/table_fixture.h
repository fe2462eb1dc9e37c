// test/unit/runtime/table_fixture.h — pattern tables written by hand with
// pkv::SafetensorsWriter (names and dtypes as pkv/table/pattern_table.h fixes them),
// plus the matching runtime declaration, for the runtime reader's tests.
#pragma once

#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "pkv/core/half.h"
#include "pkv/runtime/pattern_table_reader.h"
#include "pkv/table/safetensors.h"

namespace rt_test {

/// A table as metadata strings and named tensors; tests mutate either before encoding.
struct TableSpec {
    std::map<std::string, std::string> meta;
    std::map<std::string, pkv::StTensor> tensors;
};

template <typename T>
std::vector<uint8_t> raw_bytes(const std::vector<T>& v) {
    std::vector<uint8_t> out(v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
    return out;
}

/// A float tensor stored as F32, or as F16 (rounded by pkv::float_to_half) when f16.
inline pkv::StTensor float_tensor(const std::string& name, std::vector<uint64_t> shape, const std::vector<float>& v,
                                  bool f16) {
    if (!f16) return {name, "F32", std::move(shape), raw_bytes(v)};
    std::vector<uint16_t> h(v.size());
    pkv::float_to_half_n(v.data(), h.data(), v.size());
    return {name, "F16", std::move(shape), raw_bytes(h)};
}

/// The float values a tensor of the spec holds (F32 or F16, widened by pkv::half_to_float).
inline std::vector<float> float_values(const pkv::StTensor& t) {
    std::vector<float> out;
    if (t.dtype == "F32") {
        out.resize(t.data.size() / 4);
        std::memcpy(out.data(), t.data.data(), t.data.size());
    } else {
        std::vector<uint16_t> h(t.data.size() / 2);
        std::memcpy(h.data(), t.data.data(), t.data.size());
        out.resize(h.size());
        pkv::half_to_float_n(h.data(), out.data(), h.size());
    }
    return out;
}

inline std::vector<int64_t> int64_values(const pkv::StTensor& t) {
    std::vector<int64_t> out(t.data.size() / 8);
    std::memcpy(out.data(), t.data.data(), t.data.size());
    return out;
}

constexpr int kLayers = 3, kHeads = 4, kHeadsKv = 2, kDim = 8, kMk = 4, kMv = 3;
constexpr const char* kSha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Layers 0 and 2 of a 3-layer model, 2 KV heads, D = 8, Mk = 4, Mv = 3, random content
/// (seeded); patterns F16 when f16 (as `pkv export --dtype f16`), the rest always F32.
/// Format 1.1: layer 0 local (window 512, RoPE base 10000), layer 2 global (base 1e6).
inline TableSpec default_spec(bool f16 = false, uint32_t seed = 1) {
    TableSpec s;
    s.meta = {{"pkv.format", "pkv.pattern_table"},
              {"pkv.format_version", "1.1"},
              {"pkv.model.name", "tiny"},
              {"pkv.model.arch", "llama"},
              {"pkv.model.sha256", kSha},
              {"pkv.model.n_layer", std::to_string(kLayers)},
              {"pkv.model.n_head", std::to_string(kHeads)},
              {"pkv.model.n_head_kv", std::to_string(kHeadsKv)},
              {"pkv.model.head_dim", std::to_string(kDim)},
              {"pkv.layers", "0,2"},
              {"pkv.layers.window", "512,0"},
              {"pkv.layers.rope_base", "10000,1000000"},
              {"pkv.key.basis", "post_rope"},
              {"pkv.key.dim_order", "gguf_interleaved"},
              {"pkv.rotation", "none"},
              {"pkv.rotation.seed", "0"},
              {"pkv.quant.bits", "2"},
              {"pkv.quant.group", "128"},
              {"pkv.quant.window", "128"},
              {"pkv.assign", "minmax"},
              {"pkv.k_patterns", std::to_string(kMk)},
              {"pkv.v_patterns", std::to_string(kMv)},
              {"pkv.calibration", R"({"tokens": 4096})"}};
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    std::uniform_real_distribution<float> unit(0.05f, 1.0f);
    std::uniform_int_distribution<int64_t> count(0, 1000);
    auto randoms = [&](size_t n, auto& dist) {
        std::vector<float> v(n);
        for (float& x : v) x = dist(rng);
        return v;
    };
    const uint64_t H = kHeadsKv, D = kDim, Mk = kMk, Mv = kMv;
    for (const int l : {0, 2}) {
        const std::string p = "layers." + std::to_string(l) + ".";
        auto add = [&](pkv::StTensor t) { s.tensors[t.name] = std::move(t); };
        add(float_tensor(p + "k_patterns", {H, Mk, D}, randoms(H * Mk * D, normal), f16));
        add(float_tensor(p + "v_patterns", {H, Mv, D}, randoms(H * Mv * D, normal), f16));
        std::vector<int64_t> kc(H * Mk), vc(H * Mv);
        for (int64_t& c : kc) c = count(rng);
        for (int64_t& c : vc) c = count(rng);
        add({p + "k_counts", "I64", {H, Mk}, raw_bytes(kc)});
        add({p + "v_counts", "I64", {H, Mv}, raw_bytes(vc)});
        std::vector<float> kclip = randoms(H, unit), vclip = randoms(H, unit);
        kclip[0] = 1.0f;  // the closed end of (0, 1]
        add(float_tensor(p + "k_clip", {H}, kclip, false));
        add(float_tensor(p + "v_clip", {H}, vclip, false));
        add(float_tensor(p + "v_gate_z", {H}, {1.6448536f, 0.0f}, false));
    }
    return s;
}

/// The runtime declaration that matches default_spec (every optional check on).
inline pkv_rt::RuntimeDecl default_decl() {
    pkv_rt::RuntimeDecl d;
    d.model_sha256 = kSha;
    d.n_layer = kLayers;
    d.n_head = kHeads;
    d.n_head_kv = kHeadsKv;
    d.head_dim = kDim;
    d.key_basis = pkv_rt::KeyBasis::post_rope;
    d.key_dim_order = pkv_rt::DimOrder::gguf_interleaved;
    d.rotation = pkv_rt::Rotation::none;
    d.rotation_seed = 0;
    d.bits = 2;
    d.group = 128;
    d.window = 128;
    return d;
}

inline std::vector<uint8_t> encode(const TableSpec& s) {
    pkv::SafetensorsWriter w;
    for (const auto& kv : s.meta) w.set_metadata(kv.first, kv.second);
    for (const auto& kv : s.tensors) w.add(kv.second);
    return w.encode();
}

inline pkv_rt::PatternTable parse(const std::vector<uint8_t>& bytes, const pkv_rt::RuntimeDecl& decl = default_decl()) {
    return pkv_rt::PatternTable::parse(bytes.data(), bytes.size(), "t.safetensors", decl);
}

/// The TableError message parsing `bytes` gives, "" when it loads. Any other exception
/// type escapes and fails the test.
inline std::string load_error(const std::vector<uint8_t>& bytes, const pkv_rt::RuntimeDecl& decl = default_decl()) {
    try {
        parse(bytes, decl);
    } catch (const pkv_rt::TableError& e) {
        return e.what();
    }
    return "";
}

/// A file from a raw header text and `data_len` data bytes.
inline std::vector<uint8_t> raw_file(const std::string& header, size_t data_len) {
    std::vector<uint8_t> out;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i)));
    out.insert(out.end(), header.begin(), header.end());
    out.resize(out.size() + data_len, 0);
    return out;
}

/// Header text and data buffer of an encoded file.
inline std::string header_of(const std::vector<uint8_t>& bytes) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[static_cast<size_t>(i)];
    return std::string(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
}
inline std::vector<uint8_t> with_header(const std::vector<uint8_t>& bytes, const std::string& header) {
    const size_t old = header_of(bytes).size();
    std::vector<uint8_t> out = raw_file(header, 0);
    out.insert(out.end(), bytes.begin() + 8 + static_cast<std::ptrdiff_t>(old), bytes.end());
    return out;
}

}  // namespace rt_test
