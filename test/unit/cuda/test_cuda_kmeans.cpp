// Parity of the CUDA k-means assigner with the CPU references (assign_ref,
// accumulate_centroid_sums, kmeans() with the CPU assigner). Tolerances, each stated
// where it is checked:
//   labels      >= 99.9% equal to assign_ref; every differing label a near-tie:
//               d(x, c_gpu) - d(x, c_ref) <= 1e-5 * max(d(x, c_ref), ||x||²) (squared
//               distances in double; the expanded form's error scales with ||x||·||c||)
//   dist2       |gpu - exact| <= 2e-5 * exact + 1e-6 (fp32 direct sum over d <= 130 terms)
//   counts      exact
//   sums        |gpu - cpu| <= 1e-6 * sum of |x| over the cluster (the scale of any
//               summation error; a signed sum can cancel to ~0)
//   kmeans()    same initial centroids, fixed iterations: objective within 1e-4
//               relative, >= 99.9% equal assignments (fp32); objective within 1e-3
//               relative for fp16 input (coordinates rounded by up to 2^-11 relative)
//   streaming   bitwise equal to the resident run (same kernel per point, integer sums)
// fp16 with d <= 128 runs on the tensor-core kernel (test_cuda_kmeans_batch.cpp has its
// own parity tests); the shapes here cover both kernels.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/cuda/device.h"
#include "pkv/cuda/kmeans_assign.h"
#include "pkv/kmeans/kmeans.h"
#include "unit/cuda/cuda_test_util.h"
#include "unit/kmeans/kmeans_test_util.h"

namespace {

using pkv::cuda::CudaAssigner;
using pkv::cuda::CudaAssignerOptions;
using pkv::cuda::InputPrecision;

using pkv_test::sq_dist;

// k centroids: distinct random points plus small noise (a mid-run Lloyd state).
std::vector<float> pick_centroids(const std::vector<float>& x, int64_t n, int d, int k, uint64_t seed) {
    std::mt19937_64 gen(seed);
    std::vector<int64_t> rows(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) rows[i] = i;
    std::shuffle(rows.begin(), rows.end(), gen);
    std::normal_distribution<float> noise(0.0f, 0.05f);
    std::vector<float> c(static_cast<size_t>(k) * d);
    for (int j = 0; j < k; ++j)
        for (int t = 0; t < d; ++t) c[size_t(j) * d + t] = x[rows[j] * d + t] + noise(gen);
    return c;
}

struct PassOut {
    std::vector<int32_t> labels;
    std::vector<float> dist2;
    std::vector<double> sums;
    std::vector<int64_t> counts;
};

PassOut run_pass(CudaAssigner& a, const std::vector<float>& x, int64_t n, int d, const std::vector<float>& c, int k,
                 bool with_begin = true) {
    PassOut o;
    o.labels.assign(size_t(n), -1);
    o.dist2.assign(size_t(n), -1.0f);
    o.sums.assign(size_t(k) * d, -1.0);
    o.counts.assign(size_t(k), -1);
    if (with_begin) a.begin(x.data(), n, d);
    a.assign_accumulate(x.data(), n, d, c.data(), k, o.labels.data(), o.dist2.data(), o.sums.data(), o.counts.data());
    if (with_begin) a.end();
    return o;
}

// Checks labels/dist2 against assign_ref and sums/counts against a CPU accumulation
// of the GPU's own labels, all on the data the kernel sees (xs, cs).
void check_against_ref(const std::vector<float>& xs, int64_t n, int d, const std::vector<float>& cs, int k,
                       const PassOut& o) {
    int64_t bad_labels = 0;
    for (int64_t i = 0; i < n; ++i) bad_labels += o.labels[i] < 0 || o.labels[i] >= k;
    REQUIRE(bad_labels == 0);
    std::vector<int32_t> ref(static_cast<size_t>(n));
    pkv::assign_ref(xs.data(), n, d, cs.data(), k, ref.data(), nullptr);
    int64_t differ = 0, bad_ties = 0, bad_dist = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float* xi = xs.data() + i * d;
        const double dg = sq_dist(xi, cs.data() + size_t(o.labels[i]) * d, d);
        if (o.labels[i] != ref[i]) {
            ++differ;
            const double dr = sq_dist(xi, cs.data() + size_t(ref[i]) * d, d);
            double xn = 0.0;
            for (int t = 0; t < d; ++t) xn += double(xi[t]) * xi[t];
            if (dg - dr > 1e-5 * std::max(dr, xn)) ++bad_ties;
        }
        if (std::fabs(o.dist2[i] - dg) > 2e-5 * dg + 1e-6) ++bad_dist;
    }
    CAPTURE(differ, bad_ties, bad_dist);
    // At d = 1 with many centroids, fp32 cancellation in ||c||^2 - 2 x.c makes genuine
    // near-ties common (every differing label is still checked to be a near-tie
    // below); the 99.9% agreement bound applies to real head dimensions.
    if (d >= 8) CHECK(double(differ) <= 1e-3 * double(n));
    CHECK(bad_ties == 0);
    CHECK(bad_dist == 0);

    std::vector<double> sums(static_cast<size_t>(k) * d);
    std::vector<int64_t> counts(static_cast<size_t>(k));
    pkv::accumulate_centroid_sums(xs.data(), n, d, o.labels.data(), k, sums.data(), counts.data());
    const std::vector<double> mag = pkv_test::abs_sums(xs, n, d, o.labels, k);
    int64_t bad_sums = 0;
    for (size_t i = 0; i < sums.size(); ++i)
        if (std::fabs(o.sums[i] - sums[i]) > 1e-6 * mag[i]) ++bad_sums;
    CHECK(bad_sums == 0);
    CHECK(o.counts == counts);
}

}  // namespace

TEST_CASE("cuda assigner matches assign_ref and the CPU sums", "[cuda][kmeans][parity]") {
    PKV_REQUIRE_GPU();
    struct Shape {
        int64_t n;
        int d, k;
    };
    // n not a multiple of the 128-point tile, d = 1 / 64 / 128 / 130 (not a multiple of
    // the 32-dim chunk), k = 1 / 16 / 33 / 64 / 256 (each centroid-tile width; k = 256
    // also takes the global-atomic sums path). n == k is the next test case.
    const Shape shape = GENERATE(values<Shape>({{1000, 1, 1},
                                                {1001, 1, 33},
                                                {1037, 64, 33},
                                                {3000, 64, 16},
                                                {4099, 128, 256},
                                                {2000, 130, 33},
                                                {777, 130, 256},
                                                {5000, 128, 1},
                                                {129, 128, 64}}));
    const InputPrecision prec = GENERATE(InputPrecision::fp32, InputPrecision::fp16);
    const uint64_t seed = 7;
    CAPTURE(shape.n, shape.d, shape.k, pkv::cuda::input_precision_name(prec), seed);
    const std::vector<float> x = pkv_test::gaussian_points(shape.n, shape.d, seed);
    const std::vector<float> c = pick_centroids(x, shape.n, shape.d, shape.k, seed + 1);
    CudaAssignerOptions opt;
    opt.precision = prec;
    CudaAssigner a(opt);
    const PassOut o = run_pass(a, x, shape.n, shape.d, c, shape.k);
    // fp16: the kernel works on rounded data, so that is the reference's input too.
    if (prec == InputPrecision::fp16)
        check_against_ref(pkv_test::rounded(x, InputPrecision::fp16), shape.n, shape.d,
                          pkv_test::rounded(c, InputPrecision::fp16), shape.k, o);
    else check_against_ref(x, shape.n, shape.d, c, shape.k, o);

    // assign() alone gives the same labels and distances, and repeated passes are identical.
    std::vector<int32_t> labels(static_cast<size_t>(shape.n));
    std::vector<float> dist2(static_cast<size_t>(shape.n));
    a.assign(x.data(), shape.n, shape.d, c.data(), shape.k, labels.data(), dist2.data());
    CHECK(labels == o.labels);
    CHECK(dist2 == o.dist2);
    const PassOut again = run_pass(a, x, shape.n, shape.d, c, shape.k, /*with_begin=*/false);
    CHECK(again.labels == o.labels);
    CHECK(again.sums == o.sums);
}

TEST_CASE("cuda assigner: n == k and duplicate points", "[cuda][kmeans][parity]") {
    PKV_REQUIRE_GPU();
    const int d = 128;
    SECTION("centroids equal to the points label each point with itself") {
        const int k = GENERATE(64, 256);
        // fp16: the one-hot kernel at k = 64 (expanded-form distances fall back to the
        // direct sum near a centroid), the general tensor-core kernel at k = 256.
        const InputPrecision prec = GENERATE(InputPrecision::fp32, InputPrecision::fp16);
        CAPTURE(k, pkv::cuda::input_precision_name(prec));
        const std::vector<float> x = pkv_test::gaussian_points(k, d, 3);
        CudaAssignerOptions opt;
        opt.precision = prec;
        CudaAssigner a(opt);
        const PassOut o = run_pass(a, x, k, d, x, k);
        for (int i = 0; i < k; ++i) CHECK(o.labels[i] == i);
        for (int i = 0; i < k; ++i) CHECK(o.dist2[i] == 0.0f);
        for (int i = 0; i < k; ++i) CHECK(o.counts[i] == 1);
    }
    SECTION("duplicated points and duplicated centroids: ties go to the lowest index") {
        const int distinct = 50, copies = 7, k = 33;
        const std::vector<float> base = pkv_test::gaussian_points(distinct, d, 4);
        std::vector<float> x;
        for (int r = 0; r < copies; ++r) x.insert(x.end(), base.begin(), base.end());
        const int64_t n = int64_t{distinct} * copies;
        std::vector<float> c = pick_centroids(base, distinct, d, k, 5);
        std::copy(c.begin(), c.begin() + d, c.begin() + size_t(k - 1) * d);  // centroid 32 == centroid 0
        CudaAssigner a(CudaAssignerOptions{});
        const PassOut o = run_pass(a, x, n, d, c, k);
        check_against_ref(x, n, d, c, k, o);
        CHECK(o.counts[k - 1] == 0);
        for (int64_t i = distinct; i < n; ++i) CHECK(o.labels[i] == o.labels[i % distinct]);
    }
}

TEST_CASE("cuda assigner: streamed chunks equal the resident pass", "[cuda][kmeans]") {
    PKV_REQUIRE_GPU();
    const int64_t n = 4099;
    const int d = 130, k = 33;
    const InputPrecision prec = GENERATE(InputPrecision::fp32, InputPrecision::fp16);
    const size_t elem = prec == InputPrecision::fp16 ? 2 : 4;
    const size_t budget = GENERATE(size_t{1}, size_t{517});  // in rows: 1 point a chunk, then 517
    CAPTURE(n, d, k, pkv::cuda::input_precision_name(prec), budget);
    const std::vector<float> x = pkv_test::gaussian_points(n, d, 21);
    const std::vector<float> c = pick_centroids(x, n, d, k, 22);
    CudaAssignerOptions opt;
    opt.precision = prec;
    CudaAssigner resident(opt);
    const PassOut r = run_pass(resident, x, n, d, c, k);
    opt.max_point_bytes = budget * (d * elem + 8);
    CudaAssigner chunked(opt);
    chunked.begin(x.data(), n, d);
    CHECK(chunked.streaming());
    const PassOut s = run_pass(chunked, x, n, d, c, k, /*with_begin=*/false);
    // Chunks hold whole 256-row tiles when the budget allows.
    const int64_t chunk_rows = budget >= 256 ? int64_t(budget) / 256 * 256 : int64_t(budget);
    CHECK(chunked.last_timing().chunks == (n + chunk_rows - 1) / chunk_rows);
    chunked.end();
    CHECK(s.labels == r.labels);
    CHECK(s.dist2 == r.dist2);
    CHECK(s.sums == r.sums);
    CHECK(s.counts == r.counts);
}

TEST_CASE("kmeans() with the cuda assigner tracks the CPU assigner", "[cuda][kmeans][parity]") {
    PKV_REQUIRE_GPU();
    // Separated blobs (centres ~28 apart, sigma 1) started from one point of each blob:
    // Lloyd is stable here, so a single near-tie flip cannot cascade and the two runs
    // are comparable point by point.
    struct Case {
        int blobs, d;
        int64_t per_blob;
    };
    const Case cs = GENERATE(values<Case>({{40, 64, 500}, {256, 128, 80}, {16, 130, 1000}, {1, 1, 1000}}));
    const InputPrecision prec = GENERATE(InputPrecision::fp32, InputPrecision::fp16);
    const uint64_t seed = 99;
    const int k = cs.blobs;
    CAPTURE(cs.blobs, cs.per_blob, cs.d, k, pkv::cuda::input_precision_name(prec), seed);
    const pkv_test::Blobs b = pkv_test::gaussian_blobs(cs.blobs, cs.per_blob, cs.d, 3.0f, 1.0f, seed);
    pkv::KMeansParams p;
    p.k = k;
    p.max_iter = 10;
    p.tol = -1.0;  // fixed iteration count on both sides
    // Point i lies in blob i % blobs: the first k points are one per blob.
    p.initial_centroids.assign(b.x.begin(), b.x.begin() + size_t(k) * cs.d);
    const pkv::KMeansResult cpu = pkv::kmeans(b.x.data(), b.n, cs.d, p);
    CudaAssignerOptions opt;
    opt.precision = prec;
    auto gpu_assigner = pkv::cuda::make_cuda_assigner(opt);
    const pkv::KMeansResult gpu = pkv::kmeans(b.x.data(), b.n, cs.d, p, gpu_assigner.get());
    int64_t same = 0;
    for (int64_t i = 0; i < b.n; ++i) same += cpu.assignments[i] == gpu.assignments[i];
    const double rel = std::fabs(gpu.objective - cpu.objective) / cpu.objective;
    CAPTURE(cpu.objective, gpu.objective, rel, same, b.n);
    REQUIRE(gpu.stats.size() == cpu.stats.size());
    if (prec == InputPrecision::fp32) {
        CHECK(rel <= 1e-4);
        CHECK(double(same) >= 0.999 * double(b.n));
    } else {
        CHECK(rel <= 1e-3);
    }
}

TEST_CASE("cuda assigner rejects bad input", "[cuda][kmeans]") {
    PKV_REQUIRE_GPU();
    CudaAssignerOptions bad;
    bad.device = pkv::cuda::device_count();
    CHECK_THROWS_WITH(CudaAssigner(bad), ContainsSubstring("out of range"));
    CudaAssignerOptions opt;
    opt.precision = InputPrecision::fp16;
    CudaAssigner a(opt);
    std::vector<float> x = {1.0f, 2.0f, 1e5f, 0.0f};
    CHECK_THROWS_WITH(a.begin(x.data(), 2, 2), ContainsSubstring("binary16"));
    std::vector<int32_t> labels(2);
    std::vector<float> dist2(2);
    CHECK_THROWS_WITH(a.assign(x.data(), 2, 2, x.data(), 0, labels.data(), dist2.data()),
                      ContainsSubstring("expected k >= 1"));
}
