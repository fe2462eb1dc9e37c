// `pkv analyze --device cuda`'s cache simulator (analyze_sim.h): jobs packed into one
// simulate_cache_batch call per code width, results cut back into SimResults.
#include "pkv/cuda/analyze_sim.h"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "pkv/core/error.h"
#include "pkv/cuda/device.h"
#include "pkv/cuda/sim_cache.h"

namespace pkv::cuda {

namespace {

class DeviceSimulator final : public CacheSimulator {
public:
    explicit DeviceSimulator(int device) : ws_(check_device(device)) {
        description_ = "cuda:" + std::to_string(device) + " " + devices()[static_cast<size_t>(device)].name;
    }

    std::string description() const override { return description_; }
    int64_t batch_tokens(int D) const override { return std::max<int64_t>(1, kAnalyzeSimElements / std::max(1, D)); }

    std::vector<SimResult> simulate(const SimParams& params, int D, const std::vector<SimJob>& jobs) override {
        std::vector<SimResult> out(jobs.size());
        // Exact sinks and outliers have no device kernels (callers keep them on the host anyway).
        const bool host_all = (params.method == KvMethod::patternkv && !patternkv_on_device(D, params.patterns)) ||
                              params.sinks != 0 || params.outliers != 0;
        // One batch per code width: a table with a width allocation gives each head its own.
        std::map<int, std::vector<size_t>> by_bits;
        for (size_t i = 0; i < jobs.size(); ++i) {
            int bits = params.bits;
            if (params.method == KvMethod::patternkv_table) {
                PKV_ASSERT(jobs[i].table != nullptr);
                bits = jobs[i].table->bits > 0 ? jobs[i].table->bits : params.bits;
            }
            if (host_all || bits == 16) out[i] = simulate_job(params, D, jobs[i]);
            else by_bits[bits].push_back(i);
        }
        for (const auto& [bits, idx] : by_bits) run(params, bits, D, jobs, idx, out);
        return out;
    }

private:
    static int check_device(int device) {
        const int count = device_count();
        PKV_CHECK(device >= 0 && device < count, invalid_argument, "cuda cache simulator: no CUDA device {} ({} found)",
                  device, count);
        return device;
    }

    void run(const SimParams& params, int bits, int D, const std::vector<SimJob>& jobs, const std::vector<size_t>& idx,
             std::vector<SimResult>& out) {
        SimBatch b;
        b.params = params;
        b.params.bits = bits;
        b.params.ring = 0;
        b.params.table_k = b.params.table_v = nullptr;
        b.D = D;
        std::map<const TableHeadView*, int> table_of;
        for (size_t i : idx) {
            const SimJob& j = jobs[i];
            SimProblem q;
            q.row0 = b.rows;
            q.n = j.n;
            q.prefill = j.prefill;
            q.ring = j.ring;
            q.tensor = j.tensor;
            if (params.method == KvMethod::patternkv_table) {
                auto it = table_of.find(j.table);
                if (it == table_of.end()) {
                    it = table_of.emplace(j.table, static_cast<int>(b.tables.size())).first;
                    b.tables.push_back(*j.table);
                }
                q.table = it->second;
            }
            b.problems.push_back(q);
            b.rows += j.n;
        }
        x_.resize(static_cast<size_t>(b.rows * D));
        for (size_t p = 0; p < idx.size(); ++p) {
            const SimJob& j = jobs[idx[p]];
            std::copy_n(j.x, j.n * D, x_.begin() + b.problems[p].row0 * D);
        }
        const SimBatchResult r = simulate_cache_batch(b, x_.data(), ws_);
        const bool pattern = params.method == KvMethod::patternkv, table = params.method == KvMethod::patternkv_table;
        for (size_t p = 0; p < idx.size(); ++p) {
            const SimJob& j = jobs[idx[p]];
            const SimProblem& q = b.problems[p];
            SimResult& s = out[idx[p]];
            const int64_t o = r.plan.offset[p];
            PKV_ASSERT(r.plan.offset[p + 1] - o == j.n);
            s.recon.assign(r.recon.begin() + q.row0 * D, r.recon.begin() + (q.row0 + j.n) * D);
            s.flush_step.assign(r.plan.flush_step.begin() + o, r.plan.flush_step.begin() + o + j.n);
            s.bits = r.plan.bits[p];
            s.stored_from = r.plan.stored_from[p];
            s.kept_from = r.plan.kept_from[p];
            if (!pattern && !table) continue;
            if (pattern) {
                const SimBatchPlan::Bank& bk = r.plan.banks[p];
                s.kmeans_k = bk.k;
                s.bank.assign(r.bank.begin() + bk.row0 * D, r.bank.begin() + (bk.row0 + bk.k + bk.centres) * D);
            } else {
                s.bank.assign(j.table->patterns, j.table->patterns + static_cast<int64_t>(j.table->M) * D);
            }
            s.pattern.assign(static_cast<size_t>(j.n), -1);
            if (j.tensor == KvTensor::v) s.gate.assign(static_cast<size_t>(j.n), 0);
            for (int64_t t = 0; t < j.n; ++t) {
                if (s.flush_step[t] == kNeverQuantized) continue;
                const int32_t l = r.labels[static_cast<size_t>(o + t)];
                s.pattern[t] = l;
                if (j.tensor != KvTensor::v) continue;
                const double rho = v_gate_rho(j.x + t * D, s.bank.data() + static_cast<int64_t>(l) * D, D);
                s.gate[t] = (table ? v_gate_passes(rho, D, j.table->gate_z) : v_gate_passes(rho, D)) ? 1 : 0;
            }
        }
    }

    SimCacheWorkspace ws_;
    std::string description_;
    std::vector<float> x_;  // the packed jobs, reused between calls
};

}  // namespace

std::unique_ptr<CacheSimulator> make_cache_simulator(int device) { return std::make_unique<DeviceSimulator>(device); }

}  // namespace pkv::cuda
