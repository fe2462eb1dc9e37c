// The packed cache against pkv's cache simulation: the same tokens, prefill, R, G, bits and
// table give the same reconstruction bit for bit, at every decode step and at the end, and
// the bits it reports are SimBits'.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "catch.h"
#include "packed_fixture.h"
#include "pkv/kvcache/simulate.h"

using pkv_rt::CacheMethod;
using pkv_rt::KvPart;
using rt_test::PackedCase;

namespace {

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Runs one case through the packed cache and simulate_cache and compares them.
void check_against_simulation(const PackedCase& c, uint32_t seed) {
    const rt_test::PackedData d = rt_test::make_data(c, seed);
    pkv_rt::PackedCache cache(rt_test::make_config(c, c.n));
    rt_test::give_patterns(cache, c, d);

    std::vector<pkv::SimResult> sim;  // [head * 2 + part]
    std::vector<pkv::TableHeadView> tk(static_cast<size_t>(c.n_head_kv)), tv(tk.size());
    for (int h = 0; h < c.n_head_kv; ++h) {
        const size_t i = static_cast<size_t>(h);
        pkv::SimParams p;
        p.method = c.method == CacheMethod::kivi ? pkv::KvMethod::kivi : pkv::KvMethod::patternkv_table;
        p.bits = c.bits;
        p.group = c.G;
        p.window = c.R;
        tk[i] = {d.k_patterns[i].data(), c.M, d.k_clip[i], 0.0, c.assign == pkv_rt::Assign::l2};
        tv[i] = {d.v_patterns[i].data(), c.M, d.v_clip[i], d.gate_z[i], c.assign == pkv_rt::Assign::l2};
        p.table_k = &tk[i];
        p.table_v = &tv[i];
        sim.push_back(pkv::simulate_cache(p, pkv::KvTensor::k, d.k[i].data(), c.n, c.D, c.P));
        sim.push_back(pkv::simulate_cache(p, pkv::KvTensor::v, d.v[i].data(), c.n, c.D, c.P));
    }

    // The cache seen by query t: x̂_j where f(j) <= t, x_j otherwise (t = n: the final state).
    auto compare = [&](int64_t t) {
        const int64_t n = cache.tokens(0, 0);
        std::vector<float> out(static_cast<size_t>(n * c.D));
        int64_t mismatches = 0, quantized = 0, wrong_counts = 0, wrong_indices = 0;
        for (int h = 0; h < c.n_head_kv; ++h)
            for (int part = 0; part < 2; ++part) {
                const pkv::SimResult& r = sim[static_cast<size_t>(h * 2 + part)];
                const std::vector<float>& x = (part ? d.v : d.k)[static_cast<size_t>(h)];
                cache.dequantize(0, 0, h, static_cast<KvPart>(part), out.data());
                int64_t part_quantized = 0;
                for (int64_t j = 0; j < n; ++j) {
                    const bool q = r.flush_step[static_cast<size_t>(j)] <= t;
                    part_quantized += q;
                    for (int e = 0; e < c.D; ++e) {
                        const size_t at = static_cast<size_t>(j * c.D + e);
                        mismatches += !same_bits(out[at], q ? r.recon[at] : x[at]);
                    }
                }
                // The stored pattern indices and gate bits are the simulation's.
                const pkv_rt::BlockLayout& L = cache.layout(static_cast<KvPart>(part));
                for (int64_t j = 0; j < cache.quantized(0, 0, static_cast<KvPart>(part)) && L.index >= 0; ++j) {
                    const uint8_t* blk = cache.block(0, 0, h, static_cast<KvPart>(part), j / c.R);
                    const int i = static_cast<int>(j % c.R);
                    wrong_indices += blk[L.index + i] != r.pattern[static_cast<size_t>(j)];
                    if (part == 1)
                        wrong_indices += ((blk[L.gate + i / 8] >> (i % 8)) & 1) != r.gate[static_cast<size_t>(j)];
                }
                // Quantized tokens are a prefix, as long as the simulation's.
                wrong_counts += cache.quantized(0, 0, static_cast<KvPart>(part)) != part_quantized;
                quantized += part_quantized;
            }
        INFO("step " << t << " of n " << c.n << ", P " << c.P);
        CHECK(mismatches == 0);
        CHECK(wrong_counts == 0);
        CHECK(wrong_indices == 0);
        return quantized;
    };

    // The prompt in two chunks (the split must not matter), then one token per step.
    rt_test::append_range(cache, c, d, 0, 0, c.P / 3);
    rt_test::append_range(cache, c, d, 0, c.P / 3, c.P);
    cache.end_prefill(0);
    compare(c.P);  // the prompt's whole blocks are quantized (f = P), its tail is exact
    for (int64_t t = c.P; t < c.n; ++t) {
        rt_test::append_range(cache, c, d, 0, t, t + 1);
        compare(t);
    }
    cache.flush(0);
    const int64_t quantized = compare(c.n);
    CHECK(quantized > 0);

    // Bits as analyze/eval count them, and the packed bytes behind them.
    for (int h = 0; h < c.n_head_kv; ++h)
        for (int part = 0; part < 2; ++part) {
            const pkv::SimBits& s = sim[static_cast<size_t>(h * 2 + part)].bits;
            const pkv_rt::CacheBits b = cache.counted_bits(0, 0, h, static_cast<KvPart>(part));
            CHECK(b.codes == s.codes);
            CHECK(b.params == s.params);
            CHECK(b.index == s.index);
            CHECK(b.gate == s.gate);
            CHECK(b.window == s.window);
            CHECK(s.bank == 0.0);
            CHECK(b.total() == s.total());
            const int64_t nq = cache.quantized(0, 0, static_cast<KvPart>(part));
            const int64_t blocks = (nq + c.R - 1) / c.R;
            CHECK(cache.packed_bytes(0, 0, h, static_cast<KvPart>(part)) ==
                  blocks * cache.layout(static_cast<KvPart>(part)).bytes + (c.n - nq) * c.D * 2);
        }
}

}  // namespace

TEST_CASE("packed cache: patternkv-table equals simulate_cache bit for bit") {
    PackedCase c;
    SECTION("D 64, M 16, 2 bits, prefill mid-block, n not a multiple of R") { check_against_simulation(c, 1); }
    SECTION("D 128, M 256, 3 bits, G below R, no prefill, L2 assignment") {
        c.D = 128, c.M = 256, c.bits = 3, c.R = 32, c.G = 16, c.n = 100, c.P = 0, c.assign = pkv_rt::Assign::l2;
        check_against_simulation(c, 2);
    }
    SECTION("D 64, M 1, 4 bits, G 8 of R 16, prefill 40") {
        c.M = 1, c.bits = 4, c.R = 16, c.G = 8, c.n = 77, c.P = 40;
        check_against_simulation(c, 3);
    }
    SECTION("D 64, M 16, R = G = 128 > D (V groups of D), prefill a whole block") {
        c.R = c.G = 128, c.n = 300, c.P = 128;
        check_against_simulation(c, 4);
    }
    SECTION("D 128, M 256, 2 bits, R = G = 128, prefill 200") {
        c.D = 128, c.M = 256, c.R = c.G = 128, c.n = 333, c.P = 200;
        check_against_simulation(c, 5);
    }
}

TEST_CASE("packed cache: kivi equals simulate_cache bit for bit") {
    PackedCase c;
    c.method = CacheMethod::kivi;
    SECTION("D 64, 2 bits, prefill mid-block") { check_against_simulation(c, 11); }
    SECTION("D 128, 3 bits, G 16 of R 32, no prefill") {
        c.D = 128, c.bits = 3, c.G = 16, c.n = 100, c.P = 0;
        check_against_simulation(c, 12);
    }
    SECTION("D 64, 4 bits, R = G = 128, prefill 250") {
        c.bits = 4, c.R = c.G = 128, c.n = 301, c.P = 250;
        check_against_simulation(c, 13);
    }
}

TEST_CASE("packed cache: block layout and bytes per block") {
    pkv_rt::CacheConfig cfg;
    cfg.n_layer = 1, cfg.n_head = 32, cfg.n_head_kv = 8, cfg.head_dim = 128, cfg.max_tokens = 1024;
    cfg.k_patterns = cfg.v_patterns = 256;
    // Llama-3-8B's head at 2 bits, R = G = 128, M = 256: every section is whole 16-byte
    // units, so a block's bytes are exactly the bits pkv counts for its 128 tokens.
    const pkv_rt::BlockLayout k = pkv_rt::block_layout(cfg, KvPart::k), v = pkv_rt::block_layout(cfg, KvPart::v);
    CHECK(k.row_bytes == 32);
    CHECK(k.codes == 0);
    CHECK(k.params == 4096);
    CHECK(k.param_groups == 128);
    CHECK(k.index == 4096 + 512);
    CHECK(k.gate == -1);
    CHECK(k.bytes == 4736);
    CHECK(k.bytes * 8 == 128 * (2 * 128 + 32 + 8));  // codes + per-channel params + index
    CHECK(v.param_groups == 128);
    CHECK(v.gate == 4736);
    CHECK(v.bytes == 4752);
    CHECK(v.bytes * 8 == 128 * (2 * 128 + 32 + 8 + 1));  // + the gate bit
    // 3 bits at D = 64: rows of 24 bytes; M = 16 counts 4 index bits but stores 8.
    cfg.head_dim = 64, cfg.bits = 3, cfg.k_patterns = cfg.v_patterns = 16, cfg.window = 32, cfg.group = 32;
    const pkv_rt::BlockLayout k3 = pkv_rt::block_layout(cfg, KvPart::k);
    CHECK(k3.row_bytes == 24);
    CHECK(k3.params == 768);
    CHECK(k3.index == 768 + 256);
    CHECK(k3.bytes == 768 + 256 + 32);
    // KIVI: no index, no gate.
    cfg.method = CacheMethod::kivi;
    const pkv_rt::BlockLayout kv = pkv_rt::block_layout(cfg, KvPart::v);
    CHECK(kv.index == -1);
    CHECK(kv.gate == -1);
    CHECK(kv.param_groups == 32 * 2);  // per token, groups of min(G, D) = 32 channels
    CHECK(kv.bytes == 768 + 32 * 2 * 4);
}

TEST_CASE("packed cache: codes pack as one little-endian bit stream per token") {
    for (const int bits : {2, 3, 4}) {
        uint8_t row[24] = {};
        for (int i = 0; i < 40; ++i) pkv_rt::pack_code(row, i, bits, static_cast<unsigned>((i * 5 + 3) % (1 << bits)));
        for (int i = 0; i < 40; ++i)
            CHECK(pkv_rt::packed_code(row, i, bits) == static_cast<unsigned>((i * 5 + 3) % (1 << bits)));
    }
    // 3 bits: codes 0..7 -> 0b111'110'101'100'011'010'001'000 = 0xfac688, little-endian.
    uint8_t row[3] = {};
    for (int i = 0; i < 8; ++i) pkv_rt::pack_code(row, i, 3, static_cast<unsigned>(i));
    CHECK(row[0] == 0x88);
    CHECK(row[1] == 0xc6);
    CHECK(row[2] == 0xfa);
    // 2 bits: code i of a byte at bits 2i.
    uint8_t two[1] = {};
    for (int i = 0; i < 4; ++i) pkv_rt::pack_code(two, i, 2, static_cast<unsigned>(i));
    CHECK(two[0] == 0xe4);
}

TEST_CASE("packed cache: f32_to_f16 rounds as pkv::float_to_half") {
    std::mt19937 rng(7);
    std::uniform_int_distribution<uint32_t> any;
    int64_t differ = 0;
    for (int i = 0; i < 200000; ++i) {
        uint32_t u = any(rng);
        float f;
        std::memcpy(&f, &u, 4);
        // Half the draws near binary16's range, subnormals and ties included.
        if (i % 2) f = std::ldexp(static_cast<float>(u % 4096) - 2048.0f, static_cast<int>(u % 40) - 30);
        differ += pkv_rt::f32_to_f16(f) != pkv::float_to_half(f);
    }
    CHECK(differ == 0);
}
