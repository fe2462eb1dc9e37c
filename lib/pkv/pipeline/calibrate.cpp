// `pkv calibrate`: the contract is in calibrate.h, the fitted parameters in
// pkv/kvcache/residual.h, the output format in pkv/table/pattern_table.h.
#include "pkv/pipeline/calibrate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>
#include <random>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/core/progress.h"
#include "pkv/core/version.h"
#include "pkv/distributed/comm.h"
#include "pkv/distributed/rank_sharded_assigner.h"
#include "pkv/kmeans/kmeans_multi.h"
#include "pkv/kmeans/sharded_assigner.h"
#include "pkv/kvcache/outliers.h"
#include "pkv/kvcache/residual.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/pipeline/bit_alloc.h"
#include "pkv/pipeline/calibrate_alloc.h"
#include "pkv/pipeline/calibrate_fit.h"
#include "pkv/pipeline/calibrate_pick.h"
#include "pkv/pipeline/calibrate_pool.h"
#include "pkv/pipeline/kv_source.h"
#include "pkv/pipeline/provenance.h"
#include "pkv/quant/hadamard.h"
#include "pkv/quant/minmax.h"

namespace pkv {

namespace {

using calib::DumpInput;
using calib::finish_tensor;
using calib::HeadTensorResult;
using calib::Piece;
using calib::pool_tensor;
using calib::pool_train_rows;
using calib::Pooled;
using calib::sequences_of;
using calib::split_holdout;

// The model source (--model): the key dataset of the chosen basis and the values of the
// sampled sequences, all loaded at once (k-means needs every token of a head).
bool attention_measure(const CalibrateConfig& c) { return c.bits_budget > 0.0 && c.bits_measure_attention; }
bool pick_attention(const CalibrateConfig& c) { return c.restart_pick == RestartPick::attention; }
// Whether some option runs the attention of the queries (with pre-RoPE keys: with /k_post), and which.
bool attends(const CalibrateConfig& c) { return attention_measure(c) || pick_attention(c); }
const char* attending_option(const CalibrateConfig& c) {
    return pick_attention(c) ? "--restart-pick attention" : "--bits-measure attention";
}

// The queries are read for a query-weighted objective and for the attention measures.
bool needs_queries(const CalibrateConfig& c) { return objective_needs_queries(c.objective) || attends(c); }

std::unique_ptr<KvSource> open_stream(const CalibrateConfig& c) {
    ModelSourceConfig m = c.stream;
    m.capture = CaptureSet::parse(std::string(c.keys_pre ? "k_pre,v" : "k_post,v") + (needs_queries(c) ? ",q" : "") +
                                  (c.keys_pre && attends(c) ? ",k_post" : ""));
    m.layers = c.layers;
    m.seed = c.seed;
    m.command = "calibrate";
    m.argv = c.argv;
    std::unique_ptr<KvSource> src = open_model_source(m);
    src->load(0, src->sequences().start.size());
    return src;
}

std::vector<DumpInput> open_dumps(const CalibrateConfig& c, const char* key_ds) {
    const bool stream = !c.stream.model_path.empty();
    PKV_CHECK(stream != !c.dump_paths.empty(), invalid_argument,
              stream ? "--model and --dump: expected one source of activations, got both"
                     : "--dump or --model: expected a KV dump or a model to stream from, got neither");
    std::vector<DumpInput> dumps;
    const std::vector<std::string> paths = stream ? std::vector<std::string>{c.stream.model_path} : c.dump_paths;
    for (const std::string& path : paths) {
        DumpInput in;
        in.reader = stream ? open_stream(c) : open_dump_source(path);
        const KvSource& r = *in.reader;
        PKV_CHECK(r.has(key_ds), not_found,
                  "{}::{}: dataset missing; --keys {} needs it (dump it with --capture including {})", path, key_ds,
                  c.keys_pre ? "pre" : "post", key_ds + 1);
        PKV_CHECK(r.has(kvdump::kV), not_found, "{}::{}: dataset missing; calibration needs the values", path,
                  kvdump::kV);
        PKV_CHECK(!objective_needs_queries(c.objective) || r.has(kvdump::kQ), not_found,
                  "{}::{}: dataset missing; --objective {} weighs the keys by the queries (dump with --capture "
                  "including q)",
                  path, kvdump::kQ, calib_objective_name(c.objective));
        PKV_CHECK(!(attends(c) && c.keys_pre) || r.has(kvdump::kKPost), not_found,
                  "{}::{}: dataset missing; {} attends with the post-RoPE keys (dump with --capture including "
                  "k_post)",
                  path, kvdump::kKPost, attending_option(c));
        PKV_CHECK(!needs_queries(c) || r.has(kvdump::kQ), not_found,
                  "{}::{}: dataset missing; {} runs the attention of the queries (dump with --capture including q, "
                  "or use {})",
                  path, kvdump::kQ, attending_option(c),
                  pick_attention(c) ? "--restart-pick inertia" : "--bits-measure kv");
        const nlohmann::json model = r.model();
        in.model_sha256 = model.is_object() ? model.value("sha256", std::string()) : std::string();
        in.seqs = sequences_of(r);
        if (!dumps.empty()) {
            const KvSource& f = *dumps.front().reader;
            PKV_CHECK(in.model_sha256 == dumps.front().model_sha256, invalid_argument,
                      "{}: model sha256 {} differs from {} of {}; calibrate dumps of one model", path, in.model_sha256,
                      dumps.front().model_sha256, f.path());
            PKV_CHECK(r.n_head_kv() == f.n_head_kv() && r.head_dim() == f.head_dim() && r.dim_order() == f.dim_order(),
                      invalid_argument, "{}: shape (n_head_kv {}, head_dim {}, {}) differs from {} ({}, {}, {})", path,
                      r.n_head_kv(), r.head_dim(), r.dim_order(), f.path(), f.n_head_kv(), f.head_dim(), f.dim_order());
        }
        dumps.push_back(std::move(in));
    }
    return dumps;
}

std::vector<int> calibrated_layers(const CalibrateConfig& c, const std::vector<DumpInput>& dumps) {
    std::vector<int> layers = c.layers;
    const auto& first = dumps.front().reader->layers();
    if (layers.empty()) layers.assign(first.begin(), first.end());
    for (const DumpInput& d : dumps)
        for (int l : layers) {
            const auto& have = d.reader->layers();
            PKV_CHECK(std::find(have.begin(), have.end(), l) != have.end(), invalid_argument,
                      "{}::{}: layer {} not stored (--layers asks for it)", d.reader->path(), kvdump::kLayers, l);
        }
    std::sort(layers.begin(), layers.end());
    layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
    return layers;
}

static_assert(kMaxOutliers == ptable::kMaxOutliers, "a table must record every count the fit may hold out");

void check_config(const CalibrateConfig& c) {
    PKV_CHECK(c.k_patterns >= 1, invalid_argument, "--k-patterns {}: expected at least 1", c.k_patterns);
    PKV_CHECK(c.v_patterns >= 1, invalid_argument, "--v-patterns {}: expected at least 1", c.v_patterns);
    check_minmax_bits(c.bits);
    PKV_CHECK(c.group >= 1, invalid_argument, "--group {}: expected at least 1", c.group);
    PKV_CHECK(c.window >= 1, invalid_argument, "--window {}: expected at least 1", c.window);
    PKV_CHECK(c.holdout >= 0.0 && c.holdout <= 0.9, invalid_argument, "--holdout {}: expected a fraction in [0, 0.9]",
              c.holdout);
    PKV_CHECK(c.max_iter >= 1, invalid_argument, "--iterations {}: expected at least 1", c.max_iter);
    PKV_CHECK(c.restarts >= 1, invalid_argument, "--restarts {}: expected at least 1", c.restarts);
    PKV_CHECK(c.fit_tokens >= 1, invalid_argument, "--fit-tokens {}: expected at least 1", c.fit_tokens);
    PKV_CHECK(c.shard_above >= 0, invalid_argument, "--shard-above {}: expected 0 (automatic) or a token count",
              c.shard_above);
    PKV_CHECK(!c.out_path.empty(), invalid_argument, "--out: expected a path");
    PKV_CHECK(c.outliers >= 0 && c.outliers <= kMaxOutliers, invalid_argument, "--outliers {}: expected 0..{}",
              c.outliers, kMaxOutliers);
    PKV_CHECK(c.bits_budget >= 0.0, invalid_argument, "--bits-budget {}: expected a number of bits per element",
              c.bits_budget);
    if (c.bits_budget > 0.0) alloc_width_index(c.bits_floor, "--bits-budget");
    PKV_CHECK(!(c.bits_budget > 0.0 && c.bits_measure_attention && c.keys_pre && c.rotate), unsupported,
              "--bits-measure attention with --keys pre --rotate: RoPE is applied in the model's basis; use "
              "--bits-measure kv");
    PKV_CHECK(
        !pick_attention(c) || c.restarts >= 2, invalid_argument,
        "--restart-pick attention with --restarts {}: one k-means run leaves nothing to choose; give --restarts 2 "
        "or more",
        c.restarts);
    PKV_CHECK(!pick_attention(c) || c.max_points_per_centroid == 0, unsupported,
              "--restart-pick attention with --max-points-per-centroid {}: runs trained on a subsample keep no labels "
              "to fit with; use 0",
              c.max_points_per_centroid);
    PKV_CHECK(!(pick_attention(c) && c.keys_pre && c.rotate), unsupported,
              "--restart-pick attention with --keys pre --rotate: RoPE is applied in the model's basis; use "
              "--restart-pick inertia");
    PKV_CHECK(c.fit || c.objective != CalibObjective::qk, invalid_argument,
              "--objective qk with --fit none: nothing would use the objective (qk-mine and qk-full mine in it)");
    PKV_CHECK(!(c.objective == CalibObjective::qk_full && c.keys_pre), unsupported,
              "--objective qk-full with --keys pre: RoPE averages the metric's cross terms away; use qk or qk-mine");
    PKV_CHECK(!(objective_needs_queries(c.objective) && c.keys_pre && c.rotate), unsupported,
              "--objective {} with --keys pre --rotate: the query metric is not diagonal in that basis",
              calib_objective_name(c.objective));
}

// One calibrated head as JSON (what a rank sends to rank 0; floats survive CBOR exactly).
nlohmann::json head_record(int layer, int h, const KMeansResult& kres, const KMeansResult& vres,
                           const HeadTensorResult& kout, const HeadTensorResult& vout) {
    return {{"layer", layer},
            {"head", h},
            {"k_patterns", kres.centroids},
            {"v_patterns", vres.centroids},
            {"k_counts", kout.counts},
            {"v_counts", vout.counts},
            {"k_clip", kout.clip},
            {"v_clip", vout.clip},
            {"v_gate_z", static_cast<float>(vout.gate_z)},
            {"k_stats", kout.stats},
            {"v_stats", vout.stats},
            {"k_widths", width_fits_json(kout.widths)},
            {"v_widths", width_fits_json(vout.widths)}};
}

void append_head(PatternLayer& L, const nlohmann::json& rec) {
    auto add = [](auto& dst, const nlohmann::json& src) {
        using V = typename std::decay_t<decltype(dst)>::value_type;
        for (const auto& v : src) dst.push_back(v.get<V>());
    };
    add(L.k_patterns, rec.at("k_patterns"));
    add(L.v_patterns, rec.at("v_patterns"));
    add(L.k_counts, rec.at("k_counts"));
    add(L.v_counts, rec.at("v_counts"));
    L.k_clip.push_back(rec.at("k_clip").get<float>());
    L.v_clip.push_back(rec.at("v_clip").get<float>());
    L.v_gate_z.push_back(rec.at("v_gate_z").get<float>());
}

// What the options and the dumps fix before any mining.
struct Plan {
    const char* key_ds = nullptr;  // the key dataset of the chosen basis
    std::vector<DumpInput> dumps;
    int H = 0, D = 0;
    std::vector<int> layers;
    std::vector<KvDumpLayerInfo> geometry;  // [layers]: the first dump's window and RoPE base of each
    std::vector<Piece> pieces;
    int64_t n_train = 0, n_hold = 0;
    int group_q = 1;                // query heads per KV head
    std::vector<int> partners;      // pre-RoPE keys under a qk objective: calib::rope_partners
    std::vector<RopeParams> ropes;  // [layers]: pre-RoPE keys under an attention measure
    int64_t longest = 0;            // the longest sequence of any dump (RoPE tables cover it)
};

// Each calibrated layer's geometry, the same in every dump (they come from one model); the
// table records it, and a window that does not fit a local layer's ring is refused here.
std::vector<KvDumpLayerInfo> layer_geometry(const CalibrateConfig& c, const std::vector<DumpInput>& dumps,
                                            const std::vector<int>& layers) {
    std::vector<KvDumpLayerInfo> out;
    for (int layer : layers) {
        const KvDumpLayerInfo* first = nullptr;
        for (const DumpInput& d : dumps) {
            const auto& info = d.reader->layer_info();
            const auto it =
                std::find_if(info.begin(), info.end(), [&](const KvDumpLayerInfo& g) { return g.layer == layer; });
            PKV_ASSERT(it != info.end());
            if (!first) first = &*it;
            PKV_CHECK(it->window == first->window && it->rope_base == first->rope_base, invalid_argument,
                      "{}: layer {} has sliding window {} / RoPE base {}, but {} has {} / {}", d.reader->path(), layer,
                      it->window, it->rope_base, dumps.front().reader->path(), first->window, first->rope_base);
        }
        check_window_fits_ring("--window", c.window, first->window,
                               fmt::format("layer {} in {}", layer, dumps.front().reader->path()));
        out.push_back(*first);
    }
    return out;
}

// Every option and dump is checked here so that errors come before any heavy work.
Plan plan_calibration(const CalibrateConfig& c) {
    check_config(c);
    Plan pl;
    pl.key_ds = c.keys_pre ? kvdump::kKPre : kvdump::kKPost;
    pl.dumps = open_dumps(c, pl.key_ds);
    const KvSource& first = *pl.dumps.front().reader;
    pl.H = first.n_head_kv();
    pl.D = first.head_dim();
    const int D = pl.D;
    PKV_CHECK(D % 2 == 0, unsupported, "{}: head_dim {} is odd; pattern tables hold even head dims (RoPE pairs)",
              first.path(), D);
    if (c.rotate) check_hadamard_dim(D);
    if (c.group < D)
        PKV_CHECK(D % c.group == 0, invalid_argument, "--group {}: does not divide head_dim {}", c.group, D);
    pl.layers = calibrated_layers(c, pl.dumps);
    if (needs_queries(c)) {
        PKV_CHECK(first.n_head() >= pl.H && first.n_head() % pl.H == 0, invalid_argument,
                  "{}: n_head {} is not a multiple of n_head_kv {}; the query groups are undefined", first.path(),
                  first.n_head(), pl.H);
        pl.group_q = first.n_head() / pl.H;
        const nlohmann::json m = first.model();
        if (c.keys_pre)
            pl.partners = calib::rope_partners(D, first.dim_order(), m.is_object() ? m.value("n_rot", D) : D);
    }
    pl.geometry = layer_geometry(c, pl.dumps, pl.layers);
    if (c.bits_budget > 0.0) calib::check_budget_early(c, D, pl.layers.size(), pl.H);
    if (attends(c) && c.keys_pre)
        for (size_t li = 0; li < pl.layers.size(); ++li) {
            const std::optional<RopeParams> r = dump_layer_rope(first.model(), first.dim_order(), D, pl.geometry[li]);
            PKV_CHECK(r.has_value(), unsupported,
                      "{}: layer {}: its RoPE is not one pkv applies, so {} cannot attend with pre-RoPE keys; use {}",
                      first.path(), pl.layers[li], attending_option(c),
                      pick_attention(c) ? "--restart-pick inertia" : "--bits-measure kv");
            pl.ropes.push_back(*r);
        }
    pl.pieces = split_holdout(pl.dumps, c.holdout, c.seed);
    for (const Piece& p : pl.pieces) (p.holdout ? pl.n_hold : pl.n_train) += p.length;
    for (const DumpInput& d : pl.dumps)
        for (const SeqRange& s : d.seqs) pl.longest = std::max(pl.longest, s.length);
    PKV_CHECK(!pick_attention(c) || pl.n_hold > 0, invalid_argument,
              "--restart-pick attention with --holdout {}: no held-out tokens to measure the runs on; hold some out",
              c.holdout);
    const int M = std::max(c.k_patterns, c.v_patterns);
    PKV_CHECK(M <= pl.n_train, invalid_argument,
              "--{}-patterns {} exceeds the {} training tokens available ({} tokens in {} dump(s), {} held out)",
              c.k_patterns >= c.v_patterns ? "k" : "v", M, pl.n_train, pl.n_train + pl.n_hold, pl.dumps.size(),
              pl.n_hold);
    if (c.holdout > 0.0 && pl.n_hold == 0) log::warn("calibrate: --holdout {} left no held-out tokens", c.holdout);
    return pl;
}

// The k-means settings from the options; K and V differ only in their pattern count k.
KMeansParams kmeans_params(const CalibrateConfig& c, int k) {
    KMeansParams kp;
    kp.max_iter = c.max_iter;
    kp.tol = c.tol;
    kp.init = c.init;
    kp.n_restarts = c.restarts;
    kp.keep_runs = pick_attention(c);
    kp.max_points_per_centroid = c.max_points_per_centroid;
    kp.k = k;
    return kp;
}

// Work: every (layer, head) of the calibrated layers, job j = layer index * H + head;
// rank r of R takes the jobs with j % R == r and reads only their activations. Jobs
// of a rank run in batches sized by batch_bytes, each batch's problems dealt over
// the assigners (one thread each). A problem's result depends only on its data and
// seed, so any split gives the table of the single-process run.
// Heads too large for one device (or above --shard-above) instead run data parallel:
// rank 0 reads every head whole and runs its k-means, each other rank reads only its
// shard of the head's training rows and serves the passes over it (its devices);
// rank 0's results are the table.
struct Placement {
    const dist::Comm* comm = nullptr;
    int R = 1, rank = 0;
    bool data_parallel = false;
    // Within one process kmeans_batch_multi shards such heads over the devices itself;
    // over ranks every head goes through a RankShardedAssigner (by_rows).
    bool by_rows = false;
    std::unique_ptr<ShardedAssigner> host_shards;  // before rank_shards, which may point into it
    std::unique_ptr<dist::RankShardedAssigner> rank_shards;
    std::string sums_where = "host";
};

// Decided once for all heads, because every head has the same number of training tokens.
Placement place_heads(const CalibrateConfig& c, const Plan& pl, const std::vector<KMeansAssigner*>& assigners,
                      const dist::Comm& comm) {
    Placement w;
    w.comm = &comm;
    w.R = comm.size();
    w.rank = comm.rank();
    const bool big = pl.n_train > shard_limit(assigners, pl.D, c.shard_above);
    w.data_parallel = big && (w.R > 1 || can_shard(assigners));
    w.by_rows = big && w.R > 1;
    // The followers would need every head's key metric to transform their rows.
    PKV_CHECK(!(w.by_rows && objective_mines(c.objective)), unsupported,
              "--objective {}: heads of {} training tokens run data parallel over {} ranks, which mine raw keys; use "
              "qk, or one rank",
              calib_objective_name(c.objective), pl.n_train, w.R);
    if (w.by_rows) {
        if (can_shard(assigners)) w.host_shards = std::make_unique<ShardedAssigner>(assigners);
        w.rank_shards =
            std::make_unique<dist::RankShardedAssigner>(w.host_shards ? w.host_shards.get() : assigners.front(), comm);
    }
    // Where the shards' sums meet: on the devices when the shards form one sum group
    // (NCCL), else on the host.
    const bool sums_on_devices = w.by_rows ? w.rank_shards->group_sums() : w.data_parallel && is_sum_group(assigners);
    if (sums_on_devices) w.sums_where = assigners.front()->sum_group().engine;
    if (w.data_parallel)
        log::info(
            "calibrate: {} training tokens per head: data parallel over {} rank(s) x {} device(s), sums added "
            "on the {}",
            pl.n_train, w.R, assigners.size(), w.sums_where == "host" ? "host" : "devices (" + w.sums_where + ")");
    return w;
}

using Jobs = std::vector<std::pair<int, int>>;  // (layer, head)

// This rank's share of the (layer, head) jobs; data parallel, every rank takes part in every head.
Jobs rank_jobs(const Plan& pl, const Placement& w) {
    Jobs jobs;
    for (size_t li = 0; li < pl.layers.size(); ++li)
        for (int h = 0; h < pl.H; ++h)
            if (w.by_rows || static_cast<int64_t>(li * pl.H + h) % w.R == w.rank) jobs.emplace_back(pl.layers[li], h);
    return jobs;
}

// Data parallel, a follower: only this rank's shard of every head's training rows,
// serving rank 0's k-means passes over them.
void serve_batch(const CalibrateConfig& c, const Plan& pl, const Placement& w, const Jobs& jobs, size_t b0, size_t b1) {
    const int64_t r0 = shard_row(pl.n_train, w.rank, w.R), r1 = shard_row(pl.n_train, w.rank + 1, w.R);
    std::vector<std::vector<float>> kx, vx;
    std::vector<AssignData> kdata, vdata;
    for (size_t j = b0; j < b1; ++j) {
        const auto [layer, h] = jobs[j];
        kx.push_back(pool_train_rows(pl.dumps, pl.pieces, pl.key_ds, layer, h, pl.D, c.rotate, r0, r1));
        vx.push_back(pool_train_rows(pl.dumps, pl.pieces, kvdump::kV, layer, h, pl.D, c.rotate, r0, r1));
    }
    for (size_t i = 0; i < kx.size(); ++i) {
        kdata.push_back({kx[i].data(), r1 - r0});
        vdata.push_back({vx[i].data(), r1 - r0});
    }
    w.rank_shards->serve(kdata);
    w.rank_shards->serve(vdata);
}

// Data parallel over ranks, rank 0 leads the followers' passes (they serve_batch());
// otherwise the problems are dealt over this process's assigners.
std::vector<KMeansResult> run_kmeans(const std::vector<KMeansProblem>& probs, const KMeansParams& p,
                                     const std::vector<KMeansAssigner*>& assigners, const CalibrateConfig& c,
                                     const Plan& pl, const Placement& w) {
    if (!w.by_rows) return kmeans_batch_multi(probs, pl.D, p, assigners, c.shard_above);
    std::vector<AssignData> whole;
    for (const KMeansProblem& q : probs) whole.push_back({q.x, q.n});
    w.rank_shards->set_problems(whole);
    std::vector<KMeansResult> res = kmeans_batch(probs, pl.D, p, w.rank_shards.get());
    w.rank_shards->release();
    return res;
}

// This rank's mined heads (see head_record()) and its seconds in k-means.
struct Mined {
    nlohmann::json heads = nlohmann::json::array();
    double kmeans_seconds = 0.0;
};

int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// The key metric of one KV head (calibrate_objective.h) from the training tokens of the
// query heads of its group: channel weights (qk, qk-mine) or the full factor (qk-full);
// raw under kv.
KeyMetric key_metric(const CalibrateConfig& c, const Plan& pl, int layer, int h) {
    KeyMetric m;
    if (!objective_needs_queries(c.objective)) return m;
    const bool full = c.objective == CalibObjective::qk_full;
    std::vector<double> sum;
    int64_t count = 0;
    for (int g = 0; g < pl.group_q; ++g) {
        const Pooled q = pool_tensor(pl.dumps, pl.pieces, kvdump::kQ, layer, h * pl.group_q + g, pl.D, c.rotate);
        if (full) calib::add_query_products(q.train.data(), q.n_train(), pl.D, sum, count);
        else calib::add_query_moments(q.train.data(), q.n_train(), pl.D, sum, count);
    }
    const std::string what = fmt::format("{}: layer {}, KV head {}", kvdump::kQ, layer, h);
    if (full) m.factor = calib::query_metric_factor(sum, count, pl.D, what);
    else m.weight = calib::query_channel_weights(sum, count, pl.partners, what);
    return m;
}

// A batch on a rank that mines: all its K and V problems go to k-means at once, then
// each head's fit and held-out measurement run in parallel. Under qk-mine (qk-full) the
// keys are mined as k ⊙ √w (U k); the centroids come back transformed back (the means
// of their clusters) and the objective is recomputed in the raw metric, so the
// statistics stay comparable.
void mine_batch(const CalibrateConfig& c, const Plan& pl, const Placement& w,
                const std::vector<KMeansAssigner*>& assigners, const Jobs& jobs, size_t b0, size_t b1, Mined& mined) {
    std::vector<Pooled> kpool, vpool;
    std::vector<KeyMetric> km;               // the objective's key metric per head
    std::vector<std::vector<float>> kmined;  // mining in the metric: the transformed training keys
    std::vector<KMeansProblem> kprob, vprob;
    for (size_t j = b0; j < b1; ++j) {
        const auto [layer, h] = jobs[j];
        kpool.push_back(pool_tensor(pl.dumps, pl.pieces, pl.key_ds, layer, h, pl.D, c.rotate));
        vpool.push_back(pool_tensor(pl.dumps, pl.pieces, kvdump::kV, layer, h, pl.D, c.rotate));
        km.push_back(key_metric(c, pl, layer, h));
        kmined.emplace_back();
        if (objective_mines(c.objective)) {
            kmined.back() = kpool.back().train;
            calib::to_metric(kmined.back().data(), kpool.back().n_train(), pl.D, km.back(), true);
        }
    }
    for (size_t i = 0; i < kpool.size(); ++i) {
        const auto [layer, h] = jobs[b0 + i];
        // Seeds differ per (layer, head, tensor) and do not depend on the batching.
        const uint64_t s = c.seed + 1000003ULL * static_cast<uint64_t>(layer) + 7919ULL * static_cast<uint64_t>(h);
        kprob.push_back({kmined[i].empty() ? kpool[i].train.data() : kmined[i].data(), kpool[i].n_train(), s});
        vprob.push_back({vpool[i].train.data(), vpool[i].n_train(), s ^ 0x5555555555555555ULL});
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<KMeansResult> kres = run_kmeans(kprob, kmeans_params(c, c.k_patterns), assigners, c, pl, w);
    std::vector<KMeansResult> vres = run_kmeans(vprob, kmeans_params(c, c.v_patterns), assigners, c, pl, w);
    mined.kmeans_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (size_t i = 0; i < kpool.size(); ++i) {
        if (kmined[i].empty()) continue;
        calib::to_metric(kres[i].centroids.data(), c.k_patterns, pl.D, km[i], false);
        kres[i].objective = calib::assignment_objective(kpool[i].train.data(), kpool[i].n_train(), pl.D,
                                                        kres[i].centroids.data(), kres[i].assignments.data());
        for (KMeansResult::Run& run : kres[i].runs) {
            calib::to_metric(run.centroids.data(), c.k_patterns, pl.D, km[i], false);
            run.objective = calib::assignment_objective(kpool[i].train.data(), kpool[i].n_train(), pl.D,
                                                        run.centroids.data(), run.assignments.data());
        }
    }
    // What the attention measures read: the query heads of each KV head's group, and with
    // pre-RoPE keys the post-RoPE ones and the layer's RoPE.
    std::vector<std::vector<Pooled>> qs(attends(c) ? kpool.size() : 0);
    std::vector<Pooled> kpost(qs.size());
    std::vector<RopeTable> ropes(qs.size());
    std::vector<int64_t> rings(kpool.size());
    for (size_t i = 0; i < kpool.size(); ++i) {
        const auto [layer, h] = jobs[b0 + i];
        const size_t li = static_cast<size_t>(std::find(pl.layers.begin(), pl.layers.end(), layer) - pl.layers.begin());
        rings[i] = pl.geometry[li].window;
        if (qs.empty()) continue;
        for (int g = 0; g < pl.group_q; ++g)
            qs[i].push_back(pool_tensor(pl.dumps, pl.pieces, kvdump::kQ, layer, h * pl.group_q + g, pl.D, c.rotate));
        if (!c.keys_pre) continue;
        kpost[i] = pool_tensor(pl.dumps, pl.pieces, kvdump::kKPost, layer, h, pl.D, c.rotate);
        ropes[i] = rope_table(pl.ropes[li], static_cast<int>(pl.longest));
    }
    const auto pre = [&](size_t i) { return c.keys_pre ? &kpost[i] : nullptr; };
    const auto rope = [&](size_t i) { return c.keys_pre ? &ropes[i] : nullptr; };
    std::vector<nlohmann::json> picks;
    if (pick_attention(c)) {
        std::vector<calib::PickHead> ph;
        for (size_t i = 0; i < kpool.size(); ++i)
            ph.push_back({&kpool[i], &vpool[i], &qs[i], pre(i), rope(i), km[i].raw() ? nullptr : &km[i], rings[i]});
        picks = calib::pick_restarts(c, pl.D, ph, kres, vres);
    }
    std::vector<HeadTensorResult> kout(kpool.size()), vout(kpool.size());
    // One job per tensor rather than per head: twice the jobs balance the threads
    // better. A batch of fewer tensors than threads (large heads) also splits each fit's
    // candidates into tasks for the threads that would wait.
    const int64_t tensors = 2 * static_cast<int64_t>(kpool.size());
    const bool tasks = tensors < max_threads();
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t t = 0; t < tensors; ++t) {
        const size_t i = static_cast<size_t>(t / 2);
        if (t % 2 == 0) vout[i] = finish_tensor(true, vpool[i], vres[i], pl.D, c.v_patterns, c, tasks, nullptr);
        else
            kout[i] =
                finish_tensor(false, kpool[i], kres[i], pl.D, c.k_patterns, c, tasks, km[i].raw() ? nullptr : &km[i]);
    }
    if (attention_measure(c)) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t ii = 0; ii < static_cast<int64_t>(kpool.size()); ++ii) {
            const size_t i = static_cast<size_t>(ii);
            calib::measure_attention(c, pl.D, rings[i], kpool[i], vpool[i], qs[i], kres[i].centroids.data(),
                                     vres[i].centroids.data(), kout[i], vout[i], pre(i), rope(i));
        }
    }
    for (size_t i = 0; i < picks.size(); ++i) {
        kout[i].stats.update(picks[i].at("k"));
        vout[i].stats.update(picks[i].at("v"));
    }
    for (size_t i = 0; i < kpool.size(); ++i)
        mined.heads.push_back(head_record(jobs[b0 + i].first, jobs[b0 + i].second, kres[i], vres[i], kout[i], vout[i]));
}

// Batches of whole heads sized by batch_bytes, so memory does not grow with the number of layers.
Mined mine_heads(const CalibrateConfig& c, const Plan& pl, const Placement& w,
                 const std::vector<KMeansAssigner*>& assigners) {
    const Jobs jobs = rank_jobs(pl, w);
    // K and V of every token, and the transformed training keys when mining in the metric.
    const int64_t bytes_per_head =
        (2 * (pl.n_train + pl.n_hold) + (objective_mines(c.objective) ? pl.n_train : 0)) * pl.D * 4;
    const size_t heads_per_batch =
        static_cast<size_t>(std::max<int64_t>(1, c.batch_bytes / std::max<int64_t>(bytes_per_head, 1)));
    Progress progress(w.R > 1 ? "calibrate (rank " + std::to_string(w.rank) + ")" : std::string("calibrate"),
                      jobs.size(), "heads");
    Mined mined;
    for (size_t b0 = 0; b0 < jobs.size(); b0 += heads_per_batch) {
        const size_t b1 = std::min(jobs.size(), b0 + heads_per_batch);
        if (w.by_rows && w.rank != 0) serve_batch(c, pl, w, jobs, b0, b1);
        else mine_batch(c, pl, w, assigners, jobs, b0, b1, mined);
        progress.advance(b1 - b0);
    }
    progress.finish();
    return mined;
}

using HeadRecords = std::map<std::pair<int, int>, nlohmann::json>;  // (layer, head) -> head_record()

// Rank 0 collects every rank's heads (CBOR) to write one table; other ranks get none.
// kmeans_seconds_max: the slowest rank's k-means time.
HeadRecords gather_heads(const Placement& w, Mined mined, double& kmeans_seconds_max) {
    std::string mine;
    if (w.R > 1 && w.rank != 0 && !w.by_rows) {  // data parallel: rank 0 already has every head
        const std::vector<std::uint8_t> cb =
            nlohmann::json::to_cbor({{"heads", mined.heads}, {"kmeans_seconds", mined.kmeans_seconds}});
        mine.assign(cb.begin(), cb.end());
    }
    const std::vector<std::string> parts = w.comm->gather(mine);
    HeadRecords all;
    if (w.rank != 0) return all;
    kmeans_seconds_max = mined.kmeans_seconds;
    for (size_t r = 0; r < parts.size(); ++r) {
        if (r != 0 && parts[r].empty()) continue;
        nlohmann::json got = r == 0 ? std::move(mined.heads) : nlohmann::json::from_cbor(parts[r]);
        if (r != 0) {
            kmeans_seconds_max = std::max(kmeans_seconds_max, got.at("kmeans_seconds").get<double>());
            got = std::move(got.at("heads"));
        }
        for (nlohmann::json& rec : got) {
            const std::pair<int, int> key{rec.at("layer").get<int>(), rec.at("head").get<int>()};
            all[key] = std::move(rec);
        }
    }
    return all;
}

// The table's layers in model order from the gathered heads; returns the per-head statistics for the metadata.
nlohmann::json assemble_layers(PatternTable& t, const Plan& pl, int R, const HeadRecords& all) {
    PKV_CHECK(all.size() == pl.layers.size() * static_cast<size_t>(pl.H), internal,
              "calibrate: gathered {} heads from {} ranks, expected {}", all.size(), R, pl.layers.size() * pl.H);
    nlohmann::json heads = nlohmann::json::array();
    for (size_t li = 0; li < pl.layers.size(); ++li) {
        const int layer = pl.layers[li];
        PatternLayer L;
        L.layer = layer;
        L.window = pl.geometry[li].window;
        L.rope_base = pl.geometry[li].rope_base;
        for (int h = 0; h < pl.H; ++h) {
            const nlohmann::json& rec = all.at({layer, h});
            append_head(L, rec);
            heads.push_back({{"layer", layer}, {"head", h}, {"k", rec.at("k_stats")}, {"v", rec.at("v_stats")}});
        }
        t.layers.push_back(std::move(L));
    }
    return heads;
}

// The table's provenance: inputs, split, settings and timings, so a table can be traced and reproduced.
nlohmann::json calibration_json(const CalibrateConfig& c, const Plan& pl, const Placement& w, double kmeans_seconds_max,
                                std::chrono::steady_clock::time_point t_start, nlohmann::json heads) {
    nlohmann::json dumps_json = nlohmann::json::array();
    for (const DumpInput& d : pl.dumps) {
        const nlohmann::json prov = d.reader->provenance();
        nlohmann::json rec = {
            {"path", d.reader->path()},
            {"tokens", d.reader->n_tokens()},
            {"model_sha256", d.model_sha256},
            {"sources", prov.is_object() && prov.contains("texts") ? prov["texts"] : nlohmann::json::array()}};
        if (d.reader->streamed()) {
            rec["source"] = "model";
            rec["settings"] = prov["settings"];
            rec["device"] = prov["device"];
            rec["stream"] = prov["stream"];
        }
        dumps_json.push_back(std::move(rec));
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    return {{"tool", "pkv"},
            {"version", PKV_VERSION},
            {"commit", PKV_GIT_COMMIT},
            {"argv", c.argv},
            {"time", utc_timestamp()},
            {"dumps", dumps_json},
            {"tokens", {{"train", pl.n_train}, {"holdout", pl.n_hold}}},
            {"holdout_fraction", c.holdout},
            {"seed", c.seed},
            {"device", c.device},
            {"processes", w.comm->description()},
            {"data_parallel", w.data_parallel},
            {"data_parallel_sums", w.data_parallel ? w.sums_where : ""},
            {"kmeans",
             {{"max_iter", c.max_iter},
              {"tol", c.tol},
              {"init", kmeans_init_name(c.init)},
              {"restarts", c.restarts},
              {"restart_pick", restart_pick_name(c.restart_pick)},
              {"max_points_per_centroid", c.max_points_per_centroid},
              {"seconds", kmeans_seconds_max}}},
            {"objective", calib_objective_name(c.objective)},
            {"fit",
             {{"method", c.fit ? "mse" : "none"},
              {"tokens_per_head", c.fit_tokens},
              {"outliers", c.outliers},
              {"clip_grid", clip_grid()},
              {"gate_z_grid", gate_z_grid()}}},
            {"seconds", seconds},
            {"heads", std::move(heads)}};
}

}  // namespace

PatternTable run_calibrate(const CalibrateConfig& c, KMeansAssigner* assigner) {
    return run_calibrate(c, std::vector<KMeansAssigner*>{assigner}, nullptr);
}

PatternTable run_calibrate(const CalibrateConfig& c, const std::vector<KMeansAssigner*>& assigners_in,
                           const dist::Comm* comm_in) {
    const std::vector<KMeansAssigner*> assigners =
        assigners_in.empty() ? std::vector<KMeansAssigner*>{nullptr} : assigners_in;
    const auto t_start = std::chrono::steady_clock::now();
    const Plan pl = plan_calibration(c);
    PatternTable t = calib::table_header(c, *pl.dumps.front().reader, pl.H, pl.D, pl.dumps.front().model_sha256);
    const dist::Comm& comm = comm_in ? *comm_in : dist::Comm::world();
    const Placement w = place_heads(c, pl, assigners, comm);
    Mined mined = mine_heads(c, pl, w, assigners);
    double kmeans_seconds_max = 0.0;
    const HeadRecords all = gather_heads(w, std::move(mined), kmeans_seconds_max);
    if (w.rank != 0) return t;  // only rank 0 writes
    nlohmann::json heads = assemble_layers(t, pl, w.R, all);
    nlohmann::json allocation;
    if (c.bits_budget > 0.0) {
        std::vector<const nlohmann::json*> records;
        for (int layer : pl.layers)
            for (int h = 0; h < pl.H; ++h) records.push_back(&all.at({layer, h}));
        allocation = calib::apply_allocation(c, t, records, heads);
    }
    t.calibration = calibration_json(c, pl, w, kmeans_seconds_max, t_start, std::move(heads));
    if (c.bits_budget > 0.0) t.calibration["allocation"] = std::move(allocation);
    write_pattern_table(t, c.out_path, c.force);
    return t;
}

}  // namespace pkv
