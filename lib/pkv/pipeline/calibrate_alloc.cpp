// `pkv calibrate --bits-budget`: the contract is in calibrate_alloc.h.
#include "pkv/pipeline/calibrate_alloc.h"

#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/kvcache/metrics.h"
#include "pkv/kvcache/pre_rope.h"
#include "pkv/kvcache/simulate.h"

namespace pkv::calib {

AllocUnit alloc_costs(const CalibrateConfig& c, int D, bool value) {
    AllocUnit u;
    const int M = value ? c.v_patterns : c.k_patterns;
    for (size_t w = 0; w < kAllocWidths.size(); ++w)
        u.cost[w] = table_element_bits(value ? KvTensor::v : KvTensor::k, kAllocWidths[w], D, M, c.group, c.window);
    return u;
}

void check_budget_early(const CalibrateConfig& c, int D, size_t n_layers, int H) {
    std::vector<AllocUnit> units;
    for (size_t i = 0; i < n_layers * static_cast<size_t>(H); ++i) {
        units.push_back(alloc_costs(c, D, false));
        units.push_back(alloc_costs(c, D, true));
    }
    check_bits_budget(units, c.bits_budget);
}

void measure_attention(const CalibrateConfig& c, int D, int64_t ring, const Pooled& k, const Pooled& v,
                       const std::vector<Pooled>& qs, const float* k_patterns, const float* v_patterns,
                       HeadTensorResult& kout, HeadTensorResult& vout, const Pooled* k_post, const RopeTable* rope) {
    PKV_ASSERT((k_post == nullptr) == (rope == nullptr));
    const size_t W = kout.widths.size();
    PKV_ASSERT(vout.widths.size() == W);
    std::vector<AttnAccum> acc(2 * W);  // [w]: keys at width w; [W + w]: values
    int64_t used = 0;
    for (const SeqRange& s : k.train_seqs) {
        if (used >= kAttnTokens) break;
        used += s.length;
        const int64_t n = s.length;
        const float* kx = k.train.data() + s.start * D;
        const float* vx = v.train.data() + s.start * D;
        const float* ka = k_post ? k_post->train.data() + s.start * D : kx;  // the keys attention sees
        const int64_t P = n / 2 / c.window * c.window;
        const std::vector<int32_t> never(static_cast<size_t>(n), kNeverQuantized);
        std::vector<SimResult> sims(2 * W);
        std::vector<AttnCache> caches;
        for (size_t w = 0; w < W; ++w) {
            const TableHeadView kv{k_patterns,  c.k_patterns,       kout.widths[w].clip, ptable::kDefaultGateZ,
                                   c.assign_l2, kout.widths[w].bits};
            const TableHeadView vv{v_patterns,  c.v_patterns,       vout.widths[w].clip, vout.widths[w].gate_z,
                                   c.assign_l2, vout.widths[w].bits};
            SimParams sp;
            sp.method = KvMethod::patternkv_table;
            sp.group = c.group;
            sp.window = c.window;
            sp.ring = ring;
            sp.table_k = &kv;
            sp.table_v = &vv;
            sims[w] = simulate_cache(sp, KvTensor::k, kx, n, D, P);
            sims[W + w] = simulate_cache(sp, KvTensor::v, vx, n, D, P);
            if (k_post) pre_rope_recon_to_post(sims[w].recon.data(), kx, ka, n, D, *rope);
        }
        for (size_t w = 0; w < W; ++w)
            caches.push_back({sims[w].recon.data(), sims[w].flush_step.data(), vx, never.data(), &acc[w]});
        for (size_t w = 0; w < W; ++w)
            caches.push_back({ka, never.data(), sims[W + w].recon.data(), sims[W + w].flush_step.data(), &acc[W + w]});
        for (const Pooled& q : qs)
            accumulate_attention(q.train.data() + s.start * D, ka, vx, n, D, kAttnStride, caches, ring);
    }
    for (size_t w = 0; w < W; ++w) {
        const auto mean = [](const AttnAccum& a) { return a.rel_rows > 0 ? a.rel_sum / a.rel_rows : 0.0; };
        kout.widths[w].attn = mean(acc[w]);
        vout.widths[w].attn = mean(acc[W + w]);
    }
}

nlohmann::json apply_allocation(const CalibrateConfig& c, PatternTable& t,
                                const std::vector<const nlohmann::json*>& records, nlohmann::json& heads) {
    const int H = t.model.n_head_kv, D = t.model.head_dim;
    PKV_ASSERT(records.size() == t.layers.size() * static_cast<size_t>(H) && heads.size() == records.size());
    std::vector<AllocUnit> units;
    std::vector<std::vector<WidthFit>> fits;  // [unit]: the fits at 2, 3, 4, 8
    for (const nlohmann::json* rec : records)
        for (const char* tensor : {"k_widths", "v_widths"}) {
            AllocUnit u = alloc_costs(c, D, tensor[0] == 'v');
            const int64_t ring = t.layers[units.size() / 2 / static_cast<size_t>(H)].window;
            if (ring > 0 && ring < c.budget_ctx)
                u.weight = static_cast<double>(ring) / static_cast<double>(c.budget_ctx);
            fits.push_back(width_fits_from_json(rec->at(tensor)));
            PKV_ASSERT(fits.back().size() + 1 == kAllocWidths.size());
            for (size_t w = 0; w + 1 < kAllocWidths.size(); ++w) {
                PKV_ASSERT(fits.back()[w].bits == kAllocWidths[w]);
                u.error[w] = c.bits_measure_attention ? fits.back()[w].attn : fits.back()[w].nmse;
            }
            u.error.back() = 0.0;
            units.push_back(u);
        }
    const BitAllocation a = allocate_bits(units, c.bits_budget);
    t.alloc_budget = c.bits_budget;
    t.alloc_bits = a.bits;
    double error_base = 0.0;  // every unit at c.bits, in the measure, for the record
    int count[kAllocWidths.size()] = {};
    for (size_t u = 0; u < units.size(); ++u) {
        const size_t li = u / 2 / static_cast<size_t>(H);
        const int h = static_cast<int>(u / 2 % static_cast<size_t>(H));
        const bool value = u % 2 == 1;
        PatternLayer& L = t.layers[li];
        const int w = a.widths[u];
        (value ? L.v_bits : L.k_bits).push_back(w);
        for (size_t i = 0; i < kAllocWidths.size(); ++i) count[i] += kAllocWidths[i] == w;
        for (const WidthFit& f : fits[u]) {
            if (f.bits == c.bits) error_base += c.bits_measure_attention ? f.attn : f.nmse;
            if (f.bits != w) continue;
            if (value) L.v_clip[h] = f.clip, L.v_gate_z[h] = static_cast<float>(f.gate_z);
            else L.k_clip[h] = f.clip;
        }
        nlohmann::json& s = heads[u / 2][value ? "v" : "k"];
        s["bits"] = w;
        s["widths"] = width_fits_json(fits[u]);
    }
    nlohmann::json per_width = nlohmann::json::object();
    for (size_t i = 0; i < kAllocWidths.size(); ++i) per_width[std::to_string(kAllocWidths[i])] = count[i];
    log::info("calibrate: --bits-budget {}: {:.4f} bits per element; K/V heads at 2/3/4/8/16 bits: {}/{}/{}/{}/{}",
              c.bits_budget, a.bits, count[0], count[1], count[2], count[3], count[4]);
    return {{"budget", c.bits_budget},
            {"budget_ctx", c.budget_ctx},
            {"bits", a.bits},
            {"bits_uniform_2", alloc_uniform_bits(units, 0)},
            {"measure", c.bits_measure_attention ? "attention" : "train_nmse"},
            {"heads_per_width", per_width},
            {"error_sum", a.error},
            {"error_sum_at_bits", error_base}};
}

}  // namespace pkv::calib
