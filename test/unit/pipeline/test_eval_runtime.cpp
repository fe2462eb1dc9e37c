// `pkv eval --engine runtime`: attention through the packed cache (eval_runtime.h) gives the
// per-token NLL of eval's simulation (eval_cache.h) run over the same binary16 K/V on a tiny
// random-weight model, for fp16, kivi:2 and a patternkv-table:2 table, to within fp32
// summation order; a wrong table does not; the storage rounding it adds to the fp32
// simulation is bounded for fp16; and what the packed cache cannot hold is refused up front.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/core/sha256.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/ops.h"
#include "pkv/pipeline/eval.h"
#include "pkv/pipeline/eval_cache.h"
#include "pkv/pipeline/eval_runtime.h"
#include "pkv/report/report.h"
#include "pkv/runtime/pattern_table_reader.h"
#include "pkv/table/pattern_table.h"
#include "support/scratch_dir.h"
#include "support/tiny_model.h"
#include "unit/table/table_fixture.h"

using namespace pkv;

namespace {

constexpr int kLayers = 2, kHeads = 4, kKvHeads = 2, kD = 32;

struct Fixture {
    pkv_test::ScratchDir dir;
    std::string model = dir.path("tiny.gguf"), ids_path = dir.path("ids.bin");
    std::string table = dir.path("t.safetensors"), other_table = dir.path("u.safetensors");
    std::vector<int32_t> ids;

    Fixture() {
        pkv::test::TinyModelSpec ms;
        ms.n_layer = kLayers;
        ms.n_embd = kHeads * kD;
        ms.n_head = kHeads;
        ms.n_head_kv = kKvHeads;  // GQA: two query heads per KV head
        ms.n_ctx = 256;
        pkv::test::write_tiny_model(model, ms);
        std::mt19937 rng(3);
        std::uniform_int_distribution<int32_t> tok(0, pkv::test::tiny_vocab_size() - 1);
        for (int i = 0; i < 400; ++i) ids.push_back(tok(rng));
        std::ofstream f(ids_path, std::ios::binary);
        f.write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 4));
        write_table(table, 7);
        write_table(other_table, 8);
    }
    // A post-RoPE 2-bit table of this model with made-up patterns (seed picks them).
    PatternTable table_of(uint32_t seed) const {
        PatternTable t = pkv_test::make_table({0, 1}, kKvHeads, 4, 5, kD, seed);
        t.model.sha256 = sha256_file(model);
        t.model.n_layer = kLayers;
        t.model.n_head = kHeads;
        t.group = 8;
        t.window = 16;
        return t;
    }
    void write_table(const std::string& path, uint32_t seed) const { write_pattern_table(table_of(seed), path, false); }
    EvalConfig config(std::vector<std::string> kv, EvalAttention a) const {
        EvalConfig c;
        c.model_path = model;
        c.token_ids_path = ids_path;
        c.n_tokens = 400;
        c.ctx = 200;  // two sequences
        c.prefill = 40;
        c.kv = std::move(kv);
        c.attention = a;
        return c;
    }
};

// eval's simulation with LlamaModel's cached attention, but over K/V rounded to binary16 from
// step P on (the packed cache stores binary16 rows and quantizes those): the runtime's
// schedule and values, with only the attention's fp32 summation order left to differ.
AttentionHook simulated_on_half(MethodCache& mc, int64_t P) {
    return [&mc, P](const AttentionHookInput& in) {
        const int n = in.n_tokens, HD = in.head_dim, HKV = in.n_head_kv;
        const int64_t KD = int64_t{HKV} * HD;
        std::vector<float> k(in.k, in.k + n * KD), v(in.v, in.v + n * KD);
        for (float& x : k) x = half_to_float(float_to_half(x));
        for (float& x : v) x = half_to_float(float_to_half(x));
        ops::RowMatrix k_hat(n, KD), v_hat(n, KD);
        std::vector<std::vector<int32_t>> flush(2 * HKV);
        std::vector<const int32_t*> kp(HKV, nullptr), vp(HKV, nullptr);
        for (int g = 0; g < HKV; ++g)
            for (int value = 0; value < 2; ++value) {
                KvHookOutput o =
                    call_kv_hook(mc.hook(), in.layer, g, value == 1, n, HD, KD, k.data(), k.data(), v.data());
                if (o.recon.empty()) continue;
                float* hat = (value ? v_hat : k_hat).data();
                for (int i = 0; i < n; ++i) std::copy_n(o.recon.data() + i * HD, HD, hat + i * KD + g * HD);
                flush[2 * g + value] = std::move(o.flush_step);
                (value ? vp : kp)[g] = flush[2 * g + value].data();
            }
        ops::RowMatrix s1, s2;
        const int p = static_cast<int>(P);
        // The prompt's queries see the exact rows (nothing is flushed before step P).
        ops::causal_attention_rows_cached(in.q, in.k, in.v, k_hat.data(), v_hat.data(), kp.data(), vp.data(), in.n_head,
                                          HKV, HD, in.out, 0, p, s1, s2, 256, in.kq_scale, in.window);
        ops::causal_attention_rows_cached(in.q, k.data(), v.data(), k_hat.data(), v_hat.data(), kp.data(), vp.data(),
                                          in.n_head, HKV, HD, in.out, p, n, s1, s2, 256, in.kq_scale, in.window);
    };
}

// Per-token NLL of one sequence: simulated cache (a KV hook), the simulation over binary16
// K/V, and the packed cache (an attention hook), with the same spec; the runtime may read
// another table than the simulation.
struct NllPair {
    std::vector<float> sim, half, rt;
    double sim_k_bits = 0, sim_v_bits = 0, rt_k_bits = 0, rt_v_bits = 0;
};

NllPair run_both(const Fixture& fx, const std::string& spec_text, int n, int64_t P,
                 const std::string& runtime_table = "") {
    LlamaModel model(GgufFile::open(fx.model));
    const LlamaHparams& hp = model.hparams();
    const KvSpec spec = parse_kv_spec(spec_text);
    check_runtime_spec(spec, hp, fx.model);
    const std::vector<bool> keep(hp.n_layer, false);
    const std::vector<int32_t> ids(fx.ids.begin(), fx.ids.begin() + n);
    std::shared_ptr<const PatternTable> sim_table;
    std::shared_ptr<const pkv_rt::PatternTable> rt_table;
    if (spec.table) {
        sim_table = std::make_shared<const PatternTable>(read_pattern_table(spec.table_path));
        KvSpec rs = spec;
        if (!runtime_table.empty()) rs.table_path = runtime_table;
        rt_table = open_runtime_table(rs, hp, sha256_file(fx.model));
    }
    NllPair out;
    MethodCache mc(spec, 0, keep, hp, sim_table);
    mc.begin_sequence(n, P);
    ForwardOptions o;
    o.kv_cache = mc.hook();
    out.sim = model.forward(ids, o).nll;
    out.sim_k_bits = mc.key_bits(), out.sim_v_bits = mc.value_bits();
    ForwardOptions h;
    h.attention = simulated_on_half(mc, P);
    out.half = model.forward(ids, h).nll;

    RuntimeAttention ra(spec, keep, hp, rt_table);
    ra.begin_sequence(n, P);
    ForwardOptions r;
    r.attention = ra.hook();
    out.rt = model.forward(ids, r).nll;
    out.rt_k_bits = ra.key_bits(), out.rt_v_bits = ra.value_bits();
    return out;
}

struct Diff {
    double max_prefill = 0, max_decode = 0, mean_decode = 0;
};

// |ΔNLL| of the positions whose query lies in the prompt (t < P) and in the decode steps.
Diff nll_diff(const std::vector<float>& a, const std::vector<float>& b, int64_t P) {
    REQUIRE(a.size() == b.size());
    Diff d;
    int64_t nd = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        const double e = std::fabs(static_cast<double>(a[i]) - b[i]);
        if (static_cast<int64_t>(i) < P) {
            d.max_prefill = std::max(d.max_prefill, e);
        } else {
            d.max_decode = std::max(d.max_decode, e);
            d.mean_decode += e;
            ++nd;
        }
    }
    d.mean_decode /= static_cast<double>(std::max<int64_t>(nd, 1));
    return d;
}

std::string error_of(const EvalConfig& c) {
    try {
        run_eval(c);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

// Tolerances. Against eval's simulation run over the same binary16 K/V (simulated_on_half),
// the runtime differs only in the fp32 order of its attention sums (q·c and q·r̂ apart, split
// softmax): measured on this model (n 200, P 40) max |ΔNLL| per token 6e-4 (fp16), 2e-4
// (kivi:2), 1e-3 (patternkv-table:2), means 4e-5, 8e-6, 6e-5 (a random 2-layer model
// amplifies a 1e-7 change of an attention output that much), and the prompt's positions
// equal bit for bit; the bounds give 4x room.
constexpr double kHalfMaxTol = 4e-3, kHalfMeanTol = 2.5e-4;
// Against eval's own simulation (fp32 K/V), binary16 storage adds its rounding (2^-11
// relative) and, for 2-bit codes, the rare element that the rounding moves across a code
// boundary (about 1 in 5000 on Gaussian data, a whole quantization step each): measured
// mean |ΔNLL| 3e-3 (fp16), 0.26 (kivi:2), 0.31 (patternkv-table:2) on this model, whose
// random attention turns one moved key element into a large score change. So only fp16 is
// bounded per token here (max 0.016 measured); the quantized methods' agreement is the
// bound above, and the real model's perplexities are in docs/eval.md.
constexpr double kFp16MaxTol = 0.05, kFp16MeanTol = 0.01, kPromptTol = 1e-4;

TEST_CASE("eval runtime: per-token NLL equals the simulated path's", "[eval][runtime]") {
    Fixture fx;
    const int n = 200;
    const int64_t P = 40;
    for (const std::string spec :
         {std::string("fp16"), std::string("kivi:2:g8:w16"), "patternkv-table:2:g8:w16:" + fx.table}) {
        const NllPair r = run_both(fx, spec, n, P);
        const Diff d = nll_diff(r.sim, r.rt, P), dh = nll_diff(r.half, r.rt, P);
        INFO(spec << ": max |dNLL| prefill " << d.max_prefill << ", decode " << d.max_decode << ", mean "
                  << d.mean_decode << "; against the simulation on binary16 K/V: prefill " << dh.max_prefill
                  << ", decode " << dh.max_decode << ", mean " << dh.mean_decode);
        // The schedule and values are the simulation's: only the summation order differs.
        CHECK(dh.max_prefill == 0.0);
        CHECK(dh.max_decode <= kHalfMaxTol);
        CHECK(dh.mean_decode <= kHalfMeanTol);
        // The prompt's queries attend over exact K/V in both (the host splits rows by thread).
        CHECK(d.max_prefill <= kPromptTol);
        if (spec == "fp16") {
            CHECK(d.max_decode <= kFp16MaxTol);
            CHECK(d.mean_decode <= kFp16MeanTol);
        }
        // The packed cache's storage is what the simulation counts.
        CHECK(r.rt_k_bits == Approx(r.sim_k_bits).epsilon(1e-12));
        CHECK(r.rt_v_bits == Approx(r.sim_v_bits).epsilon(1e-12));
    }
}

TEST_CASE("eval runtime: the tolerance resolves the quantization and the table", "[eval][runtime]") {
    Fixture fx;
    const int n = 200;
    const int64_t P = 40;
    const std::string spec = "patternkv-table:2:g8:w16:" + fx.table;
    // Another table read by the runtime only: its NLL leaves the simulation's.
    const NllPair wrong = run_both(fx, spec, n, P, fx.other_table);
    const Diff dw = nll_diff(wrong.half, wrong.rt, P);
    INFO("wrong table: max |dNLL| " << dw.max_decode << ", mean " << dw.mean_decode);
    CHECK(dw.max_prefill == 0.0);
    CHECK(dw.max_decode > 10 * kHalfMaxTol);
    CHECK(dw.mean_decode > 10 * kHalfMeanTol);
    // And 2-bit KIVI is far from fp16: the comparison above would see a method mix-up.
    const NllPair kivi = run_both(fx, "kivi:2:g8:w16", n, P), fp16 = run_both(fx, "fp16", n, P);
    CHECK(nll_diff(kivi.rt, fp16.rt, P).mean_decode > 10 * kHalfMeanTol);
}

TEST_CASE("eval runtime: run_eval reports the simulated figures and its engine", "[eval][runtime]") {
    Fixture fx;
    const std::vector<std::string> kv = {"fp16", "kivi:2:g8:w16", "patternkv-table:2:g8:w16:" + fx.table};
    const EvalResult host = run_eval(fx.config(kv, EvalAttention::host));
    const EvalResult rt = run_eval(fx.config(kv, EvalAttention::runtime));
    REQUIRE(rt.methods.size() == 3);
    // The reference is the same plain forward (its sums may be added in another order).
    CHECK(rt.reference.nll_dec == Approx(host.reference.nll_dec).epsilon(1e-10));
    for (size_t m = 0; m < 3; ++m) {
        INFO(kv[m]);
        // The mean NLL over decode positions (measured |Δ| 1e-3, 0.015, 0.031 nats: the
        // binary16 storage above) and the prompt's, which attend over exact K/V in both.
        const double n = static_cast<double>(rt.scored_decode);
        const double n_prompt = static_cast<double>(rt.scored_all - rt.scored_decode);
        CHECK(std::fabs(rt.methods[m].nll_dec - host.methods[m].nll_dec) / n <= (m == 0 ? kFp16MeanTol : 0.1));
        CHECK(std::fabs((rt.methods[m].nll_all - rt.methods[m].nll_dec) -
                        (host.methods[m].nll_all - host.methods[m].nll_dec)) /
                  n_prompt <=
              kPromptTol);
        CHECK(rt.methods[m].k_bits == Approx(host.methods[m].k_bits).epsilon(1e-12));
        CHECK(rt.methods[m].v_bits == Approx(host.methods[m].v_bits).epsilon(1e-12));
        CHECK(rt.methods[m].runtime);
        CHECK_FALSE(host.methods[m].runtime);
    }
    const nlohmann::json j = eval_report_json(rt);
    CHECK(j["provenance"]["settings"]["engine"] == "runtime");
    CHECK(j["run"]["engine"] == "runtime");
    CHECK(j["methods"][1]["cache"] == "packed");
    CHECK(eval_report_json(host)["run"]["engine"] == "host");
    CHECK_THAT(render_eval_markdown(j), ContainsSubstring("Engine: runtime."));
}

TEST_CASE("eval runtime: what the packed cache cannot hold is refused up front", "[eval][runtime]") {
    Fixture fx;
    const auto refusal = [&](const std::string& spec) {
        return error_of(fx.config({"fp16", spec}, EvalAttention::runtime));
    };
    const std::string holds =
        "(the packed cache holds fp16, kivi:B and patternkv-table:B:T (B 2, 3 or 4; post-RoPE keys, no rotation))";
    CHECK(refusal("patternkv:2") ==
          "--kv 'patternkv:2': --engine runtime cannot run it: online patternkv mines its "
          "patterns from each prompt; use a calibrated table (patternkv-table) " +
              holds);
    CHECK(refusal("q4_0") == "--kv 'q4_0': --engine runtime cannot run it: q4_0 has no packed layout " + holds);
    CHECK_THAT(refusal("q8_0"), ContainsSubstring("q8_0 has no packed layout"));
    CHECK_THAT(refusal("kivi:2:rot"), ContainsSubstring("--kv 'kivi:2:rot': --engine runtime cannot run it: rotated"));
    CHECK_THAT(refusal("kivi:2:pre"), ContainsSubstring("pre-RoPE keys (:pre) are not held"));
    CHECK_THAT(refusal("kivi:2:sink1"), ContainsSubstring("exact sink tokens (:sinkN) are not held"));
    CHECK_THAT(refusal("kivi:2:out1"), ContainsSubstring("exact outliers (:outN) are not held"));
    CHECK_THAT(refusal("patternkv-table:2:pre:" + fx.table),
               ContainsSubstring("--engine runtime cannot run it: pre-RoPE keys"));
    CHECK_THAT(refusal("kivi:8"), ContainsSubstring("code width 8 is not packed (expected 2, 3 or 4)"));
    CHECK_THAT(refusal("kivi:2:g16:w24"), ContainsSubstring("group 16 does not divide window 24"));

    // A table with a width per KV head, which patternkv-table:auto would run.
    PatternTable a = fx.table_of(9);
    a.alloc_budget = 7.0;
    a.alloc_bits = 6.0;
    for (PatternLayer& L : a.layers) L.k_bits = {2, 4}, L.v_bits = {2, 2};
    const std::string alloc = fx.dir.path("a.safetensors");
    write_pattern_table(a, alloc, false);
    CHECK(refusal("patternkv-table:auto:g8:w16:" + alloc) ==
          "--kv 'patternkv-table:auto:g8:w16:" + alloc + "': --engine runtime cannot run it: " + alloc +
              " records a width per KV head (budget 7 bits per element) and the packed cache runs one width");

    // auto on a table of one width runs at that width.
    CHECK(error_of(fx.config({"patternkv-table:auto:g8:w16:" + fx.table}, EvalAttention::runtime)).empty());

    // A device engine: the packed cache's attention runs on the CPU.
    EvalConfig dev = fx.config({"kivi:2"}, EvalAttention::runtime);
    dev.engine = [](const LlamaModel& m) { return make_cpu_engine(m); };
    CHECK_THAT(error_of(dev), ContainsSubstring("--engine runtime: the packed cache's decode attention runs on the "
                                                "CPU: expected --device cpu"));

    // Sliding-window layers: the packed cache keeps every token.
    LlamaHparams hp = LlamaModel(GgufFile::open(fx.model)).hparams();
    hp.sliding_window = 64;
    hp.swa_layer = {1, 0};
    CHECK_THROWS_WITH(check_runtime_spec(parse_kv_spec("kivi:2"), hp, "m.gguf"),
                      "--kv 'kivi:2': --engine runtime cannot run m.gguf: it has sliding-window layers (window 64), "
                      "which the packed cache does not hold (it keeps every token)");

    // A table of another model is refused by the runtime's reader, naming the spec.
    LlamaHparams other = LlamaModel(GgufFile::open(fx.model)).hparams();
    CHECK_THROWS_WITH(open_runtime_table(parse_kv_spec("patternkv-table:2:" + fx.table), other, std::string(64, 'b')),
                      ContainsSubstring("--kv 'patternkv-table:2:" + fx.table + "': --engine runtime: pattern table"));
    // The refusals come before any forward pass: the host engine runs the same specs.
    CHECK(error_of(fx.config({"patternkv:2", "q4_0"}, EvalAttention::host)).empty());
}
