// test/unit/model/tiny_llama.h — tiny Llama GGUF files for the forward-pass tests,
// plus a deliberately naive scalar reference of the same model.
//
// The writer keeps the weights exactly as the file stores them after rounding
// (F16 / Q8_0 are decoded here with plain scalar code), so the reference sees the
// same numbers as pkv without using pkv's dequantizers. The reference is written
// per token with plain loops in double: no Eigen, no blocking, no shared code with
// lib/pkv/model.
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/gguf/ggml_types.h"
#include "pkv/gguf/gguf_writer.h"
#include "support/scratch_dir.h"

namespace pkv_test {

struct TinySpec {
    int n_layer = 2, n_embd = 32, n_head = 4, n_head_kv = 2, head_dim = 8, n_ff = 48, n_vocab = 64;
    int n_ctx = 1024;
    int n_rot = -1;  ///< -1: do not write rope.dimension_count
    float rope_base = 10000.0f;
    bool write_base = true;
    bool write_head_count_kv = true;
    std::string rope_scaling;                      ///< written when non-empty
    float rope_factor = 0.0f;                      ///< written when non-zero
    pkv::GgmlType proj_type = pkv::GgmlType::F32;  ///< attention and FFN matrices
    pkv::GgmlType embd_type = pkv::GgmlType::F32;  ///< token_embd (and output)
    bool tied = true;
    bool output_copies_embd = false;  ///< untied, but output.weight == token_embd
    std::string arch = "llama";
    std::string omit;      ///< a tensor left out
    std::string shrink;    ///< a matrix written with 4 output rows too few
    int value_length = 0;  ///< written when non-zero
    uint32_t seed = 7;
    // Architecture options (model/arch.h); qwen2/qwen3 pair RoPE dims as NEOX (i, i + rot/2).
    bool qkv_bias = false;                      ///< blk.N.attn_{q,k,v}.bias
    bool out_bias = false;                      ///< blk.N.attn_output.bias
    bool qk_norm = false;                       ///< blk.N.attn_{q,k}_norm.weight (qwen3)
    std::vector<float> rope_freqs;              ///< rope_freqs.weight when non-empty (Llama 3 factors)
    float attn_scale = 0.0f;                    ///< <arch>.attention.scale when non-zero
    std::map<std::string, float> extra_f32;     ///< further metadata, written as F32
    std::map<std::string, uint32_t> extra_u32;  ///< further metadata, written as U32
    std::string extra_tensor;                   ///< a further F32 tensor of 4 values
    // gemma3: post-norms, GeGLU (tanh), embeddings x sqrt(n_embd), and (window > 0) local
    // layers: every `swa_pattern`-th layer global, the others see the last `window` keys
    // and rotate with base `rope_base_swa`.
    int window = 0;
    int swa_pattern = 0;         ///< written when non-zero (else llama.cpp's default 6)
    float rope_base_swa = 0.0f;  ///< written when non-zero (else 10000)
};

/// Weights as stored (after rounding), row-major [rows][row_length].
struct TinyModel {
    TinySpec spec;
    std::map<std::string, std::vector<float>> w;
    int rot() const { return spec.n_rot < 0 ? spec.head_dim : spec.n_rot; }
    bool neox() const { return spec.arch == "qwen2" || spec.arch == "qwen3" || spec.arch == "gemma3"; }
    bool gemma() const { return spec.arch == "gemma3"; }
    bool local(int l) const {
        const int n = spec.swa_pattern ? spec.swa_pattern : 6;
        return gemma() && spec.window > 0 && l % n < n - 1;
    }
    double freq_scale() const { return spec.rope_factor > 0 ? 1.0 / spec.rope_factor : 1.0; }
    const std::vector<float>& output() const { return spec.tied ? w.at("token_embd.weight") : w.at("output.weight"); }
};

inline std::vector<uint8_t> encode_as(pkv::GgmlType type, std::vector<float>& v) {
    std::vector<uint8_t> bytes;
    if (type == pkv::GgmlType::F32) {
        bytes.resize(v.size() * 4);
        std::memcpy(bytes.data(), v.data(), bytes.size());
    } else if (type == pkv::GgmlType::F16) {
        bytes.resize(v.size() * 2);
        for (size_t i = 0; i < v.size(); ++i) {
            const uint16_t h = pkv::float_to_half(v[i]);
            std::memcpy(bytes.data() + 2 * i, &h, 2);
            v[i] = pkv::half_to_float(h);
        }
    } else if (type == pkv::GgmlType::Q8_0) {
        const size_t nb = v.size() / 32;
        std::vector<pkv::block_q8_0> blocks(nb);
        pkv::quantize_row_q8_0_ref(v.data(), blocks.data(), static_cast<int64_t>(v.size()));
        bytes.resize(nb * sizeof(pkv::block_q8_0));
        std::memcpy(bytes.data(), blocks.data(), bytes.size());
        for (size_t b = 0; b < nb; ++b) {  // decode: value = d · q
            const float d = pkv::half_to_float(blocks[b].d);
            for (int j = 0; j < 32; ++j) v[b * 32 + j] = d * static_cast<float>(blocks[b].qs[j]);
        }
    }
    return bytes;
}

inline TinyModel write_tiny_llama(const std::string& path, const TinySpec& s) {
    TinyModel m;
    m.spec = s;
    pkv::GgufWriter g;
    g.set_string("general.architecture", s.arch);
    g.set_string("general.name", "tiny llama");
    const std::string a = s.arch + ".";
    g.set_u32(a + "context_length", s.n_ctx);
    g.set_u32(a + "embedding_length", s.n_embd);
    g.set_u32(a + "block_count", s.n_layer);
    g.set_u32(a + "feed_forward_length", s.n_ff);
    g.set_u32(a + "attention.head_count", s.n_head);
    if (s.write_head_count_kv) g.set_u32(a + "attention.head_count_kv", s.n_head_kv);
    if (s.head_dim * s.n_head != s.n_embd) g.set_u32(a + "attention.key_length", s.head_dim);
    if (s.value_length) g.set_u32(a + "attention.value_length", s.value_length);
    else if (s.head_dim * s.n_head != s.n_embd) g.set_u32(a + "attention.value_length", s.head_dim);
    if (s.n_rot >= 0) g.set_u32(a + "rope.dimension_count", s.n_rot);
    if (s.write_base) g.set_f32(a + "rope.freq_base", s.rope_base);
    if (!s.rope_scaling.empty()) g.set_string(a + "rope.scaling.type", s.rope_scaling);
    if (s.rope_factor != 0.0f) g.set_f32(a + "rope.scaling.factor", s.rope_factor);
    g.set_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
    if (s.attn_scale != 0.0f) g.set_f32(a + "attention.scale", s.attn_scale);
    for (const auto& [k, v] : s.extra_f32) g.set_f32(k, v);
    for (const auto& [k, v] : s.extra_u32) g.set_u32(k, v);
    if (s.window > 0) g.set_u32(a + "attention.sliding_window", s.window);
    if (s.swa_pattern > 0) g.set_u32(a + "attention.sliding_window_pattern", s.swa_pattern);
    if (s.rope_base_swa > 0) g.set_f32(a + "rope.freq_base_swa", s.rope_base_swa);

    std::mt19937 rng(s.seed);
    auto add = [&](const std::string& name, int n_in, int n_out, float scale, pkv::GgmlType type) {
        if (name == s.omit) return;
        if (name == s.shrink) n_out -= 4;
        std::normal_distribution<float> d(0.0f, scale / std::sqrt(static_cast<float>(n_in)));
        std::vector<float> v(static_cast<size_t>(n_in) * n_out);
        for (auto& x : v) x = d(rng);
        auto bytes = encode_as(type, v);
        g.add_tensor(name, {static_cast<uint64_t>(n_in), static_cast<uint64_t>(n_out)}, type, std::move(bytes));
        m.w[name] = v;
    };
    auto vec = [&](const std::string& name, int n, float lo, float hi) {
        if (name == s.omit) return;
        std::uniform_real_distribution<float> d(lo, hi);
        std::vector<float> v(n);
        for (auto& x : v) x = d(rng);
        g.add_tensor_f32(name, {static_cast<uint64_t>(n)}, v);
        m.w[name] = v;
    };
    auto norm = [&](const std::string& name) { vec(name, s.n_embd, 0.7f, 1.3f); };
    const int qd = s.n_head * s.head_dim, kd = s.n_head_kv * s.head_dim;
    add("token_embd.weight", s.n_embd, s.n_vocab, 4.0f, s.embd_type);
    for (int l = 0; l < s.n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        norm(p + "attn_norm.weight");
        add(p + "attn_q.weight", s.n_embd, qd, 2.5f, s.proj_type);
        add(p + "attn_k.weight", s.n_embd, kd, 2.5f, s.proj_type);
        add(p + "attn_v.weight", s.n_embd, kd, 1.0f, s.proj_type);
        add(p + "attn_output.weight", qd, s.n_embd, 0.7f, s.proj_type);
        if (s.qkv_bias) {
            vec(p + "attn_q.bias", qd, -0.5f, 0.5f);
            vec(p + "attn_k.bias", kd, -0.5f, 0.5f);
            vec(p + "attn_v.bias", kd, -0.5f, 0.5f);
        }
        if (s.out_bias) vec(p + "attn_output.bias", s.n_embd, -0.3f, 0.3f);
        if (s.qk_norm || s.arch == "gemma3") {
            vec(p + "attn_q_norm.weight", s.head_dim, 0.5f, 1.5f);
            vec(p + "attn_k_norm.weight", s.head_dim, 0.5f, 1.5f);
        }
        if (s.arch == "gemma3") {
            vec(p + "post_attention_norm.weight", s.n_embd, 0.5f, 1.5f);
            vec(p + "post_ffw_norm.weight", s.n_embd, 0.5f, 1.5f);
        }
        norm(p + "ffn_norm.weight");
        add(p + "ffn_gate.weight", s.n_embd, s.n_ff, 1.0f, s.proj_type);
        add(p + "ffn_up.weight", s.n_embd, s.n_ff, 1.0f, s.proj_type);
        add(p + "ffn_down.weight", s.n_ff, s.n_embd, 0.7f, s.proj_type);
    }
    norm("output_norm.weight");
    if (s.output_copies_embd) {
        std::vector<float> v = m.w.at("token_embd.weight");
        g.add_tensor("output.weight", {static_cast<uint64_t>(s.n_embd), static_cast<uint64_t>(s.n_vocab)}, s.embd_type,
                     encode_as(s.embd_type, v));
        m.w["output.weight"] = v;
    } else if (!s.tied) {
        add("output.weight", s.n_embd, s.n_vocab, 1.5f, s.embd_type);
    }
    if (s.output_copies_embd) m.spec.tied = false;
    if (!s.rope_freqs.empty()) {
        g.add_tensor_f32("rope_freqs.weight", {static_cast<uint64_t>(s.rope_freqs.size())}, s.rope_freqs);
        m.w["rope_freqs.weight"] = s.rope_freqs;
    }
    if (!s.extra_tensor.empty()) g.add_tensor_f32(s.extra_tensor, {4}, std::vector<float>{1, 2, 3, 4});
    g.write(path, /*force=*/true);
    return m;
}

/// What the naive reference computes; activations are [layer][token * width + d].
struct RefResult {
    std::vector<double> nll;
    std::vector<int> argmax;
    std::vector<double> last_logits;
    std::vector<std::vector<double>> k_pre, k_post, v, q;
};

/// The reference forward pass: one token at a time, scalar loops, double precision.
inline RefResult naive_forward(const TinyModel& m, const std::vector<int32_t>& tok, int pos0) {
    const TinySpec& s = m.spec;
    const int n = static_cast<int>(tok.size()), E = s.n_embd, hd = s.head_dim;
    const int qd = s.n_head * hd, kd = s.n_head_kv * hd;
    auto W = [&](const std::string& name) -> const std::vector<float>& { return m.w.at(name); };
    auto matvec = [](const std::vector<float>& w, const std::vector<double>& x, int n_out) {
        std::vector<double> y(n_out, 0.0);
        const size_t n_in = x.size();
        for (int o = 0; o < n_out; ++o)
            for (size_t i = 0; i < n_in; ++i) y[o] += static_cast<double>(w[o * n_in + i]) * x[i];
        return y;
    };
    auto rms = [&](const std::vector<double>& x, const std::vector<float>& g) {
        double ss = 0;
        for (double t : x) ss += t * t;
        const double inv = 1.0 / std::sqrt(ss / x.size() + 1e-5);
        std::vector<double> y(x.size());
        for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * g[i];
        return y;
    };
    auto rope = [&](std::vector<double>& x, int heads, int pos, double base) {
        const int half = m.rot() / 2;
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < half; ++i) {
                const double f = s.rope_freqs.empty() ? 1.0 : s.rope_freqs[i];
                const double th = pos * m.freq_scale() * std::pow(base, -2.0 * i / m.rot()) / f;
                double& a = x[h * hd + (m.neox() ? i : 2 * i)];
                double& b = x[h * hd + (m.neox() ? i + half : 2 * i + 1)];
                const double a0 = a, b0 = b;
                a = a0 * std::cos(th) - b0 * std::sin(th);
                b = a0 * std::sin(th) + b0 * std::cos(th);
            }
    };
    RefResult r;
    r.k_pre.resize(s.n_layer), r.k_post.resize(s.n_layer), r.v.resize(s.n_layer), r.q.resize(s.n_layer);
    std::vector<std::vector<double>> x(n, std::vector<double>(E));
    for (int t = 0; t < n; ++t)
        for (int i = 0; i < E; ++i)
            x[t][i] = W("token_embd.weight")[static_cast<size_t>(tok[t]) * E + i] *
                      (m.gemma() ? std::sqrt(static_cast<double>(static_cast<float>(E))) : 1.0);
    for (int l = 0; l < s.n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        std::vector<std::vector<double>> Q(n), K(n), V(n);
        for (int t = 0; t < n; ++t) {
            const auto h = rms(x[t], W(p + "attn_norm.weight"));
            Q[t] = matvec(W(p + "attn_q.weight"), h, qd);
            K[t] = matvec(W(p + "attn_k.weight"), h, kd);
            V[t] = matvec(W(p + "attn_v.weight"), h, kd);
            if (s.qkv_bias) {
                for (int i = 0; i < qd; ++i) Q[t][i] += W(p + "attn_q.bias")[i];
                for (int i = 0; i < kd; ++i) K[t][i] += W(p + "attn_k.bias")[i];
                for (int i = 0; i < kd; ++i) V[t][i] += W(p + "attn_v.bias")[i];
            }
            if (s.qk_norm || m.gemma()) {  // RMSNorm of each head on its own
                auto per_head = [&](std::vector<double>& x, int heads, const std::vector<float>& g) {
                    for (int hh = 0; hh < heads; ++hh) {
                        const std::vector<double> part(x.begin() + hh * hd, x.begin() + (hh + 1) * hd);
                        const auto y = rms(part, g);
                        std::copy(y.begin(), y.end(), x.begin() + hh * hd);
                    }
                };
                per_head(Q[t], s.n_head, W(p + "attn_q_norm.weight"));
                per_head(K[t], s.n_head_kv, W(p + "attn_k_norm.weight"));
            }
            r.k_pre[l].insert(r.k_pre[l].end(), K[t].begin(), K[t].end());
            const double base = m.local(l) ? (s.rope_base_swa > 0 ? s.rope_base_swa : 10000.0) : s.rope_base;
            rope(Q[t], s.n_head, pos0 + t, base);
            rope(K[t], s.n_head_kv, pos0 + t, base);
            r.k_post[l].insert(r.k_post[l].end(), K[t].begin(), K[t].end());
            r.v[l].insert(r.v[l].end(), V[t].begin(), V[t].end());
            r.q[l].insert(r.q[l].end(), Q[t].begin(), Q[t].end());
        }
        for (int t = 0; t < n; ++t) {
            std::vector<double> att(qd, 0.0);
            for (int h = 0; h < s.n_head; ++h) {
                const int g = h / (s.n_head / s.n_head_kv);
                std::vector<double> sc(t + 1, 0.0);
                const int j0 = m.local(l) ? std::max(0, t - s.window + 1) : 0;  // local: the last `window` keys
                double mx = -1e300;
                for (int j = j0; j <= t; ++j) {
                    double d = 0;
                    for (int e = 0; e < hd; ++e) d += Q[t][h * hd + e] * K[j][g * hd + e];
                    sc[j] = s.attn_scale != 0.0f ? d * s.attn_scale : d / std::sqrt(static_cast<double>(hd));
                    mx = std::max(mx, sc[j]);
                }
                double z = 0;
                for (int j = j0; j <= t; ++j) z += (sc[j] = std::exp(sc[j] - mx));
                for (int j = j0; j <= t; ++j)
                    for (int e = 0; e < hd; ++e) att[h * hd + e] += sc[j] / z * V[j][g * hd + e];
            }
            auto o = matvec(W(p + "attn_output.weight"), att, E);
            for (int i = 0; i < E; ++i) o[i] += s.out_bias ? W(p + "attn_output.bias")[i] : 0.0;
            if (m.gemma()) o = rms(o, W(p + "post_attention_norm.weight"));
            for (int i = 0; i < E; ++i) x[t][i] += o[i];
            const auto h = rms(x[t], W(p + "ffn_norm.weight"));
            auto gate = matvec(W(p + "ffn_gate.weight"), h, s.n_ff);
            const auto up = matvec(W(p + "ffn_up.weight"), h, s.n_ff);
            for (int i = 0; i < s.n_ff; ++i) {
                const double a = gate[i];
                gate[i] = m.gemma()
                              ? 0.5 * a * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (a + 0.044715 * a * a * a))) * up[i]
                              : a / (1.0 + std::exp(-a)) * up[i];
            }
            auto d = matvec(W(p + "ffn_down.weight"), gate, E);
            if (m.gemma()) d = rms(d, W(p + "post_ffw_norm.weight"));
            for (int i = 0; i < E; ++i) x[t][i] += d[i];
        }
    }
    for (int t = 0; t < n; ++t) {
        const auto logits = matvec(m.output(), rms(x[t], W("output_norm.weight")), s.n_vocab);
        double mx = -1e300;
        int am = 0;
        for (int v = 0; v < s.n_vocab; ++v)
            if (logits[v] > mx) mx = logits[v], am = v;
        double z = 0;
        for (double lg : logits) z += std::exp(lg - mx);
        if (t + 1 < n) {
            r.nll.push_back(mx + std::log(z) - logits[tok[t + 1]]);
            r.argmax.push_back(am);
        } else {
            r.last_logits = logits;
        }
    }
    return r;
}

/// The code of the pkv::Error fn throws (ErrorCode::internal when it throws none).
inline pkv::ErrorCode code_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const pkv::Error& e) {
        return e.code();
    }
    return pkv::ErrorCode::internal;
}

/// n token ids drawn uniformly from [0, vocab), seeded.
inline std::vector<int32_t> random_tokens(int n, int vocab, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> d(0, vocab - 1);
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = d(rng);
    return t;
}

}  // namespace pkv_test
