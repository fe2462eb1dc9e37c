// AnalyzeConfig::simulator: run_analyze groups whole sequences of any heads up to the
// simulator's batch_tokens, hands it one call per run with the keys and values of the
// whole group, and measures the results item after item. A simulator that runs
// simulate_cache on each job must give the host path's report exactly, whatever the
// grouping: that checks what the jobs carry (data, prefill, ring, table views) and that
// every accumulator still gets its sequences in order.
#include <algorithm>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/pipeline/analyze.h"
#include "pkv/pipeline/calibrate.h"
#include "pkv/report/report.h"
#include "unit/kvdump/dump_fixture.h"
#include "unit/pipeline/calib_fixture.h"

using namespace pkv;
using nlohmann::json;

namespace {

struct Calls {
    int made = 0, calls = 0;
    std::vector<size_t> jobs;     // jobs per call
    std::vector<int64_t> tokens;  // tokens per call
    std::vector<int64_t> rings;   // every job's ring
};

class HostSimulator final : public CacheSimulator {
public:
    HostSimulator(Calls& calls, int64_t batch) : calls_(calls), batch_(batch) {}
    std::string description() const override { return "host test simulator"; }
    int64_t batch_tokens(int) const override { return batch_; }
    std::vector<SimResult> simulate(const SimParams& params, int D, const std::vector<SimJob>& jobs) override {
        ++calls_.calls;
        calls_.jobs.push_back(jobs.size());
        int64_t tokens = 0;
        std::vector<SimResult> out;
        for (const SimJob& j : jobs) {
            tokens += j.n;
            calls_.rings.push_back(j.ring);
            // The job's arrays are only borrowed: simulate a copy.
            std::vector<float> x(j.x, j.x + j.n * D);
            SimJob own = j;
            own.x = x.data();
            out.push_back(simulate_job(params, D, own));
            out.back().units.clear();
        }
        calls_.tokens.push_back(tokens);
        return out;
    }

private:
    Calls& calls_;
    int64_t batch_;
};

AnalyzeConfig config(const std::string& path) {
    AnalyzeConfig c;
    c.dump_path = path;
    c.methods = {KvMethod::fp16, KvMethod::kivi, KvMethod::patternkv, KvMethod::q8_0, KvMethod::fp8};
    c.bits = {2, 4};
    c.group = 8;
    c.window = 8;
    c.patterns = 4;
    return c;
}

// 2 stored layers x 2 KV heads x 3 sequences of 40, 40 and 24 tokens; window > 0 makes layer 0 local.
std::string write_dump(const test::TempDir& dir, int window = 0) {
    test::SynthSpec s;
    s.head_dim = 32;
    s.n_rot = 32;
    s.seq_lengths = {40, 40, 24};
    if (window > 0) {
        s.window = window;
        s.swa_layers = {0};
    }
    const std::string path = dir.path + "/d.h5";
    test::write_synth_dump(path, s);
    return path;
}

json figures(json report) {
    report.erase("provenance");
    return report;
}

}  // namespace

TEST_CASE("a cache simulator gets whole groups of sequences and gives the host figures", "[analyze][simulator]") {
    test::TempDir dir;
    const std::string path = write_dump(dir);  // 12 items, 104 tokens per (layer, head)
    for (const bool rotate : {false, true})
        for (const int64_t batch : {1, 80, 100, 1000}) {
            CAPTURE(rotate, batch);
            AnalyzeConfig c = config(path);
            c.rotate = rotate;
            const json host = analyze_report_json(run_analyze(c));
            CHECK(host["provenance"]["sim_device"] == "cpu");
            CHECK(host["format_version"] == "1.4");
            Calls calls;
            c.simulator = [&calls, batch]() {
                ++calls.made;
                return std::make_unique<HostSimulator>(calls, batch);
            };
            const AnalyzeResult r = run_analyze(c);
            const json dev = analyze_report_json(r);
            CHECK(dev["provenance"]["sim_device"] == "host test simulator");
            CHECK(calls.made == 1);
            CHECK(figures(dev) == figures(host));
            CHECK(render_markdown(dev).find("caches simulated on: host test simulator\n") != std::string::npos);
            CHECK(render_markdown(host).find("simulated on") == std::string::npos);
            // Groups: whole sequences up to `batch` tokens, at least one; each call has K and V of each.
            int64_t all = 0;
            for (size_t i = 0; i < calls.tokens.size(); ++i) {
                CHECK(calls.jobs[i] % 2 == 0);
                CHECK((calls.tokens[i] <= 2 * batch || calls.jobs[i] == 2));
                all += calls.tokens[i];
            }
            // 4 (layer, head) pairs of 104 tokens, keys and values, every run.
            CHECK(all == int64_t{4} * 104 * 2 * static_cast<int64_t>(r.runs.size()));
            if (batch == 1) CHECK(calls.calls == 12 * static_cast<int>(r.runs.size()));
            if (batch == 1000) CHECK(calls.calls == static_cast<int>(r.runs.size()));
            CHECK(r.times.simulate > 0.0);
        }
}

TEST_CASE("a simulator gets each layer's sliding window as its jobs' ring", "[analyze][simulator]") {
    test::TempDir dir;
    const std::string path = write_dump(dir, 16);
    AnalyzeConfig c = config(path);
    const json host = analyze_report_json(run_analyze(c));
    Calls calls;
    c.simulator = [&calls]() { return std::make_unique<HostSimulator>(calls, 64); };
    const json dev = analyze_report_json(run_analyze(c));
    CHECK(figures(dev) == figures(host));
    CHECK(std::count(calls.rings.begin(), calls.rings.end(), int64_t{16}) > 0);
    CHECK(std::count(calls.rings.begin(), calls.rings.end(), int64_t{0}) > 0);
}

TEST_CASE("bad input fails before the simulator is made", "[analyze][simulator]") {
    test::TempDir dir;
    const std::string path = write_dump(dir);
    AnalyzeConfig c = config(path);
    c.bits = {5};
    Calls calls;
    c.simulator = [&calls]() {
        ++calls.made;
        return std::make_unique<HostSimulator>(calls, 64);
    };
    CHECK_THROWS_WITH(run_analyze(c), ContainsSubstring("--bits 5"));
    CHECK(calls.made == 0);
}

TEST_CASE("a table fitted with exact outliers is analysed holding them out, on the host", "[analyze][outliers]") {
    test::TempDir dir;
    const std::string path = write_dump(dir);
    CalibrateConfig cc = test::small_calibration(path, dir.path + "/t0.safetensors");
    run_calibrate(cc);
    cc.outliers = 1;
    cc.out_path = dir.path + "/t1.safetensors";
    run_calibrate(cc);
    AnalyzeConfig c = config(path);
    c.methods = {KvMethod::patternkv_table};
    c.window = cc.window;
    const auto totals = [](const json& report) {
        double bits = 0.0, k = 0.0, v = 0.0;
        for (const json& e : report["results"]) {
            bits += e["eff_bits"].get<double>();
            k += e["k"]["nmse"].get<double>();
            v += e["v"]["nmse"].get<double>();
        }
        return std::vector<double>{bits, k, v};
    };
    c.table_path = cc.out_path;
    const json host1 = analyze_report_json(run_analyze(c));
    CHECK(host1["settings"]["table"]["outliers"] == 1);
    c.table_path = dir.path + "/t0.safetensors";
    const json host0 = analyze_report_json(run_analyze(c));
    CHECK(host0["settings"]["table"]["outliers"] == 0);
    const std::vector<double> t0 = totals(host0), t1 = totals(host1);
    CHECK(t1[0] > t0[0]);  // the outliers' values and positions are paid for
    CHECK(t1[1] < t0[1]);
    CHECK(t1[2] < t0[2]);
    // The device simulator holds no outliers: the table's runs stay on the host, same figures.
    Calls calls;
    c.table_path = cc.out_path;
    c.simulator = [&calls]() { return std::make_unique<HostSimulator>(calls, 1000); };
    CHECK(figures(analyze_report_json(run_analyze(c))) == figures(host1));
    CHECK(calls.calls == 0);
}
