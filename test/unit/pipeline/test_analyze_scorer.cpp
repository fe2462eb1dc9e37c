// AnalyzeConfig::attention: run_analyze hands every sequence of every (layer, KV head) to
// the scorer as one job (all query heads, all caches of one basis) and records the
// scorer's description. A scorer that keeps copies of the jobs and scores them with
// accumulate_attention only at finish() must give the CPU path's report exactly: that
// checks what the jobs carry, that the caller's arrays may go once submit() returns, and
// the order of the sums.
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/pipeline/analyze.h"
#include "pkv/report/report.h"
#include "unit/kvdump/dump_fixture.h"

using namespace pkv;
using nlohmann::json;

namespace {

struct Counts {
    int jobs = 0, finishes = 0, made = 0;
    std::vector<size_t> query_heads, caches;
};

// Deep copies of each job, scored at finish() on the CPU, query head after query head.
class DeferredScorer final : public AttentionScorer {
public:
    explicit DeferredScorer(Counts& counts) : counts_(counts) {}
    std::string description() const override { return "deferred test scorer"; }
    void submit(const AttentionJob& job) override {
        ++counts_.jobs;
        counts_.query_heads.push_back(job.q.size());
        counts_.caches.push_back(job.caches.size());
        const size_t nD = static_cast<size_t>(job.n) * job.D, n = static_cast<size_t>(job.n);
        Held h;
        h.job = job;
        for (const float* q : job.q) h.q.emplace_back(q, q + nD);
        h.k.assign(job.k, job.k + nD);
        h.v.assign(job.v, job.v + nD);
        for (const AttnCache& c : job.caches) {
            h.k_hat.emplace_back(c.k_hat, c.k_hat + nD);
            h.v_hat.emplace_back(c.v_hat, c.v_hat + nD);
            h.flush_k.emplace_back(c.flush_k, c.flush_k + n);
            h.flush_v.emplace_back(c.flush_v, c.flush_v + n);
        }
        held_.push_back(std::move(h));
    }
    void finish() override {
        ++counts_.finishes;
        for (Held& h : held_) {
            std::vector<AttnCache> caches = h.job.caches;
            for (size_t c = 0; c < caches.size(); ++c) {
                caches[c].k_hat = h.k_hat[c].data();
                caches[c].v_hat = h.v_hat[c].data();
                caches[c].flush_k = h.flush_k[c].data();
                caches[c].flush_v = h.flush_v[c].data();
            }
            for (const auto& q : h.q)
                accumulate_attention(q.data(), h.k.data(), h.v.data(), h.job.n, h.job.D, h.job.stride, caches,
                                     h.job.window, h.job.kq_scale);
        }
        held_.clear();
    }

private:
    struct Held {
        AttentionJob job;
        std::vector<std::vector<float>> q, k_hat, v_hat;
        std::vector<float> k, v;
        std::vector<std::vector<int32_t>> flush_k, flush_v;
    };
    Counts& counts_;
    std::vector<Held> held_;
};

AnalyzeConfig config(const std::string& path) {
    AnalyzeConfig c;
    c.dump_path = path;
    c.methods = {KvMethod::fp16, KvMethod::kivi, KvMethod::patternkv, KvMethod::q8_0};
    c.bits = {2, 4};
    c.group = 8;
    c.window = 8;
    c.patterns = 4;
    return c;
}

// Everything but the provenance (time, host, device).
json figures(json report) {
    report.erase("provenance");
    return report;
}

test::SynthSpec spec32() {
    test::SynthSpec s;
    s.head_dim = 32;
    s.n_rot = 32;
    s.seq_lengths = {40, 40, 24};
    return s;
}

}  // namespace

TEST_CASE("an attention scorer gets one job per sequence and head and gives the CPU figures", "[analyze][scorer]") {
    test::TempDir dir;
    const std::string path = dir.path + "/d.h5";
    test::write_synth_dump(path, spec32());  // 4 query heads on 2 KV heads
    for (const bool keys_pre : {false, true})
        for (const bool rotate : {false, true}) {
            for (const int stride : {1, 3}) {
                CAPTURE(keys_pre, rotate, stride);
                AnalyzeConfig c = config(path);
                c.keys_pre = keys_pre;
                c.rotate = rotate;
                c.attn_stride = stride;
                const json cpu = analyze_report_json(run_analyze(c));
                CHECK(cpu["provenance"]["device"] == "cpu");
                CHECK(cpu["format_version"] == "1.4");
                Counts counts;
                c.attention = [&counts]() {
                    ++counts.made;
                    return std::make_unique<DeferredScorer>(counts);
                };
                const json dev = analyze_report_json(run_analyze(c));
                CHECK(dev["provenance"]["device"] == "deferred test scorer");
                CHECK(counts.made == 1);
                CHECK(counts.finishes == 1);
                // 2 stored layers x 2 KV heads x 3 sequences, once per basis.
                CHECK(counts.jobs == 2 * 2 * 3 * (rotate ? 2 : 1));
                for (size_t g : counts.query_heads) CHECK(g == 2);
                // fp16, kivi 2/4, patternkv 2/4, q8_0 per basis.
                for (size_t n : counts.caches) CHECK(n == 6);
                CHECK(figures(dev) == figures(cpu));
                CHECK(render_markdown(dev).find("attention metrics scored on: deferred test scorer\n") !=
                      std::string::npos);
                CHECK(render_markdown(cpu).find("scored on") == std::string::npos);
            }
        }
}

TEST_CASE("without queries the scorer is made but gets no job", "[analyze][scorer]") {
    test::TempDir dir;
    const std::string path = dir.path + "/noq.h5";
    test::SynthSpec s = spec32();
    s.capture = CaptureSet::parse("k_pre,k_post,v");
    test::write_synth_dump(path, s);
    AnalyzeConfig c = config(path);
    Counts counts;
    c.attention = [&counts]() {
        ++counts.made;
        return std::make_unique<DeferredScorer>(counts);
    };
    const json rep = analyze_report_json(run_analyze(c));
    CHECK(counts.made == 1);
    CHECK(counts.jobs == 0);
    CHECK(rep["provenance"]["device"] == "deferred test scorer");
    for (const auto& r : rep["results"]) CHECK(r["attn"].is_null());
}

TEST_CASE("bad input fails before the scorer is made", "[analyze][scorer]") {
    test::TempDir dir;
    const std::string path = dir.path + "/d.h5";
    test::write_synth_dump(path, spec32());
    AnalyzeConfig c = config(path);
    c.bits = {5};
    Counts counts;
    c.attention = [&counts]() {
        ++counts.made;
        return std::make_unique<DeferredScorer>(counts);
    };
    CHECK_THROWS_WITH(run_analyze(c), ContainsSubstring("--bits 5"));
    CHECK(counts.made == 0);
}
