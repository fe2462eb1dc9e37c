// The model KV source (pipeline/kv_source.h) against a dump of the same tokens: the same
// rows bit for bit, the same sequences and records; its sample; and calibrate and analyze
// giving the dump path's tables and reports from it.
#include <array>
#include <fstream>
#include <memory>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/model/engine.h"
#include "pkv/model/llama.h"
#include "pkv/pipeline/analyze.h"
#include "pkv/pipeline/calibrate.h"
#include "pkv/pipeline/dump.h"
#include "pkv/pipeline/kv_source.h"
#include "pkv/report/report.h"
#include "pkv/tokenizer/tokenizer.h"
#include "support/scratch_dir.h"
#include "support/tiny_model.h"

using namespace pkv;

namespace {

const char* kText =
    "the theory of the thing is in the other one. then there were three thin threads on the throne, "
    "and they went on and on into the night, over and over, 1234 times.\n";

struct Fixture {
    pkv_test::ScratchDir dir;
    std::string root = dir.str();
    std::string model = root + "/tiny.gguf", text = root + "/text.txt";
    Fixture() {
        test::TinyModelSpec s;
        s.n_layer = 3;
        test::write_tiny_model(model, s);
        std::ofstream f(text);
        for (int i = 0; i < 6; ++i) f << kText;
    }
    std::string dump(int64_t tokens, int ctx, bool hf, const std::string& name) const {
        DumpConfig c;
        c.model_path = model;
        c.text_paths = {text};
        c.n_tokens = tokens;
        c.ctx = ctx;
        c.hf_dim_order = hf;
        c.chunk_tokens = 16;
        c.out_path = root + "/" + name;
        c.argv = {"pkv", "dump"};
        run_dump(c);
        return c.out_path;
    }
    ModelSourceConfig source(int64_t tokens, int ctx, bool hf) const {
        ModelSourceConfig m;
        m.model_path = model;
        m.text_paths = {text};
        m.n_tokens = tokens;
        m.ctx = ctx;
        m.hf_dim_order = hf;
        m.command = "test";
        return m;
    }
};

// The CPU engine's activations handed on as binary16 bits only (f32 pointers null), and
// only the tensors the options ask for, as the CUDA engine hands them on.
class Binary16Engine final : public ForwardEngine {
public:
    explicit Binary16Engine(const LlamaModel& m) : cpu_(make_cpu_engine(m)) {}
    const LlamaHparams& hparams() const override { return cpu_->hparams(); }
    std::string description() const override { return "binary16 test engine"; }
    int batch_sequences(int) const override { return 3; }
    BatchResult run_batch(const std::vector<std::vector<int32_t>>& sequences, const ForwardOptions& opts,
                          const EngineSink& sink, const BatchCacheHook& cache) override {
        asked.push_back(opts.tensors);
        const LlamaHparams& hp = hparams();
        const int64_t kd = int64_t{hp.n_head_kv} * hp.head_dim, qd = int64_t{hp.n_head} * hp.head_dim;
        return cpu_->run_batch(
            sequences, opts,
            [&](const EngineActivations& a) {
                const float* f[4] = {a.f32.k_pre, a.f32.k_post, a.f32.v, a.f32.q};
                std::vector<uint16_t> bits[4];
                EngineActivations b;
                b.sequence = a.sequence;
                b.f32.layer = a.f32.layer;
                b.f32.n_tokens = a.f32.n_tokens;
                const uint16_t** out[4] = {&b.k_pre16, &b.k_post16, &b.v16, &b.q16};
                for (int i = 0; i < 4; ++i) {
                    if (!opts.tensors[static_cast<size_t>(i)]) continue;
                    bits[i].resize(static_cast<size_t>(a.f32.n_tokens * (i == 3 ? qd : kd)));
                    float_to_half_n(f[i], bits[i].data(), bits[i].size());
                    *out[i] = bits[i].data();
                }
                sink(b);
            },
            cache);
    }
    std::vector<std::array<bool, 4>> asked;

private:
    std::unique_ptr<ForwardEngine> cpu_;
};

}  // namespace

TEST_CASE("the model source takes binary16 activations as they are, in either dim order", "[pipeline][kv_source]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    Fixture fx;
    for (bool hf : {false, true}) {
        CAPTURE(hf);
        const std::unique_ptr<KvSource> d = open_dump_source(fx.dump(150, 40, hf, hf ? "hf.h5" : "gguf.h5"));
        ModelSourceConfig c = fx.source(150, 40, hf);
        c.capture = CaptureSet::parse("k_pre,v,q");
        std::vector<std::array<bool, 4>>* asked = nullptr;
        c.engine = [&](const LlamaModel& model) {
            auto e = std::make_unique<Binary16Engine>(model);
            asked = &e->asked;
            return e;
        };
        const std::unique_ptr<KvSource> m = open_model_source(c);
        m->load(0, m->sequences().start.size());
        REQUIRE(asked != nullptr);
        REQUIRE_FALSE(asked->empty());
        for (const auto& t : *asked) CHECK(t == std::array<bool, 4>{true, false, true, true});
        for (const char* ds_name : {kvdump::kKPre, kvdump::kV, kvdump::kQ})
            for (int slot = 0; slot < d->n_layers(); ++slot)
                for (int h = 0; h < (ds_name == kvdump::kQ ? d->n_head() : d->n_head_kv()); ++h) {
                    CAPTURE(ds_name, slot, h);
                    CHECK(m->read_head(ds_name, slot, h) == d->read_head(ds_name, slot, h));
                }
    }
}

TEST_CASE("the model source gives the rows of a dump of the same tokens", "[pipeline][kv_source]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    Fixture fx;
    for (bool hf : {false, true}) {
        const std::unique_ptr<KvSource> d = open_dump_source(fx.dump(150, 40, hf, hf ? "hf.h5" : "gguf.h5"));
        const std::unique_ptr<KvSource> m = open_model_source(fx.source(150, 40, hf));
        CHECK(m->streamed());
        CHECK_FALSE(d->streamed());
        REQUIRE(m->n_tokens() == 150);
        CHECK(m->layers() == d->layers());
        CHECK(m->dim_order() == d->dim_order());
        CHECK(m->model() == d->model());
        CHECK(m->n_head() == d->n_head());
        CHECK(m->n_head_kv() == d->n_head_kv());
        CHECK(m->head_dim() == d->head_dim());
        CHECK(m->provenance()["source"] == "model");
        CHECK(m->provenance()["texts"] == d->provenance()["texts"]);
        const KvDumpReader::Sequences ms = m->sequences(), ds = d->sequences();
        CHECK(ms.start == ds.start);
        CHECK(ms.length == ds.length);
        REQUIRE(m->layer_info().size() == d->layer_info().size());
        for (size_t i = 0; i < m->layer_info().size(); ++i) {
            CHECK(m->layer_info()[i].window == d->layer_info()[i].window);
            CHECK(m->layer_info()[i].rope_base == d->layer_info()[i].rope_base);
        }
        // Nothing is readable before load; then everything, bit for bit.
        CHECK_THROWS_AS(m->read_head(kvdump::kV, 0, 0), Error);
        m->load(0, ms.start.size());
        for (const char* ds_name : kvdump::kActivations)
            for (int slot = 0; slot < d->n_layers(); ++slot)
                for (int h = 0; h < (ds_name == kvdump::kQ ? d->n_head() : d->n_head_kv()); ++h)
                    CHECK(m->read_head(ds_name, slot, h) == d->read_head(ds_name, slot, h));
        // A block of later sequences reads the same rows at the same token indices.
        m->load(2, 4);
        CHECK(m->read_head(kvdump::kKPost, 1, 1, 80, 70) == d->read_head(kvdump::kKPost, 1, 1, 80, 70));
        CHECK_THROWS_AS(m->read_head(kvdump::kKPost, 1, 1, 0, 10), Error);
    }
}

TEST_CASE("the model source's sample: whole sequences, bounded, seeded", "[pipeline][kv_source]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    Fixture fx;
    ModelSourceConfig c = fx.source(200, 32, false);  // 6 x 32 + 8
    c.sample_tokens = 100;
    const std::unique_ptr<KvSource> a = open_model_source(c), b = open_model_source(c);
    const KvDumpReader::Sequences sa = a->sequences(), sb = b->sequences();
    CHECK(sa.start == sb.start);
    CHECK(sa.length == sb.length);
    CHECK(a->n_tokens() <= 100);
    CHECK(a->n_tokens() >= 64);
    CHECK(a->provenance()["stream"]["sampled_tokens"] == a->n_tokens());
    int64_t at = 0;
    for (size_t s = 0; s < sa.start.size(); ++s) {
        CHECK(sa.start[s] == at);
        at += sa.length[s];
    }
    // The sampled rows are the dump's rows of some sequences of the stream.
    const std::unique_ptr<KvSource> d = open_dump_source(fx.dump(200, 32, false, "all.h5"));
    a->load(0, sa.start.size());
    const std::vector<float> all = d->read_head(kvdump::kV, 2, 1);
    const int D = d->head_dim();
    for (size_t s = 0; s < sa.start.size(); ++s) {
        const std::vector<float> rows = a->read_head(kvdump::kV, 2, 1, sa.start[s], sa.length[s]);
        bool found = false;
        for (int64_t t0 = 0; t0 < 200 && !found; t0 += 32)
            found = sa.length[s] == std::min<int64_t>(32, 200 - t0) &&
                    std::equal(rows.begin(), rows.end(), all.begin() + t0 * D);
        CHECK(found);
    }
    c.seed = 99;
    const std::unique_ptr<KvSource> other = open_model_source(c);
    CHECK(other->n_tokens() <= 100);
    c.sample_tokens = 1;  // fewer than a sequence: still one
    CHECK(open_model_source(c)->sequences().start.size() == 1);
}

TEST_CASE("calibrate and analyze from the model equal the dump path", "[pipeline][kv_source]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    Fixture fx;
    const std::string dump = fx.dump(160, 32, false, "d.h5");

    CalibrateConfig c;
    c.k_patterns = 4;
    c.v_patterns = 4;
    c.group = 8;
    c.window = 8;
    c.holdout = 0.2;
    c.fit_tokens = 64;
    c.dump_paths = {dump};
    c.out_path = fx.root + "/from_dump.safetensors";
    const PatternTable td = run_calibrate(c);
    c.dump_paths.clear();
    c.stream = fx.source(160, 32, false);
    c.stream.sample_tokens = 160;
    c.out_path = fx.root + "/from_model.safetensors";
    const PatternTable tm = run_calibrate(c);
    REQUIRE(tm.layers.size() == td.layers.size());
    for (size_t i = 0; i < td.layers.size(); ++i) {
        CHECK(tm.layers[i].k_patterns == td.layers[i].k_patterns);
        CHECK(tm.layers[i].v_patterns == td.layers[i].v_patterns);
        CHECK(tm.layers[i].k_counts == td.layers[i].k_counts);
        CHECK(tm.layers[i].k_clip == td.layers[i].k_clip);
        CHECK(tm.layers[i].v_clip == td.layers[i].v_clip);
        CHECK(tm.layers[i].v_gate_z == td.layers[i].v_gate_z);
    }
    CHECK(tm.model.sha256 == td.model.sha256);
    CHECK(tm.calibration["heads"] == td.calibration["heads"]);
    CHECK(tm.calibration["dumps"][0]["source"] == "model");
    CHECK(tm.calibration["dumps"][0]["stream"]["sampled_tokens"] == 160);

    // Both sources, or neither: one clear error.
    c.dump_paths = {dump};
    CHECK_THROWS_WITH(run_calibrate(c), ContainsSubstring("--model and --dump"));

    AnalyzeConfig a;
    a.methods = {KvMethod::fp16, KvMethod::kivi, KvMethod::patternkv};
    a.bits = {2};
    a.group = 8;
    a.window = 8;
    a.patterns = 4;
    a.dump_path = dump;
    nlohmann::json rd = analyze_report_json(run_analyze(a));
    a.dump_path.clear();
    a.stream = fx.source(160, 32, false);
    a.block_tokens = 70;  // blocks of two sequences
    nlohmann::json rm = analyze_report_json(run_analyze(a));
    CHECK(rm["provenance"]["dump"]["source"] == "model");
    CHECK(rd["provenance"]["dump"]["source"] == "dump");
    CHECK(render_markdown(rm).find("streamed from: " + fx.model) != std::string::npos);
    CHECK(render_markdown(rd).find("dump: " + dump) != std::string::npos);
    for (const char* k : {"results", "summary", "layer_kinds", "fragile", "histograms", "n_tokens", "model"})
        CHECK(rm[k] == rd[k]);
    a.dump_path = dump;
    CHECK_THROWS_WITH(run_analyze(a), ContainsSubstring("--model and --dump"));
}
