// `pkv calibrate --objective`: the query-weighted key objectives, what they record and
// what they refuse.
#include "catch.h"
#include "pkv/pipeline/calibrate.h"
#include "pkv/pipeline/calibrate_objective.h"
#include "pkv/pipeline/export.h"
#include "pkv/table/pattern_table.h"
#include "unit/kvdump/dump_fixture.h"
#include "unit/pipeline/calib_fixture.h"

using namespace pkv;
using namespace pkv::test;

namespace {

std::string synth_dump(const TempDir& dir, const std::string& capture) {
    SynthSpec s;
    s.seq_lengths = {64, 64, 64, 64};
    s.capture = CaptureSet::parse(capture);
    const std::string path = dir.path + "/d_" + std::to_string(std::hash<std::string>{}(capture)) + ".h5";
    write_synth_dump(path, s);
    return path;
}

CalibrateConfig config(const TempDir& dir, const std::string& dump, CalibObjective o, const std::string& name) {
    CalibrateConfig c = pkv::test::small_calibration(dump, dir.path + "/" + name + ".safetensors");
    c.objective = o;
    return c;
}

}  // namespace

TEST_CASE("calibrate --objective: parsing and names", "[pipeline][calibrate][objective]") {
    for (CalibObjective o : {CalibObjective::kv, CalibObjective::qk, CalibObjective::qk_mine, CalibObjective::qk_full})
        CHECK(parse_calib_objective(calib_objective_name(o)) == o);
    CHECK_THROWS_WITH(parse_calib_objective("attention"),
                      ContainsSubstring("expected kv, qk, qk-mine or qk-full, got 'attention'"));
}

TEST_CASE("calibrate --objective qk: refused without queries in the dump", "[pipeline][calibrate][objective]") {
    TempDir dir;
    const std::string dump = synth_dump(dir, "k_post,v");
    CHECK_NOTHROW(run_calibrate(config(dir, dump, CalibObjective::kv, "kv")));
    for (CalibObjective o : {CalibObjective::qk, CalibObjective::qk_mine, CalibObjective::qk_full})
        CHECK_THROWS_WITH(
            run_calibrate(config(dir, dump, o, "qk")),
            ContainsSubstring("::/q: dataset missing; --objective " + std::string(calib_objective_name(o)) +
                              " weighs the keys by the queries (dump with --capture including q)"));
}

TEST_CASE("calibrate --objective: combinations that would not use the objective are refused",
          "[pipeline][calibrate][objective]") {
    TempDir dir;
    const std::string dump = synth_dump(dir, "k_pre,k_post,v,q");
    CalibrateConfig nofit = config(dir, dump, CalibObjective::qk, "nofit");
    nofit.fit = false;
    CHECK_THROWS_WITH(run_calibrate(nofit), ContainsSubstring("--objective qk with --fit none"));
    CalibrateConfig pre_rot = config(dir, dump, CalibObjective::qk, "prerot");
    pre_rot.keys_pre = true;
    pre_rot.rotate = true;
    CHECK_THROWS_WITH(run_calibrate(pre_rot), ContainsSubstring("--keys pre --rotate"));
    CalibrateConfig pre_full = config(dir, dump, CalibObjective::qk_full, "prefull");
    pre_full.keys_pre = true;
    CHECK_THROWS_WITH(run_calibrate(pre_full), ContainsSubstring("--objective qk-full with --keys pre"));
}

TEST_CASE("calibrate --objective: recorded in the table, weighted statistics beside the raw ones",
          "[pipeline][calibrate][objective]") {
    TempDir dir;
    const std::string dump = synth_dump(dir, "k_pre,k_post,v,q");
    const PatternTable kv = run_calibrate(config(dir, dump, CalibObjective::kv, "kv"));
    const PatternTable qk = run_calibrate(config(dir, dump, CalibObjective::qk, "qk"));
    const PatternTable mine = run_calibrate(config(dir, dump, CalibObjective::qk_mine, "mine"));
    const PatternTable full = run_calibrate(config(dir, dump, CalibObjective::qk_full, "full"));
    CHECK(full.calibration.at("objective") == "qk-full");
    CHECK(full.calibration.at("heads").at(0).at("k").at("heldout").contains("qk_nmse_fitted"));
    CHECK(kv.calibration.at("objective") == "kv");
    CHECK(qk.calibration.at("objective") == "qk");
    CHECK(mine.calibration.at("objective") == "qk-mine");
    // Read back from the file, as a runtime or `pkv info` sees it; a table written before
    // the option (no objective recorded) reads as kv.
    CHECK(read_pattern_table(dir.path + "/qk.safetensors").calibration.at("objective") == "qk");
    CHECK_THAT(describe_pattern_table(dir.path + "/qk.safetensors"), ContainsSubstring(", objective qk\n"));
    PatternTable old = kv;
    old.calibration.erase("objective");
    write_pattern_table(old, dir.path + "/old.safetensors", false);
    CHECK_THAT(describe_pattern_table(dir.path + "/old.safetensors"),
               ContainsSubstring(", objective kv (not recorded)\n"));
    const nlohmann::json& hk = kv.calibration.at("heads").at(0).at("k").at("heldout");
    const nlohmann::json& hq = qk.calibration.at("heads").at(0).at("k").at("heldout");
    CHECK_FALSE(hk.contains("qk_nmse_fitted"));
    REQUIRE(hq.contains("qk_nmse_fitted"));
    CHECK(hq.at("qk_nmse_fitted").get<double>() >= 0.0);
    CHECK_FALSE(qk.calibration.at("heads").at(0).at("v").at("heldout").contains("qk_nmse_fitted"));
    // qk mines as kv does (same patterns, values untouched); qk-mine mines other key patterns.
    CHECK(qk.layers.at(0).k_patterns == kv.layers.at(0).k_patterns);
    CHECK(mine.layers.at(0).v_patterns == kv.layers.at(0).v_patterns);
    bool differ = false;
    for (size_t l = 0; l < kv.layers.size(); ++l)
        differ = differ || mine.layers[l].k_patterns != kv.layers[l].k_patterns;
    CHECK(differ);
    // Pre-RoPE keys run with the pair-averaged metric.
    CalibrateConfig pre = config(dir, dump, CalibObjective::qk, "pre");
    pre.keys_pre = true;
    CHECK(run_calibrate(pre).calibration.at("objective") == "qk");
}

TEST_CASE("query channel weights: second moments, RoPE pairs averaged, mean 1", "[pipeline][calibrate][objective]") {
    // Two tokens of D = 4: moments (1, 9, 4, 0) / ... per channel.
    const std::vector<float> q{1, 3, 2, 0, -1, -3, -2, 0};
    std::vector<double> sum;
    int64_t count = 0;
    calib::add_query_moments(q.data(), 2, 4, sum, count);
    CHECK(count == 2);
    const std::vector<double> post = calib::query_channel_weights(sum, count, {}, "test");
    // Moments 1, 9, 4, 0 have mean 3.5: weights 1/3.5, 9/3.5, 4/3.5 and the floor.
    CHECK(post[0] == Approx(1.0 / 3.5));
    CHECK(post[1] == Approx(9.0 / 3.5));
    CHECK(post[2] == Approx(4.0 / 3.5));
    CHECK(post[3] == 1e-6);
    const std::vector<double> pre =
        calib::query_channel_weights(sum, count, calib::rope_partners(4, "gguf_interleaved", 4), "test");
    CHECK(pre[0] == Approx(5.0 / 3.5));
    CHECK(pre[1] == Approx(5.0 / 3.5));
    CHECK(pre[2] == Approx(2.0 / 3.5));
    CHECK(pre[3] == Approx(2.0 / 3.5));
    CHECK(calib::rope_partners(4, "hf_half_split", 4) == std::vector<int>{2, 3, 0, 1});
    CHECK(calib::rope_partners(6, "gguf_interleaved", 4) == std::vector<int>{1, 0, 3, 2, 4, 5});
    CHECK_THROWS_WITH(calib::query_channel_weights(std::vector<double>(4, 0.0), 2, {}, "L0 H1"),
                      ContainsSubstring("L0 H1: query second moments are 0"));
}

TEST_CASE("query metric factor: UᵀU is the normalised second moments, the row transform inverts",
          "[pipeline][calibrate][objective]") {
    // Three tokens of D = 3 with correlated channels.
    const std::vector<float> q{1, 2, 0, -1, 1, 3, 2, 2, 1};
    std::vector<double> sum;
    int64_t count = 0;
    calib::add_query_products(q.data(), 3, 3, sum, count);
    REQUIRE(count == 3);
    const std::vector<double> U = calib::query_metric_factor(sum, count, 3, "test");
    // Direct second moments, scaled to mean diagonal 1, plus the 1e-6 ridge.
    double m[3][3] = {};
    for (int t = 0; t < 3; ++t)
        for (int a = 0; a < 3; ++a)
            for (int b = 0; b < 3; ++b) m[a][b] += q[t * 3 + a] * q[t * 3 + b] / 3.0;
    const double scale = 3.0 / (m[0][0] + m[1][1] + m[2][2]);
    for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) {
            double utu = 0.0;
            for (int i = 0; i < 3; ++i) utu += U[i * 3 + a] * U[i * 3 + b];
            CHECK(utu == Approx(m[a][b] * scale + (a == b ? 1e-6 : 0.0)).margin(1e-12));
        }
    CHECK(U[1 * 3 + 0] == 0.0);  // upper triangular
    std::vector<float> rows{0.5f, -1.0f, 2.0f, 3.0f, 0.25f, -0.75f};
    const std::vector<float> orig = rows;
    calib::transform_rows(rows.data(), 2, 3, U);
    CHECK(rows != orig);
    calib::untransform_rows(rows.data(), 2, 3, U);
    for (size_t i = 0; i < rows.size(); ++i) CHECK(rows[i] == Approx(orig[i]).margin(1e-5));
    CHECK_THROWS_WITH(calib::query_metric_factor(std::vector<double>(9, 0.0), 3, 3, "L2 H0"),
                      ContainsSubstring("L2 H0: query second moments are 0"));
}
