// The CUDA forward engine against the CPU reference engine, on tiny random-weight models of
// every architecture (test/unit/model/tiny_llama.h) and on the converted fixtures of
// test/fixtures/arch/.
//
// Tolerances. f32 weights: every captured K (pre and post RoPE), V and Q element within
//     |gpu - cpu| <= 1e-3 · |cpu| + 1e-5 · (largest |cpu| of its row)
// (the GPU's values arrive as binary16, whose rounding alone is up to 4.9e-4 relative), and
// every NLL within 1e-3 nats, argmax agreeing on at least 98% of positions (near-ties may
// flip); last logits within 1e-4 of the row's largest |logit|, hidden states within 1e-4
// of the row's largest |value|.
// bf16 weights (products of bf16-rounded weights and activations, attention on binary16
// operands): elements within 0.1 · (largest |cpu| of the row), mean |ΔNLL| <= 0.1 nats,
// every |ΔNLL| <= 1.5, argmax agreeing on at least 90% (the test's note says why).
// A batch and each of its sequences alone: bit for bit.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <tuple>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/cuda/device.h"
#include "pkv/cuda/forward_engine.h"
#include "pkv/gguf/gguf.h"
#include "pkv/table/safetensors.h"
#include "unit/model/tiny_llama.h"

using namespace pkv;
using namespace pkv_test;

namespace {

#define PKV_REQUIRE_GPU_ENGINE() \
    if (pkv::cuda::device_count() == 0) PKV_SKIP("no CUDA device: GPU forward engine test not run")

/// (sequence, layer, tensor 0-3) -> floats
using Acts = std::map<std::tuple<int, int, int>, std::vector<float>>;

struct Run {
    BatchResult result;
    Acts acts;
    std::map<std::tuple<int, int, int>, std::vector<uint16_t>> bits;  ///< the binary16 values as delivered
    std::vector<std::pair<int, int>> order;                           ///< (sequence, layer) of each sink call
};

Run run(ForwardEngine& e, const std::vector<std::vector<int32_t>>& batch, ForwardOptions o) {
    const LlamaHparams& hp = e.hparams();
    const int64_t kd = int64_t{hp.n_head_kv} * hp.head_dim, qd = int64_t{hp.n_head} * hp.head_dim;
    Run r;
    r.result = e.run_batch(batch, o, [&](const EngineActivations& a) {
        r.order.emplace_back(a.sequence, a.f32.layer);
        const uint16_t* h[4] = {a.k_pre16, a.k_post16, a.v16, a.q16};
        for (int t = 0; t < 4; ++t) {
            const int64_t cols = t == 3 ? qd : kd, n = cols * a.f32.n_tokens;
            std::vector<float> scratch;
            const float* x = to_float(a, t, cols, scratch);
            if (!o.tensors[static_cast<size_t>(t)] && x == nullptr) continue;  // not asked for: may be left out
            REQUIRE(x != nullptr);
            const auto key = std::make_tuple(a.sequence, a.f32.layer, t);
            r.acts[key].assign(x, x + n);
            if (h[t] != nullptr) r.bits[key].assign(h[t], h[t] + n);
        }
    });
    return r;
}

struct Tol {
    double rel, row_rel;  ///< |Δ| <= rel · |cpu| + row_rel · rowmax
};

void compare_acts(const Acts& gpu, const Acts& cpu, const LlamaHparams& hp, Tol tol) {
    REQUIRE(gpu.size() == cpu.size());
    const int64_t kd = int64_t{hp.n_head_kv} * hp.head_dim, qd = int64_t{hp.n_head} * hp.head_dim;
    const char* names[4] = {"k_pre", "k_post", "v", "q"};
    for (const auto& [key, want] : cpu) {
        const auto [s, l, t] = key;
        REQUIRE(gpu.count(key) == 1);
        const std::vector<float>& got = gpu.at(key);
        REQUIRE(got.size() == want.size());
        const size_t cols = static_cast<size_t>(t == 3 ? qd : kd);
        long bad = 0;
        double worst = 0.0;
        for (size_t r = 0; r * cols < want.size(); ++r) {
            double rowmax = 0.0;
            for (size_t c = 0; c < cols; ++c) rowmax = std::max(rowmax, std::fabs(double(want[r * cols + c])));
            for (size_t c = 0; c < cols; ++c) {
                const double w = want[r * cols + c], d = std::fabs(double(got[r * cols + c]) - w);
                worst = std::max(worst, d / std::max(rowmax, 1e-30));
                if (!(d <= tol.rel * std::fabs(w) + tol.row_rel * rowmax)) ++bad;
            }
        }
        INFO("sequence " << s << " layer " << l << " " << names[t] << ": " << bad << " of " << want.size()
                         << " elements outside tolerance; worst |diff|/rowmax " << worst);
        CHECK(bad == 0);
    }
}

void compare_nll(const BatchResult& gpu, const BatchResult& cpu, double max_abs, double mean_abs, double argmax_agree) {
    REQUIRE(gpu.size() == cpu.size());
    double worst = 0.0, sum = 0.0;
    long n = 0, agree = 0;
    for (size_t s = 0; s < cpu.size(); ++s) {
        REQUIRE(gpu[s].nll.size() == cpu[s].nll.size());
        REQUIRE(gpu[s].argmax.size() == cpu[s].argmax.size());
        for (size_t i = 0; i < cpu[s].nll.size(); ++i) {
            const double d = std::fabs(double(gpu[s].nll[i]) - cpu[s].nll[i]);
            worst = std::max(worst, d), sum += d, ++n;
            agree += gpu[s].argmax[i] == cpu[s].argmax[i];
        }
    }
    INFO("worst |ΔNLL| " << worst << " nats, mean " << (n ? sum / n : 0.0) << ", argmax agreement " << agree << "/"
                         << n);
    CHECK(worst <= max_abs);
    CHECK((n == 0 || sum / n <= mean_abs));
    CHECK(agree >= argmax_agree * n);
}

struct ArchCase {
    const char* name;
    std::function<void(TinySpec&)> set;
};

const std::vector<ArchCase>& arch_cases() {
    static const std::vector<ArchCase> cases = {
        {"llama", [](TinySpec&) {}},
        {"llama with rope_freqs",
         [](TinySpec& s) {
             s.rope_freqs = {1.0f, 1.5f, 4.0f, 8.0f};
         }},
        {"llama, head_dim 96 (not n_embd / n_head), biases, attention.scale",
         [](TinySpec& s) {
             s.head_dim = 96;
             s.qkv_bias = true;
             s.out_bias = true;
             s.attn_scale = 0.05f;
         }},
        {"qwen2 with biases, separate output",
         [](TinySpec& s) {
             s.arch = "qwen2";
             s.qkv_bias = true;
             s.tied = false;
         }},
        {"qwen3 with qk_norm, partial rotation",
         [](TinySpec& s) {
             s.arch = "qwen3";
             s.qk_norm = true;
             s.head_dim = 12;
             s.n_rot = 8;
         }},
        {"gemma3 with sliding-window layers",
         [](TinySpec& s) {
             s.arch = "gemma3";
             s.qk_norm = true;
             s.n_layer = 4;
             s.head_dim = 16;
             s.n_head_kv = 1;
             s.window = 8;
             s.swa_pattern = 2;
             s.rope_base_swa = 50.0f;
             s.rope_base = 5000.0f;
         }},
    };
    return cases;
}

// Lengths of one batch: longer than the gemma3 window (8) and than one attention tile (16), and 1.
const std::vector<int> kLengths = {37, 5, 70, 1, 16};

std::vector<std::vector<int32_t>> batch_of(int vocab, uint32_t seed) {
    std::vector<std::vector<int32_t>> b;
    for (size_t i = 0; i < kLengths.size(); ++i) b.push_back(random_tokens(kLengths[i], vocab, seed + uint32_t(i)));
    return b;
}

}  // namespace

TEST_CASE("cuda engine: refused in one line without the GPU it names", "[cuda][forward][engine]") {
    ScratchDir dir;
    const std::string path = dir.path("tiny.gguf");
    write_tiny_llama(path, TinySpec{});
    const LlamaModel model(GgufFile::open(path));
    cuda::CudaEngineOptions o;
    o.device = pkv::cuda::device_count() == 0 ? 0 : 999;
    try {
        cuda::make_cuda_engine(model, o);
        FAIL("expected an error");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::cuda);
        const std::string m = e.what();
        CHECK(m.find('\n') == std::string::npos);
        CHECK_THAT(m, ContainsSubstring(pkv::cuda::device_count() == 0 ? "no CUDA device" : "no such CUDA device"));
    }
}

TEST_CASE("cuda engine (f32 weights) follows the CPU engine on every architecture", "[cuda][forward][engine]") {
    PKV_REQUIRE_GPU_ENGINE();
    for (const ArchCase& c : arch_cases()) {
        INFO(c.name);
        ScratchDir dir;
        TinySpec s;
        s.n_layer = 3;
        c.set(s);
        const std::string path = dir.path("tiny.gguf");
        write_tiny_llama(path, s);
        const LlamaModel model(GgufFile::open(path));
        cuda::CudaEngineOptions o;
        o.weights = WeightType::f32;
        o.slab_rows = 64;  // several slabs per batch
        const auto gpu = cuda::make_cuda_engine(model, o);
        CHECK_THAT(gpu->description(), ContainsSubstring("f32 weights"));
        const auto cpu = make_cpu_engine(model);
        const auto batch = batch_of(s.n_vocab, 21);
        ForwardOptions opts;
        opts.capture = true;
        opts.want_last_logits = true;
        opts.want_hidden = true;
        const Run g = run(*gpu, batch, opts), r = run(*cpu, batch, opts);
        compare_acts(g.acts, r.acts, model.hparams(), {1e-3, 1e-5});
        compare_nll(g.result, r.result, 1e-3, 1e-3, 0.98);
        for (size_t i = 0; i < batch.size(); ++i) {
            const auto& gl = g.result[i].last_logits;
            const auto& rl = r.result[i].last_logits;
            REQUIRE(gl.size() == rl.size());
            double mx = 0.0, worst = 0.0;
            for (float x : rl) mx = std::max(mx, std::fabs(double(x)));
            for (size_t j = 0; j < rl.size(); ++j) worst = std::max(worst, std::fabs(double(gl[j]) - rl[j]));
            CHECK(worst <= 1e-4 * mx);
            const auto& gh = g.result[i].hidden;
            const auto& rh = r.result[i].hidden;
            REQUIRE(gh.size() == rh.size());
            const size_t E = static_cast<size_t>(s.n_embd);
            for (size_t row = 0; row * E < rh.size(); ++row) {
                double hm = 0.0;
                for (size_t j = 0; j < E; ++j) hm = std::max(hm, std::fabs(double(rh[row * E + j])));
                for (size_t j = 0; j < E; ++j)
                    REQUIRE(std::fabs(double(gh[row * E + j]) - rh[row * E + j]) <= 1e-4 * hm);
            }
        }
    }
}

TEST_CASE("cuda engine (bf16 weights) stays near the CPU engine", "[cuda][forward][engine]") {
    PKV_REQUIRE_GPU_ENGINE();
    for (const ArchCase& c : arch_cases()) {
        INFO(c.name);
        ScratchDir dir;
        TinySpec s;
        s.n_layer = 3;
        c.set(s);
        const std::string path = dir.path("tiny.gguf");
        write_tiny_llama(path, s);
        const LlamaModel model(GgufFile::open(path));
        const auto gpu = cuda::make_cuda_engine(model, {});
        CHECK_THAT(gpu->description(), ContainsSubstring("bf16 weights"));
        const auto cpu = make_cpu_engine(model);
        const auto batch = batch_of(s.n_vocab, 22);
        ForwardOptions opts;
        opts.capture = true;
        const Run g = run(*gpu, batch, opts), r = run(*cpu, batch, opts);
        // bf16 products round every weight and activation to 8 significant bits, and three random
        // layers amplify that; measured on an H100 (2026-12-05): worst element 0.069 of its row's
        // largest, worst |ΔNLL| 1.04 nats, mean 0.064, argmax 123 of 124. The bounds leave ~1.5x.
        compare_acts(g.acts, r.acts, model.hparams(), {0.0, 0.1});
        compare_nll(g.result, r.result, 1.5, 0.1, 0.9);
    }
}

TEST_CASE("cuda engine: a batch gives each sequence exactly its figures alone", "[cuda][forward][engine]") {
    PKV_REQUIRE_GPU_ENGINE();
    for (const ArchCase& c : arch_cases()) {
        INFO(c.name);
        ScratchDir dir;
        TinySpec s;
        s.n_layer = 3;
        c.set(s);
        const std::string path = dir.path("tiny.gguf");
        write_tiny_llama(path, s);
        const LlamaModel model(GgufFile::open(path));
        cuda::CudaEngineOptions o;
        o.slab_rows = 64;
        o.max_batch_tokens = 128;  // the batch of 129 tokens runs as two groups
        const auto gpu = cuda::make_cuda_engine(model, o);
        CHECK(gpu->batch_sequences(64) == 2);
        const auto batch = batch_of(s.n_vocab, 23);
        ForwardOptions opts;
        opts.capture = true;
        std::vector<int> even;  // the layers captured: every other one
        for (uint32_t l = 0; l < model.hparams().n_layer; ++l) {
            opts.layers.push_back(l % 2 == 0);
            if (l % 2 == 0) even.push_back(static_cast<int>(l));
        }
        const Run all = run(*gpu, batch, opts);
        // Sink: every (sequence, captured layer) once, each sequence's layers in order.
        std::map<int, std::vector<int>> layers_of;
        for (const auto& [seq, layer] : all.order) layers_of[seq].push_back(layer);
        REQUIRE(layers_of.size() == batch.size());
        for (const auto& [seq, ls] : layers_of) CHECK(ls == even);
        for (size_t i = 0; i < batch.size(); ++i) {
            const Run one = run(*gpu, std::vector<std::vector<int32_t>>{batch[i]}, opts);
            CHECK(one.result[0].nll == all.result[i].nll);
            CHECK(one.result[0].argmax == all.result[i].argmax);
            for (int l : even)
                for (int t = 0; t < 4; ++t) CHECK(one.bits.at({0, l, t}) == all.bits.at({static_cast<int>(i), l, t}));
        }
        // Only K after RoPE and V asked for: the others are left out, these two unchanged.
        ForwardOptions kv = opts;
        kv.tensors = {false, true, true, false};
        const Run part = run(*gpu, batch, kv);
        CHECK(part.result[0].nll == all.result[0].nll);
        for (size_t i = 0; i < batch.size(); ++i)
            for (int l : even)
                for (int t = 0; t < 4; ++t) {
                    const std::tuple<int, int, int> key{static_cast<int>(i), l, t};
                    CAPTURE(i, l, t);
                    if (t == 1 || t == 2) CHECK(part.bits.at(key) == all.bits.at(key));
                    else CHECK(part.bits.count(key) == 0);
                }
    }
}

TEST_CASE("cuda engine (f32 weights) follows the CPU engine on the converted fixtures", "[cuda][forward][engine]") {
    PKV_REQUIRE_GPU_ENGINE();
    const std::string dir = PKV_TEST_SOURCE_DIR "/test/fixtures/arch/";
    for (const char* name : {"llama3", "mistral", "qwen2", "qwen3", "gemma3"}) {
        INFO(name);
        const SafetensorsFile ref = SafetensorsFile::open(dir + name + ".ref.safetensors");
        const StTensorView& tv = ref.tensor("tokens");
        std::vector<int32_t> tokens(tv.numel());
        std::memcpy(tokens.data(), tv.data, tv.size);
        const LlamaModel model(GgufFile::open(dir + name + ".gguf"));
        cuda::CudaEngineOptions o;
        o.weights = WeightType::f32;
        const auto gpu = cuda::make_cuda_engine(model, o);
        const auto cpu = make_cpu_engine(model);
        // The whole sequence and a shorter copy, in one batch.
        const std::vector<std::vector<int32_t>> batch = {
            tokens,
            std::vector<int32_t>(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(tokens.size() / 2))};
        ForwardOptions opts;
        opts.capture = true;
        const Run g = run(*gpu, batch, opts), r = run(*cpu, batch, opts);
        compare_acts(g.acts, r.acts, model.hparams(), {1e-3, 1e-5});
        compare_nll(g.result, r.result, 1e-3, 1e-3, 0.98);
    }
}
