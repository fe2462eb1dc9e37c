// `pkv calibrate --outliers N`: the table records N (pkv.quant.outliers, format 1.3), the
// fit and the held-out statistics hold N elements of each group out, and the options it
// cannot serve are refused with one line.
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/pipeline/calibrate.h"
#include "pkv/table/pattern_table.h"
#include "unit/kvdump/dump_fixture.h"
#include "unit/pipeline/calib_fixture.h"

using namespace pkv;
using namespace pkv::test;

namespace {

// A synthetic dump of 8 sequences of 64 tokens (2 held out by small_calibration).
SynthSpec eight_sequences() {
    SynthSpec s;
    s.seq_lengths = std::vector<int>(8, 64);
    s.chunk_tokens = 64;
    return s;
}

}  // namespace

TEST_CASE("calibrate --outliers: recorded, fitted with the elements held out", "[pipeline][calibrate][outliers]") {
    TempDir dir;
    const SynthSpec s = eight_sequences();
    const std::string dump = dir.path + "/d.h5";
    write_synth_dump(dump, s);
    CalibrateConfig c = small_calibration(dump, dir.path + "/t0.safetensors");
    const PatternTable t0 = run_calibrate(c);
    c.outliers = 2;
    c.out_path = dir.path + "/t2.safetensors";
    const PatternTable t2 = run_calibrate(c);
    CHECK(t0.outliers == 0);
    CHECK(t2.outliers == 2);
    const PatternTable back = read_pattern_table(c.out_path);
    CHECK(back.outliers == 2);
    CHECK(std::string(pattern_table_format_version(back)) == "1.3");
    CHECK(t2.calibration.at("fit").at("outliers") == 2);
    // The same patterns (the mining does not see the outliers); the fit's errors do.
    CHECK(t2.layers.at(0).k_patterns == t0.layers.at(0).k_patterns);
    const nlohmann::json& h0 = t0.calibration.at("heads").at(0);
    const nlohmann::json& h2 = t2.calibration.at("heads").at(0);
    for (const char* kv : {"k", "v"}) {
        INFO(kv);
        const double e0 = h0.at(kv).at("heldout").at("nmse_patterns").get<double>();
        const double e2 = h2.at(kv).at("heldout").at("nmse_patterns").get<double>();
        CHECK(e2 < e0);
    }
}

TEST_CASE("calibrate --outliers: out of range is refused; a budget counts the outliers' bits",
          "[pipeline][calibrate][outliers]") {
    TempDir dir;
    const SynthSpec s = eight_sequences();
    const std::string dump = dir.path + "/d.h5";
    write_synth_dump(dump, s);
    CalibrateConfig c = small_calibration(dump, dir.path + "/t.safetensors");
    c.outliers = 9;
    CHECK_THROWS_WITH(run_calibrate(c), ContainsSubstring("--outliers 9: expected 0..8"));
    // Every head at 2 bits, with one outlier per group, plus one bit per element to spend.
    c.outliers = 1;
    const int D = s.head_dim, M = c.k_patterns;
    const double floor2 = 0.5 * (table_element_bits(KvTensor::k, 2, D, M, c.group, c.window, 1) +
                                 table_element_bits(KvTensor::v, 2, D, M, c.group, c.window, 1));
    CHECK(floor2 > 0.5 * (table_element_bits(KvTensor::k, 2, D, M, c.group, c.window) +
                          table_element_bits(KvTensor::v, 2, D, M, c.group, c.window)));
    c.bits_budget = floor2 + 1.0;
    c.bits_measure_attention = false;
    const PatternTable t = run_calibrate(c);
    REQUIRE(t.has_allocation());
    CHECK(t.outliers == 1);
    double sum = 0.0;
    int units = 0;
    for (const PatternLayer& L : t.layers)
        for (int h = 0; h < t.model.n_head_kv; ++h) {
            sum += table_element_bits(KvTensor::k, L.k_bits[h], D, M, c.group, c.window, 1);
            sum += table_element_bits(KvTensor::v, L.v_bits[h], D, M, c.group, c.window, 1);
            units += 2;
        }
    CHECK(t.alloc_bits == Approx(sum / units).epsilon(1e-12));
    CHECK(t.alloc_bits <= c.bits_budget);
    c.bits_budget = floor2 - 0.01;  // below every head at 2 bits once the outliers are paid
    CHECK_THROWS_WITH(run_calibrate(c), ContainsSubstring("below the cheapest allocation"));
}
