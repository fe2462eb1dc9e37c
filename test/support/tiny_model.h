// test/support/tiny_model.h — writes small Llama-architecture GGUF files with a
// byte-level BPE vocabulary, for tests that must not depend on the real model.
//
// The vocabulary has the 256 byte tokens (GPT-2 byte-to-unicode form), a few merges
// ("t h" -> "th", ...), and two control tokens "<s>", "</s>". Weights are seeded
// random F32 (or another type for the attention projections), scaled so that
// activations stay O(1).
#pragma once

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "pkv/core/half.h"
#include "pkv/gguf/gguf_writer.h"

namespace pkv::test {

struct TinyModelSpec {
    int n_layer = 2, n_embd = 32, n_head = 4, n_head_kv = 2, n_ff = 48, n_ctx = 128;
    float rope_base = 10000.0f;
    bool tied = true;
    std::string arch = "llama";
    uint32_t seed = 1;
};

/// The GPT-2 byte-to-unicode text of one byte, as UTF-8.
inline std::string byte_token(int b) {
    int cp;
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)) {
        cp = b;
    } else {
        int n = 0;  // position among the remapped bytes, in increasing byte order
        for (int x = 0; x < b; ++x)
            if (!((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff))) ++n;
        cp = 256 + n;
    }
    std::string s;
    if (cp < 0x80) {
        s += static_cast<char>(cp);
    } else {
        s += static_cast<char>(0xc0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3f));
    }
    return s;
}

inline void add_tiny_vocab(GgufWriter& w) {
    std::vector<std::string> tokens;
    std::vector<int32_t> types;
    for (int b = 0; b < 256; ++b) tokens.push_back(byte_token(b)), types.push_back(1);
    const std::vector<std::string> merges = {"t h", "h e", "th e", "Ġ t", "Ġt he", "i n", "e r", "o n"};
    for (const auto& m : merges) {
        const auto sp = m.find(' ');
        tokens.push_back(m.substr(0, sp) + m.substr(sp + 1));
        types.push_back(1);
    }
    tokens.push_back("<s>"), types.push_back(3);
    tokens.push_back("</s>"), types.push_back(3);
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_string("tokenizer.ggml.pre", "smollm");
    w.set_string_array("tokenizer.ggml.tokens", tokens);
    w.set_i32_array("tokenizer.ggml.token_type", types);
    w.set_string_array("tokenizer.ggml.merges", merges);
    w.set_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(tokens.size() - 2));
    w.set_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tokens.size() - 1));
    w.set_bool("tokenizer.ggml.add_bos_token", false);
}

inline int tiny_vocab_size() { return 256 + 8 + 2; }

/// Writes a tiny model to `path`.
inline void write_tiny_model(const std::string& path, const TinyModelSpec& s = {}) {
    GgufWriter w;
    const int hd = s.n_embd / s.n_head, nv = tiny_vocab_size();
    w.set_string("general.architecture", s.arch);
    w.set_string("general.name", "pkv tiny test model");
    const std::string a = s.arch + ".";
    w.set_u32(a + "context_length", static_cast<uint32_t>(s.n_ctx));
    w.set_u32(a + "embedding_length", static_cast<uint32_t>(s.n_embd));
    w.set_u32(a + "block_count", static_cast<uint32_t>(s.n_layer));
    w.set_u32(a + "feed_forward_length", static_cast<uint32_t>(s.n_ff));
    w.set_u32(a + "attention.head_count", static_cast<uint32_t>(s.n_head));
    w.set_u32(a + "attention.head_count_kv", static_cast<uint32_t>(s.n_head_kv));
    w.set_u32(a + "rope.dimension_count", static_cast<uint32_t>(hd));
    w.set_f32(a + "rope.freq_base", s.rope_base);
    w.set_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
    add_tiny_vocab(w);

    std::mt19937 rng(s.seed);
    auto mat = [&](const std::string& name, uint64_t n_in, uint64_t n_out, float scale) {
        std::normal_distribution<float> d(0.0f, scale / std::sqrt(static_cast<float>(n_in)));
        std::vector<float> v(n_in * n_out);
        for (auto& x : v) x = d(rng);
        w.add_tensor_f32(name, {n_in, n_out}, v);
    };
    auto norm = [&](const std::string& name) {
        std::uniform_real_distribution<float> d(0.8f, 1.2f);
        std::vector<float> v(s.n_embd);
        for (auto& x : v) x = d(rng);
        w.add_tensor_f32(name, {static_cast<uint64_t>(s.n_embd)}, v);
    };
    mat("token_embd.weight", s.n_embd, nv, 4.0f);
    for (int l = 0; l < s.n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        norm(p + "attn_norm.weight");
        mat(p + "attn_q.weight", s.n_embd, s.n_head * hd, 2.0f);
        mat(p + "attn_k.weight", s.n_embd, s.n_head_kv * hd, 2.0f);
        mat(p + "attn_v.weight", s.n_embd, s.n_head_kv * hd, 1.0f);
        mat(p + "attn_output.weight", s.n_head * hd, s.n_embd, 0.5f);
        norm(p + "ffn_norm.weight");
        mat(p + "ffn_gate.weight", s.n_embd, s.n_ff, 1.0f);
        mat(p + "ffn_up.weight", s.n_embd, s.n_ff, 1.0f);
        mat(p + "ffn_down.weight", s.n_ff, s.n_embd, 0.5f);
    }
    norm("output_norm.weight");
    if (!s.tied) mat("output.weight", s.n_embd, nv, 1.0f);
    w.write(path, /*force=*/true);
}

}  // namespace pkv::test
