// pkv/kvcache/cache_simulator.h — where `pkv analyze` simulates its caches: a plug-in that
// takes one method over many (sequence, KV head, tensor) problems in one call, so a device
// can batch every head of a block of sequences.
//
// lib/ holds only the interface: the analysis calls simulate_cache itself, one problem at
// a time on the host's threads, when no simulator is given (AnalyzeConfig::simulator
// empty), and a GPU build hands it the CUDA simulator (cuda/pkv/cuda/analyze_sim.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pkv/kvcache/simulate.h"

namespace pkv {

/// One tensor of one sequence of one (layer, KV head): x [n, D] row-major on the host,
/// its prefill P in [0, n], the layer's sliding window (0: global) and, for
/// patternkv-table, the head's view of the table for this tensor (with its own width).
struct SimJob {
    const float* x = nullptr;
    int64_t n = 0;
    int64_t prefill = 0;
    int64_t ring = 0;
    KvTensor tensor = KvTensor::k;
    const TableHeadView* table = nullptr;
};

class CacheSimulator {
public:
    virtual ~CacheSimulator() = default;
    /// Where it runs, recorded in the report, e.g. "cuda:0 NVIDIA H100 80GB HBM3".
    virtual std::string description() const = 0;
    /// Tokens of head_dim D it likes to get per call (summed over one tensor's jobs); the
    /// analysis groups whole sequences up to this many (at least one sequence per call).
    virtual int64_t batch_tokens(int D) const = 0;
    /// Simulates every job under `params` (method, bits, group, window, patterns,
    /// pattern_cap, decode_l2, seed; ring and table views come from each job), head_dim D.
    /// Callers simulate params with sinks or outliers on the host (no device kernel holds
    /// them); a simulator given such params must give simulate_cache's results all the same.
    /// Returns one SimResult per job, in order, with what simulate_cache gives for recon,
    /// flush_step, bits, stored_from, kept_from and (patternkv, patternkv-table) pattern,
    /// bank and gate; `units` and `kmeans_k` may be left empty. The job's arrays are
    /// read only during the call. Throws as simulate_cache does.
    virtual std::vector<SimResult> simulate(const SimParams& params, int D, const std::vector<SimJob>& jobs) = 0;
};

/// simulate_cache on one job: `params` with the job's ring and table view; the reference
/// every simulator's results are held against.
inline SimResult simulate_job(const SimParams& params, int D, const SimJob& job) {
    SimParams sp = params;
    sp.ring = job.ring;
    sp.table_k = sp.table_v = job.table;
    return simulate_cache(sp, job.tensor, job.x, job.n, D, job.prefill);
}

/// Makes the simulator for one analysis (called once, after the input is validated).
using CacheSimulatorFactory = std::function<std::unique_ptr<CacheSimulator>()>;

}  // namespace pkv
