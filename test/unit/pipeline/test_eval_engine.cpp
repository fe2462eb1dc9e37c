// eval through a ForwardEngine: the CPU engine with a per-sequence cache hook runs each
// sequence as LlamaModel::forward with that sequence's hook, and run_eval through an
// engine gives exactly the figures of the direct per-sequence loop it replaced.
#include <cmath>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/gguf/gguf.h"
#include "pkv/kvcache/kv_spec.h"
#include "pkv/model/engine.h"
#include "pkv/model/llama.h"
#include "pkv/pipeline/eval.h"
#include "pkv/pipeline/eval_cache.h"
#include "pkv/pipeline/text_input.h"
#include "pkv/report/report.h"
#include "pkv/tokenizer/tokenizer.h"
#include "support/scratch_dir.h"
#include "support/tiny_model.h"
#include "unit/model/tiny_llama.h"

using namespace pkv;

namespace {

std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> d(0, vocab - 1);
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = d(rng);
    return t;
}

/// The CPU engine under another name, taking `per_batch` sequences per batch and counting
/// its batches.
class CountingEngine final : public ForwardEngine {
public:
    CountingEngine(const LlamaModel& m, int per_batch) : inner_(make_cpu_engine(m)), per_batch_(per_batch) {}
    const LlamaHparams& hparams() const override { return inner_->hparams(); }
    std::string description() const override { return "counting engine"; }
    int batch_sequences(int) const override { return per_batch_; }
    BatchResult run_batch(const std::vector<std::vector<int32_t>>& sequences, const ForwardOptions& opts,
                          const EngineSink& sink, const BatchCacheHook& cache) override {
        ++(*batches);
        *hooked += cache ? 1 : 0;
        return inner_->run_batch(sequences, opts, sink, cache);
    }
    std::shared_ptr<int> batches = std::make_shared<int>(0), hooked = std::make_shared<int>(0);

private:
    std::unique_ptr<ForwardEngine> inner_;
    int per_batch_ = 1;
};

}  // namespace

TEST_CASE("cpu engine with a cache hook: each sequence as forward() with its own hook", "[eval][engine]") {
    pkv_test::ScratchDir dir;
    pkv_test::TinySpec s;
    s.n_layer = 3;
    const std::string path = dir.path("tiny.gguf");
    pkv_test::write_tiny_llama(path, s);
    const LlamaModel model(GgufFile::open(path));
    const std::vector<std::vector<int32_t>> batch = {random_ids(40, s.n_vocab, 1), random_ids(24, s.n_vocab, 2)};
    const KvSpec spec = parse_kv_spec("kivi:2:g4:w4");
    const std::vector<bool> keep(s.n_layer, false);
    ForwardOptions o;
    o.want_hidden = true;

    std::vector<std::unique_ptr<MethodCache>> caches;
    for (const auto& seq : batch) {
        caches.push_back(std::make_unique<MethodCache>(spec, 0, keep, model.hparams()));
        caches.back()->begin_sequence(static_cast<int>(seq.size()), 8);
    }
    const auto engine = make_cpu_engine(model);
    const BatchResult r = engine->run_batch(batch, o, nullptr, [&](int seq, const KvHookInput& in, KvHookOutput& out) {
        caches.at(static_cast<size_t>(seq))->hook()(in, out);
    });
    REQUIRE(r.size() == batch.size());
    const ForwardResult plain = model.forward(batch[0], o);
    for (size_t i = 0; i < batch.size(); ++i) {
        MethodCache direct(spec, 0, keep, model.hparams());
        direct.begin_sequence(static_cast<int>(batch[i].size()), 8);
        ForwardOptions d = o;
        d.kv_cache = direct.hook();
        const ForwardResult want = model.forward(batch[i], d);
        CHECK(r[i].nll == want.nll);
        CHECK(r[i].hidden == want.hidden);
        CHECK(caches[i]->key_bits() == direct.key_bits());
        CHECK(caches[i]->value_bits() == direct.value_bits());
    }
    CHECK(r[0].nll != plain.nll);  // the 2-bit cache changed the figures
}

TEST_CASE("eval through an engine equals the direct per-sequence loop", "[eval][engine]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    pkv_test::ScratchDir dir;
    const std::string model_path = dir.path("tiny.gguf"), text = dir.path("text.txt");
    pkv::test::TinyModelSpec ms;
    ms.n_embd = 64;
    ms.n_head = 2;
    ms.n_head_kv = 1;
    pkv::test::write_tiny_model(model_path, ms);
    {
        std::ofstream f(text);
        for (int i = 0; i < 40; ++i) f << "then the other " << i << " went in there, on the river.\n";
    }
    EvalConfig c;
    c.model_path = model_path;
    c.text_paths = {text};
    c.n_tokens = 300;
    c.ctx = 128;  // sequences of 128, 128 and 44 tokens
    c.prefill = 32;
    c.kv = {"fp16", "kivi:2:g8:w16", "q4_0:rot", "patternkv:2:g8:w16:p4"};
    std::shared_ptr<int> batches, hooked;
    int per_batch = 1;
    EvalConfig counted = c;
    counted.engine = [&](const LlamaModel& m) {
        auto e = std::make_unique<CountingEngine>(m, per_batch);
        batches = e->batches, hooked = e->hooked;
        return std::unique_ptr<ForwardEngine>(std::move(e));
    };
    const EvalResult via = run_eval(counted);
    REQUIRE(batches);
    CHECK(*batches == 3 * 5);  // one batch per sequence and variant
    CHECK(*hooked == 3 * 4);   // the methods' passes carry the hook
    per_batch = 2;             // sequences 0 and 1 in one batch, 2 alone
    const EvalResult two = run_eval(counted);
    CHECK(*batches == 2 * 5);
    CHECK(*hooked == 2 * 4);
    per_batch = 8;  // all three at once
    const EvalResult all = run_eval(counted);
    CHECK(*batches == 5);
    const EvalResult cpu = run_eval(c);
    CHECK(via.device == "counting engine");
    CHECK(cpu.device.rfind("cpu", 0) == 0);
    CHECK(eval_report_json(cpu)["run"]["device"] == cpu.device);

    // The loop eval ran before engines: forward() per sequence, a fresh hook per method.
    auto file = GgufFile::open(model_path);
    const LlamaModel model(file);
    std::vector<TextSource> sources;
    const std::vector<int32_t> stream = token_stream(*file, c.text_paths, c.n_tokens, sources);
    const size_t M = c.kv.size();
    std::vector<double> nll_dec(M + 1, 0.0), kl_dec(M + 1, 0.0);
    for (int64_t t0 = 0; t0 < c.n_tokens; t0 += c.ctx) {
        const int n = static_cast<int>(std::min<int64_t>(c.ctx, c.n_tokens - t0));
        const int64_t P = eval_prefill(n, c.prefill);
        const std::vector<int32_t> ids(stream.begin() + t0, stream.begin() + t0 + n);
        std::vector<std::vector<float>> hidden;
        for (size_t v = 0; v <= M; ++v) {
            ForwardOptions o;
            o.want_nll = false;
            o.want_hidden = true;
            std::unique_ptr<MethodCache> mc;
            if (v > 0) {
                mc = std::make_unique<MethodCache>(parse_kv_spec(c.kv[v - 1]), c.seed,
                                                   std::vector<bool>(model.hparams().n_layer, false), model.hparams());
                mc->begin_sequence(n, P);
                o.kv_cache = mc->hook();
            }
            hidden.push_back(model.forward(ids, o).hidden);
        }
        std::vector<const float*> ptr;
        for (const auto& h : hidden) ptr.push_back(h.data());
        const auto st = model.compare_next_token(ids, ptr);
        for (size_t v = 0; v <= M; ++v)
            for (int i = static_cast<int>(P); i + 1 < n; ++i) {
                nll_dec[v] += st[v].nll[i];
                kl_dec[v] += v > 0 ? st[v].kl[i] : 0.0;
            }
    }
    const std::vector<const EvalResult*> runs = {&cpu, &via, &two, &all};
    for (const EvalResult* r : runs) {
        CHECK(r->reference.nll_dec == nll_dec[0]);
        for (size_t v = 0; v < M; ++v) {
            INFO(c.kv[v]);
            CHECK(r->methods[v].nll_dec == nll_dec[v + 1]);
            CHECK(r->methods[v].kl_dec == kl_dec[v + 1]);
            CHECK(r->methods[v].nll_all == cpu.methods[v].nll_all);
            CHECK(r->methods[v].top1_dec == cpu.methods[v].top1_dec);
            CHECK(r->methods[v].k_bits == cpu.methods[v].k_bits);
            CHECK(r->methods[v].v_bits == cpu.methods[v].v_bits);
            CHECK(r->methods[v].kv_bytes_peak == cpu.methods[v].kv_bytes_peak);
        }
    }
    CHECK(cpu.methods[1].kl_dec > 0.0);  // kivi:2 moved the figures
}
