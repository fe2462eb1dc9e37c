// The host half of the batched cache simulation (sim_cache.h): validation, the flush
// schedule and the storage of every problem. It replays simulate.cpp's block loops
// without the data, so flush steps and bits are those of simulate_cache exactly.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>

#include "pkv/core/error.h"
#include "pkv/cuda/sim_cache.h"
#include "pkv/kmeans/kmeans.h"
#include "pkv/quant/ggml_kv.h"
#include "pkv/quant/hadamard.h"
#include "pkv/quant/minmax.h"

namespace pkv::cuda {

SimBits SimBatchPlan::total() const {
    SimBits t;
    for (const SimBits& b : bits) {
        t.codes += b.codes;
        t.params += b.params;
        t.index += b.index;
        t.gate += b.gate;
        t.bank += b.bank;
        t.window += b.window;
    }
    return t;
}

namespace {

void check_batch(const SimBatch& b) {
    const SimParams& p = b.params;
    const KvMethod m = p.method;
    PKV_CHECK(m != KvMethod::patternkv || b.D <= 256, unsupported,
              "cuda cache simulation: patternkv with head_dim {}: the device k-means takes at most 256 (run it on the "
              "host: pkv::simulate_cache)",
              b.D);
    if (m == KvMethod::patternkv) {
        PKV_CHECK(p.patterns >= 1, invalid_argument, "cuda cache simulation: patternkv with {} patterns: expected >= 1",
                  p.patterns);
        PKV_CHECK(p.patterns <= kDevicePatternMax, unsupported,
                  "cuda cache simulation: patternkv with {} patterns: the device k-means takes at most {} (run it on "
                  "the host: pkv::simulate_cache)",
                  p.patterns, kDevicePatternMax);
    }
    PKV_CHECK(b.D >= 1, invalid_argument, "cuda cache simulation: head_dim {}: expected at least 1", b.D);
    const int64_t stride = b.row_stride > 0 ? b.row_stride : b.D;
    PKV_CHECK(stride >= b.D, invalid_argument, "cuda cache simulation: row stride {} is shorter than head_dim {}",
              stride, b.D);
    PKV_CHECK(b.rows >= 0, invalid_argument, "cuda cache simulation: {} rows: expected a non-negative count", b.rows);
    if (kv_method_takes_bits(m)) check_minmax_bits(p.bits);
    if (kv_method_keeps_window(m)) {
        PKV_CHECK(p.window >= 1, invalid_argument, "cuda cache simulation: window {}: expected at least 1", p.window);
        PKV_CHECK(p.group >= 1, invalid_argument, "cuda cache simulation: group {}: expected at least 1", p.group);
    }
    if (m == KvMethod::q4_0 || m == KvMethod::q8_0)
        ggml_kv_cost_bits(m == KvMethod::q4_0 ? GgmlType::Q4_0 : GgmlType::Q8_0, 0, b.D);
    if (b.rotate) {
        check_hadamard_dim(b.D);
        PKV_CHECK(b.D <= 1024, invalid_argument,
                  "cuda cache simulation: --rotate with head_dim {}: expected at most 1024", b.D);
    }
    for (size_t t = 0; t < b.tables.size(); ++t) {
        const TableHeadView& v = b.tables[t];
        PKV_CHECK(v.patterns != nullptr && v.M >= 1, invalid_argument,
                  "cuda cache simulation: table view {}: expected patterns and M >= 1, got M {}", t, v.M);
        PKV_CHECK(v.clip > 0.0f && v.clip <= 1.0f, invalid_argument,
                  "cuda cache simulation: table view {}: clip ratio {}: expected a value in (0, 1]", t, v.clip);
    }
    for (size_t i = 0; i < b.problems.size(); ++i) {
        const SimProblem& q = b.problems[i];
        PKV_CHECK(q.n >= 0 && q.prefill >= 0 && q.prefill <= q.n, invalid_argument,
                  "cuda cache simulation: problem {}: prefill {} of {} tokens: expected 0 <= prefill <= n", i,
                  q.prefill, q.n);
        PKV_CHECK(q.row0 >= 0 && q.row0 + q.n <= b.rows, invalid_argument,
                  "cuda cache simulation: problem {}: rows {} .. {} lie outside x's {} rows", i, q.row0,
                  q.row0 + q.n - 1, b.rows);
        PKV_CHECK(q.col0 >= 0 && q.col0 + b.D <= stride, invalid_argument,
                  "cuda cache simulation: problem {}: columns {} .. {} lie outside a row of {}", i, q.col0,
                  q.col0 + b.D - 1, stride);
        PKV_CHECK(q.ring >= 0, invalid_argument, "cuda cache simulation: problem {}: ring {}: expected >= 0", i,
                  q.ring);
        PKV_CHECK(q.n <= int64_t{1} << 30, invalid_argument,
                  "cuda cache simulation: problem {}: {} tokens: expected at most 2^30", i, q.n);
        if (kv_method_keeps_window(m))
            check_window_fits_ring(fmt::format("cuda cache simulation: problem {}", i), p.window, q.ring, "its layer");
        if (m == KvMethod::patternkv_table)
            PKV_CHECK(q.table >= 0 && q.table < static_cast<int>(b.tables.size()), invalid_argument,
                      "cuda cache simulation: problem {}: table view {}: expected one of the {} given", i, q.table,
                      b.tables.size());
        // The V quantizer groups min(G, D) channels of a token (quantize_rows).
        if ((m == KvMethod::kivi || m == KvMethod::patternkv_table || m == KvMethod::patternkv) &&
            q.tensor == KvTensor::v) {
            const int g = std::min(p.group, b.D);
            PKV_CHECK(b.D % g == 0, invalid_argument, "group size {} does not divide head_dim {}", g, b.D);
        }
    }
}

// One problem's schedule, appended to the plan (simulate.cpp's loops without the data).
class ProblemPlanner {
public:
    ProblemPlanner(const SimBatch& b, SimBatchPlan& plan, int32_t index,
                   std::map<std::pair<int64_t, int32_t>, int64_t>& draws)
        : b_(b), plan_(plan), index_(index), draws_(draws) {}

    void run(const SimProblem& q) {
        const SimParams& p = b_.params;
        const int64_t n = q.n, P = q.prefill, W = q.ring;
        base_ = plan_.flush_step.size();
        plan_.flush_step.resize(base_ + static_cast<size_t>(n), kNeverQuantized);
        const int64_t s = W > 0 ? std::max<int64_t>(0, P - W) : 0;
        M_ = p.method == KvMethod::patternkv_table ? b_.tables[static_cast<size_t>(q.table)].M : 0;
        if (p.method == KvMethod::patternkv) plan_bank(n - s, P - s);
        if (kv_method_keeps_window(p.method)) block_method(q.tensor, n - s, P - s, s);
        else write_through(n);
        finish(n, n - kept_tokens(n, W));
        plan_.stored_from.push_back(s);
    }

private:
    void unit(int64_t t0, int64_t t1, double codes, double params, double index = 0.0, double gate = 0.0) {
        units_.push_back({t0, t1, codes, params, index, gate});
    }

    // Tokens [t0, t1) of the ring's frame (shifted by s into the sequence) flush at step.
    void flush_block(KvTensor tensor, int64_t t0, int64_t t1, int64_t step, int64_t s) {
        const SimParams& p = b_.params;
        const int D = b_.D;
        for (int64_t j = t0; j < t1; ++j)
            plan_.flush_step[base_ + static_cast<size_t>(j + s)] = static_cast<int32_t>(step + s);
        const double ib = M_ > 0 ? index_bits(M_) : 0.0;
        if (tensor == KvTensor::k) {
            for (int64_t a = t0; a < t1; a += p.group) {
                const int64_t m = std::min<int64_t>(p.group, t1 - a);
                unit(a + s, a + s + m, static_cast<double>(p.bits) * m * D, 32.0 * D, ib * m);
                plan_.k_groups.push_back({index_, static_cast<int32_t>(m), a + s});
            }
        } else {
            const int g = std::min(p.group, D);
            for (int64_t j = t0; j < t1; ++j)
                unit(j + s, j + s + 1, static_cast<double>(p.bits) * D, 32.0 * (D / g), ib, M_ > 0 ? 1.0 : 0.0);
        }
    }

    // patternkv's bank (SimBatchPlan::Bank): simulate_patternkv's k, blocks and cap.
    void plan_bank(int64_t nl, int64_t Pl) {
        const SimParams& p = b_.params;
        const int64_t R = p.window;
        SimBatchPlan::Bank bank;
        bank.prefill = Pl;
        bank.pq = Pl - Pl % R;
        bank.k = Pl > 0 ? static_cast<int32_t>(std::min<int64_t>(p.patterns, Pl)) : 0;
        const int64_t blocks = (nl - bank.pq) / R;
        const int64_t room = p.pattern_cap <= 0 ? blocks : std::max<int64_t>(0, p.pattern_cap - bank.k);
        bank.centres = static_cast<int32_t>(std::min(blocks, room));
        bank.row0 = plan_.bank_rows;
        plan_.bank_rows += bank.k + bank.centres;
        if (bank.k > 0) {
            const auto key = std::make_pair(Pl, bank.k);
            auto it = draws_.find(key);
            if (it == draws_.end()) {
                const KMeansDraws d = kmeans_random_draws(Pl, bank.k, p.seed, 0, int64_t{bank.k} * kPatternKMeansIters);
                it = draws_.emplace(key, static_cast<int64_t>(plan_.draws.size())).first;
                plan_.draws.insert(plan_.draws.end(), d.init_rows.begin(), d.init_rows.end());
                plan_.draws.insert(plan_.draws.end(), d.refill_rows.begin(), d.refill_rows.end());
            }
            bank.draws = it->second;
        }
        plan_.banks.push_back(bank);
    }

    // The bank rows block b is assigned against (the prefill block: the centroids alone).
    int bank_size(int64_t b) const {
        const SimBatchPlan::Bank& k = plan_.banks.back();
        return b < 0 ? k.k : k.k + static_cast<int>(std::min<int64_t>(b + 1, k.centres));
    }

    // kivi, patternkv and patternkv-table on the ring's tokens s .. n - 1: nl tokens, prefill Pl.
    void block_method(KvTensor tensor, int64_t nl, int64_t Pl, int64_t s) {
        const SimParams& p = b_.params;
        const int64_t R = p.window;
        if (p.method == KvMethod::kivi && tensor == KvTensor::v) {
            // The V window slides token by token: the oldest leaves once R + 1 were seen.
            int64_t quantized = std::max<int64_t>(0, Pl - R);
            std::vector<int64_t> step(static_cast<size_t>(nl), -1);
            for (int64_t j = 0; j < quantized; ++j) step[j] = Pl;
            for (int64_t t = Pl; t < nl; ++t)
                if (t + 1 - quantized > R) step[quantized++] = t + 1;
            for (int64_t j = 0; j < quantized; ++j) flush_block(tensor, j, j + 1, step[j], s);
            return;
        }
        const bool pattern = p.method == KvMethod::patternkv;
        const int64_t pq = Pl - Pl % R;
        if (pattern) M_ = bank_size(-1);
        if (pq > 0) flush_block(tensor, 0, pq, Pl, s);
        for (int64_t start = pq, t = Pl; t < nl; ++t) {
            if (t - start + 1 < R) continue;
            if (pattern) M_ = bank_size((start - pq) / R);
            flush_block(tensor, start, t + 1, t + 1, s);
            start = t + 1;
        }
    }

    void write_through(int64_t n) {
        const SimParams& p = b_.params;
        const int D = b_.D;
        if (p.method == KvMethod::fp16 || n == 0) return;
        if (p.method == KvMethod::fp8) {
            for (int64_t j = 0; j < n; ++j) unit(j, j + 1, 8.0 * D, 0.0);
            unit(0, n, 0.0, 32.0);  // the fp32 per-head scale
        } else {
            const GgmlType type = p.method == KvMethod::q4_0 ? GgmlType::Q4_0 : GgmlType::Q8_0;
            const double bits = static_cast<double>(ggml_kv_cost_bits(type, 1, D));
            for (int64_t j = 0; j < n; ++j) unit(j, j + 1, bits, 0.0);
        }
        for (int64_t j = 0; j < n; ++j) plan_.flush_step[base_ + static_cast<size_t>(j)] = static_cast<int32_t>(j);
    }

    void finish(int64_t n, int64_t kept_from) {
        SimBits bits;
        for (const SimUnit& u : units_) {
            if (u.t1 <= kept_from) continue;
            bits.codes += u.codes;
            bits.params += u.params;
            bits.index += u.index;
            bits.gate += u.gate;
        }
        int64_t exact = 0;
        for (int64_t j = kept_from; j < n; ++j)
            exact += plan_.flush_step[base_ + static_cast<size_t>(j)] == kNeverQuantized;
        bits.window = exact_bits(static_cast<double>(exact) * b_.D);
        if (!plan_.banks.empty() && b_.params.method == KvMethod::patternkv) {
            const SimBatchPlan::Bank& k = plan_.banks.back();
            bits.bank = 16.0 * static_cast<double>(k.k + k.centres) * b_.D;
        }
        plan_.bits.push_back(bits);
        plan_.kept_from.push_back(kept_from);
    }

    const SimBatch& b_;
    SimBatchPlan& plan_;
    int32_t index_;
    std::map<std::pair<int64_t, int32_t>, int64_t>& draws_;  // (prefill, k) -> offset in plan_.draws
    size_t base_ = 0;
    int M_ = 0;
    std::vector<SimUnit> units_;
};

}  // namespace

bool patternkv_on_device(int D, int patterns) {
    // Its k-means agrees with the host's statistically, not bit for bit (sim_cache.h).
    const char* opt = std::getenv("PKV_CUDA_PATTERNKV");
    return !(opt != nullptr && std::string(opt) == "0") && D <= 256 && patterns <= kDevicePatternMax;
}

SimBatchPlan plan_sim_batch(const SimBatch& batch) {
    check_batch(batch);
    SimBatchPlan plan;
    plan.offset.push_back(0);
    std::map<std::pair<int64_t, int32_t>, int64_t> draws;
    for (size_t i = 0; i < batch.problems.size(); ++i) {
        ProblemPlanner(batch, plan, static_cast<int32_t>(i), draws).run(batch.problems[i]);
        plan.offset.push_back(static_cast<int64_t>(plan.flush_step.size()));
    }
    return plan;
}

}  // namespace pkv::cuda
