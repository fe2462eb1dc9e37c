// Runs pkv's CPU k-means on a raw float32 file, for side-by-side comparisons with
// other k-means implementations on exactly the same data (bench/kmeans_cpu_vs_faiss.sh).
//
// Usage: pkv_bench_kmeans_cpu_file POINTS.f32 D K ITERATIONS SEED CENTROIDS_OUT.f32
//   POINTS.f32         n x D float32, row-major, native byte order, no header
//   CENTROIDS_OUT.f32  receives the K x D trained centroids in the same layout
// The run is a fixed number of Lloyd iterations (tol < 0: no early stop) from K
// distinct random training points, on all n points (no subsampling), with the OpenMP
// thread count from OMP_NUM_THREADS. One JSON line goes to stdout:
//   n, d, k, iterations, threads, sec_per_iter (mean of the Lloyd iterations:
//   assignment + update), wall_s (the whole kmeans() call, including the final
//   assignment pass), objective (pkv's own, of the final centroids, double).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pkv/core/error.h"
#include "pkv/kmeans/kmeans.h"

namespace {

std::vector<float> read_points(const std::string& path, int d, int64_t& n) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    PKV_CHECK(in.good(), io, "{}: cannot open", path);
    const int64_t bytes = static_cast<int64_t>(in.tellg());
    const int64_t row_bytes = int64_t{d} * static_cast<int64_t>(sizeof(float));
    PKV_CHECK(bytes > 0 && bytes % row_bytes == 0, invalid_argument,
              "{}: expected a positive multiple of {} bytes (rows of d = {} float32), got {}", path, row_bytes, d,
              bytes);
    n = bytes / row_bytes;
    std::vector<float> x(static_cast<size_t>(n) * d);
    in.seekg(0);
    in.read(reinterpret_cast<char*>(x.data()), bytes);
    PKV_CHECK(in.good(), io, "{}: short read", path);
    return x;
}

int parse_int(const char* s, const char* what) {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    PKV_CHECK(end != s && *end == '\0', invalid_argument, "expected an integer for {}, got '{}'", what, s);
    return static_cast<int>(v);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 7) {
        std::fprintf(stderr, "usage: %s POINTS.f32 D K ITERATIONS SEED CENTROIDS_OUT.f32\n", argv[0]);
        return 2;
    }
    try {
        const int d = parse_int(argv[2], "D");
        PKV_CHECK(d >= 1, invalid_argument, "expected D >= 1, got {}", d);
        int64_t n = 0;
        const std::vector<float> x = read_points(argv[1], d, n);
        pkv::KMeansParams p;
        p.k = parse_int(argv[3], "K");
        p.max_iter = parse_int(argv[4], "ITERATIONS");
        p.seed = static_cast<uint64_t>(parse_int(argv[5], "SEED"));
        p.tol = -1.0;  // fixed iteration count, like FAISS
        p.init = pkv::KMeansInit::random;
        p.max_points_per_centroid = 0;
        int threads = 1;
#ifdef _OPENMP
        threads = omp_get_max_threads();
#endif
        const auto t0 = std::chrono::steady_clock::now();
        const pkv::KMeansResult r = pkv::kmeans(x.data(), n, d, p);
        const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        double iter_s = 0.0;
        for (const auto& s : r.stats) iter_s += s.seconds;
        const double per_iter = r.stats.empty() ? 0.0 : iter_s / static_cast<double>(r.stats.size());

        std::ofstream out(argv[6], std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(r.centroids.data()),
                  static_cast<std::streamsize>(r.centroids.size() * sizeof(float)));
        PKV_CHECK(out.good(), io, "{}: write failed", argv[6]);
        std::printf(
            "{\"n\": %lld, \"d\": %d, \"k\": %d, \"iterations\": %d, \"threads\": %d, \"sec_per_iter\": %.6g, "
            "\"wall_s\": %.6g, \"objective\": %.17g}\n",
            static_cast<long long>(n), d, p.k, r.iterations, threads, per_iter, wall, r.objective);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pkv_bench_kmeans_cpu_file: error: %s\n", e.what());
        return 1;
    }
}
