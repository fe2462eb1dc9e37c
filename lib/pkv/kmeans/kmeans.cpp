// pkv/kmeans/kmeans.cpp — the Lloyd loop, initialisations, subsampling and restarts.
#include "pkv/kmeans/kmeans.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

#include <Eigen/Dense>

#include "pkv/core/error.h"

namespace pkv {

namespace {

using ConstVecMapF = Eigen::Map<const Eigen::VectorXf>;

// Below this many coordinates a parallel region costs more than it saves (see
// assign_cpu.cpp).
constexpr int64_t kParallelMinValues = int64_t{1} << 20;
// The centroid update goes parallel from this many coordinates (k x d).
constexpr int64_t kParallelUpdateValues = int64_t{1} << 16;

// splitmix64 finaliser: turns (seed, stream) into well-separated generator seeds.
uint64_t mix_seed(uint64_t seed, uint64_t stream) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (stream + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// mt19937_64's output sequence is fixed by the standard, but the std distributions
// are not; drawing indices and reals by hand keeps results identical across
// standard libraries.
class Rng {
public:
    explicit Rng(uint64_t seed) : gen_(seed) {}
    /// Uniform in [0, n), n >= 1, without modulo bias.
    int64_t index(int64_t n) {
        const uint64_t un = static_cast<uint64_t>(n);
        const uint64_t threshold = (0 - un) % un;  // 2^64 mod n
        for (;;) {
            const uint64_t r = gen_();
            if (r >= threshold) return static_cast<int64_t>(r % un);
        }
    }
    /// Uniform in [0, 1) with 53 random bits.
    double unit() { return static_cast<double>(gen_() >> 11) * 0x1.0p-53; }

private:
    std::mt19937_64 gen_;
};

// m distinct indices from [0, n). Selection sampling (sorted, O(n)) when m is a sizable
// fraction of n; otherwise Floyd's algorithm (O(m) time and memory, unsorted).
std::vector<int64_t> sample_without_replacement(int64_t n, int64_t m, Rng& rng) {
    std::vector<int64_t> out;
    out.reserve(static_cast<size_t>(m));
    if (m * 4 >= n) {
        for (int64_t i = 0; i < n && static_cast<int64_t>(out.size()) < m; ++i) {
            const int64_t needed = m - static_cast<int64_t>(out.size());
            if (static_cast<double>(n - i) * rng.unit() < static_cast<double>(needed)) out.push_back(i);
        }
        return out;
    }
    std::unordered_set<int64_t> taken;
    taken.reserve(static_cast<size_t>(m) * 2);
    for (int64_t j = n - m; j < n; ++j) {
        const int64_t t = rng.index(j + 1);
        const int64_t pick = taken.insert(t).second ? t : j;
        if (pick == j) taken.insert(j);
        out.push_back(pick);
    }
    return out;
}

void check_finite(const float* x, int64_t n, int d, const std::string& where) {
    // A single NaN would poison a centroid and, through it, every later iteration;
    // one scan up front gives a precise message instead.
    int64_t first_bad = n;
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (n * d >= kParallelMinValues)
    for (int64_t i = 0; i < n; ++i) {
        const float* xi = x + i * d;
        for (int t = 0; t < d; ++t)
            if (!std::isfinite(xi[t])) {
                first_bad = std::min(first_bad, i);
                break;
            }
    }
    if (first_bad == n) return;
    int dim = 0;
    while (std::isfinite(x[first_bad * d + dim])) ++dim;
    fail(ErrorCode::invalid_argument, "k-means: {}point {} has a non-finite value at dim {}", where, first_bad, dim);
}

void check_params(int d, const KMeansParams& p) {
    PKV_CHECK(d >= 1, invalid_argument, "k-means: expected dimension d >= 1, got {}", d);
    PKV_CHECK(p.k >= 1, invalid_argument, "k-means: expected k >= 1, got {}", p.k);
    PKV_CHECK(p.max_iter >= 0, invalid_argument, "k-means: expected max_iter >= 0, got {}", p.max_iter);
    PKV_CHECK(p.n_restarts >= 1, invalid_argument, "k-means: expected n_restarts >= 1, got {}", p.n_restarts);
    PKV_CHECK(p.max_points_per_centroid >= 0, invalid_argument,
              "k-means: expected max_points_per_centroid >= 0, got {}", p.max_points_per_centroid);
    PKV_CHECK(!std::isnan(p.tol) && !std::isnan(p.rel_tol), invalid_argument,
              "k-means: tol and rel_tol must not be NaN");
    if (!p.initial_centroids.empty()) {
        const size_t expected = static_cast<size_t>(p.k) * static_cast<size_t>(d);
        PKV_CHECK(p.initial_centroids.size() == expected, invalid_argument,
                  "k-means: initial_centroids: expected k * d = {} values, got {}", expected,
                  p.initial_centroids.size());
        PKV_CHECK(p.n_restarts == 1, invalid_argument,
                  "k-means: initial_centroids given: expected n_restarts = 1, got {}", p.n_restarts);
        for (size_t i = 0; i < expected; ++i)
            PKV_CHECK(std::isfinite(p.initial_centroids[i]), invalid_argument,
                      "k-means: initial centroid {} has a non-finite value at dim {}", i / d, i % d);
    }
}

void copy_row(const float* x, int d, int64_t row, float* dst) { std::copy(x + row * d, x + (row + 1) * d, dst); }

void init_random(const float* x, int64_t n, int d, int k, Rng& rng, float* centroids) {
    const std::vector<int64_t> rows = sample_without_replacement(n, k, rng);
    for (int j = 0; j < k; ++j) copy_row(x, d, rows[j], centroids + int64_t{j} * d);
}

// k-means++: every new centre is a point drawn with probability proportional to its
// squared distance to the nearest centre chosen so far.
void init_kmeanspp(const float* x, int64_t n, int d, int k, Rng& rng, float* centroids) {
    std::vector<double> nearest(static_cast<size_t>(n), std::numeric_limits<double>::infinity());
    int64_t pick = rng.index(n);
    for (int j = 0;; ++j) {
        float* cj = centroids + int64_t{j} * d;
        copy_row(x, d, pick, cj);
        if (j + 1 == k) break;
        const ConstVecMapF c(cj, d);
#pragma omp parallel for schedule(static) if (n * d >= kParallelMinValues)
        for (int64_t i = 0; i < n; ++i) {
            const double dist = (ConstVecMapF(x + i * d, d) - c).squaredNorm();
            if (dist < nearest[i]) nearest[i] = dist;
        }
        double total = 0.0;
        for (int64_t i = 0; i < n; ++i) total += nearest[i];
        if (!(total > 0.0)) {
            // Every point coincides with a centre (fewer distinct points than k).
            pick = rng.index(n);
            continue;
        }
        const double target = rng.unit() * total;
        double cum = 0.0;
        pick = -1;
        int64_t last_positive = 0;
        for (int64_t i = 0; i < n; ++i) {
            if (nearest[i] <= 0.0) continue;
            last_positive = i;
            cum += nearest[i];
            if (cum > target) {
                pick = i;
                break;
            }
        }
        if (pick < 0) pick = last_positive;  // rounding left target just above the last sum
    }
}

// Calls begin_batch() now and end_batch() on every exit path.
class BatchScope {
public:
    BatchScope(KMeansAssigner& a, const std::vector<AssignData>& data, int d) : a_(a) { a_.begin_batch(data, d); }
    ~BatchScope() { a_.end_batch(); }
    BatchScope(const BatchScope&) = delete;
    BatchScope& operator=(const BatchScope&) = delete;

private:
    KMeansAssigner& a_;
};

// One problem's training set: all its points, or a uniform subset copied out.
struct ProblemState {
    const float* x = nullptr;
    int64_t n = 0;
    uint64_t seed = 0;
    std::vector<float> subset;
    const float* xt = nullptr;
    int64_t nt = 0;
};

// One restart of one problem.
struct Run {
    int problem = 0;
    Rng rng{0};
    std::vector<float> centroids;
    std::vector<KMeansIterationStats> stats;
    int iterations = 0;
    bool converged = false;
    bool active = true;
    double prev_objective = 0.0;
    std::vector<double> sums;
    std::vector<int64_t> counts;
    std::vector<float> next;      // the update's output buffer
    std::vector<int32_t> labels;  // final assignment of the training points (when kept)
    double objective = 0.0;       // of the final centroids on the training points
};

// The Lloyd update of one run from the sums and counts of its last pass; returns the
// iteration's statistics without `seconds`.
KMeansIterationStats update_run(Run& run, const ProblemState& ps, int k, int d, double objective) {
    std::vector<float>& next = run.next;
    KMeansIterationStats st;
    st.objective = objective;
    // Every mean alone, so threads (for large k x d: a GPU pass at k = 1024 takes a few
    // ms, this a noticeable part of it) change nothing; the refills of empty clusters
    // then draw from the generator in cluster order, as before.
    const int64_t kd = int64_t{k} * d;
#pragma omp parallel for schedule(static) if (kd >= kParallelUpdateValues)
    for (int j = 0; j < k; ++j) {
        if (run.counts[j] == 0) continue;
        float* nj = next.data() + int64_t{j} * d;
        const double inv = 1.0 / static_cast<double>(run.counts[j]);
        const double* sj = run.sums.data() + int64_t{j} * d;
        for (int t = 0; t < d; ++t) nj[t] = static_cast<float>(sj[t] * inv);
    }
    for (int j = 0; j < k; ++j) {
        if (run.counts[j] != 0) continue;
        // Empty: move to a random training point (see kmeans.h for why this cannot
        // raise the objective).
        copy_row(ps.xt, d, run.rng.index(ps.nt), next.data() + int64_t{j} * d);
        ++st.n_empty_refilled;
    }
    double shift = 0.0;
#pragma omp parallel for schedule(static) reduction(max : shift) if (kd >= kParallelUpdateValues)
    for (int64_t i = 0; i < kd; ++i)
        shift = std::max(shift, std::fabs(static_cast<double>(next[i]) - run.centroids[i]));
    st.max_shift = shift;
    run.centroids.swap(next);
    return st;
}

// The runs of lloyd_batch() split into `groups` contiguous ranges of about equal
// training points (a group's pass takes about its share of the device time); every
// group gets at least one run.
std::vector<size_t> group_bounds(const std::vector<ProblemState>& probs, const std::vector<Run>& runs, int groups) {
    std::vector<size_t> b(static_cast<size_t>(groups) + 1, runs.size());
    b[0] = 0;
    double total = 0.0;
    for (const Run& r : runs) total += static_cast<double>(probs[static_cast<size_t>(r.problem)].nt);
    double seen = 0.0;
    size_t g = 1;
    for (size_t i = 0; i < runs.size() && g < static_cast<size_t>(groups); ++i) {
        seen += static_cast<double>(probs[static_cast<size_t>(runs[i].problem)].nt);
        const size_t left = runs.size() - (i + 1), need = static_cast<size_t>(groups) - g;
        if (seen * groups >= total * static_cast<double>(g) || left == need) b[g++] = i + 1;
    }
    return b;
}

// Runs in groups, group g's pass in assigner slot g: the host updates one while the assigner runs the others.
class LloydGroups {
public:
    LloydGroups(const std::vector<ProblemState>& probs, int d, const KMeansParams& p, KMeansAssigner& assigner,
                std::vector<Run>& runs)
        : probs_(probs),
          d_(d),
          p_(p),
          assigner_(assigner),
          runs_(runs),
          kd_(static_cast<size_t>(p.k) * static_cast<size_t>(d)) {
        const int groups =
            static_cast<int>(std::clamp<int64_t>(assigner.pipeline_depth(), 1, static_cast<int64_t>(runs.size())));
        bounds_ = group_bounds(probs, runs, groups);
        gs_.resize(static_cast<size_t>(groups));
    }
    void run();

private:
    using clock = std::chrono::steady_clock;
    struct Group {
        std::vector<AssignTask> tasks;
        std::vector<Run*> active;
        int it = 0;              // iterations done
        bool pending = false;    // a pass in its slot
        clock::time_point mark;  // its previous collection (or the start)
    };
    void submit(int g);
    void complete(int g);
    std::vector<KMeansIterationStats> update_group(const Group& G);
    void record_iteration(Group& G, std::vector<KMeansIterationStats>& st, double seconds);
    void collect_pending() noexcept;
    int groups() const { return static_cast<int>(gs_.size()); }

    const std::vector<ProblemState>& probs_;
    const int d_;
    const KMeansParams& p_;
    KMeansAssigner& assigner_;
    std::vector<Run>& runs_;
    const size_t kd_;
    std::vector<size_t> bounds_;  // group g holds runs [bounds_[g], bounds_[g + 1])
    std::vector<Group> gs_;
};

// Every group keeps a pass in flight until its runs are done, so host and assigner overlap.
void LloydGroups::run() {
    const auto start = clock::now();
    for (Group& G : gs_) G.mark = start;
    try {
        for (int g = 0; g < groups(); ++g) submit(g);
        for (bool any = true; any;) {
            any = false;
            for (int g = 0; g < groups(); ++g) {
                if (!gs_[static_cast<size_t>(g)].pending) continue;
                complete(g);
                submit(g);
                any = true;
            }
        }
    } catch (...) {
        collect_pending();
        throw;
    }
}

// Only active runs go in, so a group's passes shrink as its runs converge.
void LloydGroups::submit(int g) {
    Group& G = gs_[static_cast<size_t>(g)];
    G.tasks.clear();
    G.active.clear();
    if (G.it < p_.max_iter)
        for (size_t r = bounds_[static_cast<size_t>(g)]; r < bounds_[static_cast<size_t>(g) + 1]; ++r) {
            Run& run = runs_[r];
            if (!run.active) continue;
            AssignTask t;
            t.data = run.problem;
            t.centroids = run.centroids.data();
            t.sums = run.sums.data();
            t.counts = run.counts.data();
            G.tasks.push_back(t);
            G.active.push_back(&run);
        }
    if (G.tasks.empty()) return;
    assigner_.submit_batch(G.tasks, p_.k, g);
    G.pending = true;
}

// An iteration's `seconds` run from the group's previous collection: other groups' passes overlap it.
void LloydGroups::complete(int g) {
    Group& G = gs_[static_cast<size_t>(g)];
    G.pending = false;
    assigner_.collect_batch(g);
    std::vector<KMeansIterationStats> st = update_group(G);
    const auto now = clock::now();
    const double seconds = std::chrono::duration<double>(now - G.mark).count();
    G.mark = now;
    record_iteration(G, st, seconds);
    ++G.it;
}

// Runs are independent (own generator and buffers), so updating them in parallel changes nothing.
std::vector<KMeansIterationStats> LloydGroups::update_group(const Group& G) {
    std::vector<KMeansIterationStats> st(G.tasks.size());
    const int64_t n_tasks = static_cast<int64_t>(G.tasks.size());
    const bool parallel = n_tasks > 1 && n_tasks * static_cast<int64_t>(kd_) >= kParallelUpdateValues;
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t i = 0; i < n_tasks; ++i)
        st[i] =
            update_run(*G.active[i], probs_[static_cast<size_t>(G.active[i]->problem)], p_.k, d_, G.tasks[i].objective);
    return st;
}

// Converged runs (small shift or small relative gain) are retired here, so the next pass skips them.
void LloydGroups::record_iteration(Group& G, std::vector<KMeansIterationStats>& st, double seconds) {
    for (size_t i = 0; i < G.tasks.size(); ++i) {
        Run& run = *G.active[i];
        st[i].seconds = seconds;
        run.stats.push_back(st[i]);
        run.iterations = G.it + 1;
        const bool shift_small = p_.tol >= 0.0 && st[i].max_shift <= p_.tol;
        const bool gain_small =
            p_.rel_tol > 0.0 && G.it > 0 && run.prev_objective - st[i].objective <= p_.rel_tol * run.prev_objective;
        run.prev_objective = st[i].objective;
        if (shift_small || gain_small) {
            run.converged = true;
            run.active = false;
        }
    }
}

// Passes in flight write into the runs, so they must end before an error unwinds their buffers.
void LloydGroups::collect_pending() noexcept {
    for (int g = 0; g < groups(); ++g)
        if (gs_[static_cast<size_t>(g)].pending) {
            try {
                assigner_.collect_batch(g);
            } catch (...) {  // the first error is the one reported
            }
        }
}

// One more pass, so restarts compare like with like and kept labels match the final centroids.
void score_final_centroids(const std::vector<ProblemState>& probs, int k, KMeansAssigner& assigner,
                           std::vector<Run>& runs, const std::vector<char>& keep_labels) {
    std::vector<AssignTask> tasks;
    for (Run& run : runs) {
        run.sums = {};
        run.counts = {};
        run.next = {};
        AssignTask t;
        t.data = run.problem;
        t.centroids = run.centroids.data();
        if (keep_labels[static_cast<size_t>(run.problem)]) {
            run.labels.assign(static_cast<size_t>(probs[static_cast<size_t>(run.problem)].nt), 0);
            t.labels = run.labels.data();
        }
        tasks.push_back(t);
    }
    assigner.assign_batch(tasks, k);
    for (size_t i = 0; i < runs.size(); ++i) runs[i].objective = tasks[i].objective;
}

// Lloyd iterations of every run, one batched pass per iteration and group of runs, then
// one scoring pass of the final centroids (labels kept where `keep_labels[problem]`).
// With G > 1 groups the host updates one group while the assigner runs the others'
// passes; with one group (an assigner of pipeline depth 1, whose submit_batch finishes
// the pass) every run moves in lockstep. Runs are independent, so the results are the
// same either way.
void lloyd_batch(const std::vector<ProblemState>& probs, int d, const KMeansParams& p, KMeansAssigner& assigner,
                 std::vector<Run>& runs, const std::vector<char>& keep_labels) {
    const size_t kd = static_cast<size_t>(p.k) * static_cast<size_t>(d);
    std::vector<AssignData> data(probs.size());
    for (size_t i = 0; i < probs.size(); ++i) data[i] = AssignData{probs[i].xt, probs[i].nt};
    for (Run& run : runs) {
        run.sums.assign(kd, 0.0);
        run.counts.assign(static_cast<size_t>(p.k), 0);
        run.next.assign(kd, 0.0f);
    }
    BatchScope scope(assigner, data, d);
    LloydGroups(probs, d, p, assigner, runs).run();
    score_final_centroids(probs, p.k, assigner, runs, keep_labels);
}

// A uniform subset caps a problem at k * mppc points; generator stream 0 keeps it out of the restarts'.
std::vector<ProblemState> training_sets(const std::vector<KMeansProblem>& problems, int d, int k, int64_t mppc) {
    const size_t np = problems.size();
    std::vector<ProblemState> probs(np);
#pragma omp parallel for schedule(dynamic) if (np > 1)
    for (size_t i = 0; i < np; ++i) {
        ProblemState& ps = probs[i];
        ps.x = problems[i].x;
        ps.n = problems[i].n;
        ps.seed = problems[i].seed;
        ps.xt = ps.x;
        ps.nt = ps.n;
        if (mppc > 0 && ps.n / k > mppc) {  // n / k > mppc  <=>  n > k * mppc, without overflow
            ps.nt = int64_t{k} * mppc;
            Rng rng(mix_seed(ps.seed, 0));
            std::vector<int64_t> rows = sample_without_replacement(ps.n, ps.nt, rng);
            std::sort(rows.begin(), rows.end());  // sequential reads of x
            ps.subset.resize(static_cast<size_t>(ps.nt) * d);
            for (int64_t r = 0; r < ps.nt; ++r) copy_row(ps.x, d, rows[r], ps.subset.data() + r * d);
            ps.xt = ps.subset.data();
        }
    }
    return probs;
}

// Restart r's generator depends only on (seed, r), so restart 0 is the same run whatever n_restarts is.
std::vector<Run> init_runs(const std::vector<ProblemState>& probs, int d, const KMeansParams& params) {
    const int k = params.k, nr = params.n_restarts;
    const size_t kd = static_cast<size_t>(k) * static_cast<size_t>(d);
    std::vector<Run> runs(probs.size() * static_cast<size_t>(nr));
#pragma omp parallel for schedule(dynamic) if (runs.size() > 1)
    for (size_t ri = 0; ri < runs.size(); ++ri) {
        Run& run = runs[ri];
        run.problem = static_cast<int>(ri / nr);
        const int r = static_cast<int>(ri % nr);
        const ProblemState& ps = probs[static_cast<size_t>(run.problem)];
        run.rng = Rng(mix_seed(ps.seed, static_cast<uint64_t>(r) + 1));
        run.centroids.resize(kd);
        if (!params.initial_centroids.empty()) run.centroids = params.initial_centroids;
        else if (params.init == KMeansInit::kmeanspp) init_kmeanspp(ps.xt, ps.nt, d, k, run.rng, run.centroids.data());
        else init_random(ps.xt, ps.nt, d, k, run.rng, run.centroids.data());
    }
    return runs;
}

// Gathered so the subsampled problems' assignment of all n points runs as one batch.
struct FullAssignment {
    std::vector<AssignData> data;
    std::vector<AssignTask> tasks;
    std::vector<size_t> of;  // the problem of each task
};

// Lowest final objective wins (the first on ties); returns the run for what depends on subsampling.
Run& take_best_restart(std::vector<Run>& runs, size_t i, int nr, bool keep_runs, KMeansResult& res) {
    Run* best = nullptr;
    for (int r = 0; r < nr; ++r) {
        Run& run = runs[i * nr + static_cast<size_t>(r)];
        res.restart_objectives.push_back(run.objective);
        if (keep_runs) res.runs.push_back({run.centroids, run.labels, run.objective, run.iterations, run.converged});
        if (r == 0 || run.objective < best->objective) {
            best = &run;
            res.restart = r;
        }
    }
    res.centroids = std::move(best->centroids);
    res.stats = std::move(best->stats);
    res.iterations = best->iterations;
    res.converged = best->converged;
    return *best;
}

// A problem trained on a subset gets its labels and objective later, from all of its points.
std::vector<KMeansResult> collect_results(const std::vector<ProblemState>& probs, std::vector<Run>& runs, int nr, int k,
                                          int d, const std::vector<char>& keep_labels, bool keep_runs,
                                          FullAssignment& full) {
    std::vector<KMeansResult> results(probs.size());
    for (size_t i = 0; i < probs.size(); ++i) {
        KMeansResult& res = results[i];
        res.k = k;
        res.d = d;
        res.n_train = probs[i].nt;
        Run& best = take_best_restart(runs, i, nr, keep_runs, res);
        if (keep_labels[i]) {
            res.assignments = std::move(best.labels);
            res.objective = best.objective;
            continue;
        }
        res.assignments.resize(static_cast<size_t>(probs[i].n));
        AssignTask t;
        t.data = static_cast<int>(full.data.size());
        t.centroids = res.centroids.data();
        t.labels = res.assignments.data();
        full.data.push_back(AssignData{probs[i].x, probs[i].n});
        full.tasks.push_back(t);
        full.of.push_back(i);
    }
    return results;
}

// Labels cover all n points, not only the subset the centroids were trained on.
void assign_all_points(KMeansAssigner& a, int d, int k, FullAssignment& full, std::vector<KMeansResult>& results) {
    if (full.tasks.empty()) return;
    BatchScope scope(a, full.data, d);
    a.assign_batch(full.tasks, k);
    for (size_t j = 0; j < full.tasks.size(); ++j) results[full.of[j]].objective = full.tasks[j].objective;
}

}  // namespace

const char* kmeans_init_name(KMeansInit init) {
    switch (init) {
        case KMeansInit::random: return "random";
        case KMeansInit::kmeanspp: return "kmeanspp";
    }
    return "unknown";
}

KMeansResult kmeans(const float* x, int64_t n, int d, const KMeansParams& params, KMeansAssigner* assigner) {
    std::vector<KMeansResult> r = kmeans_batch({KMeansProblem{x, n, params.seed}}, d, params, assigner);
    return std::move(r.front());
}

void check_kmeans_problems(const std::vector<KMeansProblem>& problems, int d, const KMeansParams& params) {
    check_params(d, params);
    const size_t np = problems.size();
    const int k = params.k;
    for (size_t i = 0; i < np; ++i) {
        const KMeansProblem& pr = problems[i];
        const std::string where = np == 1 ? std::string() : fmt::format("problem {}: ", i);
        PKV_CHECK(k <= pr.n, invalid_argument, "k-means: {}k = {} exceeds the number of points n = {}", where, k, pr.n);
        PKV_CHECK(pr.x != nullptr, invalid_argument, "k-means: {}null input with n = {}", where, pr.n);
        check_finite(pr.x, pr.n, d, where);
    }
}

std::vector<KMeansResult> kmeans_batch(const std::vector<KMeansProblem>& problems, int d, const KMeansParams& params,
                                       KMeansAssigner* assigner) {
    check_kmeans_problems(problems, d, params);
    const size_t np = problems.size();
    if (np == 0) return {};
    CpuAssigner cpu;
    KMeansAssigner& a = assigner ? *assigner : cpu;

    const std::vector<ProblemState> probs = training_sets(problems, d, params.k, params.max_points_per_centroid);
    std::vector<Run> runs = init_runs(probs, d, params);
    std::vector<char> keep_labels(np);
    for (size_t i = 0; i < np; ++i) keep_labels[i] = probs[i].xt == probs[i].x;
    lloyd_batch(probs, d, params, a, runs, keep_labels);

    FullAssignment full;
    std::vector<KMeansResult> results =
        collect_results(probs, runs, params.n_restarts, params.k, d, keep_labels, params.keep_runs, full);
    runs.clear();
    assign_all_points(a, d, params.k, full, results);
    return results;
}

KMeansDraws kmeans_random_draws(int64_t n, int k, uint64_t seed, int restart, int64_t refills) {
    PKV_CHECK(k >= 1 && k <= n && refills >= 0 && restart >= 0, invalid_argument,
              "k-means draws: expected 1 <= k <= n and refills, restart >= 0, got k {}, n {}, refills {}, restart {}",
              k, n, refills, restart);
    // init_runs' generator and init_random's sample, then update_run's refill draws.
    Rng rng(mix_seed(seed, static_cast<uint64_t>(restart) + 1));
    KMeansDraws d;
    d.init_rows = sample_without_replacement(n, k, rng);
    d.refill_rows.resize(static_cast<size_t>(refills));
    for (int64_t& r : d.refill_rows) r = rng.index(n);
    return d;
}

}  // namespace pkv
