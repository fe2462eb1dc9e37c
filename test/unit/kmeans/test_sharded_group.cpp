// ShardedAssigner with shards that add their sums themselves (a sum group, as CUDA
// assigners in one NCCL group do): a CPU stand-in group whose members exchange their
// sums through shared memory, so the plumbing is tested without GPUs.
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/kmeans/assigner.h"
#include "pkv/kmeans/kmeans.h"
#include "pkv/kmeans/sharded_assigner.h"
#include "unit/kmeans/kmeans_test_util.h"

namespace {

// Members add their per-task sums in rank order, each member receiving the totals.
struct FakeGroup {
    explicit FakeGroup(int n) : size(n), sums(static_cast<size_t>(n)), counts(static_cast<size_t>(n)) {}
    int size;
    std::mutex m;
    std::condition_variable cv;
    int arrived = 0;
    int64_t generation = 0;
    std::vector<std::vector<std::vector<double>>> sums;     // [rank][task]
    std::vector<std::vector<std::vector<int64_t>>> counts;  // [rank][task]
    int group_begins = 0;

    void barrier() {
        std::unique_lock<std::mutex> lock(m);
        const int64_t gen = generation;
        if (++arrived == size) {
            arrived = 0;
            ++generation;
            cv.notify_all();
        } else {
            cv.wait(lock, [&] { return generation != gen; });
        }
    }
};

class FakeMember final : public pkv::KMeansAssigner {
public:
    FakeMember(FakeGroup& g, int rank) : g_(g), rank_(rank) {}
    const char* name() const override { return "fake"; }
    void assign(const float* x, int64_t n, int d, const float* c, int k, int32_t* labels, float* dist2) override {
        cpu_.assign(x, n, d, c, k, labels, dist2);
    }
    pkv::SumGroup sum_group() const override { return {&g_, g_.size, rank_, "fake"}; }
    void begin_group_batch(const std::vector<pkv::AssignData>& data, int d) override {
        begin_batch(data, d);
        grouped_ = true;
        std::lock_guard<std::mutex> lock(g_.m);
        ++g_.group_begins;
    }
    void end_batch() noexcept override {
        grouped_ = false;
        KMeansAssigner::end_batch();
    }
    void assign_batch(std::vector<pkv::AssignTask>& tasks, int k) override {
        KMeansAssigner::assign_batch(tasks, k);
        if (!grouped_) return;
        const size_t kd = static_cast<size_t>(k) * static_cast<size_t>(batch_d_);
        auto& my_s = g_.sums[static_cast<size_t>(rank_)];
        auto& my_c = g_.counts[static_cast<size_t>(rank_)];
        my_s.clear();
        my_c.clear();
        for (const auto& t : tasks) {
            my_s.emplace_back(t.sums ? std::vector<double>(t.sums, t.sums + kd) : std::vector<double>());
            my_c.emplace_back(t.counts ? std::vector<int64_t>(t.counts, t.counts + k) : std::vector<int64_t>());
        }
        g_.barrier();
        for (size_t ti = 0; ti < tasks.size(); ++ti) {
            if (!tasks[ti].sums) continue;
            for (size_t e = 0; e < kd; ++e) {
                double acc = g_.sums[0][ti][e];
                for (int r = 1; r < g_.size; ++r) acc += g_.sums[static_cast<size_t>(r)][ti][e];
                tasks[ti].sums[e] = acc;
            }
            for (int j = 0; j < k; ++j) {
                int64_t acc = 0;
                for (int r = 0; r < g_.size; ++r) acc += g_.counts[static_cast<size_t>(r)][ti][static_cast<size_t>(j)];
                tasks[ti].counts[j] = acc;
            }
        }
        g_.barrier();  // nobody overwrites its slot before all have read
    }

private:
    FakeGroup& g_;
    int rank_;
    pkv::CpuAssigner cpu_;
    bool grouped_ = false;
};

}  // namespace

TEST_CASE("sharded assigner over a sum group: members add the sums, equal to the host combine", "[kmeans][sharded]") {
    const int d = 24, S = 3;
    const pkv_test::Blobs b = pkv_test::gaussian_blobs(6, 400, d, 4.0f, 1.0f, 31);
    FakeGroup g(S);
    FakeMember m0(g, 0), m1(g, 1), m2(g, 2);
    pkv::ShardedAssigner grouped({&m0, &m1, &m2});
    REQUIRE(grouped.group_sums());
    // The same members in another order are not the group's ranks 0..S-1: host combine.
    CHECK_FALSE(pkv::ShardedAssigner({&m1, &m0, &m2}).group_sums());
    CHECK_FALSE(pkv::is_sum_group({&m0, &m1}));  // a group of 3 needs all 3
    pkv::CpuAssigner cpu;
    CHECK_FALSE(pkv::is_sum_group({&cpu, &cpu}));

    pkv::KMeansParams p;
    p.k = 6;
    p.max_iter = 8;
    p.tol = -1.0;
    p.seed = 4;
    const pkv::KMeansResult got = pkv::kmeans(b.x.data(), b.n, d, p, &grouped);
    CHECK(g.group_begins > 0);
    grouped.set_group_sums(false);
    REQUIRE_FALSE(grouped.group_sums());
    const int begins = g.group_begins;
    const pkv::KMeansResult host = pkv::kmeans(b.x.data(), b.n, d, p, &grouped);
    CHECK(g.group_begins == begins);  // the host combine never begins a group batch
    // Both add the shards' double sums in shard order: bitwise equal.
    CHECK(got.centroids == host.centroids);
    CHECK(got.assignments == host.assignments);
    CHECK(got.objective == host.objective);
}

TEST_CASE("sharded assigner over a sum group: a data set with fewer rows than shards", "[kmeans][sharded]") {
    const int d = 8, k = 2, S = 3;
    const pkv_test::Blobs b = pkv_test::gaussian_blobs(2, 50, d, 4.0f, 1.0f, 7);
    const std::vector<pkv::AssignData> data = {{b.x.data(), b.n}, {b.x.data(), 2}};  // set 1: 2 rows, 3 shards
    const std::vector<float> c(b.x.begin(), b.x.begin() + k * d);
    auto pass = [&](pkv::KMeansAssigner& a) {
        std::vector<std::vector<double>> sums(2, std::vector<double>(size_t(k) * d));
        std::vector<std::vector<int64_t>> counts(2, std::vector<int64_t>(k));
        std::vector<pkv::AssignTask> tasks(2);
        for (int i = 0; i < 2; ++i) {
            tasks[size_t(i)].data = i;
            tasks[size_t(i)].centroids = c.data();
            tasks[size_t(i)].sums = sums[size_t(i)].data();
            tasks[size_t(i)].counts = counts[size_t(i)].data();
        }
        a.begin_batch(data, d);
        a.assign_batch(tasks, k);
        a.end_batch();
        return std::make_pair(sums, counts);
    };
    FakeGroup g(S);
    FakeMember m0(g, 0), m1(g, 1), m2(g, 2);
    pkv::ShardedAssigner grouped({&m0, &m1, &m2});
    REQUIRE(grouped.group_sums());
    pkv::CpuAssigner cpu;
    const auto got = pass(grouped);
    const auto ref = pass(cpu);
    CHECK(got.second == ref.second);
    for (size_t i = 0; i < 2; ++i)
        for (size_t e = 0; e < got.first[i].size(); ++e)
            CHECK(got.first[i][e] == Approx(ref.first[i][e]).epsilon(1e-12));
}
