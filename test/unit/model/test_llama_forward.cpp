// The Llama forward pass against a naive scalar reference on tiny written models,
// plus the properties RoPE, causality and tied output must have.
#include <algorithm>
#include <cmath>
#include <functional>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/llama.h"
#include "tiny_llama.h"

using namespace pkv;
using namespace pkv_test;

namespace {

struct Captured {
    std::vector<std::vector<float>> k_pre, k_post, v, q;
};

ForwardResult run(const LlamaModel& model, const std::vector<int32_t>& tok, int pos0, Captured* cap,
                  bool last_logits = true) {
    ForwardOptions o;
    o.pos0 = pos0;
    o.capture = cap != nullptr;
    o.want_last_logits = last_logits;
    const auto& hp = model.hparams();
    if (cap) {
        const size_t L = hp.n_layer;
        cap->k_pre.assign(L, {}), cap->k_post.assign(L, {}), cap->v.assign(L, {}), cap->q.assign(L, {});
    }
    return model.forward(tok, o, [&](const LayerActivations& a) {
        const size_t kd = size_t{hp.n_head_kv} * hp.head_dim * a.n_tokens,
                     qd = size_t{hp.n_head} * hp.head_dim * a.n_tokens;
        cap->k_pre[a.layer].assign(a.k_pre, a.k_pre + kd);
        cap->k_post[a.layer].assign(a.k_post, a.k_post + kd);
        cap->v[a.layer].assign(a.v, a.v + kd);
        cap->q[a.layer].assign(a.q, a.q + qd);
    });
}

/// Largest |got - want| / max(|want|, floor · largest |want|): relative error with a
/// floor so that values that happen to be near zero do not dominate.
template <typename A, typename B>
double max_rel_err(const A& got, const B& want, double floor = 0.01) {
    REQUIRE(got.size() == want.size());
    double scale = 0;
    for (auto w : want) scale = std::max(scale, std::abs(static_cast<double>(w)));
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i)
        worst = std::max(worst, std::abs(got[i] - static_cast<double>(want[i])) /
                                    std::max(std::abs(static_cast<double>(want[i])), floor * scale));
    return worst;
}

/// The pkv::Error a call throws (code internal and an empty message when none).
Error error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e;
    }
    return Error(ErrorCode::internal, "");
}

}  // namespace

TEST_CASE("forward matches the naive reference", "[model][forward]") {
    ScratchDir dir;
    TinySpec s;
    int n = 40, pos0 = 0;  // >= 32 rows: the forward pass splits rows across threads
    SECTION("f32, tied output") {}
    SECTION("q8_0 projections, f16 embeddings, separate output, pos0 3") {
        s.proj_type = GgmlType::Q8_0;
        s.embd_type = GgmlType::F16;
        s.n_ff = 64;  // Q8_0 rows must hold whole 32-value blocks
        s.tied = false;
        pos0 = 3;
    }
    SECTION("f16 projections, partial rotation, linear rope scaling, no kv-head key") {
        s.proj_type = GgmlType::F16;
        s.n_rot = 6;
        s.rope_scaling = "linear";
        s.rope_factor = 4.0f;
        s.write_head_count_kv = false;
        s.n_head_kv = s.n_head;
    }
    SECTION("llama 3: rope_freqs factors, Q/K/V and output biases, attention scale") {
        s.rope_freqs = {1.0f, 1.5f, 3.0f, 8.0f};
        s.rope_base = 500.0f;
        s.qkv_bias = true;
        s.out_bias = true;
        s.attn_scale = 0.2f;
    }
    SECTION("qwen2: NEOX pairs and Q/K/V biases, separate output") {
        s.arch = "qwen2";
        s.qkv_bias = true;
        s.tied = false;
    }
    SECTION("qwen3: NEOX pairs, per-head Q/K norm, head_dim not n_embd / n_head, partial rotation") {
        s.arch = "qwen3";
        s.qk_norm = true;
        s.head_dim = 12;
        s.n_rot = 8;
    }
    SECTION("gemma3: local layers (window 9, every 3rd layer global, own RoPE base), post-norms, GeGLU") {
        s.arch = "gemma3";
        s.qk_norm = true;
        s.n_layer = 4;
        s.head_dim = 16;
        s.n_head_kv = 1;
        s.window = 9;
        s.swa_pattern = 3;
        s.rope_base_swa = 50.0f;
        s.rope_base = 5000.0f;
        pos0 = 2;
    }
    SECTION("gemma3 with llama.cpp's defaults: every 6th layer global, local base 10000, window 5") {
        s.arch = "gemma3";
        s.qk_norm = true;
        s.n_layer = 7;
        s.window = 5;
        n = 33;
    }
    SECTION("head_dim not n_embd / n_head, 300 tokens (several query and logit blocks)") {
        s.head_dim = 12;
        s.n_head = 6;
        s.n_head_kv = 3;
        s.rope_base = 500.0f;
        n = 300;
    }
    const std::string path = dir.path("tiny.gguf");
    const TinyModel tm = write_tiny_llama(path, s);
    LlamaModel model(GgufFile::open(path));
    const auto tok = random_tokens(n, s.n_vocab, 11);
    Captured cap;
    const ForwardResult r = run(model, tok, pos0, &cap);
    const RefResult ref = naive_forward(tm, tok, pos0);

    CHECK(model.hparams().tied_output == s.tied);
    CHECK(model.hparams().qkv_bias == s.qkv_bias);
    CHECK(model.hparams().qk_norm == s.qk_norm);
    CHECK(model.hparams().rope_freq_factors == s.rope_freqs);
    REQUIRE(r.nll.size() == static_cast<size_t>(n - 1));
    CHECK(max_rel_err(r.nll, ref.nll) < 1e-4);
    // Logits cross zero, so they are compared relative to 10% of the largest one.
    CHECK(max_rel_err(r.last_logits, ref.last_logits, 0.1) < 1e-4);
    int argmax_agree = 0;
    for (int i = 0; i < n - 1; ++i) argmax_agree += r.argmax[i] == ref.argmax[i];
    CHECK(argmax_agree >= n - 2);  // a near tie may flip in float
    for (int l = 0; l < s.n_layer; ++l) {
        INFO("layer " << l);
        CHECK(max_rel_err(cap.k_pre[l], ref.k_pre[l]) < 1e-4);
        CHECK(max_rel_err(cap.k_post[l], ref.k_post[l]) < 1e-4);
        CHECK(max_rel_err(cap.v[l], ref.v[l]) < 1e-4);
        CHECK(max_rel_err(cap.q[l], ref.q[l]) < 1e-4);
    }
}

TEST_CASE("rope: identity at position 0, pair norms kept, pos0 shift is a rotation", "[model][rope]") {
    ScratchDir dir;
    TinySpec s;
    s.rope_base = 100.0f;
    const std::string path = dir.path("tiny.gguf");
    write_tiny_llama(path, s);
    LlamaModel model(GgufFile::open(path));
    const auto tok = random_tokens(20, s.n_vocab, 3);
    Captured c0, c5;
    const auto r0 = run(model, tok, 0, &c0);
    const int shift = 5;
    const auto r5 = run(model, tok, shift, &c5);
    const int kd = s.n_head_kv * s.head_dim;
    for (int l = 0; l < s.n_layer; ++l) {
        for (int d = 0; d < kd; ++d) CHECK(c0.k_post[l][d] == c0.k_pre[l][d]);
        for (size_t p = 0; p + 1 < c0.k_post[l].size(); p += 2) {
            const double pre = std::hypot(c0.k_pre[l][p], c0.k_pre[l][p + 1]);
            const double post = std::hypot(c0.k_post[l][p], c0.k_post[l][p + 1]);
            CHECK(post == Approx(pre).epsilon(1e-5).margin(1e-6));
        }
        // The layer input does not depend on positions in layer 0; RoPE is then the only
        // difference, and rotating the pos0=0 keys by `shift` gives the shifted keys.
        if (l == 0) {
            CHECK(c5.k_pre[0] == c0.k_pre[0]);
            std::vector<double> rotated(c0.k_post[0].begin(), c0.k_post[0].end());
            for (size_t t = 0; t < tok.size(); ++t)
                for (int h = 0; h < s.n_head_kv; ++h)
                    for (int i = 0; i < s.head_dim / 2; ++i) {
                        const double th = shift * std::pow(100.0, -2.0 * i / s.head_dim);
                        double* x = &rotated[t * kd + h * s.head_dim + 2 * i];
                        const double a = x[0], b = x[1];
                        x[0] = a * std::cos(th) - b * std::sin(th);
                        x[1] = a * std::sin(th) + b * std::cos(th);
                    }
            CHECK(max_rel_err(c5.k_post[0], rotated) < 1e-5);
        }
    }
    // Attention sees only relative positions, so every output is shift-invariant.
    CHECK(max_rel_err(r5.nll, r0.nll) < 1e-4);
    CHECK(max_rel_err(c5.v[1], c0.v[1]) < 1e-4);
}

TEST_CASE("causal: a later token does not change earlier outputs", "[model][forward]") {
    ScratchDir dir;
    TinySpec s;
    const std::string path = dir.path("tiny.gguf");
    write_tiny_llama(path, s);
    LlamaModel model(GgufFile::open(path));
    auto a = random_tokens(30, s.n_vocab, 5), b = a;
    const int changed = 17;
    b[changed] = (a[changed] + 1) % s.n_vocab;
    Captured ca, cb;
    const auto ra = run(model, a, 0, &ca), rb = run(model, b, 0, &cb);
    const size_t kd = size_t(s.n_head_kv) * s.head_dim;
    for (int i = 0; i + 1 < changed; ++i) CHECK(ra.nll[i] == Approx(rb.nll[i]).epsilon(1e-6));
    CHECK(ra.nll[changed - 1] != Approx(rb.nll[changed - 1]).epsilon(1e-6));  // its target changed
    for (int l = 0; l < s.n_layer; ++l)
        for (size_t j = 0; j < changed * kd; ++j) CHECK(ca.k_post[l][j] == Approx(cb.k_post[l][j]).epsilon(1e-6));
    bool later_differs = false;
    for (size_t j = changed * kd; j < ca.v[1].size(); ++j) later_differs |= ca.v[1][j] != cb.v[1][j];
    CHECK(later_differs);
}

TEST_CASE("tied output equals an output.weight that copies token_embd", "[model][forward]") {
    ScratchDir dir;
    TinySpec s;
    const std::string p_tied = dir.path("tied.gguf"), p_copy = dir.path("copy.gguf"), p_sep = dir.path("sep.gguf");
    write_tiny_llama(p_tied, s);
    s.output_copies_embd = true;
    write_tiny_llama(p_copy, s);
    s.output_copies_embd = false;
    s.tied = false;
    write_tiny_llama(p_sep, s);
    LlamaModel tied(GgufFile::open(p_tied)), copy(GgufFile::open(p_copy)), sep(GgufFile::open(p_sep));
    CHECK(tied.hparams().tied_output);
    CHECK_FALSE(copy.hparams().tied_output);
    const auto tok = random_tokens(16, s.n_vocab, 9);
    const auto a = run(tied, tok, 0, nullptr), b = run(copy, tok, 0, nullptr), c = run(sep, tok, 0, nullptr);
    CHECK(a.nll == b.nll);
    CHECK(a.last_logits == b.last_logits);
    CHECK(max_rel_err(c.nll, a.nll) > 1e-2);
}

TEST_CASE("forward options: no nll, last logits only, layer mask, bad input", "[model][forward]") {
    ScratchDir dir;
    TinySpec s;
    s.n_ctx = 40;
    const std::string path = dir.path("tiny.gguf");
    const TinyModel tm = write_tiny_llama(path, s);
    LlamaModel model(GgufFile::open(path));
    const auto tok = random_tokens(10, s.n_vocab, 2);
    ForwardOptions o;
    o.want_nll = false;
    o.want_last_logits = true;
    const auto r = model.forward(tok, o);
    CHECK(r.nll.empty());
    CHECK(max_rel_err(r.last_logits, naive_forward(tm, tok, 0).last_logits, 0.1) < 1e-4);

    ForwardOptions cap;
    cap.capture = true;
    cap.layers = {false, true};
    std::vector<int> seen;
    model.forward(tok, cap, [&](const LayerActivations& a) { seen.push_back(a.layer); });
    CHECK(seen == std::vector<int>{1});
    const auto one = model.forward({5}, ForwardOptions{});
    CHECK(one.nll.empty());

    CHECK(error_of([&] { model.forward({}, ForwardOptions{}); }).code() == ErrorCode::out_of_range);
    CHECK(error_of([&] { model.forward(std::vector<int32_t>(41, 1), ForwardOptions{}); }).code() ==
          ErrorCode::out_of_range);
    const Error bad_tok = error_of([&] { model.forward({1, 64, 2}, ForwardOptions{}); });
    CHECK(bad_tok.code() == ErrorCode::out_of_range);
    CHECK_THAT(std::string(bad_tok.what()), ContainsSubstring("token 64 at position 1"));
    ForwardOptions bad_mask;
    bad_mask.capture = true;
    bad_mask.layers = {true};
    CHECK(error_of([&] { model.forward(tok, bad_mask, [](const LayerActivations&) {}); }).code() ==
          ErrorCode::invalid_argument);
    // An exception from the sink reaches the caller, also from the threaded path.
    for (int len : {10, 40}) {
        const auto many = random_tokens(len, s.n_vocab, 4);
        CHECK_THROWS_WITH(
            model.forward(many, cap, [](const LayerActivations&) { throw Error(ErrorCode::interrupted, "stop"); }),
            ContainsSubstring("stop"));
    }
}

TEST_CASE("greedy appends the argmax of each prefix", "[model][greedy]") {
    ScratchDir dir;
    TinySpec s;
    const std::string path = dir.path("tiny.gguf");
    const TinyModel tm = write_tiny_llama(path, s);
    LlamaModel model(GgufFile::open(path));
    const std::vector<int32_t> prompt = {3, 14, 15, 9};
    const auto out = model.greedy(prompt, 4);
    REQUIRE(out.size() == 8);
    CHECK(std::equal(prompt.begin(), prompt.end(), out.begin()));
    for (size_t k = prompt.size(); k < out.size(); ++k) {
        const auto ref = naive_forward(tm, std::vector<int32_t>(out.begin(), out.begin() + k), 0).last_logits;
        CHECK(out[k] == std::max_element(ref.begin(), ref.end()) - ref.begin());
    }
    CHECK(model.greedy(prompt, 0) == prompt);
}
