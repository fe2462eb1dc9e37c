// eval with an engine that keeps the cache itself (ForwardEngine::run_batch_device_cache):
// the description MethodCache::device_cache hands the engine carries every rule of the
// hook, eval routes each method to the path the engine supports, takes the storage from
// the engine's results, and gives exactly the figures of the hook path.
//
// The engine here is the CPU engine plus a host reading of DeviceKvCache written from its
// header alone (device_cache.h), not from MethodCache: if the description lost a rule
// (rotation, pre-RoPE keys, a kept layer, a ring, a prefill, a table view), the figures
// would move. The CUDA engine's reading is compared with the hook in
// test/unit/cuda/test_cuda_forward_device_cache.cpp.
#include <algorithm>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/rope.h"
#include "pkv/core/sha256.h"
#include "pkv/kvcache/device_cache.h"
#include "pkv/kvcache/kv_spec.h"
#include "pkv/kvcache/pre_rope.h"
#include "pkv/model/engine.h"
#include "pkv/model/llama.h"
#include "pkv/pipeline/eval.h"
#include "pkv/pipeline/eval_cache.h"
#include "pkv/quant/hadamard.h"
#include "pkv/report/report.h"
#include "pkv/table/pattern_table.h"
#include "pkv/tokenizer/tokenizer.h"
#include "support/scratch_dir.h"
#include "support/tiny_model.h"
#include "unit/table/table_fixture.h"

using namespace pkv;

namespace {

/// The CPU engine, simulating a DeviceKvCache through its own hook.
class HostDeviceEngine final : public ForwardEngine {
public:
    HostDeviceEngine(const LlamaModel& m, int per_batch) : inner_(make_cpu_engine(m)), per_batch_(per_batch) {}
    const LlamaHparams& hparams() const override { return inner_->hparams(); }
    std::string description() const override { return "host device-cache engine"; }
    int batch_sequences(int) const override { return per_batch_; }
    BatchResult run_batch(const std::vector<std::vector<int32_t>>& sequences, const ForwardOptions& opts,
                          const EngineSink& sink, const BatchCacheHook& cache) override {
        *hooked += cache ? 1 : 0;
        return inner_->run_batch(sequences, opts, sink, cache);
    }
    bool supports_device_cache(const DeviceKvCache& c) const override { return device_cache_method(c.params.method); }
    BatchResult run_batch_device_cache(const std::vector<std::vector<int32_t>>& sequences, const ForwardOptions& opts,
                                       const EngineSink& sink, const DeviceKvCache& c) override {
        ++(*device);
        const LlamaHparams& hp = hparams();
        const int L = static_cast<int>(hp.n_layer), H = static_cast<int>(hp.n_head_kv);
        REQUIRE(c.prefill.size() == sequences.size());
        REQUIRE(c.keep_fp16.size() == static_cast<size_t>(L));
        // Storage per (sequence, layer, head, tensor): calls for distinct tuples may be concurrent.
        std::vector<double> bits(sequences.size() * L * H * 2, 0.0);
        const BatchResult r =
            inner_->run_batch(sequences, opts, sink, [&](int seq, const KvHookInput& in, KvHookOutput& out) {
                const int n = in.n_tokens, D = in.head_dim, l = in.layer;
                const int64_t ring = layer_window(hp, static_cast<uint32_t>(l));
                double& b = bits[((static_cast<size_t>(seq) * L + l) * H + in.kv_head) * 2 + (in.value ? 1 : 0)];
                if (c.keep_fp16[static_cast<size_t>(l)] || c.params.method == KvMethod::fp16) {
                    b = exact_bits(static_cast<double>(kept_tokens(n, ring)) * D);
                    return;
                }
                const bool pre = c.keys_pre && !in.value;
                const float* src = pre ? in.k_pre : in.x;
                std::vector<float> x(src, src + static_cast<size_t>(n) * D);
                if (c.rotate) hadamard_rotate_rows(x.data(), n, D);
                SimParams sp = c.params;
                sp.ring = ring;
                if (!c.tables.empty()) {
                    sp.table_k = &c.tables[(static_cast<size_t>(l) * H + in.kv_head) * 2];
                    sp.table_v = &c.tables[(static_cast<size_t>(l) * H + in.kv_head) * 2 + 1];
                }
                SimResult s = simulate_cache(sp, in.value ? KvTensor::v : KvTensor::k, x.data(), n, D,
                                             c.prefill[static_cast<size_t>(seq)]);
                b = s.bits.total();
                if (c.rotate) hadamard_rotate_rows(s.recon.data(), n, D, nullptr, true);
                if (pre) {
                    const bool local = is_local_layer(hp, static_cast<uint32_t>(l));
                    const RopeTable rope = rope_table(local ? local_rope_params(hp) : rope_params(hp), n);
                    pre_rope_recon_to_post(s.recon.data(), in.k_pre, in.x, n, D, rope);
                }
                out.recon = std::move(s.recon);
                out.flush_step = std::move(s.flush_step);
            });
        BatchResult res = r;
        for (size_t s = 0; s < sequences.size(); ++s)
            for (size_t i = 0; i < static_cast<size_t>(L * H * 2); ++i)
                (i % 2 ? res[s].cache_v_bits : res[s].cache_k_bits) += bits[s * L * H * 2 + i];
        return res;
    }
    std::shared_ptr<int> device = std::make_shared<int>(0), hooked = std::make_shared<int>(0);

private:
    std::unique_ptr<ForwardEngine> inner_;
    int per_batch_ = 1;
};

}  // namespace

TEST_CASE("device cache description and engines without one", "[eval][engine][device_cache]") {
    for (KvMethod m : {KvMethod::fp16, KvMethod::kivi, KvMethod::q4_0, KvMethod::q8_0, KvMethod::fp8,
                       KvMethod::patternkv_table, KvMethod::patternkv})
        CHECK(device_cache_method(m));

    pkv_test::ScratchDir dir;
    const std::string path = dir.path("tiny.gguf");
    pkv::test::TinyModelSpec ms;
    ms.n_embd = 64;
    ms.n_head = 2;
    ms.n_head_kv = 1;
    pkv::test::write_tiny_model(path, ms);
    const LlamaModel model(GgufFile::open(path));
    const LlamaHparams& hp = model.hparams();
    const KvSpec spec = parse_kv_spec("patternkv-table:3:g8:w16:rot:pre:t.safetensors");
    auto table = std::make_shared<PatternTable>(pkv_test::make_table({0, 1}, 1, 4, 5, static_cast<int>(hp.head_dim)));
    const MethodCache mc(spec, 9, {false, true}, hp, table);
    const DeviceKvCache c = mc.device_cache({5, 0, 7});
    CHECK(c.params.method == KvMethod::patternkv_table);
    CHECK(c.params.bits == 3);
    CHECK(c.params.group == 8);
    CHECK(c.params.window == 16);
    CHECK(c.params.ring == 0);
    CHECK(c.rotate);
    CHECK(c.keys_pre);
    CHECK(c.keep_fp16 == std::vector<bool>{false, true});
    CHECK(c.prefill == std::vector<int64_t>{5, 0, 7});
    REQUIRE(c.tables.size() == 2 * 1 * 2);  // layers x KV heads x (K, V)
    for (int l = 0; l < 2; ++l) {
        const PatternLayer& L = table->layers[static_cast<size_t>(l)];
        CHECK(c.tables[l * 2].patterns == L.k_patterns.data());
        CHECK(c.tables[l * 2].M == 4);
        CHECK(c.tables[l * 2].clip == L.k_clip[0]);
        CHECK(c.tables[l * 2 + 1].patterns == L.v_patterns.data());
        CHECK(c.tables[l * 2 + 1].M == 5);
        CHECK(c.tables[l * 2 + 1].gate_z == L.v_gate_z[0]);
    }
    CHECK(c.keep_alive.get() == table.get());
    CHECK(MethodCache(parse_kv_spec("kivi:2"), 0, {false, false}, hp).device_cache({1}).tables.empty());

    // The CPU engine keeps the hook: it supports no device cache and refuses to run one.
    const auto cpu = make_cpu_engine(model);
    CHECK_FALSE(cpu->supports_device_cache(c));
    try {
        cpu->run_batch_device_cache({{1, 2, 3}}, {}, nullptr, c);
        FAIL("expected an unsupported error");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::unsupported);
        CHECK_THAT(std::string(e.what()), ContainsSubstring("does not simulate a KV cache itself"));
    }
}

TEST_CASE("eval with a device cache equals eval with the hook", "[eval][engine][device_cache]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    pkv_test::ScratchDir dir;
    const std::string model_path = dir.path("tiny.gguf"), text = dir.path("text.txt"), tpath = dir.path("t.st");
    pkv::test::TinyModelSpec ms;
    ms.n_embd = 64;
    ms.n_head = 2;
    ms.n_head_kv = 1;  // head_dim 32: q4_0 blocks and a power-of-two rotation
    ms.n_layer = 3;
    pkv::test::write_tiny_model(model_path, ms);
    {
        std::ofstream f(text);
        for (int i = 0; i < 40; ++i) f << "then the other " << i << " went in there, on the river.\n";
    }
    // A table for this model (its sha256, every layer, 2 bits).
    pkv::PatternTable t = pkv_test::make_table({0, 1, 2}, 1, 4, 5, 32);
    t.model.sha256 = sha256_file(model_path);
    t.model.n_layer = 3;
    t.model.n_head = 2;
    t.group = 8;
    write_pattern_table(t, tpath, false);

    EvalConfig c;
    c.model_path = model_path;
    c.text_paths = {text};
    c.n_tokens = 300;
    c.ctx = 128;  // sequences of 128, 128 and 44 tokens
    c.prefill = 32;
    c.keep_fp16_layers = {1};
    c.kv = {"fp16", "kivi:2:g8:w16:rot:pre", "q4_0:pre", "patternkv:2:g8:w16:p4", "patternkv-table:2:g8:w16:" + tpath};
    std::shared_ptr<int> device, hooked;
    EvalConfig dev = c;
    dev.engine = [&](const LlamaModel& m) {
        auto e = std::make_unique<HostDeviceEngine>(m, 2);  // sequences 0 and 1 in one batch, 2 alone
        device = e->device, hooked = e->hooked;
        return std::unique_ptr<ForwardEngine>(std::move(e));
    };
    const EvalResult d = run_eval(dev);
    CHECK(*device == 2 * 5);  // two batches of every method
    CHECK(*hooked == 0);
    const EvalResult host = run_eval(c);
    EvalConfig forced = dev;
    forced.host_cache = true;
    const EvalResult f = run_eval(forced);
    CHECK(*device == 0);
    CHECK(*hooked == 2 * 5);

    const std::vector<bool> on_device = {true, true, true, true, true};
    for (size_t v = 0; v < c.kv.size(); ++v) {
        INFO(c.kv[v]);
        CHECK(d.methods[v].cache_on_device == on_device[v]);
        CHECK_FALSE(f.methods[v].cache_on_device);
        CHECK_FALSE(host.methods[v].cache_on_device);
        for (const EvalResult* r : {&d, &f}) {
            CHECK(r->methods[v].nll_dec == host.methods[v].nll_dec);
            CHECK(r->methods[v].nll_all == host.methods[v].nll_all);
            CHECK(r->methods[v].kl_dec == host.methods[v].kl_dec);
            CHECK(r->methods[v].top1_all == host.methods[v].top1_all);
            CHECK(r->methods[v].k_bits == host.methods[v].k_bits);
            CHECK(r->methods[v].v_bits == host.methods[v].v_bits);
            CHECK(r->methods[v].kv_bytes_peak == host.methods[v].kv_bytes_peak);
        }
        CHECK(eval_report_json(d)["methods"][v]["cache"] == (on_device[v] ? "device" : "host"));
    }
    CHECK(host.methods[1].kl_dec > 0.0);  // kivi:2 moved the figures
    CHECK(host.methods[4].kl_dec > 0.0);
    CHECK(host.methods[1].k_bits < host.methods[0].k_bits);  // and stores less than fp16
}
