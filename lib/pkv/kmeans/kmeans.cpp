// pkv/kmeans/kmeans.cpp — the Lloyd loop, initialisations, subsampling and restarts.
#include "pkv/kmeans/kmeans.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>
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

void check_finite(const float* x, int64_t n, int d) {
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
    fail(ErrorCode::invalid_argument, "k-means: point {} has a non-finite value at dim {}", first_bad, dim);
}

void check_params(int64_t n, int d, const KMeansParams& p) {
    PKV_CHECK(d >= 1, invalid_argument, "k-means: expected dimension d >= 1, got {}", d);
    PKV_CHECK(p.k >= 1, invalid_argument, "k-means: expected k >= 1, got {}", p.k);
    PKV_CHECK(p.k <= n, invalid_argument, "k-means: k = {} exceeds the number of points n = {}", p.k, n);
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

void copy_row(const float* x, int d, int64_t row, float* dst) {
    std::copy(x + row * d, x + (row + 1) * d, dst);
}

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

// Calls begin() now and end() on every exit path.
class DataScope {
public:
    DataScope(KMeansAssigner& a, const float* x, int64_t n, int d) : a_(a) { a_.begin(x, n, d); }
    ~DataScope() { a_.end(); }
    DataScope(const DataScope&) = delete;
    DataScope& operator=(const DataScope&) = delete;

private:
    KMeansAssigner& a_;
};

double sum_in_order(const std::vector<float>& v) {
    double s = 0.0;
    for (const float e : v) s += e;
    return s;
}

struct Run {
    std::vector<float> centroids;
    std::vector<KMeansIterationStats> stats;
    int iterations = 0;
    bool converged = false;
    std::vector<int32_t> labels;  // final assignment of the training points
    std::vector<float> dist2;
    double objective = 0.0;       // of the final centroids on the training points
};

// Lloyd iterations from run.centroids on the training points xt [nt x d].
void lloyd(const float* xt, int64_t nt, int d, const KMeansParams& p, KMeansAssigner& assigner, Rng& rng,
           Run& run) {
    using clock = std::chrono::steady_clock;
    const int k = p.k;
    const size_t kd = static_cast<size_t>(k) * static_cast<size_t>(d);
    run.labels.assign(static_cast<size_t>(nt), 0);
    run.dist2.assign(static_cast<size_t>(nt), 0.0f);
    std::vector<double> sums(kd);
    std::vector<int64_t> counts(static_cast<size_t>(k));
    std::vector<float> next(kd);
    DataScope scope(assigner, xt, nt, d);
    double prev_objective = 0.0;
    for (int it = 0; it < p.max_iter; ++it) {
        const auto t0 = clock::now();
        assigner.assign_accumulate(xt, nt, d, run.centroids.data(), k, run.labels.data(), run.dist2.data(),
                                   sums.data(), counts.data());
        KMeansIterationStats st;
        st.objective = sum_in_order(run.dist2);
        for (int j = 0; j < k; ++j) {
            float* nj = next.data() + int64_t{j} * d;
            if (counts[j] == 0) {
                // Empty: move to a random training point (see kmeans.h for why this
                // cannot raise the objective).
                copy_row(xt, d, rng.index(nt), nj);
                ++st.n_empty_refilled;
                continue;
            }
            const double inv = 1.0 / static_cast<double>(counts[j]);
            const double* sj = sums.data() + int64_t{j} * d;
            for (int t = 0; t < d; ++t) nj[t] = static_cast<float>(sj[t] * inv);
        }
        for (size_t i = 0; i < kd; ++i)
            st.max_shift = std::max(st.max_shift, std::fabs(static_cast<double>(next[i]) - run.centroids[i]));
        run.centroids.swap(next);
        st.seconds = std::chrono::duration<double>(clock::now() - t0).count();
        run.stats.push_back(st);
        run.iterations = it + 1;
        const bool shift_small = p.tol >= 0.0 && st.max_shift <= p.tol;
        const bool gain_small =
            p.rel_tol > 0.0 && it > 0 && prev_objective - st.objective <= p.rel_tol * prev_objective;
        prev_objective = st.objective;
        if (shift_small || gain_small) {
            run.converged = true;
            break;
        }
    }
    // Score the final centroids so restarts compare like with like and the result's
    // labels match its centroids.
    assigner.assign(xt, nt, d, run.centroids.data(), k, run.labels.data(), run.dist2.data());
    run.objective = sum_in_order(run.dist2);
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
    check_params(n, d, params);
    PKV_CHECK(x != nullptr, invalid_argument, "k-means: null input with n = {}", n);
    check_finite(x, n, d);
    CpuAssigner cpu;
    KMeansAssigner& a = assigner ? *assigner : cpu;
    const int k = params.k;
    const size_t kd = static_cast<size_t>(k) * static_cast<size_t>(d);

    // Training set: all points, or a uniform subset copied out contiguously.
    std::vector<float> subset;
    const float* xt = x;
    int64_t nt = n;
    const int64_t mppc = params.max_points_per_centroid;
    if (mppc > 0 && n / k > mppc) {  // n / k > mppc  <=>  n > k * mppc, without overflow
        nt = int64_t{k} * mppc;
        Rng rng(mix_seed(params.seed, 0));
        std::vector<int64_t> rows = sample_without_replacement(n, nt, rng);
        std::sort(rows.begin(), rows.end());  // sequential reads of x
        subset.resize(static_cast<size_t>(nt) * d);
        for (int64_t i = 0; i < nt; ++i) copy_row(x, d, rows[i], subset.data() + i * d);
        xt = subset.data();
    }

    KMeansResult res;
    res.k = k;
    res.d = d;
    res.n_train = nt;
    Run best;
    for (int r = 0; r < params.n_restarts; ++r) {
        // Restart r's generator depends only on (seed, r): restart 0 is the same run
        // whatever n_restarts is.
        Rng rng(mix_seed(params.seed, static_cast<uint64_t>(r) + 1));
        Run run;
        run.centroids.resize(kd);
        if (!params.initial_centroids.empty())
            run.centroids = params.initial_centroids;
        else if (params.init == KMeansInit::kmeanspp)
            init_kmeanspp(xt, nt, d, k, rng, run.centroids.data());
        else
            init_random(xt, nt, d, k, rng, run.centroids.data());
        lloyd(xt, nt, d, params, a, rng, run);
        res.restart_objectives.push_back(run.objective);
        if (r == 0 || run.objective < best.objective) {
            best = std::move(run);
            res.restart = r;
        }
    }

    res.centroids = std::move(best.centroids);
    res.stats = std::move(best.stats);
    res.iterations = best.iterations;
    res.converged = best.converged;
    if (xt == x) {
        res.assignments = std::move(best.labels);
        res.objective = best.objective;
    } else {
        res.assignments.resize(static_cast<size_t>(n));
        std::vector<float> dist2(static_cast<size_t>(n));
        {
            DataScope scope(a, x, n, d);
            a.assign(x, n, d, res.centroids.data(), k, res.assignments.data(), dist2.data());
        }
        res.objective = sum_in_order(dist2);
    }
    return res;
}

}  // namespace pkv
