// `pkv analyze`'s work on a group of sequences (analyze_internal.h): the caches of every
// run simulated, their errors, bits, flatness and histograms, and the attention jobs.
#include <cstdint>
#include <vector>

#include "pkv/core/error.h"
#include "pkv/kvcache/metrics.h"
#include "pkv/kvcache/pre_rope.h"
#include "pkv/pipeline/analyze_internal.h"
#include "pkv/quant/hadamard.h"

namespace pkv::analyze_detail {

namespace {

bool is_pattern_method(KvMethod m) { return m == KvMethod::patternkv || m == KvMethod::patternkv_table; }

// Adds each run's errors, bits and flatness of one item (sequence of one head); every
// (run, tensor) has its own accumulators, so they are filled in parallel, and an
// accumulator gets its sequences in order whatever the grouping.
void measure_item(const Context& x, const std::vector<size_t>& idx, const Work& wk, const std::vector<float>& ks,
                  const std::vector<float>& vs, const std::vector<SimResult>& sk, const std::vector<SimResult>& sv) {
    const int D = x.D;
    const int64_t n = wk.sd->n;
#pragma omp parallel for schedule(dynamic)
    for (int64_t j = 0; j < 2 * static_cast<int64_t>(idx.size()); ++j) {
        const size_t i = static_cast<size_t>(j / 2);
        const bool keys = j % 2 == 0;
        if (keys ? !x.out.has_k : !x.out.has_v) continue;
        ConfigAccum& acc = wk.pr->configs[idx[i]];
        ErrorAccum& e = keys ? acc.k : acc.v;
        const SimResult& r = keys ? sk[i] : sv[i];
        const float* data = keys ? ks.data() : vs.data();
        // Errors over the tokens the cache stored; bits over what its final state keeps.
        const int64_t s0 = r.stored_from;
        e.add(data + s0 * D, r.recon.data() + s0 * D, (n - s0) * D);
        e.bits += r.bits.total();
        e.elements += static_cast<double>(n - r.kept_from) * D;
        if (is_pattern_method(x.out.runs[idx[i]].method))
            accumulate_flatness(keys ? acc.flat_k : acc.flat_v, keys ? KvTensor::k : KvTensor::v, data, n, D, x.c.group,
                                &r);
    }
}

// Raw and residual values of the tokens holding a pattern, for the report's histograms.
void add_histogram(const Context& x, HistAccum& h, const std::vector<float>& data, int64_t n, const SimResult& sim,
                   bool keys) {
    const int D = x.D;
    std::vector<float> raw, res;
    for (int64_t t = sim.stored_from; t < n && sim.pattern[t] >= 0; ++t) {
        const float* cc = sim.bank.data() + static_cast<int64_t>(sim.pattern[t]) * D;
        const bool sub = keys || sim.gate[t];
        for (int d = 0; d < D; ++d) {
            raw.push_back(data[t * D + d]);
            res.push_back(data[t * D + d] - (sub ? cc[d] : 0.0f));
        }
    }
    h.add(raw.data(), static_cast<int64_t>(raw.size()), res.data(), static_cast<int64_t>(res.size()), x.c.hist_bins);
}

// Attention of the head's queries against every simulated cache of `idx`. Post-RoPE keys
// are scored in the simulation basis (queries rotated alike); pre-RoPE reconstructions are
// rotated back and turned into the post-RoPE keys the cache would present.
void add_attention(const Context& x, const std::vector<size_t>& idx, bool rot, const SeqData& sd,
                   const std::vector<float>& k, const std::vector<float>& v, const std::vector<SimResult>& sk,
                   const std::vector<SimResult>& sv, PairResult& pr) {
    const int64_t n = sd.n;
    const int D = x.D;
    std::vector<std::vector<float>> khat_store;
    khat_store.reserve(idx.size());
    std::vector<AttnCache> caches;
    for (size_t i = 0; i < idx.size(); ++i) {
        AttnCache ca;
        if (x.c.keys_pre) {
            std::vector<float> r = sk[i].recon;
            if (rot) hadamard_rotate_rows(r.data(), n, D, nullptr, true);
            pre_rope_recon_to_post(r.data(), sd.k.data(), sd.kpost.data(), n, D, x.ropes[sd.rope]);
            khat_store.push_back(std::move(r));
            ca.k_hat = khat_store.back().data();
        } else {
            ca.k_hat = sk[i].recon.data();
        }
        ca.flush_k = sk[i].flush_step.data();
        ca.v_hat = sv[i].recon.data();
        ca.flush_v = sv[i].flush_step.data();
        ca.acc = &pr.configs[idx[i]].attn;
        caches.push_back(ca);
    }
    const std::vector<float>& kexact = x.c.keys_pre ? sd.kpost : k;
    if (x.scorer) {
        // All query heads and caches in one job; it copies them before submit returns.
        const bool rot_q = rot && !x.c.keys_pre;
        std::vector<std::vector<float>> rotated;
        rotated.reserve(sd.qs.size());
        AttentionJob job;
        for (const auto& qh : sd.qs) {
            if (rot_q) {
                rotated.push_back(qh);
                hadamard_rotate_rows(rotated.back().data(), n, D);
            }
            job.q.push_back(rot_q ? rotated.back().data() : qh.data());
        }
        job.k = kexact.data();
        job.v = v.data();
        job.n = n;
        job.D = D;
        job.stride = x.c.attn_stride;
        job.window = sd.ring;
        job.kq_scale = x.kq_scale;
        job.caches = caches;
        x.scorer->submit(job);
        return;
    }
    for (const auto& qh : sd.qs) {
        std::vector<float> qq = qh;
        if (rot && !x.c.keys_pre) hadamard_rotate_rows(qq.data(), n, D);
        accumulate_attention(qq.data(), kexact.data(), v.data(), n, D, x.c.attn_stride, caches, sd.ring, x.kq_scale);
    }
}

}  // namespace

void add_seconds(double& acc, std::chrono::steady_clock::time_point t0) {
    acc += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void simulate_group(const Context& x, const std::vector<size_t>& idx, const std::vector<Work>& ws,
                    const std::vector<std::vector<float>>& ks, const std::vector<std::vector<float>>& vs,
                    std::vector<std::vector<SimResult>>& sk, std::vector<std::vector<SimResult>>& sv) {
    const size_t W = ws.size(), I = idx.size();
    const int D = x.D;
    sk.assign(W, std::vector<SimResult>(I));
    sv.assign(W, std::vector<SimResult>(I));
    auto params = [&x](size_t run) {
        SimParams sp = x.base;
        sp.method = x.out.runs[run].method;
        sp.bits = x.out.runs[run].bits;
        // A table fitted with exact outliers (pkv.quant.outliers) is run holding them out.
        if (sp.method == KvMethod::patternkv_table && x.table) sp.outliers = x.table->outliers;
        return sp;
    };
    // The device simulator holds no outliers: such runs stay on the host.
    bool device = x.sim != nullptr;
    for (size_t i = 0; i < I; ++i) device = device && params(idx[i]).outliers == 0;
    auto job = [&](size_t w, KvTensor t) {
        const SeqData& sd = *ws[w].sd;
        const bool keys = t == KvTensor::k;
        return SimJob{keys ? ks[w].data() : vs[w].data(), sd.n, sd.P, sd.ring, t, keys ? &ws[w].tk : &ws[w].tv};
    };
    if (device) {
        for (size_t i = 0; i < I; ++i) {
            std::vector<SimJob> jobs;
            for (size_t w = 0; w < W; ++w) {
                if (x.out.has_k) jobs.push_back(job(w, KvTensor::k));
                if (x.out.has_v) jobs.push_back(job(w, KvTensor::v));
            }
            std::vector<SimResult> r = x.sim->simulate(params(idx[i]), D, jobs);
            PKV_CHECK(r.size() == jobs.size(), internal, "analyze: the cache simulator returned {} results for {} jobs",
                      r.size(), jobs.size());
            size_t j = 0;
            for (size_t w = 0; w < W; ++w) {
                if (x.out.has_k) sk[w][i] = std::move(r[j++]);
                if (x.out.has_v) sv[w][i] = std::move(r[j++]);
            }
        }
        return;
    }
#pragma omp parallel for schedule(dynamic)
    for (int64_t j = 0; j < static_cast<int64_t>(W * I); ++j) {
        const size_t w = static_cast<size_t>(j) / I, i = static_cast<size_t>(j) % I;
        if (x.out.has_k) sk[w][i] = simulate_job(params(idx[i]), D, job(w, KvTensor::k));
        if (x.out.has_v) sv[w][i] = simulate_job(params(idx[i]), D, job(w, KvTensor::v));
    }
}

void analyze_group(const Context& x, Group& gr) {
    const std::vector<Work>& ws = gr.ws;
    AnalyzeTimes& tm = x.out.times;
    for (int rot = 0; rot <= (x.c.rotate ? 1 : 0); ++rot) {
        Basis& b = gr.basis[rot];
        auto t0 = std::chrono::steady_clock::now();
        for (size_t w = 0; w < ws.size(); ++w) {
            const int64_t n = ws[w].sd->n;
            PairResult& pr = *ws[w].pr;
            if (x.out.has_k)
                accumulate_flatness(pr.raw_k[rot], KvTensor::k, b.ks[w].data(), n, x.D, x.c.group, nullptr);
            if (x.out.has_v)
                accumulate_flatness(pr.raw_v[rot], KvTensor::v, b.vs[w].data(), n, x.D, x.c.group, nullptr);
        }
        add_seconds(tm.measure, t0);
        if (!b.simulated) {
            t0 = std::chrono::steady_clock::now();
            simulate_group(x, b.idx, ws, b.ks, b.vs, b.sk, b.sv);
            add_seconds(tm.simulate, t0);
        }
        // Item after item: its figures here, then its attention job, which a GPU scorer works
        // on while the next item is measured.
        for (size_t w = 0; w < ws.size(); ++w) {
            t0 = std::chrono::steady_clock::now();
            measure_item(x, b.idx, ws[w], b.ks[w], b.vs[w], b.sk[w], b.sv[w]);
            PairResult& pr = *ws[w].pr;
            if (pr.has_hist && !rot)
                for (size_t i = 0; i < b.idx.size(); ++i) {
                    if (static_cast<int>(b.idx[i]) != x.hist_run) continue;
                    if (x.out.has_k) add_histogram(x, pr.hist_k, b.ks[w], ws[w].sd->n, b.sk[w][i], true);
                    if (x.out.has_v) add_histogram(x, pr.hist_v, b.vs[w], ws[w].sd->n, b.sv[w][i], false);
                }
            add_seconds(tm.measure, t0);
            if (!x.out.has_attn) continue;
            t0 = std::chrono::steady_clock::now();
            add_attention(x, b.idx, rot == 1, *ws[w].sd, b.ks[w], b.vs[w], b.sk[w], b.sv[w], pr);
            add_seconds(tm.attention, t0);
        }
    }
}

}  // namespace pkv::analyze_detail
