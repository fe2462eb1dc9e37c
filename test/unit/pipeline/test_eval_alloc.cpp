// A table with a per-head width allocation (pkv.quant.allocation) in pkv eval and in the
// export plans: patternkv-table:auto runs each head at its width and reports the
// allocation's bits per element; a fixed width is refused for such a table; the plans
// carry the widths.
#include <fstream>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/sha256.h"
#include "pkv/kvcache/kv_spec.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/pipeline/bit_alloc.h"
#include "pkv/pipeline/eval.h"
#include "pkv/pipeline/export_lists.h"
#include "pkv/table/pattern_table.h"
#include "support/scratch_dir.h"
#include "support/tiny_model.h"
#include "unit/table/table_fixture.h"

using namespace pkv;

namespace {

constexpr int kD = 32, kMk = 4, kMv = 5, kG = 8, kR = 16;

// Units (layer, head 0, K then V) of a 3-layer, 1-KV-head table with made-up errors in
// which layer 1's values are the most fragile.
std::vector<AllocUnit> units() {
    std::vector<AllocUnit> u;
    for (int l = 0; l < 3; ++l)
        for (KvTensor t : {KvTensor::k, KvTensor::v}) {
            AllocUnit a;
            const double scale = (l == 1 && t == KvTensor::v) ? 50.0 : 1.0 + l;
            for (size_t w = 0; w < kAllocWidths.size(); ++w) {
                a.cost[w] = table_element_bits(t, kAllocWidths[w], kD, t == KvTensor::k ? kMk : kMv, kG, kR);
                a.error[w] = kAllocWidths[w] == 16 ? 0.0 : scale / double(1 << (2 * kAllocWidths[w]));
            }
            u.push_back(a);
        }
    return u;
}

PatternTable allocated_table(const std::string& model_path, double budget) {
    PatternTable t = pkv_test::make_table({0, 1, 2}, 1, kMk, kMv, kD);
    t.model.sha256 = sha256_file(model_path);
    t.model.n_layer = 3;
    t.model.n_head = 2;
    t.group = kG;
    t.window = kR;
    const BitAllocation a = allocate_bits(units(), budget);
    t.alloc_budget = budget;
    t.alloc_bits = a.bits;
    for (size_t l = 0; l < 3; ++l) {
        t.layers[l].k_bits = {a.widths[2 * l]};
        t.layers[l].v_bits = {a.widths[2 * l + 1]};
    }
    return t;
}

struct Fixture {
    pkv_test::ScratchDir dir;
    std::string model = dir.path("tiny.gguf"), text = dir.path("text.txt");
    Fixture() {
        pkv::test::TinyModelSpec ms;
        ms.n_embd = 64;
        ms.n_head = 2;
        ms.n_head_kv = 1;  // head_dim 32
        ms.n_layer = 3;
        pkv::test::write_tiny_model(model, ms);
        std::ofstream f(text);
        for (int i = 0; i < 40; ++i) f << "then the other " << i << " went in there, on the river.\n";
    }
    EvalConfig config(std::vector<std::string> kv) const {
        EvalConfig c;
        c.model_path = model;
        c.text_paths = {text};
        c.n_tokens = 256;
        c.ctx = 128;     // two sequences of 128 tokens
        c.prefill = 32;  // P and n - P multiples of R: every token is flushed
        c.kv = std::move(kv);
        return c;
    }
};

}  // namespace

TEST_CASE("kv spec: patternkv-table:auto takes the table's widths", "[eval][allocation]") {
    const KvSpec s = parse_kv_spec("patternkv-table:auto:g8:t.safetensors");
    CHECK(s.table_auto);
    CHECK(s.table_path == "t.safetensors");
    CHECK(s.label() == "patternkv-table:auto:g8:t.safetensors");
    CHECK_THROWS_WITH(parse_kv_spec("kivi:auto"), ContainsSubstring("'auto' (the table's own widths) applies to "
                                                                    "patternkv-table only"));
    CHECK_THROWS_WITH(parse_kv_spec("patternkv-table:2:auto:t.safetensors"), ContainsSubstring("is given twice"));
    CHECK_THROWS_WITH(parse_kv_spec("patternkv-table:t.safetensors"), ContainsSubstring("auto: the table's own"));
}

TEST_CASE("eval: an allocated table runs at its widths and reports its bits per element", "[eval][allocation]") {
    Fixture fx;
    const std::string uniform_path = fx.dir.path("u.safetensors"), alloc_path = fx.dir.path("a.safetensors");
    // Every head at 2 bits costs 6.09 bits per element here (G = 8, R = 16, D = 32: the scales
    // and zeros weigh 4 bits); a budget one bit above it.
    const double budget = 7.0;
    PatternTable uniform = allocated_table(fx.model, budget);
    write_pattern_table(uniform, alloc_path, false);
    uniform.alloc_budget = uniform.alloc_bits = 0.0;
    for (PatternLayer& L : uniform.layers) L.k_bits.clear(), L.v_bits.clear();
    write_pattern_table(uniform, uniform_path, false);
    const PatternTable t = read_pattern_table(alloc_path);
    REQUIRE(t.alloc_bits <= budget);
    CHECK(t.layers[1].v_bits[0] > t.layers[0].v_bits[0]);  // the fragile unit is widened

    const EvalResult r =
        run_eval(fx.config({"patternkv-table:auto:g8:w16:" + alloc_path, "patternkv-table:auto:g8:w16:" + uniform_path,
                            "patternkv-table:2:g8:w16:" + uniform_path}));
    const auto bits = [&](size_t m) {
        const EvalAccum& a = r.methods[m];
        return (a.k_bits + a.v_bits) / (2.0 * a.elements);
    };
    CHECK(bits(0) == Approx(t.alloc_bits).epsilon(1e-12));
    CHECK(bits(0) <= budget);
    CHECK(bits(1) == Approx(alloc_uniform_bits(units(), 0)).epsilon(1e-12));  // auto on a uniform table: its width
    CHECK(bits(2) == bits(1));
    CHECK(r.methods[2].kl_dec == r.methods[1].kl_dec);
    CHECK(r.methods[0].kl_dec < r.methods[1].kl_dec);  // wider heads, closer to fp16
    CHECK_FALSE(r.methods[0].cache_on_device);

    // A fixed width would run every head at it, against the fits the table holds: refused.
    try {
        run_eval(fx.config({"patternkv-table:2:g8:w16:" + alloc_path}));
        FAIL("no error");
    } catch (const Error& e) {
        CHECK_THAT(e.what(), ContainsSubstring("records a width per KV head (budget 7 bits per element): evaluate it "
                                               "with patternkv-table:auto:"));
    }
}

TEST_CASE("export plans: kv_layer_bits and the plans follow the allocation", "[export][allocation]") {
    PatternTable t = pkv_test::make_table({0, 2});
    CHECK(kv_layer_bits(t, 0) == 2);
    t.alloc_budget = 4.0;
    t.alloc_bits = 3.9;
    t.layers[0].k_bits = {2, 3, 2};
    t.layers[0].v_bits = {4, 2, 2};
    t.layers[1].k_bits = {2, 2, 2};
    t.layers[1].v_bits = {2, 16, 2};
    CHECK(kv_layer_bits(t, 0) == 4);   // the widest head of the layer
    CHECK(kv_layer_bits(t, 2) == 16);  // a head kept fp16
    const KvPlan plan = make_kv_plan(t, "t.safetensors", "", {}, std::nullopt);
    CHECK(plan.fp16_layers() == std::vector<int>{1, 2, 3});
    CHECK(plan.layers[0].bits == 4);
    CHECK(plan.layers[2].from_allocation);
    CHECK(vllm_skip_text(plan) == "1 2 3\n");
    const nlohmann::json doc = kv_plan_json(plan, nlohmann::json::object());
    CHECK(doc["format_version"] == "1.1");
    CHECK(doc["layers"][0]["k_bits"] == nlohmann::json({2, 3, 2}));
    CHECK(doc["layers"][0]["v_bits"] == nlohmann::json({4, 2, 2}));
    CHECK(doc["layers"][2]["reasons"] == nlohmann::json({"allocation"}));
    CHECK_FALSE(doc["layers"][1].contains("k_bits"));
    CHECK_THAT(kv_plan_text(doc), ContainsSubstring(R"("reasons":["allocation"],"k_bits":[2,2,2],"v_bits":[2,16,2]})"));
    CHECK(modelopt_kv_config(plan, "FP8")["quantization"]["exclude_modules"].size() == 3);
}

TEST_CASE("eval: a table fitted with outliers holds them out unless the spec says otherwise", "[eval][outliers]") {
    Fixture fx;
    const std::string plain_path = fx.dir.path("p.safetensors"), out_path = fx.dir.path("o.safetensors");
    PatternTable t = allocated_table(fx.model, 7.0);
    t.alloc_budget = t.alloc_bits = 0.0;
    for (PatternLayer& L : t.layers) L.k_bits.clear(), L.v_bits.clear();
    write_pattern_table(t, plain_path, false);
    t.outliers = 2;
    write_pattern_table(t, out_path, false);
    const EvalResult r =
        run_eval(fx.config({"patternkv-table:2:g8:w16:" + out_path, "patternkv-table:2:g8:w16:out2:" + plain_path,
                            "patternkv-table:2:g8:w16:" + plain_path}));
    const auto bits = [&](size_t m) { return (r.methods[m].k_bits + r.methods[m].v_bits) / r.methods[m].elements; };
    // The table's count is held out: the same cache as the spec's own out2 on the same patterns.
    CHECK(r.specs[0].outliers == 2);
    CHECK(bits(0) == bits(1));
    CHECK(r.methods[0].kl_dec == r.methods[1].kl_dec);
    CHECK(bits(0) > bits(2));
}
