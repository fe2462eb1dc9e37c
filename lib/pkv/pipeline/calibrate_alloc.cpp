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
        u.cost[w] =
            table_element_bits(value ? KvTensor::v : KvTensor::k, kAllocWidths[w], D, M, c.group, c.window, c.outliers);
    return u;
}

void check_budget_early(const CalibrateConfig& c, int D, size_t n_layers, int H) {
    std::vector<AllocUnit> units;
    for (size_t i = 0; i < n_layers * static_cast<size_t>(H); ++i) {
        units.push_back(alloc_costs(c, D, false));
        units.push_back(alloc_costs(c, D, true));
    }
    check_bits_budget(units, c.bits_budget, "--bits-budget", c.bits_floor);
}

AttnErrors attention_errors(const CalibrateConfig& c, int D, int64_t ring, AttnTokens tokens, const Pooled& k,
                            const Pooled& v, const std::vector<Pooled>& qs, const std::vector<TableHeadView>& kviews,
                            const std::vector<TableHeadView>& vviews, const Pooled* k_post, const RopeTable* rope) {
    PKV_ASSERT((k_post == nullptr) == (rope == nullptr));
    const bool held = tokens == AttnTokens::heldout;
    const auto data = [held](const Pooled& p) { return held ? p.hold.data() : p.train.data(); };
    const size_t NK = kviews.size(), NV = vviews.size();
    std::vector<AttnAccum> acc(NK + NV);  // [i]: keys of kviews[i] quantized; [NK + i]: values of vviews[i]
    int64_t used = 0;
    for (const SeqRange& s : held ? k.hold_seqs : k.train_seqs) {
        if (used >= kAttnTokens) break;
        used += s.length;
        const int64_t n = s.length;
        const float* kx = data(k) + s.start * D;
        const float* vx = data(v) + s.start * D;
        const float* ka = k_post ? data(*k_post) + s.start * D : kx;  // the keys attention sees
        const int64_t P = n / 2 / c.window * c.window;
        const std::vector<int32_t> never(static_cast<size_t>(n), kNeverQuantized);
        std::vector<SimResult> sims(NK + NV);
        SimParams sp;
        sp.method = KvMethod::patternkv_table;
        sp.group = c.group;
        sp.outliers = c.outliers;
        sp.window = c.window;
        sp.ring = ring;
        for (size_t i = 0; i < NK; ++i) {
            sp.table_k = &kviews[i];
            sims[i] = simulate_cache(sp, KvTensor::k, kx, n, D, P);
            if (k_post) pre_rope_recon_to_post(sims[i].recon.data(), kx, ka, n, D, *rope);
        }
        for (size_t i = 0; i < NV; ++i) {
            sp.table_v = &vviews[i];
            sims[NK + i] = simulate_cache(sp, KvTensor::v, vx, n, D, P);
        }
        std::vector<AttnCache> caches;
        for (size_t i = 0; i < NK; ++i)
            caches.push_back({sims[i].recon.data(), sims[i].flush_step.data(), vx, never.data(), &acc[i]});
        for (size_t i = 0; i < NV; ++i)
            caches.push_back(
                {ka, never.data(), sims[NK + i].recon.data(), sims[NK + i].flush_step.data(), &acc[NK + i]});
        for (const Pooled& q : qs) accumulate_attention(data(q) + s.start * D, ka, vx, n, D, kAttnStride, caches, ring);
    }
    const auto mean = [](const AttnAccum& a) { return a.rel_rows > 0 ? a.rel_sum / a.rel_rows : 0.0; };
    AttnErrors out;
    for (size_t i = 0; i < NK; ++i) out.k.push_back(mean(acc[i]));
    for (size_t i = 0; i < NV; ++i) out.v.push_back(mean(acc[NK + i]));
    return out;
}

void measure_attention(const CalibrateConfig& c, int D, int64_t ring, const Pooled& k, const Pooled& v,
                       const std::vector<Pooled>& qs, const float* k_patterns, const float* v_patterns,
                       HeadTensorResult& kout, HeadTensorResult& vout, const Pooled* k_post, const RopeTable* rope) {
    const size_t W = kout.widths.size();
    PKV_ASSERT(vout.widths.size() == W);
    std::vector<TableHeadView> kviews, vviews;
    for (size_t w = 0; w < W; ++w) {
        kviews.push_back(
            {k_patterns, c.k_patterns, kout.widths[w].clip, ptable::kDefaultGateZ, c.assign_l2, kout.widths[w].bits});
        vviews.push_back(
            {v_patterns, c.v_patterns, vout.widths[w].clip, vout.widths[w].gate_z, c.assign_l2, vout.widths[w].bits});
    }
    const AttnErrors e = attention_errors(c, D, ring, AttnTokens::train, k, v, qs, kviews, vviews, k_post, rope);
    for (size_t w = 0; w < W; ++w) {
        kout.widths[w].attn = e.k[w];
        vout.widths[w].attn = e.v[w];
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
    const BitAllocation a = allocate_bits(units, c.bits_budget, "--bits-budget", c.bits_floor);
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
            {"floor_bits", c.bits_floor},
            {"bits", a.bits},
            {"bits_uniform_2", alloc_uniform_bits(units, 0)},
            {"measure", c.bits_measure_attention ? "attention" : "train_nmse"},
            {"heads_per_width", per_width},
            {"error_sum", a.error},
            {"error_sum_at_bits", error_base}};
}

}  // namespace pkv::calib
