// `pkv calibrate --restart-pick attention` (calibrate_pick.h): k-means hands back every
// run without changing the one it keeps; the pick keeps the run of the lowest held-out
// attention-output error, even against the run of the lowest inertia; calibrate records
// the choice, and refuses what the pick cannot do with one line each.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/kmeans/kmeans.h"
#include "pkv/pipeline/calibrate.h"
#include "pkv/pipeline/calibrate_pick.h"
#include "pkv/table/pattern_table.h"
#include "unit/kvdump/dump_fixture.h"
#include "unit/pipeline/calib_fixture.h"

using namespace pkv;

namespace {

constexpr int kD = 8, kM = 4;

// Tokens near one of kM well separated centres (one per token, cycling with a stride that
// mixes them within a quantization group), in sequences of `len`.
calib::Pooled clustered(const std::vector<float>& centres, int n_train_seqs, int n_hold_seqs, int len, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> noise(0.0f, 0.1f);
    calib::Pooled p;
    const auto fill = [&](std::vector<float>& x, std::vector<SeqRange>& seqs, int n_seqs) {
        for (int s = 0; s < n_seqs; ++s) {
            seqs.push_back({static_cast<int64_t>(s) * len, len});
            for (int t = 0; t < len; ++t)
                for (int d = 0; d < kD; ++d)
                    x.push_back(centres[static_cast<size_t>((t * 3 % kM) * kD + d)] + noise(rng));
        }
    };
    fill(p.train, p.train_seqs, n_train_seqs);
    fill(p.hold, p.hold_seqs, n_hold_seqs);
    return p;
}

// A result of two runs: run 0 has every pattern at the data's mean (its inertia claimed
// lowest, so inertia keeps it), run 1 the true centres.
KMeansResult two_runs(const calib::Pooled& x, const std::vector<float>& centres) {
    std::vector<float> mean(kD, 0.0f);
    const int64_t n = x.n_train();
    for (int64_t t = 0; t < n; ++t)
        for (int d = 0; d < kD; ++d) mean[d] += x.train[static_cast<size_t>(t * kD + d)] / static_cast<float>(n);
    KMeansResult r;
    r.k = kM;
    r.d = kD;
    r.n_train = n;
    for (int run = 0; run < 2; ++run) {
        KMeansResult::Run u;
        for (int j = 0; j < kM; ++j)
            for (int d = 0; d < kD; ++d) u.centroids.push_back(run == 0 ? mean[d] : centres[j * kD + d]);
        u.assignments.assign(static_cast<size_t>(n), 0);
        u.objective = run == 0 ? 1.0 : 2.0;
        r.runs.push_back(u);
        r.restart_objectives.push_back(u.objective);
    }
    r.centroids = r.runs[0].centroids;
    r.assignments = r.runs[0].assignments;
    r.objective = 1.0;
    r.restart = 0;
    return r;
}

std::vector<float> centres_of(uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> g(0.0f, 5.0f);
    std::vector<float> c(kM * kD);
    for (float& v : c) v = g(rng);
    return c;
}

CalibrateConfig pick_config() {
    CalibrateConfig c;
    c.k_patterns = c.v_patterns = kM;
    c.bits = 2;
    c.group = 8;
    c.window = 16;
    c.restarts = 2;
    c.restart_pick = RestartPick::attention;
    return c;
}

}  // namespace

TEST_CASE("pick_lowest: the smallest error, the first on ties", "[calibrate][pick]") {
    CHECK(calib::pick_lowest({0.3, 0.1, 0.1, 0.2}) == 1);
    CHECK(calib::pick_lowest({0.5}) == 0);
    CHECK(calib::pick_lowest({0.2, 0.4, 0.05}) == 2);
}

TEST_CASE("k-means keep_runs: every run back, the kept result unchanged", "[calibrate][pick][kmeans]") {
    const calib::Pooled x = clustered(centres_of(3), 4, 0, 64, 11);
    KMeansParams p;
    p.k = kM;
    p.n_restarts = 4;
    p.init = KMeansInit::kmeanspp;
    p.seed = 5;
    const KMeansResult plain = kmeans(x.train.data(), x.n_train(), kD, p);
    p.keep_runs = true;
    const KMeansResult all = kmeans(x.train.data(), x.n_train(), kD, p);
    CHECK(plain.runs.empty());
    REQUIRE(all.runs.size() == 4);
    CHECK(all.centroids == plain.centroids);
    CHECK(all.assignments == plain.assignments);
    CHECK(all.restart == plain.restart);
    const KMeansResult::Run& kept = all.runs[static_cast<size_t>(all.restart)];
    CHECK(kept.centroids == all.centroids);
    CHECK(kept.assignments == all.assignments);
    for (size_t r = 0; r < 4; ++r) {
        CHECK(all.runs[r].objective == all.restart_objectives[r]);
        CHECK(all.runs[r].assignments.size() == static_cast<size_t>(x.n_train()));
    }
}

TEST_CASE("pick_restarts keeps the run of the lowest held-out attention error, not the lowest inertia",
          "[calibrate][pick]") {
    const std::vector<float> kc = centres_of(1), vc = centres_of(2);
    const calib::Pooled k = clustered(kc, 4, 2, 64, 21), v = clustered(vc, 4, 2, 64, 22);
    const std::vector<calib::Pooled> qs = {clustered(centres_of(7), 4, 2, 64, 23)};
    const CalibrateConfig c = pick_config();
    std::vector<KMeansResult> kres = {two_runs(k, kc)}, vres = {two_runs(v, vc)};
    const std::vector<calib::PickHead> heads = {{&k, &v, &qs, nullptr, nullptr, nullptr, 0}};
    const std::vector<nlohmann::json> rec = calib::pick_restarts(c, kD, heads, kres, vres);
    REQUIRE(rec.size() == 1);
    for (const char* t : {"k", "v"}) {
        const nlohmann::json& r = rec[0].at(t);
        INFO(t << ": " << r.dump());
        const std::vector<double> e = r.at("restart_attn_errors").get<std::vector<double>>();
        REQUIRE(e.size() == 2);
        // Patterns at the mean leave the clusters' offsets to the 2-bit residual.
        CHECK(e[1] < 0.5 * e[0]);
        CHECK(r.at("restart") == 1);
        CHECK(r.at("restart_inertia") == 0);
    }
    CHECK(kres[0].restart == 1);
    CHECK(kres[0].centroids == kc);
    CHECK(vres[0].centroids == vc);
    CHECK(kres[0].runs.empty());
    CHECK(kres[0].objective == 2.0);

    // The same inputs, the same choice and errors (the fits and the measure are deterministic).
    std::vector<KMeansResult> kres2 = {two_runs(k, kc)}, vres2 = {two_runs(v, vc)};
    CHECK(calib::pick_restarts(c, kD, heads, kres2, vres2)[0] == rec[0]);

    // Swapped runs: the pick follows the error, not the index.
    std::vector<KMeansResult> ks = {two_runs(k, kc)}, vs = {two_runs(v, vc)};
    std::swap(ks[0].runs[0], ks[0].runs[1]);
    std::swap(vs[0].runs[0], vs[0].runs[1]);
    const nlohmann::json swapped = calib::pick_restarts(c, kD, heads, ks, vs)[0];
    CHECK(swapped.at("k").at("restart") == 0);
    CHECK(swapped.at("v").at("restart") == 0);
    CHECK(ks[0].centroids == kc);
}

TEST_CASE("calibrate --restart-pick attention records its choice; refusals in one line", "[calibrate][pick]") {
    pkv::test::TempDir dir;
    pkv::test::SynthSpec s;
    s.seq_lengths = {64, 64, 64, 64};
    s.capture = CaptureSet::parse("k_pre,k_post,v,q");
    const std::string dump = dir.path + "/d.h5";
    pkv::test::write_synth_dump(dump, s);
    CalibrateConfig c = pkv::test::small_calibration(dump, dir.path + "/inertia.safetensors");
    c.restarts = 3;
    const PatternTable inertia = run_calibrate(c);
    CHECK(inertia.calibration.at("kmeans").at("restart_pick") == "inertia");
    CHECK_FALSE(inertia.calibration.at("heads").at(0).at("k").contains("restart"));

    for (bool pre : {false, true}) {
        CalibrateConfig a = c;
        a.keys_pre = pre;
        a.restart_pick = RestartPick::attention;
        a.out_path = dir.path + (pre ? "/pre.safetensors" : "/attn.safetensors");
        const PatternTable t = run_calibrate(a);
        CHECK(t.calibration.at("kmeans").at("restart_pick") == "attention");
        for (const nlohmann::json& head : t.calibration.at("heads"))
            for (const char* tensor : {"k", "v"}) {
                const nlohmann::json& h = head.at(tensor);
                const std::vector<double> e = h.at("restart_attn_errors").get<std::vector<double>>();
                REQUIRE(e.size() == 3);
                CHECK(h.at("restart").get<size_t>() == calib::pick_lowest(e));
                CHECK(e[calib::pick_lowest(e)] > 0.0);
            }
        if (pre) continue;
        // Where the pick agrees with inertia the head's patterns are inertia's.
        const nlohmann::json& heads = t.calibration.at("heads");
        for (size_t i = 0; i < heads.size(); ++i) {
            const nlohmann::json& k = heads[i].at("k");
            if (k.at("restart") != k.at("restart_inertia")) continue;
            const size_t li = i / 2, h = i % 2, n = 4 * 8;
            const std::vector<float>& a_pat = t.layers[li].k_patterns;
            const std::vector<float>& i_pat = inertia.layers[li].k_patterns;
            CHECK(std::vector<float>(a_pat.begin() + h * n, a_pat.begin() + (h + 1) * n) ==
                  std::vector<float>(i_pat.begin() + h * n, i_pat.begin() + (h + 1) * n));
        }
    }

    CalibrateConfig bad = c;
    bad.restart_pick = RestartPick::attention;
    bad.out_path = dir.path + "/bad.safetensors";
    bad.restarts = 1;
    CHECK_THROWS_WITH(run_calibrate(bad), ContainsSubstring("--restart-pick attention with --restarts 1: one k-means"));
    bad.restarts = 3;
    bad.holdout = 0.0;
    CHECK_THROWS_WITH(run_calibrate(bad), ContainsSubstring("--restart-pick attention with --holdout 0: no held-out"));
    bad.holdout = 0.25;
    bad.max_points_per_centroid = 8;
    CHECK_THROWS_WITH(run_calibrate(bad),
                      ContainsSubstring("--restart-pick attention with --max-points-per-centroid 8"));
    bad.max_points_per_centroid = 0;
    pkv::test::SynthSpec s2 = s;
    s2.capture = CaptureSet::parse("k_post,v");
    bad.dump_paths = {dir.path + "/noq.h5"};
    pkv::test::write_synth_dump(bad.dump_paths[0], s2);
    CHECK_THROWS_WITH(run_calibrate(bad), ContainsSubstring("::/q: dataset missing; --restart-pick attention runs"));
    s2.capture = CaptureSet::parse("k_pre,v,q");
    bad.dump_paths = {dir.path + "/nokpost.h5"};
    pkv::test::write_synth_dump(bad.dump_paths[0], s2);
    bad.keys_pre = true;
    CHECK_THROWS_WITH(run_calibrate(bad),
                      ContainsSubstring("::/k_post: dataset missing; --restart-pick attention attends"));
    bad.rotate = true;
    CHECK_THROWS_WITH(run_calibrate(bad), ContainsSubstring("--restart-pick attention with --keys pre --rotate"));
    CHECK_THROWS_WITH(parse_restart_pick("best"),
                      ContainsSubstring("--restart-pick: expected inertia or attention, got 'best'"));
}
