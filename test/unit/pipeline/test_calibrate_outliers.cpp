// `pkv calibrate --outliers N`: the table records N (pkv.quant.outliers, format 1.3), the
// fit and the held-out statistics hold N elements of each group out, and the options it
// cannot serve are refused with one line.
#include <string>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/pipeline/calibrate.h"
#include "pkv/table/pattern_table.h"
#include "unit/kvdump/dump_fixture.h"
#include "unit/pipeline/calib_fixture.h"

using namespace pkv;
using namespace pkv::test;

TEST_CASE("calibrate --outliers: recorded, fitted with the elements held out", "[pipeline][calibrate][outliers]") {
    TempDir dir;
    SynthSpec s;
    s.seq_lengths = {64, 64, 64, 64, 64, 64, 64, 64};
    s.chunk_tokens = 64;
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

TEST_CASE("calibrate --outliers: out of range or with --bits-budget is refused", "[pipeline][calibrate][outliers]") {
    TempDir dir;
    SynthSpec s;
    const std::string dump = dir.path + "/d.h5";
    write_synth_dump(dump, s);
    CalibrateConfig c = small_calibration(dump, dir.path + "/t.safetensors");
    c.outliers = 9;
    CHECK_THROWS_WITH(run_calibrate(c), ContainsSubstring("--outliers 9: expected 0..8"));
    c.outliers = 1;
    c.bits_budget = 3.0;
    CHECK_THROWS_WITH(run_calibrate(c), ContainsSubstring("--outliers with --bits-budget"));
}
