// pkv's forward pass against Hugging Face transformers on the tiny models of
// test/fixtures/arch/ (made by scripts/make-arch-fixtures.py: random weights, converted by
// llama.cpp's convert_hf_to_gguf.py, reference activations and logits from the HF model).
//
// Per fixture and layer: q (after RoPE), k_pre, k_post and v; then the next-token NLL of
// every position (from the reference logits) and the last position's logits.
// Both sides run in fp32. An activation element passes when
//     |pkv - ref| <= kRel * (largest |ref| of its token's row) + kAbs,
// and the worst |pkv - ref| / (row's largest |ref|) of each kind is printed to stderr.
//
// Dimension order: the reference is in HF order. The converter permutes Q/K rows of
// architecture "llama" (so that RoPE pairs are (2i, 2i+1)); pkv reports those in GGUF
// order, so GGUF dim 2i of a head is HF dim i and GGUF dim 2i+1 is HF dim i + head_dim/2.
// NEOX-RoPE architectures (qwen2, qwen3, gemma3) are written unpermuted. V is never permuted.
// The mapping is chosen from general.architecture, not from the fixture's name.
//
// gemma3 (Gemma3ForCausalLM): 8 layers, layers 0-4 and 6-7 attend to the last 8 positions
// with RoPE base rope.freq_base_swa (1e4), layer 5 to all with rope.freq_base (1e6); the
// GGUF holds no layer pattern (llama.cpp's rule for gemma3: every 6th layer is global) and
// its norm weights are already 1 + w. See test/fixtures/arch/README.md.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/llama.h"
#include "pkv/table/safetensors.h"

using namespace pkv;

namespace {

constexpr double kRel = 1e-4;
constexpr double kAbs = 1e-5;
constexpr double kNllTol = 1e-4;  // nats, absolute, per position

const std::string kFixtureDir = PKV_TEST_SOURCE_DIR "/test/fixtures/arch/";
const char* const kKinds[] = {"q", "k_pre", "k_post", "v"};

std::vector<float> f32_tensor(const SafetensorsFile& f, const std::string& name, std::vector<uint64_t> shape) {
    const StTensorView& t = f.tensor(name);
    INFO(f.label() << ": tensor " << name);
    REQUIRE(t.dtype == "F32");
    REQUIRE(t.shape == shape);
    std::vector<float> out(t.numel());
    std::memcpy(out.data(), t.data, t.size);
    return out;
}

/// Whether the converter wrote Q/K rows of this architecture in RoPE-pair order.
bool qk_permuted(const std::string& arch) {
    if (arch == "llama") return true;
    if (arch == "qwen2" || arch == "qwen3" || arch == "gemma3") return false;
    FAIL("no known Q/K dimension order for general.architecture '" << arch << "'");
    return false;
}

/// pkv rows [T, heads * hd] in GGUF order -> HF order (see the file comment).
std::vector<float> gguf_to_hf(const std::vector<float>& x, int head_dim) {
    std::vector<float> y(x.size());
    const int half = head_dim / 2;
    for (size_t h = 0; h < x.size(); h += static_cast<size_t>(head_dim))
        for (int i = 0; i < half; ++i) {
            y[h + i] = x[h + 2 * i];
            y[h + i + half] = x[h + 2 * i + 1];
        }
    return y;
}

struct Worst {
    double ratio = 0;  ///< largest |diff| / row max |ref|
    long failures = 0;
    double worst_excess = 0;  ///< largest |diff| / (kRel * rowmax + kAbs)
};

Worst compare_rows(const std::vector<float>& got, const std::vector<float>& want, size_t row_len) {
    Worst w;
    for (size_t r = 0; r * row_len < want.size(); ++r) {
        double rowmax = 0;
        for (size_t j = 0; j < row_len; ++j) rowmax = std::max(rowmax, std::abs(double{want[r * row_len + j]}));
        for (size_t j = 0; j < row_len; ++j) {
            const double d = std::abs(double{got[r * row_len + j]} - double{want[r * row_len + j]});
            w.ratio = std::max(w.ratio, d / std::max(rowmax, 1e-30));
            w.worst_excess = std::max(w.worst_excess, d / (kRel * rowmax + kAbs));
            if (!(d <= kRel * rowmax + kAbs)) ++w.failures;
        }
    }
    return w;
}

/// Next-token NLL of tokens[i+1] at position i from [T, V] logits, in double.
std::vector<double> reference_nll(const std::vector<float>& logits, const std::vector<int32_t>& tok, size_t V) {
    std::vector<double> nll;
    for (size_t i = 0; i + 1 < tok.size(); ++i) {
        const float* row = &logits[i * V];
        const double mx = *std::max_element(row, row + V);
        double s = 0;
        for (size_t j = 0; j < V; ++j) s += std::exp(double{row[j]} - mx);
        nll.push_back(mx + std::log(s) - double{row[tok[i + 1]]});
    }
    return nll;
}

struct Captured {
    std::map<std::string, std::vector<float>> act;  ///< "blk.L.kind" -> [T, width]
};

ForwardResult run_pkv(const LlamaModel& model, const std::vector<int32_t>& tokens, Captured& cap) {
    const LlamaHparams& hp = model.hparams();
    ForwardOptions o;
    o.capture = true;
    o.want_nll = true;
    o.want_last_logits = true;
    return model.forward(tokens, o, [&](const LayerActivations& a) {
        const size_t kv = size_t{hp.n_head_kv} * hp.head_dim * a.n_tokens;
        const size_t q = size_t{hp.n_head} * hp.head_dim * a.n_tokens;
        const std::string p = "blk." + std::to_string(a.layer) + ".";
        cap.act[p + "q"].assign(a.q, a.q + q);
        cap.act[p + "k_pre"].assign(a.k_pre, a.k_pre + kv);
        cap.act[p + "k_post"].assign(a.k_post, a.k_post + kv);
        cap.act[p + "v"].assign(a.v, a.v + kv);
    });
}

void check_hparams(const LlamaHparams& hp, const SafetensorsFile& ref) {
    const auto& m = ref.metadata();
    INFO(ref.label() << ": metadata against the GGUF's hyperparameters");
    REQUIRE(m.at("dim_order") == "hf");
    CHECK(m.at("arch") == hp.arch);
    CHECK(std::stoul(m.at("n_layer")) == hp.n_layer);
    CHECK(std::stoul(m.at("n_embd")) == hp.n_embd);
    CHECK(std::stoul(m.at("n_head")) == hp.n_head);
    CHECK(std::stoul(m.at("n_head_kv")) == hp.n_head_kv);
    CHECK(std::stoul(m.at("head_dim")) == hp.head_dim);
    CHECK(std::stoul(m.at("n_vocab")) == hp.n_vocab);
    CHECK((m.at("tied_output") == "true") == hp.tied_output);
}

void print_worst(const std::string& name, const std::map<std::string, double>& worst_by_kind) {
    for (const auto& [kind, r] : worst_by_kind)
        std::fprintf(stderr, "arch reference %s: worst |diff|/rowmax %-6s %.3g\n", name.c_str(), kind.c_str(), r);
}

/// Compares layer by layer and stops at the first layer that differs: everything after
/// it (later layers, the logits) differs as a consequence and would only bury the cause.
void check_activations(const std::string& name, const LlamaHparams& hp, const SafetensorsFile& ref, const Captured& cap,
                       size_t T) {
    const bool permuted = qk_permuted(hp.arch);
    std::map<std::string, double> worst_by_kind;
    for (uint32_t l = 0; l < hp.n_layer; ++l) {
        std::string differing;
        for (const char* kind : kKinds) {
            const std::string key = "blk." + std::to_string(l) + "." + kind;
            const bool is_q = std::string(kind) == "q", is_v = std::string(kind) == "v";
            const size_t width = size_t{is_q ? hp.n_head : hp.n_head_kv} * hp.head_dim;
            const auto want = f32_tensor(ref, key, {T, width});
            REQUIRE(cap.act.count(key) == 1);
            const auto got =
                permuted && !is_v ? gguf_to_hf(cap.act.at(key), static_cast<int>(hp.head_dim)) : cap.act.at(key);
            const Worst w = compare_rows(got, want, width);
            worst_by_kind[kind] = std::max(worst_by_kind[kind], w.ratio);
            INFO(name << " " << key << ": " << w.failures << " of " << want.size()
                      << " elements outside tolerance, worst |diff|/rowmax " << w.ratio << " (tolerance " << kRel
                      << " * rowmax + " << kAbs << ", worst at " << w.worst_excess << "x of it)");
            CHECK(w.failures == 0);
            if (w.failures != 0) differing += std::string(differing.empty() ? "" : ", ") + kind;
        }
        if (!differing.empty()) {
            print_worst(name, worst_by_kind);
            FAIL(name << " (" << hp.arch << "): pkv first differs from transformers in layer " << l << " (" << differing
                      << "); later layers and the logits were not compared");
        }
    }
    print_worst(name, worst_by_kind);
}

void check_outputs(const std::string& name, const LlamaHparams& hp, const SafetensorsFile& ref, const ForwardResult& r,
                   const std::vector<int32_t>& tokens) {
    const size_t T = tokens.size(), V = hp.n_vocab;
    const auto logits = f32_tensor(ref, "logits", {T, V});
    const auto want_nll = reference_nll(logits, tokens, V);
    REQUIRE(r.nll.size() == want_nll.size());
    double worst_nll = 0;
    for (size_t i = 0; i < want_nll.size(); ++i) worst_nll = std::max(worst_nll, std::abs(r.nll[i] - want_nll[i]));
    INFO(name << ": worst |nll diff| " << worst_nll << " nats (tolerance " << kNllTol << ")");
    CHECK(worst_nll <= kNllTol);

    const std::vector<float> last(logits.end() - static_cast<std::ptrdiff_t>(V), logits.end());
    REQUIRE(r.last_logits.size() == V);
    const Worst w = compare_rows(r.last_logits, last, V);
    INFO(name << ": last logits, " << w.failures << " outside tolerance, worst |diff|/rowmax " << w.ratio);
    CHECK(w.failures == 0);
    std::fprintf(stderr, "arch reference %s: worst |nll diff| %.3g nats, last logits |diff|/rowmax %.3g\n",
                 name.c_str(), worst_nll, w.ratio);
}

void check_fixture(const std::string& name) {
    const std::string gguf = kFixtureDir + name + ".gguf";
    const std::string st = kFixtureDir + name + ".ref.safetensors";
    REQUIRE(std::filesystem::exists(gguf));
    REQUIRE(std::filesystem::exists(st));
    const SafetensorsFile ref = SafetensorsFile::open(st);
    const StTensorView& tok_view = ref.tensor("tokens");
    REQUIRE(tok_view.dtype == "I32");
    REQUIRE(tok_view.shape.size() == 1);
    std::vector<int32_t> tokens(tok_view.numel());
    std::memcpy(tokens.data(), tok_view.data, tok_view.size);

    auto file = GgufFile::open(gguf);
    const std::string arch = file->get_string("general.architecture");
    std::unique_ptr<LlamaModel> model;
    try {
        model = std::make_unique<LlamaModel>(file);
    } catch (const Error& e) {
        FAIL(name << ": pkv refuses this " << arch << " model (" << ref.metadata().at("hf_class") << "): " << e.what());
    }
    const LlamaHparams& hp = model->hparams();
    check_hparams(hp, ref);
    Captured cap;
    const ForwardResult r = run_pkv(*model, tokens, cap);
    check_activations(name, hp, ref, cap, tokens.size());
    check_outputs(name, hp, ref, r, tokens);
}

}  // namespace

TEST_CASE("arch reference: llama3 (rope_freqs, GQA) matches transformers", "[model][arch]") { check_fixture("llama3"); }

TEST_CASE("arch reference: mistral (head_dim != n_embd / n_head) matches transformers", "[model][arch]") {
    check_fixture("mistral");
}

TEST_CASE("arch reference: qwen2 (QKV biases, NEOX RoPE, tied output) matches transformers", "[model][arch]") {
    check_fixture("qwen2");
}

TEST_CASE("arch reference: qwen3 (Q/K norms, NEOX RoPE) matches transformers", "[model][arch]") {
    check_fixture("qwen3");
}

TEST_CASE(
    "arch reference: gemma3 (sliding-window layers, per-layer RoPE base, GeGLU, extra norms) matches transformers",
    "[model][arch][gemma3]") {
    check_fixture("gemma3");
}

namespace {

/// The worst |pkv - ref| / (row's largest |ref|) over every layer's q, k_pre, k_post, v
/// and the last logits, when pkv runs `name` with its description changed by `change`
/// (LlamaModel(file, hp): the tensors stay, the forward pass does what hp says).
double worst_with(const std::string& name, const std::function<void(LlamaHparams&)>& change) {
    const SafetensorsFile ref = SafetensorsFile::open(kFixtureDir + name + ".ref.safetensors");
    const StTensorView& tv = ref.tensor("tokens");
    std::vector<int32_t> tokens(tv.numel());
    std::memcpy(tokens.data(), tv.data, tv.size);
    auto file = GgufFile::open(kFixtureDir + name + ".gguf");
    LlamaHparams hp;
    try {
        hp = llama_hparams_from_gguf(*file);
    } catch (const Error& e) {
        FAIL(name << ": pkv refuses this " << file->get_string("general.architecture") << " model ("
                  << ref.metadata().at("hf_class") << "): " << e.what());
    }
    const bool permuted = qk_permuted(hp.arch);  // from the file, before the change
    change(hp);
    const LlamaModel model(file, hp);
    Captured cap;
    const ForwardResult r = run_pkv(model, tokens, cap);
    const size_t T = tokens.size();
    double worst = 0;
    for (uint32_t l = 0; l < hp.n_layer; ++l)
        for (const char* kind : kKinds) {
            const std::string key = "blk." + std::to_string(l) + "." + kind;
            const bool is_q = std::string(kind) == "q", is_v = std::string(kind) == "v";
            const size_t width = size_t{is_q ? hp.n_head : hp.n_head_kv} * hp.head_dim;
            const auto got =
                permuted && !is_v ? gguf_to_hf(cap.act.at(key), static_cast<int>(hp.head_dim)) : cap.act.at(key);
            worst = std::max(worst, compare_rows(got, f32_tensor(ref, key, {T, width}), width).ratio);
        }
    const auto logits = f32_tensor(ref, "logits", {T, size_t{hp.n_vocab}});
    const std::vector<float> last(logits.end() - static_cast<std::ptrdiff_t>(hp.n_vocab), logits.end());
    return std::max(worst, compare_rows(r.last_logits, last, hp.n_vocab).ratio);
}

RopeLayout other(RopeLayout l) {
    return l == RopeLayout::interleaved ? RopeLayout::half_split : RopeLayout::interleaved;
}

}  // namespace

// The comparison above can fail: each feature switched off in pkv's description makes
// some activation differ by far more than the tolerance (1e-4 of the row's largest value),
// while the unchanged description stays within it.
TEST_CASE("arch reference: switching off any one feature breaks the agreement", "[model][arch]") {
    const auto keep = [](LlamaHparams&) {};
    struct Case {
        const char* fixture;
        const char* feature;
        std::function<void(LlamaHparams&)> change;
    };
    const Case cases[] = {
        {"llama3", "rope_freqs factors", [](LlamaHparams& hp) { hp.rope_freq_factors.clear(); }},
        {"llama3", "NORM pairing", [](LlamaHparams& hp) { hp.rope_layout = other(hp.rope_layout); }},
        {"mistral", "NORM pairing", [](LlamaHparams& hp) { hp.rope_layout = other(hp.rope_layout); }},
        {"mistral", "1/sqrt(head_dim) scale", [](LlamaHparams& hp) { hp.attn_scale = 0.25f; }},  // 1/sqrt(64/4)
        {"qwen2", "Q/K/V biases", [](LlamaHparams& hp) { hp.qkv_bias = false; }},
        {"qwen2", "NEOX pairing", [](LlamaHparams& hp) { hp.rope_layout = other(hp.rope_layout); }},
        {"qwen3", "Q/K norm", [](LlamaHparams& hp) { hp.qk_norm = false; }},
        {"qwen3", "NEOX pairing", [](LlamaHparams& hp) { hp.rope_layout = other(hp.rope_layout); }},
    };
    for (const char* f : {"llama3", "mistral", "qwen2", "qwen3"}) {
        const double base = worst_with(f, keep);
        INFO(f << " as described: worst " << base);
        CHECK(base < kRel);
    }
    for (const Case& c : cases) {
        const double w = worst_with(c.fixture, c.change);
        std::fprintf(stderr, "arch reference %s without %s: worst |diff|/rowmax %.3g\n", c.fixture, c.feature, w);
        INFO(c.fixture << " without " << c.feature << ": worst " << w);
        CHECK(w > 100 * kRel);
    }
}

// The same for the features gemma3 adds to the block (the numpy check,
// test/python/test_arch_fixtures.py GEMMA3_CHANGES, does the same for its own forward pass).
TEST_CASE("arch reference: switching off any one gemma3 feature breaks the agreement", "[model][arch][gemma3]") {
    const double base = worst_with("gemma3", [](LlamaHparams&) {});
    INFO("gemma3 as described: worst " << base);
    CHECK(base < kRel);
    struct Case {
        const char* feature;
        std::function<void(LlamaHparams&)> change;
    };
    const Case cases[] = {
        {"sliding window", [](LlamaHparams& hp) { hp.sliding_window = 0; }},
        {"Q/K norm", [](LlamaHparams& hp) { hp.qk_norm = false; }},
        {"NEOX pairing", [](LlamaHparams& hp) { hp.rope_layout = other(hp.rope_layout); }},
        {"1/sqrt(head_dim) scale", [](LlamaHparams& hp) { hp.attn_scale = 0.25f; }},  // 1/sqrt(64/4)
        {"local layers (all global)", [](LlamaHparams& hp) { hp.swa_layer.clear(), hp.sliding_window = 0; }},
        {"local RoPE base", [](LlamaHparams& hp) { hp.rope_freq_base_swa = hp.rope_freq_base; }},
        {"post-attention/FFN norms", [](LlamaHparams& hp) { hp.post_norms = false; }},
        {"embedding scale", [](LlamaHparams& hp) { hp.embd_scale = 0.0f; }},
        {"GeGLU (SwiGLU instead)", [](LlamaHparams& hp) { hp.gelu_ffn = false; }},
    };
    for (const Case& c : cases) {
        const double w = worst_with("gemma3", c.change);
        std::fprintf(stderr, "arch reference gemma3 without %s: worst |diff|/rowmax %.3g\n", c.feature, w);
        INFO("gemma3 without " << c.feature << ": worst " << w);
        CHECK(w > 100 * kRel);
    }
}
