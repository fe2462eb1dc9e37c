// kmeans_batch(): every result bitwise equal to kmeans() of that problem alone
// (different n, tiny n, n == k, subsampling, restarts, early convergence), errors that
// name the problem, and the batched assigner pass itself.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "catch.h"
#include "kmeans_test_util.h"
#include "pkv/core/error.h"
#include "pkv/kmeans/kmeans.h"

using pkv::KMeansInit;
using pkv::KMeansParams;
using pkv::KMeansProblem;
using pkv::KMeansResult;

namespace {

void check_same(const KMeansResult& a, const KMeansResult& b) {
    CHECK(a.k == b.k);
    CHECK(a.d == b.d);
    CHECK(a.centroids == b.centroids);
    CHECK(a.assignments == b.assignments);
    CHECK(a.objective == b.objective);
    CHECK(a.iterations == b.iterations);
    CHECK(a.converged == b.converged);
    CHECK(a.n_train == b.n_train);
    CHECK(a.restart == b.restart);
    CHECK(a.restart_objectives == b.restart_objectives);
    REQUIRE(a.stats.size() == b.stats.size());
    for (size_t i = 0; i < a.stats.size(); ++i) {
        CHECK(a.stats[i].objective == b.stats[i].objective);
        CHECK(a.stats[i].max_shift == b.stats[i].max_shift);
        CHECK(a.stats[i].n_empty_refilled == b.stats[i].n_empty_refilled);
    }
}

// Counts batched passes and the tasks in each.
class CountingAssigner final : public pkv::KMeansAssigner {
public:
    const char* name() const override { return "counting"; }
    void assign(const float* x, int64_t n, int d, const float* c, int k, int32_t* labels, float* dist2) override {
        cpu.assign(x, n, d, c, k, labels, dist2);
    }
    void assign_batch(std::vector<pkv::AssignTask>& tasks, int k) override {
        task_counts.push_back(tasks.size());
        KMeansAssigner::assign_batch(tasks, k);
    }
    pkv::CpuAssigner cpu;
    std::vector<size_t> task_counts;
};

// Two slots: submit_batch() only records the pass, collect_batch() runs it, so a
// pass's outputs appear only at its collection (as on a device). Logs the calls.
class DeferredAssigner final : public pkv::KMeansAssigner {
public:
    const char* name() const override { return "deferred"; }
    void assign(const float* x, int64_t n, int d, const float* c, int k, int32_t* labels, float* dist2) override {
        cpu.assign(x, n, d, c, k, labels, dist2);
    }
    int pipeline_depth() const override { return 2; }
    void submit_batch(std::vector<pkv::AssignTask>& tasks, int k, int slot) override {
        REQUIRE((slot == 0 || slot == 1));
        REQUIRE(pending[slot] == nullptr);
        // The centroids as submitted: the caller must not touch them until collection.
        copies[slot].clear();
        for (const auto& t : tasks) copies[slot].insert(copies[slot].end(), t.centroids, t.centroids + k * d_);
        pending[slot] = &tasks;
        ks[slot] = k;
        log.push_back('s');
        log.push_back(static_cast<char>('0' + slot));
    }
    void collect_batch(int slot) override {
        REQUIRE(pending[slot] != nullptr);
        std::vector<pkv::AssignTask>& tasks = *pending[slot];
        std::vector<float> now;
        for (const auto& t : tasks) now.insert(now.end(), t.centroids, t.centroids + ks[slot] * d_);
        CHECK(now == copies[slot]);
        KMeansAssigner::assign_batch(tasks, ks[slot]);
        pending[slot] = nullptr;
        log.push_back('c');
        log.push_back(static_cast<char>('0' + slot));
    }
    void begin_batch(const std::vector<pkv::AssignData>& data, int d) override {
        d_ = d;
        KMeansAssigner::begin_batch(data, d);
    }
    pkv::CpuAssigner cpu;
    std::vector<pkv::AssignTask>* pending[2] = {nullptr, nullptr};
    std::vector<float> copies[2];
    int ks[2] = {0, 0};
    int d_ = 0;
    std::string log;
};

}  // namespace

TEST_CASE("kmeans_batch with two passes in flight equals the lockstep loop", "[kmeans][batch]") {
    const int d = 10;
    const int k = 7;
    // Problems of different sizes and convergence speeds, so the groups stop at
    // different iterations.
    const std::vector<int64_t> sizes = {k, 400, 90, 1500, 60, 800};
    std::vector<std::vector<float>> data;
    std::vector<KMeansProblem> problems;
    for (size_t i = 0; i < sizes.size(); ++i) {
        if (i % 2 == 0) {
            data.push_back(pkv_test::gaussian_points(sizes[i], d, 300 + i));
        } else {
            pkv_test::Blobs b = pkv_test::gaussian_blobs(k, (sizes[i] + k - 1) / k, d, 6.0f, 0.5f, 400 + i, true);
            b.x.resize(static_cast<size_t>(sizes[i]) * d);
            data.push_back(b.x);
        }
        problems.push_back(KMeansProblem{data.back().data(), sizes[i], 2000 + 13 * i});
    }
    KMeansParams p;
    p.k = k;
    p.n_restarts = GENERATE(1, 2);
    p.rel_tol = 1e-4;
    p.max_iter = 20;
    CAPTURE(p.n_restarts);
    DeferredAssigner deferred;
    const std::vector<KMeansResult> piped = pkv::kmeans_batch(problems, d, p, &deferred);
    const std::vector<KMeansResult> lockstep = pkv::kmeans_batch(problems, d, p);
    REQUIRE(piped.size() == lockstep.size());
    for (size_t i = 0; i < piped.size(); ++i) {
        CAPTURE(i);
        check_same(piped[i], lockstep[i]);
    }
    // Both slots are filled before the first collection, and each slot is collected
    // before it takes its next pass.
    REQUIRE(deferred.log.size() >= 8);
    CHECK(deferred.log.substr(0, 8) == "s0s1c0s0");
    CHECK(deferred.pending[0] == nullptr);
    CHECK(deferred.pending[1] == nullptr);
}

TEST_CASE("kmeans_batch equals kmeans of each problem alone", "[kmeans][batch]") {
    const int d = 12;
    const int k = 9;
    // Different sizes: n == k, tiny, mid, large; separated blobs converge fast, noise slowly.
    const std::vector<int64_t> sizes = {k, k + 1, 50, 700, 2500};
    std::vector<std::vector<float>> data;
    std::vector<KMeansProblem> problems;
    for (size_t i = 0; i < sizes.size(); ++i) {
        if (i % 2 == 0) data.push_back(pkv_test::gaussian_points(sizes[i], d, 100 + i));
        else {
            pkv_test::Blobs b = pkv_test::gaussian_blobs(k, (sizes[i] + k - 1) / k, d, 6.0f, 0.5f, 200 + i, true);
            b.x.resize(static_cast<size_t>(sizes[i]) * d);
            data.push_back(b.x);
        }
        problems.push_back(KMeansProblem{data.back().data(), sizes[i], 1000 + 17 * i});
    }
    struct Variant {
        KMeansInit init;
        int restarts;
        int64_t mppc;
        double rel_tol;
    };
    const Variant v = GENERATE(values<Variant>({{KMeansInit::random, 1, 0, 0.0},
                                                {KMeansInit::kmeanspp, 3, 0, 1e-3},
                                                {KMeansInit::random, 2, 40, 0.0},
                                                {KMeansInit::kmeanspp, 1, 30, 1e-4}}));
    CAPTURE(pkv::kmeans_init_name(v.init), v.restarts, v.mppc, v.rel_tol);
    KMeansParams p;
    p.k = k;
    p.init = v.init;
    p.n_restarts = v.restarts;
    p.max_points_per_centroid = v.mppc;
    p.rel_tol = v.rel_tol;
    p.max_iter = 25;
    CountingAssigner counting;
    const std::vector<KMeansResult> batch = pkv::kmeans_batch(problems, d, p, &counting);
    REQUIRE(batch.size() == problems.size());
    for (size_t i = 0; i < problems.size(); ++i) {
        CAPTURE(i, problems[i].n);
        KMeansParams pi = p;
        pi.seed = problems[i].seed;
        check_same(batch[i], pkv::kmeans(problems[i].x, problems[i].n, d, pi));
    }
    // Runs that stopped drop out: the passes shrink and never grow, and the Lloyd loop
    // plus final scoring made at most max_iter + 2 batched passes.
    REQUIRE(!counting.task_counts.empty());
    CHECK(counting.task_counts.size() <= static_cast<size_t>(p.max_iter) + 2);
    CHECK(counting.task_counts.front() == problems.size() * static_cast<size_t>(v.restarts));
    int max_iters = 0;
    for (const auto& r : batch) max_iters = std::max(max_iters, r.iterations);
    for (size_t i = 1; i < static_cast<size_t>(max_iters); ++i)
        CHECK(counting.task_counts[i] <= counting.task_counts[i - 1]);
}

TEST_CASE("kmeans_batch: n == k problems have objective 0; empty batch; errors name the problem",
          "[kmeans][batch][errors]") {
    const int d = 4;
    const std::vector<float> a = pkv_test::gaussian_points(6, d, 1);
    const std::vector<float> b = pkv_test::gaussian_points(40, d, 2);
    KMeansParams p;
    p.k = 6;
    const auto r = pkv::kmeans_batch({{a.data(), 6, 1}, {b.data(), 40, 2}}, d, p);
    CHECK(r[0].objective == 0.0);
    CHECK(r[1].objective > 0.0);
    CHECK(pkv::kmeans_batch({}, d, p).empty());

    p.k = 7;
    CHECK_THROWS_WITH(pkv::kmeans_batch({{b.data(), 40, 1}, {a.data(), 6, 2}}, d, p),
                      ContainsSubstring("k-means: problem 1: k = 7 exceeds the number of points n = 6"));
    CHECK_THROWS_WITH(pkv::kmeans_batch({{a.data(), 6, 2}}, d, p),
                      ContainsSubstring("k-means: k = 7 exceeds the number of points n = 6"));
    std::vector<float> bad = b;
    bad[5 * d + 2] = NAN;
    p.k = 3;
    CHECK_THROWS_WITH(pkv::kmeans_batch({{a.data(), 6, 1}, {bad.data(), 40, 2}}, d, p),
                      ContainsSubstring("k-means: problem 1: point 5 has a non-finite value at dim 2"));
    CHECK_THROWS_WITH(pkv::kmeans_batch({{nullptr, 6, 1}, {b.data(), 40, 2}}, d, p),
                      ContainsSubstring("problem 0: null input"));
}

TEST_CASE("default assign_batch matches the single-problem calls", "[kmeans][batch][assign]") {
    const int d = 16, k = 5;
    const std::vector<float> x0 = pkv_test::gaussian_points(300, d, 3);
    const std::vector<float> x1 = pkv_test::gaussian_points(77, d, 4);
    const std::vector<float> c = pkv_test::gaussian_points(k, d, 5);
    pkv::CpuAssigner cpu;
    cpu.begin_batch({{x0.data(), 300}, {x1.data(), 77}}, d);
    std::vector<double> sums0(k * d), sums1(k * d);
    std::vector<int64_t> counts0(k), counts1(k);
    std::vector<int32_t> labels1(77);
    std::vector<pkv::AssignTask> tasks(3);
    tasks[0].data = 0;
    tasks[0].centroids = c.data();
    tasks[0].sums = sums0.data();
    tasks[0].counts = counts0.data();
    tasks[1].data = 1;
    tasks[1].centroids = c.data();
    tasks[1].labels = labels1.data();
    tasks[2].data = 1;
    tasks[2].centroids = c.data();
    tasks[2].sums = sums1.data();
    tasks[2].counts = counts1.data();
    cpu.assign_batch(tasks, k);
    cpu.end_batch();

    std::vector<int32_t> l0(300), l1(77);
    std::vector<float> d0(300), d1(77);
    std::vector<double> s0(k * d);
    std::vector<int64_t> n0(k);
    cpu.assign_accumulate(x0.data(), 300, d, c.data(), k, l0.data(), d0.data(), s0.data(), n0.data());
    cpu.assign(x1.data(), 77, d, c.data(), k, l1.data(), d1.data());
    double obj0 = 0, obj1 = 0;
    for (float v : d0) obj0 += v;
    for (float v : d1) obj1 += v;
    CHECK(sums0 == s0);
    CHECK(counts0 == n0);
    CHECK(labels1 == l1);
    CHECK(tasks[0].objective == obj0);
    CHECK(tasks[1].objective == obj1);
    CHECK(tasks[2].objective == obj1);
    int64_t total = 0;
    for (int64_t v : counts1) total += v;
    CHECK(total == 77);
}
