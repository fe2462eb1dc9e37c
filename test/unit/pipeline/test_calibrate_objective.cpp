// `pkv calibrate --objective`: the query-weighted key objectives, what they record and
// what they refuse.
#include "catch.h"
#include "pkv/pipeline/calibrate.h"
#include "pkv/pipeline/calibrate_objective.h"
#include "pkv/table/pattern_table.h"
#include "unit/kvdump/dump_fixture.h"

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
    CalibrateConfig c;
    c.dump_paths = {dump};
    c.out_path = dir.path + "/" + name + ".safetensors";
    c.k_patterns = c.v_patterns = 4;
    c.group = 8;
    c.window = 16;
    c.max_iter = 10;
    c.holdout = 0.25;
    c.objective = o;
    return c;
}

}  // namespace

TEST_CASE("calibrate --objective: parsing and names", "[pipeline][calibrate][objective]") {
    for (CalibObjective o : {CalibObjective::kv, CalibObjective::qk, CalibObjective::qk_mine})
        CHECK(parse_calib_objective(calib_objective_name(o)) == o);
    CHECK_THROWS_WITH(parse_calib_objective("attention"),
                      ContainsSubstring("expected kv, qk or qk-mine, got 'attention'"));
}

TEST_CASE("calibrate --objective qk: refused without queries in the dump", "[pipeline][calibrate][objective]") {
    TempDir dir;
    const std::string dump = synth_dump(dir, "k_post,v");
    CHECK_NOTHROW(run_calibrate(config(dir, dump, CalibObjective::kv, "kv")));
    for (CalibObjective o : {CalibObjective::qk, CalibObjective::qk_mine})
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
}

TEST_CASE("calibrate --objective: recorded in the table, weighted statistics beside the raw ones",
          "[pipeline][calibrate][objective]") {
    TempDir dir;
    const std::string dump = synth_dump(dir, "k_pre,k_post,v,q");
    const PatternTable kv = run_calibrate(config(dir, dump, CalibObjective::kv, "kv"));
    const PatternTable qk = run_calibrate(config(dir, dump, CalibObjective::qk, "qk"));
    const PatternTable mine = run_calibrate(config(dir, dump, CalibObjective::qk_mine, "mine"));
    CHECK(kv.calibration.at("objective") == "kv");
    CHECK(qk.calibration.at("objective") == "qk");
    CHECK(mine.calibration.at("objective") == "qk-mine");
    // Read back from the file, as a runtime or `pkv info` sees it.
    CHECK(read_pattern_table(dir.path + "/qk.safetensors").calibration.at("objective") == "qk");
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
