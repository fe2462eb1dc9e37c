// The two CPU assignment paths side by side in one run: Eigen GEMM score tiles +
// scalar argmin (the former CpuAssigner) against the fused AVX2 dot+argmin kernel
// (the current one), on the same random Gaussian points and centroids, same threads.
// Prints the best of `reps` timings per path, GFLOP/s (2 n k d flops per pass) and the
// fraction of labels on which the two disagree (near-ties only).
// Usage: pkv_bench_kmeans_assign_cpu [n] [reps]   (defaults: 200000 3)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pkv/kmeans/assign_cpu_fused.h"

namespace {

using AssignFn = void (*)(const float*, int64_t, int, const float*, int, int64_t, int32_t*, float*);

double best_seconds(AssignFn fn, const std::vector<float>& x, int64_t n, int d, const std::vector<float>& c, int k,
                    int reps, std::vector<int32_t>& labels, std::vector<float>& dist2) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        fn(x.data(), n, d, c.data(), k, 0, labels.data(), dist2.data());
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    const int64_t n = argc > 1 ? std::atoll(argv[1]) : 200000;
    const int reps = argc > 2 ? std::atoi(argv[2]) : 3;
    if (!pkv::detail::fused_assign_available()) {
        std::printf("this build has no AVX2/FMA fused kernel; nothing to compare\n");
        return 0;
    }
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    std::printf("CPU k-means assignment: n = %lld, best of %d, %d threads\n", static_cast<long long>(n), reps, threads);
    std::printf("%4s %5s %12s %12s %10s %10s %8s %10s\n", "d", "k", "gemm s", "fused s", "gemm GF/s", "fused GF/s",
                "speedup", "differ");
    for (const int d : {64, 128}) {
        std::mt19937_64 gen(3);
        std::normal_distribution<float> normal;
        std::vector<float> x(static_cast<size_t>(n) * d);
        for (float& v : x) v = normal(gen);
        for (const int k : {16, 32, 64, 256, 1024}) {
            std::vector<float> c(static_cast<size_t>(k) * d);
            for (float& v : c) v = normal(gen);
            std::vector<int32_t> lg(n), lf(n);
            std::vector<float> dg(n), df(n);
            const double tg = best_seconds(pkv::detail::assign_cpu_gemm, x, n, d, c, k, reps, lg, dg);
            const double tf = best_seconds(pkv::detail::assign_cpu_fused, x, n, d, c, k, reps, lf, df);
            int64_t differ = 0;
            for (int64_t i = 0; i < n; ++i) differ += lg[i] != lf[i];
            const double gf = 2.0 * static_cast<double>(n) * k * d * 1e-9;
            std::printf("%4d %5d %12.4f %12.4f %10.1f %10.1f %7.2fx %10.2e\n", d, k, tg, tf, gf / tg, gf / tf, tg / tf,
                        static_cast<double>(differ) / static_cast<double>(n));
            std::fflush(stdout);
        }
    }
    return 0;
}
