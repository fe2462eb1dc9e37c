// Time per Lloyd iteration of the CPU k-means (Eigen GEMM assigner + double centroid
// sums) on random Gaussian data, for the sizes pkv calibrate and pkv analyze use.
// Usage: pkv_bench_kmeans_cpu [n] [iterations]   (defaults: 1000000 3)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pkv/kmeans/kmeans.h"

int main(int argc, char** argv) {
    const int64_t n = argc > 1 ? std::atoll(argv[1]) : 1000000;
    const int iters = argc > 2 ? std::atoi(argv[2]) : 3;
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    std::printf("k-means CPU: n = %lld, %d timed iterations each, %d threads\n", static_cast<long long>(n), iters,
                threads);
    std::printf("%5s %5s %14s %14s %16s %12s\n", "d", "k", "s/iteration", "s/assign-only", "points*k*d/s", "GFLOP/s");
    for (int d : {64, 128}) {
        std::mt19937_64 gen(1);
        std::normal_distribution<float> normal;
        std::vector<float> x(static_cast<size_t>(n) * d);
        for (float& v : x) v = normal(gen);
        for (int k : {32, 256}) {
            pkv::KMeansParams p;
            p.k = k;
            p.max_iter = iters;
            p.tol = -1;  // time every iteration
            const pkv::KMeansResult r = pkv::kmeans(x.data(), n, d, p);
            double total = 0;
            for (const auto& s : r.stats) total += s.seconds;
            const double per_iter = total / static_cast<double>(r.stats.size());
            // Assignment alone, for the split between GEMM and update.
            std::vector<int32_t> labels(static_cast<size_t>(n));
            std::vector<float> dist2(static_cast<size_t>(n));
            pkv::CpuAssigner cpu;
            const auto t0 = std::chrono::steady_clock::now();
            cpu.assign(x.data(), n, d, r.centroids.data(), k, labels.data(), dist2.data());
            const double assign_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            const double pkd = static_cast<double>(n) * k * d;
            std::printf("%5d %5d %14.4f %14.4f %16.3e %12.1f\n", d, k, per_iter, assign_s, pkd / per_iter,
                        2.0 * pkd / per_iter * 1e-9);
            std::fflush(stdout);
        }
    }
    return 0;
}
