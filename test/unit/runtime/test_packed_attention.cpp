// decode_attention_ref against a plain softmax attention over the dequantized cache, and
// the packed cache's refusals (bad configurations, tables, appends and query batches).
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "catch.h"
#include "packed_fixture.h"
#include "table_fixture.h"

using pkv_rt::CacheMethod;
using pkv_rt::KvPart;
using rt_test::error_of;
using rt_test::Floats;
using rt_test::PackedCase;
using rt_test::plain_attention;

namespace {

// Fills a cache of two sequences (the second one shorter, its own data) to mid-decode, then
// compares decode_attention_ref with plain attention over dequantize().
void check_attention(PackedCase c) {
    c.n_seq = 2;
    const rt_test::PackedData d0 = rt_test::make_data(c, 21), d1 = rt_test::make_data(c, 22);
    pkv_rt::PackedCache cache(rt_test::make_config(c, c.n));
    rt_test::give_patterns(cache, c, d0);  // one table serves the batch
    const int64_t n1 = c.n - c.R / 2 - 3;
    rt_test::append_range(cache, c, d0, 0, 0, c.P);
    rt_test::append_range(cache, c, d1, 1, 0, c.P);
    cache.end_prefill(0);
    cache.end_prefill(1);
    for (int64_t t = c.P; t < c.n; ++t) {
        rt_test::append_range(cache, c, d0, 0, t, t + 1);
        if (t < n1) rt_test::append_range(cache, c, d1, 1, t, t + 1);
    }
    const int H = c.n_head, D = c.D;
    Floats q(static_cast<size_t>(c.n_seq * H * D)), out(q.q.size() * 4), out_split(q.q.size() * 4);
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (size_t i = 0; i < static_cast<size_t>(c.n_seq * H * D); ++i) q.data()[i] = normal(rng);
    cache.decode_attention_ref(0, q.data(), c.n_seq, out.data());
    cache.decode_attention_ref(0, q.data(), c.n_seq, out_split.data(), 2);

    double worst = 0.0, worst_split = 0.0, worst_exact = 0.0, vmax = 0.0;
    for (int s = 0; s < c.n_seq; ++s) {
        const int64_t n = cache.tokens(0, s);
        std::vector<float> k(static_cast<size_t>(n * D)), v(k.size());
        for (int qh = 0; qh < H; ++qh) {
            const int h = qh / (H / c.n_head_kv);
            cache.dequantize(0, s, h, KvPart::k, k.data());
            cache.dequantize(0, s, h, KvPart::v, v.data());
            for (const float x : v) vmax = std::max(vmax, static_cast<double>(std::fabs(x)));
            const float* qv = q.data() + (s * H + qh) * D;
            const std::vector<double> ref = plain_attention(qv, k.data(), v.data(), n, D);
            // The unquantized stream, to show the comparison resolves the quantization.
            const rt_test::PackedData& dd = s ? d1 : d0;
            const std::vector<float> xk(dd.k[static_cast<size_t>(h)].begin(),
                                        dd.k[static_cast<size_t>(h)].begin() + n * D);
            const std::vector<float> xv(dd.v[static_cast<size_t>(h)].begin(),
                                        dd.v[static_cast<size_t>(h)].begin() + n * D);
            const std::vector<double> exact = plain_attention(qv, xk.data(), xv.data(), n, D);
            for (int e = 0; e < D; ++e) {
                const size_t at = static_cast<size_t>((s * H + qh) * D + e);
                worst = std::max(worst, std::fabs(out.data()[at] - ref[static_cast<size_t>(e)]));
                worst_split = std::max(worst_split, std::fabs(out_split.data()[at] - ref[static_cast<size_t>(e)]));
                worst_exact =
                    std::max(worst_exact, std::fabs(ref[static_cast<size_t>(e)] - exact[static_cast<size_t>(e)]));
            }
        }
    }
    // fp32 against double: the scores are D-term (plus pattern and zero-point) dot products
    // and the outputs n-term weighted sums, each within a few hundred float roundings
    // (u = 2^-24) of values of size |q||k| ~ D and max|v̂|; 1e-4 max|v̂| bounds both with
    // margin for n <= 350, D <= 128.
    const double tol = 1e-4 * vmax;
    INFO("worst " << worst << ", split " << worst_split << ", quantization " << worst_exact << ", tol " << tol);
    CHECK(worst <= tol);
    CHECK(worst_split <= tol);
    if (c.method != CacheMethod::fp16) CHECK(worst_exact > 100 * tol);
}

}  // namespace

TEST_CASE("packed cache: decode_attention_ref equals softmax attention over the dequantized cache") {
    PackedCase c;
    c.n = 200, c.P = 70;
    SECTION("patternkv-table, D 64, M 16, 2 bits") { check_attention(c); }
    SECTION("patternkv-table, D 128, M 256, 3 bits, G 16") {
        c.D = 128, c.M = 256, c.bits = 3, c.G = 16;
        check_attention(c);
    }
    SECTION("patternkv-table, M 1, 4 bits, GQA 8:1") {
        c.M = 1, c.bits = 4, c.n_head = 8, c.n_head_kv = 1;
        check_attention(c);
    }
    SECTION("kivi, 2 bits") {
        c.method = CacheMethod::kivi;
        check_attention(c);
    }
    SECTION("fp16") {
        c.method = CacheMethod::fp16;
        check_attention(c);
    }
}

TEST_CASE("packed cache: configurations it cannot lay out are refused") {
    PackedCase c;
    auto cfg = rt_test::make_config(c, 100);
    auto refused = [](pkv_rt::CacheConfig bad) { return error_of([&] { pkv_rt::PackedCache cache(bad); }); };
    CHECK(refused(cfg).empty());
    auto bad = cfg;
    bad.group = 24;
    CHECK(refused(bad) ==
          "packed cache: group G 24 does not divide window R 32: a K block must hold whole G-token groups");
    bad = cfg;
    bad.bits = 8;
    CHECK(refused(bad) == "packed cache: bits: expected 2, 3 or 4, got 8");
    bad = cfg;
    bad.v_patterns = 257;
    CHECK(refused(bad) == "packed cache: v_patterns: expected 1..256 (uint8 indices), got 257");
    bad = cfg;
    bad.n_head = 5;
    CHECK(refused(bad) == "packed cache: n_head: expected a multiple of n_head_kv 2, got 5");
    bad = cfg;
    bad.head_dim = 48, bad.group = 32;
    CHECK(refused(bad) == "packed cache: group 32 does not divide head_dim 48");
}

TEST_CASE("packed cache: appends past the allocation, without patterns or of non-finite rows are refused") {
    PackedCase c;
    c.n = 40;
    const rt_test::PackedData d = rt_test::make_data(c, 9);
    pkv_rt::PackedCache cache(rt_test::make_config(c, 40));
    CHECK(
        error_of([&] { rt_test::append_range(cache, c, d, 0, 0, 1); }) ==
        "packed cache: append: layer 0 sequence 0: KV head 0 has no K patterns; call set_table or set_patterns first");
    rt_test::give_patterns(cache, c, d);
    rt_test::append_range(cache, c, d, 0, 0, 30);
    cache.end_prefill(0);
    std::vector<float> rows(static_cast<size_t>(11 * c.n_head_kv * c.D), 0.5f);
    CHECK(error_of([&] { cache.append(0, 0, rows.data(), rows.data(), 11); }) ==
          "packed cache: append: layer 0 sequence 0: 30 + 11 tokens exceed the 40 allocated per sequence");
    CHECK(cache.tokens(0, 0) == 30);  // nothing of the refused call was written
    rows[5] = 70000.0f;
    CHECK(error_of([&] { cache.append(0, 0, rows.data(), rows.data(), 1); })
              .find("element 5 of the new rows is not a "
                    "finite binary16 value") != std::string::npos);
    CHECK(cache.tokens(0, 0) == 30);
    CHECK(error_of([&] { cache.append(1, 0, rows.data(), rows.data(), 1); }) ==
          "packed cache: append: layer 1 is outside [0, 1)");
    CHECK(error_of([&] {
              cache.set_patterns(0, 0, KvPart::k, d.k_patterns[0].data(), c.M, 1.0f, 0.0, pkv_rt::Assign::minmax);
          }) ==
          "packed cache: set_patterns: layer 0 KV head 0 K: the layer already holds tokens; set patterns before the "
          "first append");
}

TEST_CASE("packed cache: misaligned or mismatched query batches and prefill queries are refused") {
    PackedCase c;
    c.n = 40, c.n_seq = 2;
    const rt_test::PackedData d = rt_test::make_data(c, 10);
    pkv_rt::PackedCache cache(rt_test::make_config(c, 40));
    rt_test::give_patterns(cache, c, d);
    for (int s = 0; s < 2; ++s) rt_test::append_range(cache, c, d, s, 0, 20);
    Floats q(static_cast<size_t>(2 * c.n_head * c.D + 4)), out(q.q.size() * 4);
    cache.end_prefill(0);
    CHECK(error_of([&] { cache.decode_attention_ref(0, q.data(), 2, out.data()); }) ==
          "packed cache: decode_attention_ref: sequence 1 is still in its prefill (attend over the prompt in full "
          "precision; call end_prefill first)");
    cache.end_prefill(1);
    CHECK(error_of([&] { cache.decode_attention_ref(0, q.data(), 2, out.data()); }).empty());
    CHECK(error_of([&] { cache.decode_attention_ref(0, q.data(), 1, out.data()); }) ==
          "packed cache: decode_attention_ref: a query batch of 1 sequences, expected one query per sequence (2)");
    CHECK(error_of([&] { cache.decode_attention_ref(0, q.data() + 1, 2, out.data()); }) ==
          "packed cache: decode_attention_ref: the query array is not aligned to 16 bytes");
    CHECK(error_of([&] { cache.decode_attention_ref(0, q.data(), 2, out.data() + 2); }) ==
          "packed cache: decode_attention_ref: the output array is not aligned to 16 bytes");
    CHECK(error_of([&] { cache.end_prefill(1); }) ==
          "packed cache: end_prefill: sequence 1 has already left its prefill");
}

TEST_CASE("packed cache: set_table takes a table of its model and refuses another") {
    using namespace rt_test;
    TableSpec s = default_spec(false, 3);
    pkv_rt::CacheConfig cfg;
    cfg.n_layer = kLayers, cfg.n_head = kHeads, cfg.n_head_kv = kHeadsKv, cfg.head_dim = kDim;
    cfg.max_tokens = 64, cfg.window = 16, cfg.group = 8, cfg.bits = 2, cfg.k_patterns = kMk, cfg.v_patterns = kMv;
    {
        pkv_rt::PackedCache cache(cfg);
        CHECK(
            error_of([&] { cache.set_table(parse(encode(s))); }) ==
            "packed cache: pattern table has no patterns for layer 1: a patternkv-table cache needs every layer (keep "
            "uncalibrated layers in an fp16 cache)");
    }
    // Give layer 1 layer 0's tensors, so that the table covers every layer.
    for (const char* t : {"k_patterns", "v_patterns", "k_clip", "v_clip", "v_gate_z", "k_counts", "v_counts"}) {
        pkv::StTensor x = s.tensors.at(std::string("layers.0.") + t);
        x.name = std::string("layers.1.") + t;
        s.tensors[x.name] = x;
    }
    s.meta["pkv.layers"] = "0,1,2";
    s.meta["pkv.layers.window"] = "512,512,0";
    s.meta["pkv.layers.rope_base"] = "10000,10000,1000000";
    const pkv_rt::PatternTable table = parse(encode(s));
    pkv_rt::PackedCache cache(cfg);
    cache.set_table(table);
    {
        pkv_rt::PackedCache used(cfg);
        used.set_table(table);
        std::vector<float> rows(static_cast<size_t>(kHeadsKv * kDim), 0.25f);
        used.append(2, 0, rows.data(), rows.data(), 1);
        CHECK(error_of([&] { used.set_table(table); }) ==
              "packed cache: set_table: the cache already holds tokens; set the table before the first append");
    }
    for (int l = 0; l < kLayers; ++l)
        for (int h = 0; h < kHeadsKv; ++h) {
            const pkv_rt::HeadView hv = table.head(l, h);
            CHECK(std::equal(hv.k_patterns, hv.k_patterns + kMk * kDim, cache.patterns(l, h, KvPart::k)));
            CHECK(std::equal(hv.v_patterns, hv.v_patterns + kMv * kDim, cache.patterns(l, h, KvPart::v)));
            CHECK(cache.clip(l, h, KvPart::k) == hv.k_clip);
            CHECK(cache.clip(l, h, KvPart::v) == hv.v_clip);
            CHECK(cache.gate_z(l, h) == static_cast<double>(hv.v_gate_z));
        }
    auto refused = [&](pkv_rt::CacheConfig other) {
        pkv_rt::PackedCache c2(other);
        return error_of([&] { c2.set_table(table); });
    };
    auto other = cfg;
    other.bits = 3;
    CHECK(
        refused(other) ==
        "packed cache: pattern table bits is 2 but the cache's is 3: the table belongs to another model or quantizer");
    other = cfg;
    other.head_dim = 16, other.group = 16;
    CHECK(refused(other) ==
          "packed cache: pattern table head_dim is 8 but the cache's is 16: the table belongs to "
          "another model or quantizer");
    other = cfg;
    other.n_head_kv = 4;
    CHECK(refused(other).find("n_head_kv is 2 but the cache's is 4") != std::string::npos);
    other = cfg;
    other.k_patterns = 8;
    CHECK(refused(other).find("k_patterns is 4 but the cache's is 8") != std::string::npos);
    other = cfg;
    other.method = CacheMethod::kivi;
    CHECK(refused(other) == "packed cache: set_patterns: layer 0 KV head 0 K: a kivi cache takes no patterns");
}
