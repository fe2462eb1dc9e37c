// `pkv calibrate --restart-pick`: the contract is in calibrate_pick.h.
#include "pkv/pipeline/calibrate_pick.h"

#include <algorithm>

#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/pipeline/calibrate_alloc.h"

namespace pkv {

const char* restart_pick_name(RestartPick p) { return p == RestartPick::attention ? "attention" : "inertia"; }

RestartPick parse_restart_pick(const std::string& name) {
    if (name == "inertia") return RestartPick::inertia;
    if (name == "attention") return RestartPick::attention;
    fail(ErrorCode::invalid_argument, "--restart-pick: expected inertia or attention, got '{}'", name);
}

namespace calib {

namespace {

// Run r of a result as a result of its own, as kmeans() would have returned it had r won.
KMeansResult as_result(const KMeansResult& all, int r) {
    const KMeansResult::Run& run = all.runs[static_cast<size_t>(r)];
    KMeansResult out;
    out.k = all.k;
    out.d = all.d;
    out.centroids = run.centroids;
    out.assignments = run.assignments;
    out.objective = run.objective;
    out.iterations = run.iterations;
    out.converged = run.converged;
    out.n_train = all.n_train;
    out.restart = r;
    out.restart_objectives = all.restart_objectives;
    return out;
}

}  // namespace

size_t pick_lowest(const std::vector<double>& errors) {
    PKV_ASSERT(!errors.empty());
    return static_cast<size_t>(std::min_element(errors.begin(), errors.end()) - errors.begin());
}

std::vector<nlohmann::json> pick_restarts(const CalibrateConfig& c, int D, const std::vector<PickHead>& heads,
                                          std::vector<KMeansResult>& kres, std::vector<KMeansResult>& vres) {
    const size_t nh = heads.size();
    const int R = c.restarts;
    PKV_ASSERT(kres.size() == nh && vres.size() == nh);
    for (size_t i = 0; i < nh; ++i)
        PKV_ASSERT(kres[i].runs.size() == static_cast<size_t>(R) && vres[i].runs.size() == static_cast<size_t>(R));
    // Each run fitted as the table's tensor would be, at c.bits alone (a budget's widths
    // are fitted later, for the kept run only).
    CalibrateConfig cf = c;
    cf.bits_budget = 0.0;
    std::vector<HeadTensorResult> fits(nh * 2 * static_cast<size_t>(R));  // [head][K, V][run]
    const int64_t jobs = static_cast<int64_t>(fits.size());
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t j = 0; j < jobs; ++j) {
        const size_t i = static_cast<size_t>(j) / (2 * static_cast<size_t>(R));
        const bool value = (j / R) % 2 == 1;
        const int r = static_cast<int>(j % R);
        const PickHead& h = heads[i];
        const KMeansResult run = as_result(value ? vres[i] : kres[i], r);
        fits[static_cast<size_t>(j)] =
            finish_tensor(value, value ? *h.v : *h.k, run, D, value ? c.v_patterns : c.k_patterns, cf, false,
                          value ? nullptr : h.metric);
    }
    std::vector<nlohmann::json> out(nh);
    std::vector<int> moved(nh, 0);  // tensors of head i that keep another run than the lowest inertia
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t ii = 0; ii < static_cast<int64_t>(nh); ++ii) {
        const size_t i = static_cast<size_t>(ii);
        const PickHead& h = heads[i];
        std::vector<TableHeadView> kviews, vviews;
        for (int r = 0; r < R; ++r) {
            const HeadTensorResult& kf = fits[(i * 2) * R + static_cast<size_t>(r)];
            const HeadTensorResult& vf = fits[(i * 2 + 1) * R + static_cast<size_t>(r)];
            kviews.push_back({kres[i].runs[static_cast<size_t>(r)].centroids.data(), c.k_patterns, kf.clip,
                              ptable::kDefaultGateZ, c.assign_l2, c.bits});
            vviews.push_back({vres[i].runs[static_cast<size_t>(r)].centroids.data(), c.v_patterns, vf.clip, vf.gate_z,
                              c.assign_l2, c.bits});
        }
        const AttnErrors e =
            attention_errors(c, D, h.ring, AttnTokens::heldout, *h.k, *h.v, *h.qs, kviews, vviews, h.k_post, h.rope);
        const size_t rk = pick_lowest(e.k), rv = pick_lowest(e.v);
        out[i] = {{"k", {{"restart", rk}, {"restart_inertia", kres[i].restart}, {"restart_attn_errors", e.k}}},
                  {"v", {{"restart", rv}, {"restart_inertia", vres[i].restart}, {"restart_attn_errors", e.v}}}};
        moved[i] = (static_cast<int>(rk) != kres[i].restart) + (static_cast<int>(rv) != vres[i].restart);
        kres[i] = as_result(kres[i], static_cast<int>(rk));
        vres[i] = as_result(vres[i], static_cast<int>(rv));
    }
    int n_moved = 0;
    for (int m : moved) n_moved += m;
    log::info(
        "calibrate: --restart-pick attention: {} of {} K/V heads of the batch keep another run than the lowest "
        "inertia",
        n_moved, 2 * nh);
    return out;
}

}  // namespace calib

}  // namespace pkv
