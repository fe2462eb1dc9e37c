// `pkv analyze --device cuda`'s cache simulator (pkv/cuda/analyze_sim.h) against the host
// path, through run_analyze on a synthetic dump (2 stored layers, one of them local with a
// sliding window, 2 KV heads, 3 sequences; K/V/Q every figure). Tolerances:
//   every method but patternkv: the report's figures (errors, bits, flatness, histograms,
//   means, fragile heads) equal the host's exactly; attention figures come from the CPU
//   scorer on both sides here, so they are equal too.
//   patternkv with its k-means on the host (PKV_CUDA_PATTERNKV=0): everything exactly.
//   patternkv on the device: its K and V NMSE within 10% of the host's (both ways) per
//   (layer, head, bits, basis) entry, effective bits equal (the device k-means agrees with the host's
//   statistically: sim_cache.h); "measured:" on stderr gives the largest ratio.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "catch.h"
#include "pkv/cuda/analyze_sim.h"
#include "pkv/cuda/device.h"
#include "pkv/pipeline/analyze.h"
#include "pkv/report/report.h"
#include "unit/kvdump/dump_fixture.h"

using nlohmann::json;

namespace {

#define PKV_REQUIRE_GPU_ANALYZE_SIM() \
    if (pkv::cuda::device_count() == 0) PKV_SKIP("no CUDA device: GPU analyze simulation parity test not run")

pkv::AnalyzeConfig config(const std::string& path) {
    pkv::AnalyzeConfig c;
    c.dump_path = path;
    c.methods = {pkv::KvMethod::fp16, pkv::KvMethod::kivi, pkv::KvMethod::patternkv,
                 pkv::KvMethod::q4_0, pkv::KvMethod::q8_0, pkv::KvMethod::fp8};
    c.bits = {2, 4};
    c.group = 16;
    c.window = 16;
    c.patterns = 8;
    c.rotate = true;
    return c;
}

std::string write_dump(const pkv::test::TempDir& dir) {
    pkv::test::SynthSpec s;
    s.head_dim = 64;
    s.n_rot = 64;
    s.seq_lengths = {300, 200, 120};
    s.chunk_tokens = 64;
    s.window = 64;
    s.swa_layers = {0};
    const std::string path = dir.path + "/d.h5";
    pkv::test::write_synth_dump(path, s);
    return path;
}

json analyze(pkv::AnalyzeConfig c, bool device) {
    if (device) c.simulator = []() { return pkv::cuda::make_cache_simulator(0); };
    json r = pkv::analyze_report_json(pkv::run_analyze(c));
    return r;
}

// Scoped PKV_CUDA_PATTERNKV.
struct PatternEnv {
    explicit PatternEnv(const char* v) { setenv("PKV_CUDA_PATTERNKV", v, 1); }
    ~PatternEnv() { unsetenv("PKV_CUDA_PATTERNKV"); }
};

}  // namespace

TEST_CASE("cuda analyze simulation: the host's report, patternkv's k-means on the host", "[cuda][analyze_sim]") {
    PKV_REQUIRE_GPU_ANALYZE_SIM();
    pkv::test::TempDir dir;
    const std::string path = write_dump(dir);
    const json host = analyze(config(path), false);
    json dev;
    {
        PatternEnv env("0");
        dev = analyze(config(path), true);
    }
    CHECK(dev["provenance"]["sim_device"].get<std::string>().rfind("cuda:0 ", 0) == 0);
    json a = host, b = dev;
    a.erase("provenance");
    b.erase("provenance");
    CHECK(a == b);
}

TEST_CASE("cuda analyze simulation: patternkv on the device within 10% of the host's errors", "[cuda][analyze_sim]") {
    PKV_REQUIRE_GPU_ANALYZE_SIM();
    pkv::test::TempDir dir;
    const std::string path = write_dump(dir);
    const json host = analyze(config(path), false);
    const json dev = analyze(config(path), true);
    REQUIRE(host["results"].size() == dev["results"].size());
    double worst = 1.0;
    int pattern_entries = 0;
    for (size_t i = 0; i < host["results"].size(); ++i) {
        const json& h = host["results"][i];
        const json& d = dev["results"][i];
        CAPTURE(i, h.at("layer"), h.at("kv_head"), h.at("method"), h.at("bits"), h.at("rotate"));
        REQUIRE(h.at("method") == d.at("method"));
        if (h.at("method") != "patternkv") {
            CHECK(h == d);
            continue;
        }
        ++pattern_entries;
        for (const char* t : {"k", "v"}) {
            CHECK(h.at(t).at("eff_bits") == d.at(t).at("eff_bits"));
            const double eh = h.at(t).at("nmse").get<double>(), ed = d.at(t).at("nmse").get<double>();
            CHECK(ed <= 1.1 * eh + 1e-12);
            CHECK(eh <= 1.1 * ed + 1e-12);
            worst = std::max(worst, std::max(ed / std::max(eh, 1e-30), eh / std::max(ed, 1e-30)));
        }
    }
    CHECK(pattern_entries > 0);
    std::fprintf(stderr, "measured: analyze patternkv device vs host, largest K/V mse ratio %.4f over %d entries\n",
                 worst, pattern_entries);
}

TEST_CASE("cuda analyze simulation: no device is one clear error", "[cuda][analyze_sim]") {
    CHECK_THROWS_WITH(pkv::cuda::make_cache_simulator(pkv::cuda::device_count() + 3),
                      ContainsSubstring("no CUDA device"));
}
