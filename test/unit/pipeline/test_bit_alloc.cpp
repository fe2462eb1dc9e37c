// Width allocation under a budget (bit_alloc.h, `pkv calibrate --bits-budget`): the budget
// holds as counted, more budget never narrows a head, the larger error is served first,
// impossible budgets are refused with one line, and calibrate records the allocation.
#include <algorithm>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/pipeline/bit_alloc.h"
#include "pkv/pipeline/calibrate.h"
#include "pkv/runtime/pattern_table_reader.h"
#include "pkv/table/pattern_table.h"
#include "unit/kvdump/dump_fixture.h"
#include "unit/pipeline/calib_fixture.h"

using namespace pkv;

namespace {

// Costs as pkv eval counts a head of D = 64 with 32 patterns, G = R = 128.
AllocUnit unit(bool value, double scale) {
    AllocUnit u;
    for (size_t w = 0; w < kAllocWidths.size(); ++w) {
        u.cost[w] = table_element_bits(value ? KvTensor::v : KvTensor::k, kAllocWidths[w], 64, 32, 128, 128);
        // An error that falls by about 4x per extra bit, as a uniform quantizer's does; 0 at fp16.
        u.error[w] = kAllocWidths[w] == 16 ? 0.0 : scale / double(1 << (2 * kAllocWidths[w]));
    }
    return u;
}

std::vector<AllocUnit> units_of(const std::vector<double>& scales) {
    std::vector<AllocUnit> u;
    for (size_t i = 0; i < scales.size(); ++i) u.push_back(unit(i % 2 == 1, scales[i]));
    return u;
}

double mean_cost(const std::vector<AllocUnit>& units, const std::vector<int>& widths) {
    double s = 0.0;
    for (size_t i = 0; i < units.size(); ++i)
        for (size_t w = 0; w < kAllocWidths.size(); ++w)
            if (kAllocWidths[w] == widths[i]) s += units[i].cost[w];
    return s / static_cast<double>(units.size());
}

std::string error_of(const std::vector<AllocUnit>& u, double budget) {
    try {
        allocate_bits(u, budget);
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::invalid_argument);
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("bit allocation: the element costs are the simulation's", "[bit_alloc]") {
    // K: 2 codes + 32/128 (scale, zero per 128 tokens of a channel) + 5/64 (index); V: 2 +
    // 32/64 (one group of min(128, 64) channels) + 6/64 (index and gate bit).
    CHECK(table_element_bits(KvTensor::k, 2, 64, 32, 128, 128) == Approx(2.0 + 0.25 + 5.0 / 64));
    CHECK(table_element_bits(KvTensor::v, 2, 64, 32, 128, 128) == Approx(2.0 + 0.5 + 6.0 / 64));
    CHECK(table_element_bits(KvTensor::k, 16, 64, 32, 128, 128) == 16.0);
    // Every head at 2 bits: the 2.46 bits pkv eval reports for a 2-bit table of this model shape.
    CHECK(alloc_uniform_bits(units_of({1, 1}), 0) == Approx(2.4609375));
}

TEST_CASE("bit allocation: meets the budget exactly as counted, closely", "[bit_alloc]") {
    const std::vector<AllocUnit> u = units_of({1, 3, 0.5, 8, 2, 2, 40, 1, 0.1, 5});
    double largest_step = 0.0;
    for (const AllocUnit& x : u)
        for (size_t w = 1; w < kAllocWidths.size(); ++w)
            largest_step = std::max(largest_step, x.cost[w] - x.cost[w - 1]);
    for (double budget : {2.4609375, 2.5, 2.75, 3.0, 3.5, 4.2, 6.0, 9.0, 16.0}) {
        INFO("budget " << budget);
        const BitAllocation a = allocate_bits(u, budget);
        REQUIRE(a.widths.size() == u.size());
        CHECK(a.bits == Approx(mean_cost(u, a.widths)).epsilon(1e-12));
        CHECK(a.bits <= budget * (1 + 1e-12));
        // It stops only when the next step does not fit: within one step (of one unit) of the budget.
        CHECK(a.bits > budget - largest_step / static_cast<double>(u.size()));
        CHECK(allocate_bits(u, budget).widths == a.widths);  // deterministic
    }
    for (int w : allocate_bits(u, 16.0).widths) CHECK(w == 16);
    for (int w : allocate_bits(u, alloc_uniform_bits(u, 0)).widths) CHECK(w == 2);
}

TEST_CASE("bit allocation: monotone in the budget", "[bit_alloc]") {
    std::vector<AllocUnit> u = units_of({1, 3, 0.5, 8, 2, 2, 40, 1, 0.1, 5, 7, 0.01});
    // Two fragile heads whose error stays high until fp16: their big steps are passed over
    // at small budgets and taken at larger ones.
    for (size_t w = 0; w + 1 < kAllocWidths.size(); ++w) u[3].error[w] = 0.5, u[6].error[w] = 0.3;
    double prev_error = 1e300;
    int fp16_from = 0, rises = 0;
    for (double budget = alloc_uniform_bits(u, 0); budget <= 16.0; budget += 0.01) {
        INFO("budget " << budget);
        const BitAllocation a = allocate_bits(u, budget);
        CHECK(a.error <= prev_error * (1 + 1e-12));
        rises += a.error < prev_error;
        prev_error = a.error;
        if (a.widths[3] == 16 && fp16_from == 0) fp16_from = static_cast<int>(budget * 100);
    }
    CHECK(rises > 20);  // the sweep moved
    // The fragile head reaches fp16 while the budget is still small (the others mostly at 3-4 bits).
    CHECK(fp16_from > 0);
    CHECK(fp16_from < 500);
}

TEST_CASE("bit allocation: the unit with the larger measured error is widened first", "[bit_alloc]") {
    // Two key heads of equal cost; room for one step of one bit.
    std::vector<AllocUnit> u = {unit(false, 1.0), unit(false, 10.0)};
    const double budget = (u[0].cost[0] + u[1].cost[1]) / 2.0;
    CHECK(allocate_bits(u, budget).widths == std::vector<int>{2, 3});
    std::swap(u[0], u[1]);
    CHECK(allocate_bits(u, budget).widths == std::vector<int>{3, 2});
    // A head whose error stays high at 8 bits (an outlier the min-max grid cannot hold) goes
    // to fp16 before the others leave 4 bits.
    std::vector<AllocUnit> f = units_of({1, 1, 1, 1, 1, 1, 1, 1});
    for (size_t w = 0; w + 1 < kAllocWidths.size(); ++w) f[2].error[w] = 1.0;
    const BitAllocation a = allocate_bits(f, 5.0);
    CHECK(a.widths[2] == 16);
    CHECK(a.widths[0] == 3);
    // At a budget too small for its jump, the jump is passed over and the others still widen.
    const BitAllocation small = allocate_bits(f, 3.0);
    CHECK(small.widths[2] == 2);
    CHECK(small.widths[0] == 3);
    CHECK(small.bits > 2.9);
}

TEST_CASE("bit allocation: a unit's weight counts its elements", "[bit_alloc]") {
    // Two equal units; the second holds a quarter of the first's elements (a 512-token ring
    // at 2048 tokens). Widening it costs a quarter as much of the budget, so it goes first
    // at equal error and the mean is weighted.
    std::vector<AllocUnit> u = units_of({1.0, 1.0});
    u[1] = unit(false, 1.0);
    u[1].weight = 0.25;
    const double lo = alloc_uniform_bits(u, 0);
    CHECK(lo == Approx(u[0].cost[0]));
    const double budget = (u[0].cost[0] + 0.25 * u[1].cost[1]) / 1.25;  // room for the light unit's step only
    const BitAllocation a = allocate_bits(u, budget);
    CHECK(a.widths == std::vector<int>{2, 3});
    CHECK(a.bits == Approx(budget));
    CHECK(a.bits <= budget * (1 + 1e-12));
    u[1].weight = 0.0;
    CHECK_THROWS_WITH(allocate_bits(u, 2.6), ContainsSubstring("unit 1: weight 0, expected a finite number > 0"));
}

TEST_CASE("bit allocation: a floor keeps every unit at or above its width", "[bit_alloc]") {
    // The fragile unit of the test above, with a floor of 4 bits: the budget starts from
    // every unit at 4 and the fragile one takes the room above that.
    std::vector<AllocUnit> f = units_of({1, 1, 1, 1, 1, 1, 1, 1});
    for (size_t w = 0; w + 1 < kAllocWidths.size(); ++w) f[2].error[w] = 1.0;
    const double at4 = alloc_uniform_bits(f, 2);
    const BitAllocation same = allocate_bits(f, at4, "--bits-budget", 4);
    for (int w : same.widths) CHECK(w == 4);
    CHECK(same.bits == Approx(at4));
    // Without the floor the same budget sends the fragile unit to fp16 and others below 4 bits.
    const BitAllocation free = allocate_bits(f, at4);
    CHECK(free.widths[2] == 16);
    CHECK(*std::min_element(free.widths.begin(), free.widths.end()) < 4);
    const BitAllocation more = allocate_bits(f, at4 + 1.6, "--bits-budget", 4);
    CHECK(more.widths[2] == 16);
    for (int w : more.widths) CHECK(w >= 4);
    CHECK(more.bits <= (at4 + 1.6) * (1 + 1e-12));
    CHECK(more.error < same.error);
    // A budget below the floor's cost, and floors that are not widths, are refused.
    CHECK_THROWS_WITH(
        allocate_bits(f, at4 - 0.1, "--bits-budget", 4),
        ContainsSubstring("below the cheapest allocation") && ContainsSubstring("every K/V head at 4 bits"));
    CHECK_THROWS_WITH(allocate_bits(f, 5.0, "--bits-budget", 5),
                      "--bits-budget floor 5 bits: expected 2, 3, 4 or 8 (the narrowest width a head may get)");
    CHECK_THROWS_WITH(allocate_bits(f, 5.0, "--bits-budget", 16), ContainsSubstring("expected 2, 3, 4 or 8"));
}

TEST_CASE("bit allocation: impossible budgets are refused with one line", "[bit_alloc]") {
    const std::vector<AllocUnit> u = units_of({1, 1});
    CHECK(error_of(u, 2.3) ==
          "--bits-budget 2.3: below the cheapest allocation, 2.4609 bits per element (every K/V head at 2 bits, "
          "counted with scales, zeros, pattern indices and gates)");
    CHECK(error_of(u, 16.5) == "--bits-budget 16.5: above 16 (every K/V head kept fp16)");
    CHECK_THAT(error_of(u, std::nan("")), ContainsSubstring("expected a number of bits per element"));
    CHECK_THAT(error_of({}, 3.0), ContainsSubstring("no K/V heads"));
    CHECK(error_of(u, 16.0).empty());
}

TEST_CASE("calibrate --bits-budget: the table records the allocation, fitted at each width", "[bit_alloc][calibrate]") {
    pkv::test::TempDir dir;
    pkv::test::SynthSpec s;
    s.seq_lengths = {64, 64, 64, 64};
    s.capture = CaptureSet::parse("k_post,v");
    const std::string dump = dir.path + "/d.h5";
    pkv::test::write_synth_dump(dump, s);
    CalibrateConfig c = pkv::test::small_calibration(dump, dir.path + "/uniform.safetensors");
    c.bits_measure_attention = false;  // the dump holds no queries
    const PatternTable uniform = run_calibrate(c);
    CHECK_FALSE(uniform.has_allocation());
    CHECK(std::string(pattern_table_format_version(uniform)) == "1.1");

    const int D = uniform.model.head_dim;
    const double k2 = table_element_bits(KvTensor::k, 2, D, 4, 8, 16),
                 v2 = table_element_bits(KvTensor::v, 2, D, 4, 8, 16);
    c.bits_budget = (k2 + v2) / 2 + 0.9;
    c.out_path = dir.path + "/alloc.safetensors";
    const PatternTable t = run_calibrate(c);
    REQUIRE(t.has_allocation());
    CHECK(t.alloc_budget == c.bits_budget);
    CHECK(t.alloc_bits <= c.bits_budget);
    CHECK(t.alloc_bits > (k2 + v2) / 2);  // some head was widened
    double sum = 0.0;
    int units = 0;
    for (const PatternLayer& L : t.layers)
        for (int h = 0; h < t.model.n_head_kv; ++h, units += 2) {
            sum += table_element_bits(KvTensor::k, L.k_bits[h], D, 4, 8, 16);
            sum += table_element_bits(KvTensor::v, L.v_bits[h], D, 4, 8, 16);
        }
    CHECK(sum / units == Approx(t.alloc_bits).epsilon(1e-12));
    // The patterns are those of the uniform table; a widened head's clip is its fit at its width.
    CHECK(t.layers[0].k_patterns == uniform.layers[0].k_patterns);
    const nlohmann::json& heads = t.calibration.at("heads");
    for (size_t i = 0; i < heads.size(); ++i) {
        const nlohmann::json& k = heads[i].at("k");
        const PatternLayer& L = t.layers[i / static_cast<size_t>(t.model.n_head_kv)];
        const size_t h = i % static_cast<size_t>(t.model.n_head_kv);
        CHECK(k.at("bits") == L.k_bits[h]);
        REQUIRE(k.at("widths").size() == 4);
        for (const nlohmann::json& f : k.at("widths"))
            if (f.at("bits") == L.k_bits[h]) CHECK(f.at("clip").get<float>() == L.k_clip[h]);
    }
    CHECK(t.calibration.at("allocation").at("measure") == "train_nmse");
    // Read back: the same allocation; format 1.2.
    const PatternTable back = read_pattern_table(c.out_path);
    CHECK(std::string(pattern_table_format_version(back)) == "1.2");
    CHECK(back.alloc_budget == t.alloc_budget);
    CHECK(back.alloc_bits == t.alloc_bits);
    for (size_t l = 0; l < t.layers.size(); ++l) {
        CHECK(back.layers[l].k_bits == t.layers[l].k_bits);
        CHECK(back.layers[l].v_bits == t.layers[l].v_bits);
    }
    // The standalone runtime reader gives every head the same widths and fitted clips.
    pkv_rt::RuntimeDecl decl;
    decl.arch = t.model.arch;
    decl.n_layer = t.model.n_layer, decl.n_head = t.model.n_head, decl.n_head_kv = t.model.n_head_kv;
    decl.head_dim = t.model.head_dim;
    const pkv_rt::PatternTable rt = pkv_rt::PatternTable::open(c.out_path, decl);
    CHECK(rt.has_allocation());
    CHECK(rt.allocation_bits() == Approx(t.alloc_bits).epsilon(1e-12));
    for (const PatternLayer& L : t.layers)
        for (int h = 0; h < t.model.n_head_kv; ++h) {
            const pkv_rt::HeadView hv = rt.head(L.layer, h);
            CHECK(hv.k_bits == L.k_bits[static_cast<size_t>(h)]);
            CHECK(hv.v_bits == L.v_bits[static_cast<size_t>(h)]);
            CHECK(hv.k_clip == L.k_clip[static_cast<size_t>(h)]);
        }
    // A budget below every head at 2 bits is refused before any mining.
    c.bits_budget = 2.0;
    c.out_path = dir.path + "/low.safetensors";
    CHECK_THROWS_WITH(run_calibrate(c), ContainsSubstring("--bits-budget 2: below the cheapest allocation"));
}

TEST_CASE("calibrate --bits-measure attention: the attention-output error of every width", "[bit_alloc][calibrate]") {
    pkv::test::TempDir dir;
    pkv::test::SynthSpec s;
    s.seq_lengths = {64, 64, 64, 64};
    s.capture = CaptureSet::parse("k_post,v,q");
    const std::string dump = dir.path + "/dq.h5";
    pkv::test::write_synth_dump(dump, s);
    CalibrateConfig c = pkv::test::small_calibration(dump, dir.path + "/attn.safetensors");
    c.bits_budget = 7.0;
    c.bits_measure_attention = true;
    const PatternTable t = run_calibrate(c);
    REQUIRE(t.has_allocation());
    CHECK(t.alloc_bits <= 7.0);
    CHECK(t.calibration.at("allocation").at("measure") == "attention");
    for (const nlohmann::json& head : t.calibration.at("heads"))
        for (const char* tensor : {"k", "v"}) {
            const nlohmann::json& w = head.at(tensor).at("widths");
            REQUIRE(w.size() == 4);
            // Wider codes, a smaller output error; 8 bits far below 2.
            CHECK(w[0].at("attn_error").get<double>() > 0.0);
            CHECK(w[3].at("attn_error").get<double>() < 0.1 * w[0].at("attn_error").get<double>());
        }

    // Without queries, with pre-RoPE keys or without a budget: refused before any mining.
    CalibrateConfig noq = c;
    pkv::test::SynthSpec s2 = s;
    s2.capture = CaptureSet::parse("k_post,k_pre,v");
    noq.dump_paths = {dir.path + "/d2.h5"};
    pkv::test::write_synth_dump(noq.dump_paths[0], s2);
    noq.out_path = dir.path + "/noq.safetensors";
    CHECK_THROWS_WITH(run_calibrate(noq), ContainsSubstring("::/q: dataset missing; --bits-measure attention"));
    // Pre-RoPE keys: the measure attends with k_post + RoPE(k̃_pre − k_pre), so it needs /k_post.
    pkv::test::SynthSpec s3 = s;
    s3.capture = CaptureSet::parse("k_pre,k_post,v,q");
    CalibrateConfig pre = c;
    pre.keys_pre = true;
    pre.dump_paths = {dir.path + "/d3.h5"};
    pkv::test::write_synth_dump(pre.dump_paths[0], s3);
    pre.out_path = dir.path + "/pre.safetensors";
    const PatternTable tp = run_calibrate(pre);
    CHECK(tp.has_allocation());
    CHECK(tp.key_basis == "pre_rope");
    CHECK(tp.calibration.at("heads").at(0).at("k").at("widths").at(0).at("attn_error").get<double>() > 0.0);
    s3.capture = CaptureSet::parse("k_pre,v,q");
    pre.dump_paths = {dir.path + "/d4.h5"};
    pkv::test::write_synth_dump(pre.dump_paths[0], s3);
    pre.out_path = dir.path + "/pre4.safetensors";
    CHECK_THROWS_WITH(run_calibrate(pre), ContainsSubstring("::/k_post: dataset missing; --bits-measure attention"));
    pre.rotate = true;
    CHECK_THROWS_WITH(run_calibrate(pre), ContainsSubstring("--bits-measure attention with --keys pre --rotate"));
    // Without a budget the measure is unused: no queries needed.
    CalibrateConfig nobudget = noq;
    nobudget.bits_budget = 0.0;
    CHECK_FALSE(run_calibrate(nobudget).has_allocation());
}
