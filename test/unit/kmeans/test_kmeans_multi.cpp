// kmeans_batch_multi: problems dealt over several assigners (threads) give the results
// of kmeans_batch with one assigner, bitwise; deal_problems balances by size.
#include <vector>

#include "catch.h"
#include "pkv/kmeans/assigner.h"
#include "pkv/kmeans/kmeans_multi.h"
#include "pkv/kmeans/sharded_assigner.h"
#include "unit/kmeans/kmeans_test_util.h"

TEST_CASE("deal_problems: largest first to the least-loaded assigner", "[kmeans][multi]") {
    std::vector<pkv::KMeansProblem> p = {
        {nullptr, 100, 0}, {nullptr, 700, 0}, {nullptr, 300, 0}, {nullptr, 300, 0}, {nullptr, 50, 0}};
    // 700 -> 0; 300 (index 2) -> 1; 300 (index 3) -> 1 (load 300 < 700); 100 -> 1 (600 < 700);
    // 50 -> 0 (700 < 700 is false: loads 700 and 700, the lowest index wins).
    CHECK(pkv::deal_problems(p, 2) == std::vector<int>{1, 0, 1, 1, 0});
    CHECK(pkv::deal_problems(p, 1) == std::vector<int>{0, 0, 0, 0, 0});
    CHECK(pkv::deal_problems(p, 5) == std::vector<int>{3, 0, 1, 2, 4});  // in order of size
    CHECK_THROWS(pkv::deal_problems(p, 0));
}

TEST_CASE("kmeans_batch_multi equals kmeans_batch with one assigner", "[kmeans][multi]") {
    const int d = 16;
    const std::vector<int64_t> sizes = {900, 40, 2000, 333, 1200, 64, 500};
    std::vector<std::vector<float>> xs;
    std::vector<pkv::KMeansProblem> problems;
    for (size_t i = 0; i < sizes.size(); ++i) {
        xs.push_back(pkv_test::gaussian_points(sizes[i], d, 50 + i));
        problems.push_back({xs.back().data(), sizes[i], 7 + i});
    }
    pkv::KMeansParams p;
    p.k = 12;
    p.max_iter = 15;
    pkv::CpuAssigner one;
    const auto ref = pkv::kmeans_batch(problems, d, p, &one);
    const int n_assigners = GENERATE(2, 3, 9);  // 9 > problems: some assigners idle
    CAPTURE(n_assigners);
    std::vector<pkv::CpuAssigner> cpu(static_cast<size_t>(n_assigners));
    std::vector<pkv::KMeansAssigner*> ptrs;
    for (auto& c : cpu) ptrs.push_back(&c);
    const auto got = pkv::kmeans_batch_multi(problems, d, p, ptrs);
    REQUIRE(got.size() == ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
        CAPTURE(i);
        CHECK(got[i].centroids == ref[i].centroids);
        CHECK(got[i].assignments == ref[i].assignments);
        CHECK(got[i].objective == ref[i].objective);
    }
    // nullptr entries are the CPU assigner too.
    const auto null2 = pkv::kmeans_batch_multi(problems, d, p, {nullptr, nullptr});
    for (size_t i = 0; i < ref.size(); ++i) CHECK(null2[i].centroids == ref[i].centroids);
    // Bad input names the caller's problem index, as kmeans_batch does.
    std::vector<pkv::KMeansProblem> bad = problems;
    bad.push_back({xs[1].data(), 5, 1});
    CHECK_THROWS_WITH(pkv::kmeans_batch_multi(bad, d, p, ptrs),
                      ContainsSubstring("problem 7: k = 12 exceeds the number of points n = 5"));
}

namespace {
// A CPU assigner that says it holds only `rows` points, so that kmeans_batch_multi
// shards larger problems (what a GPU of limited memory does).
class SmallCpu final : public pkv::KMeansAssigner {
public:
    explicit SmallCpu(int64_t rows) : rows_(rows) {}
    const char* name() const override { return "small-cpu"; }
    void assign(const float* x, int64_t n, int d, const float* c, int k, int32_t* labels, float* dist2) override {
        ++calls;
        cpu_.assign(x, n, d, c, k, labels, dist2);
    }
    int64_t max_resident_rows(int) const override { return rows_; }
    int calls = 0;

private:
    pkv::CpuAssigner cpu_;
    int64_t rows_;
};
}  // namespace

TEST_CASE("ShardedAssigner: one problem over several assigners equals one assigner", "[kmeans][multi][sharded]") {
    const int d = 24;
    const pkv_test::Blobs b = pkv_test::gaussian_blobs(20, 900, d, 4.0f, 1.0f, 5);
    pkv::KMeansParams p;
    p.k = 20;
    p.max_iter = 12;
    p.tol = -1.0;
    p.seed = 5;
    pkv::CpuAssigner one;
    const pkv::KMeansResult ref = pkv::kmeans(b.x.data(), b.n, d, p, &one);
    const int shards = GENERATE(2, 3, 7);
    CAPTURE(shards);
    std::vector<pkv::CpuAssigner> cpu(static_cast<size_t>(shards));
    std::vector<pkv::KMeansAssigner*> ptrs;
    for (auto& c : cpu) ptrs.push_back(&c);
    pkv::ShardedAssigner sharded(ptrs);
    CHECK(sharded.shard_begin(b.n, 0) == 0);
    CHECK(sharded.shard_begin(b.n, shards) == b.n);
    const pkv::KMeansResult got = pkv::kmeans(b.x.data(), b.n, d, p, &sharded);
    // Sums are added shard by shard: equal to double rounding; the centroids are float.
    int64_t same = 0;
    for (int64_t i = 0; i < b.n; ++i) same += got.assignments[i] == ref.assignments[i];
    CHECK(same == b.n);
    CHECK(got.objective == Approx(ref.objective).epsilon(1e-12));
    for (size_t i = 0; i < ref.centroids.size(); ++i) CHECK(got.centroids[i] == Approx(ref.centroids[i]).margin(1e-5));

    // kmeans_batch_multi shards a problem larger than its assigners hold, and deals the rest.
    std::vector<SmallCpu> small;
    for (int s = 0; s < 3; ++s) small.emplace_back(5000);
    std::vector<pkv::KMeansAssigner*> sp;
    for (auto& s : small) sp.push_back(&s);
    const std::vector<float> little = pkv_test::gaussian_points(3000, d, 9);
    pkv::KMeansParams q = p;
    q.seed = 5;
    const auto res = pkv::kmeans_batch_multi({{b.x.data(), b.n, 5}, {little.data(), 3000, 6}}, d, q, sp);
    CHECK(res[0].objective == Approx(ref.objective).epsilon(1e-12));
    pkv::KMeansParams q6 = p;
    q6.seed = 6;
    CHECK(res[1].centroids == pkv::kmeans(little.data(), 3000, d, q6, &one).centroids);
    for (const SmallCpu& s : small) CHECK(s.calls > 0);  // every assigner took part in the big one
}
