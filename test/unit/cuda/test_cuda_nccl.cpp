// Data-parallel k-means with the shards' sums added on the GPUs (NCCL group): the
// group's sums must be bitwise those of one GPU holding all rows, for every kernel.
// Needs two GPUs and an NCCL build; skips (saying so) otherwise.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/threads.h"
#include "pkv/cuda/device.h"
#include "pkv/cuda/kmeans_assign.h"
#include "pkv/cuda/nccl_group.h"
#include "pkv/kmeans/kmeans.h"
#include "pkv/kmeans/sharded_assigner.h"
#include "unit/cuda/cuda_test_util.h"

namespace {

using pkv::cuda::CudaAssigner;
using pkv::cuda::CudaAssignerOptions;
using pkv::cuda::InputPrecision;
using pkv_test::mixture;

#define PKV_REQUIRE_NCCL_PAIR()                                                          \
    PKV_REQUIRE_GPU();                                                                   \
    if (!pkv::cuda::built_with_nccl()) PKV_SKIP("pkv built without NCCL: test not run"); \
    if (pkv::cuda::device_count() < 2) PKV_SKIP("fewer than 2 CUDA devices: NCCL group test not run")

// Two GPU assigners in one NCCL group (GPUs 0 and 1), with `opt` otherwise.
struct Pair {
    std::vector<std::unique_ptr<CudaAssigner>> a;
    explicit Pair(CudaAssignerOptions opt) {
        const std::vector<pkv::cuda::NcclMember> m = pkv::cuda::nccl_local_group({0, 1});
        for (int i = 0; i < 2; ++i) {
            opt.device = i;
            opt.nccl = m[static_cast<size_t>(i)];
            a.push_back(std::make_unique<CudaAssigner>(opt));
        }
    }
    std::vector<pkv::KMeansAssigner*> ptrs() { return {a[0].get(), a[1].get()}; }
};

struct PassOut {
    std::vector<std::vector<double>> sums;
    std::vector<std::vector<int64_t>> counts;
    std::vector<std::vector<int32_t>> labels;
    std::vector<std::vector<float>> dist2;
    std::vector<double> objective;
};

// One batched pass over `data` (one task per set, its own centroids) on `as`.
PassOut run_pass(pkv::KMeansAssigner& as, const std::vector<pkv::AssignData>& data, int d,
                 const std::vector<std::vector<float>>& cents, int k) {
    PassOut o;
    const size_t nt = data.size();
    o.sums.assign(nt, std::vector<double>(size_t(k) * d));
    o.counts.assign(nt, std::vector<int64_t>(size_t(k)));
    o.labels.resize(nt);
    o.dist2.resize(nt);
    std::vector<pkv::AssignTask> tasks(nt);
    for (size_t i = 0; i < nt; ++i) {
        o.labels[i].resize(size_t(data[i].n));
        o.dist2[i].resize(size_t(data[i].n));
        tasks[i].data = static_cast<int>(i);
        tasks[i].centroids = cents[i].data();
        tasks[i].sums = o.sums[i].data();
        tasks[i].counts = o.counts[i].data();
        tasks[i].labels = o.labels[i].data();
        tasks[i].dist2 = o.dist2[i].data();
    }
    as.begin_batch(data, d);
    as.assign_batch(tasks, k);
    as.end_batch();
    for (const auto& t : tasks) o.objective.push_back(t.objective);
    return o;
}

}  // namespace

TEST_CASE("NCCL group: sharded pass equals one GPU bitwise, every kernel", "[cuda][kmeans][nccl]") {
    PKV_REQUIRE_NCCL_PAIR();
    // 16 < k <= 64 with sums: the one-hot kernel, on wgmma where the device has it.
    const auto onehot_kernel = [] { return pkv::cuda::wgmma_supported(0) ? "onehot-wgmma" : "onehot"; };
    struct Case {
        InputPrecision p;
        int k, d;
        int64_t n;
        const char* kernel;
        size_t max_point_bytes;
    };
    const std::vector<Case> cases = {
        {InputPrecision::fp16, 12, 128, 50000, "fused", 0},
        {InputPrecision::fp16, 40, 64, 70001, onehot_kernel(), 0},
        {InputPrecision::fp16, 200, 128, 40000, "wide+sorted", 0},
        {InputPrecision::fp16, 300, 128, 40000, pkv::cuda::wgmma_supported(0) ? "wgmma+sorted" : "wide+sorted", 0},
        {InputPrecision::bf16, 16, 64, 33333, "fused", 0},
        {InputPrecision::fp16, 30, 64, 50001, "fused", size_t{3} << 20},  // two centroid blocks, streamed
        {InputPrecision::fp32, 20, 48, 30001, "fma", 0},
        {InputPrecision::fp16, 40, 64, 70001, onehot_kernel(), size_t{3} << 20},  // streamed in chunks
    };
    for (const Case& c : cases) {
        CAPTURE(pkv::cuda::input_precision_name(c.p), c.k, c.d, c.n, c.kernel, c.max_point_bytes);
        // Two sets: the big one, and one of a single row (no rows on member 1).
        const std::vector<float> x = mixture(c.n, c.d, 2 * c.k, 11 + c.k, 3.0f);
        const std::vector<float> tiny = mixture(1, c.d, 1, 5, 3.0f);
        const std::vector<pkv::AssignData> data = {{x.data(), c.n}, {tiny.data(), 1}};
        std::vector<std::vector<float>> cents(2);
        for (int j = 0; j < c.k; ++j)
            for (int t = 0; t < c.d; ++t) cents[0].push_back(x[size_t(j * 97 % c.n) * c.d + t]);
        cents[1] = std::vector<float>(size_t(c.k) * c.d, 0.25f);
        CudaAssignerOptions opt;
        opt.precision = c.p;
        opt.max_point_bytes = c.max_point_bytes;
        CudaAssigner one(opt);
        const PassOut ref = run_pass(one, data, c.d, cents, c.k);
        CHECK(std::string(one.last_timing().kernel) == c.kernel);

        Pair pair(opt);
        pkv::ShardedAssigner sharded(pair.ptrs());
        REQUIRE(sharded.group_sums());
        const PassOut got = run_pass(sharded, data, c.d, cents, c.k);
        CHECK(std::string(pair.a[0]->last_timing().kernel) == c.kernel);
        if (c.max_point_bytes > 0) CHECK(pair.a[0]->last_timing().chunks > 1);
        for (size_t i = 0; i < data.size(); ++i) {
            CAPTURE(i);
            CHECK(got.sums[i] == ref.sums[i]);  // bitwise
            CHECK(got.counts[i] == ref.counts[i]);
            CHECK(got.labels[i] == ref.labels[i]);
            CHECK(got.dist2[i] == ref.dist2[i]);
            CHECK(got.objective[i] == Approx(ref.objective[i]).epsilon(1e-12));
        }

        // The same shards with the sums added on the host: within the kernels' stated
        // summation error (1e-6 of the sum of |x| per cluster), not necessarily bitwise.
        sharded.set_group_sums(false);
        REQUIRE_FALSE(sharded.group_sums());
        const PassOut host = run_pass(sharded, data, c.d, cents, c.k);
        const std::vector<double> mag = pkv_test::abs_sums(x, c.n, c.d, ref.labels[0], c.k);
        double worst = 0.0;
        for (size_t e = 0; e < mag.size(); ++e)
            worst = std::max(worst, std::fabs(host.sums[0][e] - ref.sums[0][e]) / std::max(mag[e], 1e-30));
        CAPTURE(worst);
        CHECK(worst <= 1e-6);
        CHECK(host.counts[0] == ref.counts[0]);
    }
}

TEST_CASE("NCCL group: k-means over two GPUs equals one GPU bitwise", "[cuda][kmeans][nccl]") {
    PKV_REQUIRE_NCCL_PAIR();
    const int d = 64;
    const int64_t n = 90000;
    const std::vector<float> x = mixture(n, d, 48, 23, 3.0f);
    for (const int k : {16, 32, 128}) {
        CAPTURE(k);
        pkv::KMeansParams p;
        p.k = k;
        p.max_iter = 12;
        p.tol = -1.0;
        p.seed = 9;
        CudaAssignerOptions opt;
        opt.precision = InputPrecision::fp16;
        CudaAssigner one(opt);
        const pkv::KMeansResult ref = pkv::kmeans(x.data(), n, d, p, &one);
        Pair pair(opt);
        pkv::ShardedAssigner sharded(pair.ptrs());
        const pkv::KMeansResult got = pkv::kmeans(x.data(), n, d, p, &sharded);
        CHECK(got.centroids == ref.centroids);
        CHECK(got.assignments == ref.assignments);
        CHECK(got.objective == Approx(ref.objective).epsilon(1e-12));
    }
}

TEST_CASE("NCCL group: a failing member stops the other instead of hanging it", "[cuda][kmeans][nccl]") {
    PKV_REQUIRE_NCCL_PAIR();
    const int d = 64, k = 16;
    const int64_t n = 40000;
    const std::vector<float> x = mixture(n, d, 8, 3, 3.0f);
    const std::vector<float> c(size_t(k) * d, 0.5f);
    CudaAssignerOptions opt;
    opt.precision = InputPrecision::fp16;
    Pair pair(opt);
    // Both members begin (collective), then member 0's pass fails before its all-reduce
    // (null centroids) while member 1 waits in it.
    pkv::each_in_thread(2, [&](size_t m) {
        const int64_t b = m == 0 ? 0 : 16384;
        const int64_t e = m == 0 ? 16384 : n;
        pair.a[m]->begin_group_batch({{x.data() + b * d, e - b}}, d);
    });
    std::vector<std::string> errors(2);
    std::vector<double> sums(size_t(k) * d);
    std::vector<int64_t> counts(k);
    std::vector<std::thread> threads;
    for (int m = 0; m < 2; ++m)
        threads.emplace_back([&, m]() {
            std::vector<pkv::AssignTask> tasks(1);
            tasks[0].centroids = m == 0 ? nullptr : c.data();
            std::vector<double> s(size_t(k) * d);
            std::vector<int64_t> cn(k);
            tasks[0].sums = s.data();
            tasks[0].counts = cn.data();
            try {
                pair.a[static_cast<size_t>(m)]->assign_batch(tasks, k);
            } catch (const std::exception& e) {
                errors[static_cast<size_t>(m)] = e.what();
            }
        });
    for (auto& t : threads) t.join();
    CAPTURE(errors[0], errors[1]);
    CHECK(errors[0].find("null centroids") != std::string::npos);
    CHECK(errors[1].find("another GPU of the group failed") != std::string::npos);
    for (auto& a : pair.a) a->end_batch();
}

TEST_CASE("NCCL group: bad groups are refused", "[cuda][nccl]") {
    PKV_REQUIRE_GPU();
    if (!pkv::cuda::built_with_nccl()) PKV_SKIP("pkv built without NCCL: test not run");
    CHECK_THROWS_WITH(pkv::cuda::nccl_local_group({0, 0}), ContainsSubstring("listed twice"));
    CHECK_THROWS_WITH(pkv::cuda::nccl_local_group({0}), ContainsSubstring("at least 2"));
    CHECK_THROWS_WITH(pkv::cuda::nccl_join("short", 2, 0, 0), ContainsSubstring("-byte id"));
    // Without a group an assigner is no sum-group member, and two of them are no group.
    CudaAssignerOptions opt;
    CudaAssigner a(opt), b(opt);
    CHECK(a.sum_group().id == nullptr);
    CHECK_FALSE(pkv::is_sum_group({&a, &b}));
    CHECK_THROWS_WITH(a.begin_group_batch({}, 8), ContainsSubstring("without an NCCL group"));
}
