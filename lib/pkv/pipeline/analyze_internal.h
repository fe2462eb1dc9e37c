// pkv/pipeline/analyze_internal.h — what analyze.cpp (validation, reading, the loop over
// sequence blocks) and analyze_group.cpp (simulating and measuring a group of sequences)
// share; not part of the public API.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "pkv/core/log.h"
#include "pkv/core/rope.h"
#include "pkv/kvcache/attention_scorer.h"
#include "pkv/kvcache/cache_simulator.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/pipeline/analyze.h"
#include "pkv/pipeline/kv_source.h"
#include "pkv/table/pattern_table.h"

namespace pkv::analyze_detail {

using analyze::ConfigAccum;
using analyze::PairResult;
using analyze::RunSpec;

// Warnings are logged once and kept for the report.
struct Warnings {
    std::vector<std::string> list;
    void add(const std::string& w) {
        if (std::find(list.begin(), list.end(), w) != list.end()) return;
        log::warn("{}", w);
        list.push_back(w);
    }
};

// What the per-head work needs, fixed for the whole run.
struct Context {
    Context(const AnalyzeConfig& c_, KvSource& dump_, const PatternTable* table_, AnalyzeResult& out_, Warnings& warn_)
        : c(c_), dump(dump_), table(table_), out(out_), warn(warn_) {}
    const AnalyzeConfig& c;
    KvSource& dump;
    const PatternTable* table;
    AnalyzeResult& out;
    Warnings& warn;
    std::string kname;  // the key dataset analysed
    int D = 0, group_q = 0;
    float kq_scale = 0.0f;  // the model's attention scale (0: 1/sqrt(head_dim))
    // --keys pre with attention: RoPE tables of the longest sequence, [slot] -> table
    std::vector<RopeTable> ropes;
    std::vector<int> slot_rope;
    SimParams base;
    int hist_run = -1;                  // the run whose residuals feed the histograms
    AttentionScorer* scorer = nullptr;  // null: accumulate_attention here
    CacheSimulator* sim = nullptr;      // null: simulate_cache on the host's threads
    KvDumpReader::Sequences seqs;
};

// One sequence of one head, as read from the dump (unrotated).
struct SeqData {
    int64_t n = 0, P = 0;
    int64_t ring = 0;  // the layer's sliding window (0: global)
    int rope = 0;      // index into Context::ropes
    std::vector<float> k, v, kpost;
    std::vector<std::vector<float>> qs;  // the head's query heads
};

// One sequence of one (layer, KV head) and where its figures go.
struct Work {
    const SeqData* sd = nullptr;
    TableHeadView tk, tv;  // the head's table views (empty without a table)
    PairResult* pr = nullptr;
};

// One basis of a group: its keys and values there and, once simulated, every run's caches.
struct Basis {
    std::vector<size_t> idx;  // the runs of this basis
    std::vector<std::vector<float>> ks, vs;
    std::vector<std::vector<SimResult>> sk, sv;
    bool simulated = false;
};

// A group of sequences as the reading thread hands it over: read, in both bases, and with
// a cache simulator already simulated (so the device works on the next group while this
// thread measures the current one).
struct Group {
    std::vector<SeqData> sds;
    std::vector<Work> ws;  // sd and the table views; pr is set by the measuring thread
    Basis basis[2];
};

// Wall seconds since t0, added to `acc`.
void add_seconds(double& acc, std::chrono::steady_clock::time_point t0);

// Simulates every run of `idx` for every work item in one basis (ks, vs: its keys and
// values there): sk[w][i], sv[w][i]. With a simulator, one call per run covers the keys
// and values of the whole group; without, each (item, run) is a task for the host's threads.
void simulate_group(const Context& x, const std::vector<size_t>& idx, const std::vector<Work>& ws,
                    const std::vector<std::vector<float>>& ks, const std::vector<std::vector<float>>& vs,
                    std::vector<std::vector<SimResult>>& sk, std::vector<std::vector<SimResult>>& sv);

// Every run of a group of sequences (of any heads), in the model's basis and (--rotate)
// the rotated one: simulated here unless the reading thread did, then measured, each
// sequence's attention job handed on right after its figures.
void analyze_group(const Context& x, Group& gr);

}  // namespace pkv::analyze_detail
