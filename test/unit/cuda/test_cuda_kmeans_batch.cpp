// The tensor-core (fp16 / bf16) CUDA assigner and the batched pass, against the CPU
// references. Tolerances, each stated where it is checked:
//   labels     >= 99.9% equal to assign_ref on the rounded data and centroids; every
//              differing label a near-tie: d(x, c_gpu) - d(x, c_ref) <= 1e-5 *
//              max(d(x, c_ref), ||x||²) (fp32 accumulation of exact 16-bit products)
//   dist2      |gpu - exact| <= 2e-5 * exact + 1e-6 (direct fp32 sum, rounded data)
//   sums       shared-memory kernel or sorted reduction (onehot_sums off, k > 128): equal to
//              accumulate_centroid_sums on the GPU's labels (binary16 values are exact
//              in the 64-bit fixed point at these n; so is the double CPU sum);
//              fused and one-hot kernels, mma.sync or wgmma (fp32 tensor-core partials
//              per group of <= 8192 rows):
//              |gpu - cpu| <= 1e-6 * sum of |x| over the cluster; counts exact
//   objective  |gpu - sum of exact dist2| <= 1e-6 relative (one pass); kmeans() on the
//              GPU vs the CPU assigner on the same fp16-rounded data, same init, fixed
//              iterations: within 1e-4 relative, >= 99.9% equal assignments
//   batch      kmeans_batch and assign_batch bitwise equal to per-problem runs
//              (one-hot sums streamed in chunks of other than whole groups: within
//              1e-6 * sum of |x|)
//   properties objective never increases by more than 1e-6 relative per iteration
//              (the centroids are re-rounded every iteration); more k (nested init)
//              never raises it by more than 1e-6; n == k gives 0; duplicates
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/cuda/device.h"
#include "pkv/cuda/kmeans_assign.h"
#include "pkv/kmeans/kmeans.h"
#include "pkv/kmeans/sharded_assigner.h"
#include "unit/cuda/cuda_test_util.h"
#include "unit/kmeans/kmeans_test_util.h"

namespace {

using pkv::cuda::CudaAssigner;
using pkv::cuda::CudaAssignerOptions;
using pkv::cuda::InputPrecision;
using pkv_test::abs_sums;
using pkv_test::mixture;
using pkv_test::rounded;
using pkv_test::sq_dist;

// Gaussian mixture: `blobs` centres ~N(0, 4), points ~ centre + N(0, 1).
bool sums_close(const std::vector<double>& a, const std::vector<double>& b, const std::vector<double>& mag) {
    for (size_t i = 0; i < a.size(); ++i)
        if (std::fabs(a[i] - b[i]) > 1e-6 * mag[i]) return false;
    return true;
}

}  // namespace

TEST_CASE("tensor-core assigner matches assign_ref, exact sums, objective", "[cuda][kmeans][parity][mma]") {
    PKV_REQUIRE_GPU();
    struct Shape {
        int64_t n;
        int d, k;
    };
    // 300000 rows: blocks of the fused kernel take several groups each. d = 128, k = 32
    // and d = 120, k = 29: the one-hot kernel where the fused one stops; 200003 x 128,
    // k = 64: its wgmma form with 64-centroid chunks over several groups a block.
    const Shape s = GENERATE(values<Shape>({{20000, 64, 64},
                                            {20011, 128, 256},
                                            {9000, 128, 16},
                                            {3001, 64, 1000},
                                            {12000, 128, 80},
                                            {517, 40, 5},
                                            {300, 7, 3},
                                            {300000, 64, 13},
                                            {300000, 64, 32},
                                            {6007, 48, 27},
                                            {100000, 128, 32},
                                            {7001, 120, 29},
                                            {200003, 128, 64}}));
    const InputPrecision prec = GENERATE(InputPrecision::fp16, InputPrecision::bf16);
    // variant 0: the default kernels (fused for k <= 16, or k <= 32 at d <= 64; one-hot
    // sums below 96, on wgmma up to 64 on compute capability 9.0; the wide kernel above,
    // its products by wgmma there from kWgmmaMinK); 1: fused_small_k off (the one-hot
    // kernel where the fused one runs); 2: the general kernel; 3: wgmma off (the one-hot
    // kernel on mma.sync, the wide kernel on mma.sync). chunk: the wide kernel's
    // centroid chunk.
    const int variant = GENERATE(0, 1, 2, 3);
    const int chunk = GENERATE(64, 128);
    if (variant != 0 && variant != 3 && chunk != 64) return;
    if (variant == 1 && s.k > pkv::cuda::fused_max_k(s.d)) return;
    const bool wg_onehot_k = s.k > pkv::cuda::fused_max_k(s.d) && s.k <= 64;
    if (variant == 3 && s.k < pkv::cuda::kWgmmaMinK && !(wg_onehot_k && chunk == 64)) return;
    const bool onehot = variant != 2;
    CAPTURE(s.n, s.d, s.k, pkv::cuda::input_precision_name(prec), variant, chunk);
    const std::vector<float> x = mixture(s.n, s.d, 50, 11 + s.d);
    std::vector<float> c(x.begin(), x.begin() + size_t(s.k) * s.d);
    for (size_t i = 0; i < c.size(); ++i) c[i] += 0.01f * float(i % 7);  // off the grid
    CudaAssignerOptions opt;
    opt.precision = prec;
    opt.onehot_sums = onehot;
    opt.fused_small_k = variant == 0;
    opt.wide_assign = onehot;
    opt.wide_chunk = chunk;
    opt.wgmma = variant != 3;
    CudaAssigner a(opt);
    std::vector<int32_t> labels(size_t(s.n), -1);
    std::vector<float> dist2(size_t(s.n), -1.0f);
    std::vector<double> sums(size_t(s.k) * s.d);
    std::vector<int64_t> counts(size_t(s.k));
    a.begin(x.data(), s.n, s.d);
    a.assign_accumulate(x.data(), s.n, s.d, c.data(), s.k, labels.data(), dist2.data(), sums.data(), counts.data());
    CHECK(a.last_timing().tensor_cores);
    const std::string kernel = a.last_timing().kernel;
    const bool d_ok = s.d % 8 == 0 && s.d > 32;
    const bool wg = variant != 3 && pkv::cuda::wgmma_supported(0);
    const std::string expected = !(onehot && d_ok) ? (s.k > 190 ? "mma+sorted" : "mma")
                                 : s.k <= pkv::cuda::fused_max_k(s.d) && variant == 0 ? "fused"
                                 : s.k <= 64 && wg                                    ? "onehot-wgmma"
                                 : s.k < 96                                           ? "onehot"
                                 : variant == 0 && s.k >= pkv::cuda::kWgmmaMinK && pkv::cuda::wgmma_supported(0)
                                     ? "wgmma+sorted"
                                     : "wide+sorted";
    CHECK(kernel == expected);
    // The objective of the same pass through the batched API.
    std::vector<pkv::AssignTask> tasks(1);
    tasks[0].centroids = c.data();
    a.assign_batch(tasks, s.k);
    a.end();

    const std::vector<float> xs = rounded(x, prec), cs = rounded(c, prec);
    std::vector<int32_t> ref(size_t(s.n));
    pkv::assign_ref(xs.data(), s.n, s.d, cs.data(), s.k, ref.data(), nullptr);
    int64_t differ = 0, bad_ties = 0, bad_dist = 0;
    double exact_obj = 0.0;
    for (int64_t i = 0; i < s.n; ++i) {
        REQUIRE(labels[i] >= 0);
        REQUIRE(labels[i] < s.k);
        const float* xi = xs.data() + i * s.d;
        const double dg = sq_dist(xi, cs.data() + size_t(labels[i]) * s.d, s.d);
        exact_obj += dg;
        if (labels[i] != ref[i]) {
            ++differ;
            const double dr = sq_dist(xi, cs.data() + size_t(ref[i]) * s.d, s.d);
            double xn = 0.0;
            for (int t = 0; t < s.d; ++t) xn += double(xi[t]) * xi[t];
            if (dg - dr > 1e-5 * std::max(dr, xn)) ++bad_ties;
        }
        if (std::fabs(dist2[i] - dg) > 2e-5 * dg + 1e-6) ++bad_dist;
    }
    const double same_pct = 100.0 * double(s.n - differ) / double(s.n);
    const double obj_rel = std::fabs(tasks[0].objective - exact_obj) / exact_obj;
    CAPTURE(differ, same_pct, bad_ties, bad_dist, obj_rel);
    CHECK(double(differ) <= 1e-3 * double(s.n));
    CHECK(bad_ties == 0);
    CHECK(bad_dist == 0);
    CHECK(obj_rel <= 1e-6);
    std::vector<double> cpu_sums(sums.size());
    std::vector<int64_t> cpu_counts(counts.size());
    pkv::accumulate_centroid_sums(xs.data(), s.n, s.d, labels.data(), s.k, cpu_sums.data(), cpu_counts.data());
    CHECK(counts == cpu_counts);
    double sum_err = 0.0;  // largest |gpu - cpu| / sum of |x| over the cluster
    if (kernel == "onehot" || kernel == "fused" || kernel == "onehot-wgmma") {
        const std::vector<double> mag = abs_sums(xs, s.n, s.d, labels, s.k);
        for (size_t i = 0; i < sums.size(); ++i)
            if (mag[i] > 0) sum_err = std::max(sum_err, std::fabs(sums[i] - cpu_sums[i]) / mag[i]);
        CHECK(sum_err <= 1e-6);
    } else {
        CHECK(sums == cpu_sums);
    }
    WARN("parity " << pkv::cuda::input_precision_name(prec) << " " << kernel << " n=" << s.n << " d=" << s.d
                   << " k=" << s.k << ": equal labels " << same_pct << "%, objective rel diff " << obj_rel
                   << ", sums rel err " << sum_err);
}

TEST_CASE("sorted sums past the shared-memory label counters (k > 6144), resident and streamed",
          "[cuda][kmeans][parity][sorted]") {
    PKV_REQUIRE_GPU();
    // k = 6200 takes the per-row histogram and scatter kernels; 1000-row chunks add the
    // counts of several launches.
    const int64_t n = 7000;
    const int d = 40, k = 6200;
    const size_t budget_rows = GENERATE(size_t{0}, size_t{1000});
    CAPTURE(budget_rows);
    const std::vector<float> x = mixture(n, d, 50, 77);
    const std::vector<float> c(x.begin(), x.begin() + size_t(k) * d);
    CudaAssignerOptions opt;
    opt.precision = InputPrecision::fp16;
    opt.max_point_bytes = budget_rows * (d * 2 + 8);
    CudaAssigner a(opt);
    std::vector<int32_t> labels(size_t(n), -1);
    std::vector<float> dist2(static_cast<size_t>(n));
    std::vector<double> sums(size_t(k) * d);
    std::vector<int64_t> counts(static_cast<size_t>(k));
    a.begin(x.data(), n, d);
    a.assign_accumulate(x.data(), n, d, c.data(), k, labels.data(), dist2.data(), sums.data(), counts.data());
    CHECK(std::string(a.last_timing().kernel) == (pkv::cuda::wgmma_supported(0) ? "wgmma+sorted" : "wide+sorted"));
    CHECK(a.streaming() == (budget_rows != 0));
    a.end();
    const std::vector<float> xs = rounded(x, InputPrecision::fp16), cs = rounded(c, InputPrecision::fp16);
    std::vector<int32_t> ref(static_cast<size_t>(n));
    pkv::assign_ref(xs.data(), n, d, cs.data(), k, ref.data(), nullptr);
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) differ += labels[i] != ref[i];
    CAPTURE(differ);
    CHECK(double(differ) <= 1e-3 * double(n));
    std::vector<double> cpu_sums(sums.size());
    std::vector<int64_t> cpu_counts(counts.size());
    pkv::accumulate_centroid_sums(xs.data(), n, d, labels.data(), k, cpu_sums.data(), cpu_counts.data());
    CHECK(counts == cpu_counts);
    CHECK(sums == cpu_sums);
}

TEST_CASE("batched pass equals per-problem passes bitwise, streamed or resident", "[cuda][kmeans][batch]") {
    PKV_REQUIRE_GPU();
    // fp16: k = 12 the fused kernel (tasks change inside a block); k = 40 the one-hot kernel (on Hopper its wgmma
    // form, the centroid image reloaded inside a block); k = 150 and 400 the wide kernel (centroid chunks across
    // segments and tasks) and the sorted reduction.
    const int d = 64;
    const int k = GENERATE(12, 40, 150, 400);
    const InputPrecision prec = GENERATE(InputPrecision::fp16, InputPrecision::fp32);
    const size_t budget_rows = GENERATE(size_t{0}, size_t{700}, size_t{100});
    CAPTURE(k, pkv::cuda::input_precision_name(prec), budget_rows);
    const std::vector<int64_t> sizes = {int64_t{k}, 1, 300, 5000, 257};
    std::vector<std::vector<float>> xs;
    std::vector<pkv::AssignData> data;
    for (size_t i = 0; i < sizes.size(); ++i) {
        xs.push_back(mixture(sizes[i], d, 7, 40 + i));
        data.push_back({xs.back().data(), sizes[i]});
    }
    const std::vector<float> c = mixture(k, d, 7, 99);
    CudaAssignerOptions opt;
    opt.precision = prec;
    opt.max_point_bytes = budget_rows * (d * (prec == InputPrecision::fp32 ? 4 : 2) + 8);
    CudaAssigner batched(opt);
    // Two tasks on data set 3 (as restarts do), one with labels only.
    std::vector<int> which = {0, 1, 2, 3, 3, 4};
    std::vector<std::vector<double>> sums(which.size(), std::vector<double>(size_t(k) * d));
    std::vector<std::vector<int64_t>> counts(which.size(), std::vector<int64_t>(k));
    std::vector<std::vector<int32_t>> labels(which.size());
    std::vector<pkv::AssignTask> tasks(which.size());
    for (size_t t = 0; t < which.size(); ++t) {
        tasks[t].data = which[t];
        tasks[t].centroids = c.data();
        labels[t].assign(size_t(sizes[which[t]]), -1);
        tasks[t].labels = labels[t].data();
        if (t != 4) {
            tasks[t].sums = sums[t].data();
            tasks[t].counts = counts[t].data();
        }
    }
    batched.begin_batch(data, d);
    CHECK(batched.streaming() == (budget_rows != 0));
    batched.assign_batch(tasks, k);
    std::vector<pkv::AssignTask> again = tasks;
    batched.assign_batch(again, k);
    batched.end_batch();
    CudaAssignerOptions ropt;
    ropt.precision = prec;
    CudaAssigner single(ropt);
    for (size_t t = 0; t < which.size(); ++t) {
        CAPTURE(t, sizes[which[t]]);
        CHECK(again[t].objective == tasks[t].objective);
        std::vector<pkv::AssignTask> one(1, tasks[t]);
        one[0].data = 0;
        std::vector<double> s1(size_t(k) * d);
        std::vector<int64_t> c1(k);
        std::vector<int32_t> l1(size_t(sizes[which[t]]));
        one[0].labels = l1.data();
        one[0].sums = t != 4 ? s1.data() : nullptr;
        one[0].counts = t != 4 ? c1.data() : nullptr;
        single.begin_batch({data[which[t]]}, d);
        single.assign_batch(one, k);
        single.end_batch();
        CHECK(l1 == labels[t]);
        if (t != 4) {
            // One-hot sums in chunks that split a group (budgets of 100 and 700 rows).
            if (prec == InputPrecision::fp16 && k <= 128 && budget_rows != 0) {
                const std::vector<float> xr = rounded(xs[size_t(which[t])], prec);
                CHECK(sums_close(s1, sums[t], abs_sums(xr, sizes[which[t]], d, l1, k)));
            } else {
                CHECK(s1 == sums[t]);
            }
            CHECK(c1 == counts[t]);
        }
        // Chunks of whole 256-row tiles keep the objective's order; 100-row chunks do not.
        if (budget_rows != 100) CHECK(one[0].objective == tasks[t].objective);
        else CHECK(one[0].objective == Approx(tasks[t].objective).epsilon(1e-12));
    }
}

TEST_CASE("kmeans_batch on the GPU equals per-problem kmeans and tracks the CPU", "[cuda][kmeans][batch][parity]") {
    PKV_REQUIRE_GPU();
    const int d = GENERATE(64, 128);
    const int k = 32;
    CAPTURE(d);
    const std::vector<int64_t> sizes = {k, 33, 1000, 6000};
    std::vector<std::vector<float>> xs;
    std::vector<pkv::KMeansProblem> problems;
    for (size_t i = 0; i < sizes.size(); ++i) {
        xs.push_back(rounded(mixture(sizes[i], d, 40, 70 + i), InputPrecision::fp16));
        problems.push_back({xs.back().data(), sizes[i], 5 + i});
    }
    pkv::KMeansParams p;
    p.k = k;
    p.max_iter = 12;
    p.tol = -1.0;
    CudaAssignerOptions opt;
    opt.precision = InputPrecision::fp16;
    CudaAssigner gpu(opt);
    const auto batch = pkv::kmeans_batch(problems, d, p, &gpu);
    for (size_t i = 0; i < problems.size(); ++i) {
        CAPTURE(i, sizes[i]);
        pkv::KMeansParams pi = p;
        pi.seed = problems[i].seed;
        const pkv::KMeansResult one = pkv::kmeans(problems[i].x, sizes[i], d, pi, &gpu);
        CHECK(one.centroids == batch[i].centroids);
        CHECK(one.assignments == batch[i].assignments);
        CHECK(one.objective == batch[i].objective);
        // Objective never increases (1e-6 relative: centroids are re-rounded each pass).
        for (size_t it = 1; it < batch[i].stats.size(); ++it)
            CHECK(batch[i].stats[it].objective <= batch[i].stats[it - 1].objective * (1 + 1e-6));
        if (sizes[i] == k) CHECK(batch[i].objective == 0.0);
    }
}

TEST_CASE("kmeans_batch with two passes in flight equals one pass at a time bitwise", "[cuda][kmeans][batch]") {
    PKV_REQUIRE_GPU();
    // k covers the fused, one-hot, wide and (on Hopper) wgmma kernels, the last two
    // with sorted sums; `streamed` sends the points in chunks every pass.
    const int k = GENERATE(16, 40, 128, 256);
    const bool streamed = GENERATE(false, true);
    const int d = 64;
    CAPTURE(k, streamed);
    const std::vector<int64_t> sizes = {k, 3000, 700, 9000, 1500, 5000};
    std::vector<std::vector<float>> xs;
    std::vector<pkv::KMeansProblem> problems;
    for (size_t i = 0; i < sizes.size(); ++i) {
        xs.push_back(mixture(sizes[i], d, 24 + static_cast<int>(i), 90 + i));
        problems.push_back({xs.back().data(), sizes[i], 40 + i});
    }
    pkv::KMeansParams p;
    p.k = k;
    p.max_iter = 9;
    p.n_restarts = 2;
    p.rel_tol = 1e-3;  // runs stop at different iterations
    CudaAssignerOptions opt;
    opt.precision = InputPrecision::fp16;
    if (streamed) opt.max_point_bytes = size_t{4096} * (d * 2 + 8);
    CudaAssigner piped(opt);
    opt.pipeline = false;
    CudaAssigner serial(opt);
    CHECK(serial.pipeline_depth() == 1);
    const auto a = pkv::kmeans_batch(problems, d, p, &piped);
    const auto b = pkv::kmeans_batch(problems, d, p, &serial);
    CHECK(piped.last_timing().kernel == std::string(serial.last_timing().kernel));
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        CAPTURE(i, sizes[i]);
        CHECK(a[i].centroids == b[i].centroids);
        CHECK(a[i].assignments == b[i].assignments);
        CHECK(a[i].objective == b[i].objective);
        CHECK(a[i].iterations == b[i].iterations);
        CHECK(a[i].restart_objectives == b[i].restart_objectives);
        REQUIRE(a[i].stats.size() == b[i].stats.size());
        for (size_t it = 0; it < a[i].stats.size(); ++it) CHECK(a[i].stats[it].objective == b[i].stats[it].objective);
    }
    // Inside a batch the assigner reports two slots.
    piped.begin_batch({{xs[1].data(), sizes[1]}}, d);
    CHECK(piped.pipeline_depth() == 2);
    piped.end_batch();
}

TEST_CASE("kmeans() on fp16 tensor cores tracks the CPU assigner on the same rounded data", "[cuda][kmeans][parity]") {
    PKV_REQUIRE_GPU();
    // Blobs (centres uniform in [-3, 3]^d, sigma 1) started from one point of each blob:
    // Lloyd is stable there, so single near-tie flips cannot cascade and the runs are
    // comparable point by point.
    struct Case {
        int blobs, d;
        int64_t per_blob;
    };
    const Case cs = GENERATE(values<Case>({{40, 64, 500}, {256, 128, 80}, {16, 128, 1000}}));
    const InputPrecision prec = GENERATE(InputPrecision::fp16, InputPrecision::bf16);
    const int k = cs.blobs;
    CAPTURE(cs.blobs, cs.per_blob, cs.d, pkv::cuda::input_precision_name(prec));
    const pkv_test::Blobs b = pkv_test::gaussian_blobs(cs.blobs, cs.per_blob, cs.d, 3.0f, 1.0f, 99);
    const std::vector<float> x = rounded(b.x, prec);
    pkv::KMeansParams p;
    p.k = k;
    p.max_iter = 10;
    p.tol = -1.0;
    p.initial_centroids.assign(x.begin(), x.begin() + size_t(k) * cs.d);
    const pkv::KMeansResult cpu = pkv::kmeans(x.data(), b.n, cs.d, p);
    CudaAssignerOptions opt;
    opt.precision = prec;
    CudaAssigner gpu(opt);
    const pkv::KMeansResult g = pkv::kmeans(x.data(), b.n, cs.d, p, &gpu);
    int64_t same = 0;
    for (int64_t r = 0; r < b.n; ++r) same += cpu.assignments[r] == g.assignments[r];
    const double rel = std::fabs(g.objective - cpu.objective) / cpu.objective;
    const double same_pct = 100.0 * double(same) / double(b.n);
    CAPTURE(cpu.objective, g.objective, rel, same_pct);
    // bf16 centroids move by up to 2^-8 relative: the objective bound is 1e-3 there.
    CHECK(rel <= (prec == InputPrecision::fp16 ? 1e-4 : 1e-3));
    CHECK(double(same) >= 0.999 * double(b.n));
    for (size_t it = 1; it < g.stats.size(); ++it)
        CHECK(g.stats[it].objective <= g.stats[it - 1].objective * (1 + 1e-6));
    WARN("kmeans " << pkv::cuda::input_precision_name(prec) << " d=" << cs.d << " k=" << k << " n=" << b.n
                   << ": equal assignments " << same_pct << "%, objective rel diff " << rel);
}

TEST_CASE("GPU k-means properties: more k, duplicates, k > n", "[cuda][kmeans][properties]") {
    PKV_REQUIRE_GPU();
    const int d = 64;
    const int64_t n = 4000;
    const std::vector<float> x = mixture(n, d, 20, 3);
    CudaAssignerOptions opt;
    opt.precision = InputPrecision::fp16;
    CudaAssigner gpu(opt);
    pkv::KMeansParams p;
    p.k = 8;
    p.init = pkv::KMeansInit::kmeanspp;
    const pkv::KMeansResult small = pkv::kmeans(x.data(), n, d, p, &gpu);
    for (int extra : {1, 24}) {
        pkv::KMeansParams q;
        q.k = p.k + extra;
        q.initial_centroids = small.centroids;
        for (int e = 0; e < extra; ++e)
            q.initial_centroids.insert(q.initial_centroids.end(), x.begin() + (e * 37) * d,
                                       x.begin() + (e * 37 + 1) * d);
        const pkv::KMeansResult big = pkv::kmeans(x.data(), n, d, q, &gpu);
        CAPTURE(extra, small.objective, big.objective);
        CHECK(big.objective <= small.objective * (1 + 1e-6));
    }
    // Duplicates: 3 distinct points, 10 copies each, k = 6: objective 0, no NaN.
    const std::vector<float> base = mixture(3, d, 3, 8);
    std::vector<float> dup;
    for (int r = 0; r < 10; ++r) dup.insert(dup.end(), base.begin(), base.end());
    pkv::KMeansParams pd;
    pd.k = 6;
    const pkv::KMeansResult rd = pkv::kmeans(rounded(dup, InputPrecision::fp16).data(), 30, d, pd, &gpu);
    CHECK(rd.objective == 0.0);
    for (float v : rd.centroids) CHECK(std::isfinite(v));
    pkv::KMeansParams pk;
    pk.k = 31;
    CHECK_THROWS_WITH(pkv::kmeans_batch({{x.data(), 100, 1}, {dup.data(), 30, 2}}, d, pk, &gpu),
                      ContainsSubstring("problem 1: k = 31 exceeds the number of points n = 30"));
    CudaAssignerOptions bopt;
    bopt.precision = InputPrecision::bf16;
    CudaAssigner bf(bopt);
    const std::vector<float> wide = pkv_test::gaussian_points(10, 130, 1);
    CHECK_THROWS_WITH(bf.begin(wide.data(), 10, 130), ContainsSubstring("bf16 input needs d <= 128"));
}

TEST_CASE("one problem sharded over two GPU assigners tracks one assigner", "[cuda][kmeans][sharded]") {
    PKV_REQUIRE_GPU();
    // Two assigners on device 0 stand in for two GPUs (the code path of --devices 0,1
    // with a problem larger than one GPU): shards of 8192-row multiples, sums added on
    // the host in shard order.
    const int d = 64;
    const pkv_test::Blobs b = pkv_test::gaussian_blobs(32, 1100, d, 3.0f, 1.0f, 17);
    const std::vector<float> x = rounded(b.x, InputPrecision::fp16);
    pkv::KMeansParams p;
    p.k = 32;
    p.max_iter = 10;
    p.tol = -1.0;
    p.seed = 3;
    CudaAssignerOptions opt;
    opt.precision = InputPrecision::fp16;
    CudaAssigner one(opt), s0(opt), s1(opt);
    const pkv::KMeansResult ref = pkv::kmeans(x.data(), b.n, d, p, &one);
    pkv::ShardedAssigner sharded({&s0, &s1});
    const pkv::KMeansResult got = pkv::kmeans(x.data(), b.n, d, p, &sharded);
    int64_t same = 0;
    for (int64_t i = 0; i < b.n; ++i) same += got.assignments[i] == ref.assignments[i];
    CAPTURE(ref.objective, got.objective, same);
    CHECK(double(same) >= 0.999 * double(b.n));
    CHECK(got.objective == Approx(ref.objective).epsilon(1e-6));
}
