// pkv/kmeans/kmeans.h — Lloyd k-means on float vectors (key/value "patterns").
//
// kmeans_batch() clusters many independent problems (e.g. every (layer, head) of a
// model) with one Lloyd loop run in lockstep: each iteration hands all still-running
// problems (and restarts) to the assigner as one batched pass, so a GPU assigner
// covers them in one launch sequence. kmeans() is kmeans_batch() of one problem.
// Per problem it runs: input checks → optional subsampling of the
// training points → for each restart: initialisation, then Lloyd iterations
// (assign, update, refill empty clusters, convergence test) → keep the restart with
// the lowest training objective → one final assignment of all n points.
// The assignment step goes through a KMeansAssigner (assigner.h): the CPU one by
// default, a GPU one when the caller passes it. Everything else runs on the CPU.
//
// Numerics: the objective is accumulated in double; centroid sums are double and
// counts int64 (see accumulate_centroid_sums), so 1e8-point problems do not lose
// precision. Results are deterministic for a given seed, input and assigner, and do
// not depend on the number of OpenMP threads.
//
// Min-max ("flatness") primitives for PatternKV live in minmax_assign.h.
#pragma once

#include <cstdint>
#include <vector>

#include "pkv/kmeans/assigner.h"

namespace pkv {

/// How the starting centroids are chosen.
enum class KMeansInit {
    random,    ///< k distinct training points (distinct indices), sampled without replacement
    kmeanspp,  ///< k-means++ (Arthur & Vassilvitskii 2007): D² sampling, one candidate per centre
};

/// "random" or "kmeanspp".
const char* kmeans_init_name(KMeansInit init);

struct KMeansParams {
    /// Number of centroids; 1 <= k <= n.
    int k = 32;
    /// Upper bound on Lloyd iterations (update steps) per restart; 0 returns the
    /// initial centroids with their assignment.
    int max_iter = 30;
    /// Stop when the largest absolute change of any centroid coordinate in one update
    /// (max_j max_t |c'_jt - c_jt|, in the units of x) is <= tol. 0 stops only when
    /// centroids are unchanged; a negative value disables this test.
    double tol = 1e-4;
    /// Also stop when the relative objective decrease between two consecutive
    /// iterations, (J_prev - J) / J_prev, is <= rel_tol. 0 (default) disables this test.
    double rel_tol = 0.0;
    /// Seeds every random choice (subsample, initialisation, empty-cluster refills).
    uint64_t seed = 1234;
    KMeansInit init = KMeansInit::random;
    /// When > 0 and n > k * max_points_per_centroid, train on a uniform random subset
    /// of k * max_points_per_centroid distinct points, then assign all n points once
    /// with the trained centroids. 0 (default) trains on all points.
    int64_t max_points_per_centroid = 0;
    /// Independent runs from different initialisations (seeds derived from `seed`);
    /// the one with the lowest final training objective is kept. >= 1.
    int n_restarts = 1;
    /// Optional starting centroids, k * d values row-major. When non-empty they replace
    /// `init`, and n_restarts must be 1.
    std::vector<float> initial_centroids;
    /// Also return every restart's final run in KMeansResult::runs, so that a caller can
    /// choose among them by another measure than the training objective. The kept result
    /// is the same either way.
    bool keep_runs = false;
};

// Empty clusters: after each update, every cluster that received no point is moved
// to a training point drawn uniformly at random (clusters in increasing index order,
// drawn from the restart's seeded generator). This never raises the objective: an
// empty cluster serves no point, so moving it cannot lengthen any distance. With
// fewer distinct points than k some clusters stay duplicates of others; they remain
// empty (ties go to the lowest index) and are refilled again each iteration, but no
// value ever becomes NaN.

/// One Lloyd iteration, measured on the training points.
struct KMeansIterationStats {
    double objective = 0.0;    ///< sum of squared distances to the centroids before this update
    double max_shift = 0.0;    ///< max absolute centroid coordinate change made by this update
    int n_empty_refilled = 0;  ///< clusters that were empty and got refilled in this update
    /// wall time of the iteration (assign + update); with two passes in flight (see
    /// kmeans_batch), the time since its group's previous iteration ended
    double seconds = 0.0;
};

struct KMeansResult {
    int k = 0;
    int d = 0;
    std::vector<float> centroids;      ///< [k x d] row-major
    std::vector<int32_t> assignments;  ///< [n], nearest centroid of every input point
    /// Sum over all n points of the squared distance to the assigned centroid (double),
    /// as reported by the assigner in the final pass.
    double objective = 0.0;
    int iterations = 0;                       ///< update steps done by the kept restart
    bool converged = false;                   ///< a tolerance test stopped it before max_iter
    int64_t n_train = 0;                      ///< points used for training (n unless subsampled)
    int restart = 0;                          ///< index of the kept restart
    std::vector<KMeansIterationStats> stats;  ///< per iteration of the kept restart
    /// Final training objective of every restart, in order.
    std::vector<double> restart_objectives;
    /// One restart's final state (KMeansParams::keep_runs).
    struct Run {
        std::vector<float> centroids;      ///< [k x d]
        std::vector<int32_t> assignments;  ///< [n]; empty when trained on a subsample
        double objective = 0.0;            ///< its final training objective
        int iterations = 0;
        bool converged = false;
    };
    /// With KMeansParams::keep_runs: every restart in order (runs[restart] has the kept
    /// result's centroids, and its labels unless subsampled); else empty.
    std::vector<Run> runs;
};

/// Clusters n points x [n x d] (row-major float) into params.k centroids.
/// assigner == nullptr uses a CpuAssigner. The caller keeps ownership of x and of the
/// assigner.
/// Throws pkv::Error(invalid_argument) when k < 1, k > n ("k-means: k = 40 exceeds the
/// number of points n = 32"), d <= 0, max_iter < 0, n_restarts < 1,
/// max_points_per_centroid < 0, a wrong initial_centroids size, or a NaN/Inf
/// coordinate ("k-means: point 17 has a non-finite value at dim 3", lowest such point).
KMeansResult kmeans(const float* x, int64_t n, int d, const KMeansParams& params, KMeansAssigner* assigner = nullptr);

/// One problem of a batch: n points [n x d] row-major at x, clustered with its own seed.
struct KMeansProblem {
    const float* x = nullptr;
    int64_t n = 0;
    uint64_t seed = 0;
};

/// Clusters every problem with `params` (params.seed replaced by the problem's seed).
/// result[i] is bitwise equal to kmeans(problems[i].x, problems[i].n, d,
/// params-with-seed-i, same assigner) for every assigner whose per-task outputs do not
/// depend on the other tasks of a batch (the contract of assign_batch; CpuAssigner and
/// CudaAssigner keep it), except KMeansIterationStats::seconds, which times the whole
/// batch's iteration. Each problem keeps its own subsample, restarts, generators,
/// empty-cluster refills and convergence test; a problem whose runs have all stopped
/// drops out of later passes. Problems may have different n; k must be <= every n
/// ("k-means: problem 3: k = 40 exceeds the number of points n = 32"; a batch of one
/// problem keeps kmeans()'s message). An empty batch returns an empty vector.
/// The GPU assigner processes all problems of an iteration in one launch sequence.
/// With an assigner whose pipeline_depth() is 2 (CudaAssigner's default), the runs are
/// split into two groups of about equal points: each group's pass runs on the device
/// while the host updates the other group's centroids, so an iteration costs about
/// its device time (results unchanged: runs are independent).
/// Host memory: the subsamples plus O(n) labels per problem for the final pass.
/// The checks kmeans_batch() starts with (params, k <= n, non-null, finite input),
/// naming "problem i: " when there is more than one problem.
void check_kmeans_problems(const std::vector<KMeansProblem>& problems, int d, const KMeansParams& params);

std::vector<KMeansResult> kmeans_batch(const std::vector<KMeansProblem>& problems, int d, const KMeansParams& params,
                                       KMeansAssigner* assigner = nullptr);

/// The random choices kmeans() makes for one restart with init = random and no
/// subsampling (max_points_per_centroid 0 or n <= k * it): the k distinct rows of the
/// initial centroids, in centroid order, then the rows that its empty-cluster refills
/// draw, in the order it draws them (one per refill, clusters in index order within an
/// update). A run needs at most k * max_iter refills. Lets another implementation of
/// the same Lloyd loop (the device cache simulation of patternkv) start from the same
/// centroids and refill with the same rows. Requires 1 <= k <= n, refills >= 0.
struct KMeansDraws {
    std::vector<int64_t> init_rows;    ///< [k]
    std::vector<int64_t> refill_rows;  ///< [refills]
};
KMeansDraws kmeans_random_draws(int64_t n, int k, uint64_t seed, int restart, int64_t refills);

}  // namespace pkv
