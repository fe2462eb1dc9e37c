// Time per Lloyd iteration of the CUDA k-means assigner (fused assign + centroid sums,
// then the host update) on random Gaussian data, d = 128, k = 16 / 256 / 1024, fp16
// and fp32 input, next to the HBM floor (one read of the points per iteration at
// 4.3e12 B/s) and the CPU assigner timed on a subsample and scaled to n.
// Usage: pkv_bench_cuda_kmeans [n] [iterations] [cpu_n]   (defaults: 10000000 3 1000000)
// Device memory: n * (128 * s + 8) bytes for the points (s = 4 fp32, 2 fp16) plus
// O(k * d); 10^7 fp32 points take 5.2 GB. Host memory: n * 128 * 4 bytes.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#ifdef PKV_HAVE_CUDA
#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <vector>

#include "pkv/cuda/device.h"
#include "pkv/cuda/kmeans_assign.h"
#include "pkv/kmeans/assigner.h"

namespace {

constexpr int kDim = 128;
constexpr double kHbmBytesPerSecond = 4.3e12;

uint64_t splitmix64(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Standard normal values, Box-Muller; each row seeded by its index, so the data do
// not depend on the thread count.
std::vector<float> gaussian(int64_t n, int d) {
    std::vector<float> x(static_cast<size_t>(n) * d);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        uint64_t s = static_cast<uint64_t>(i) * 0x2545f4914f6cdd1dull + 1;
        for (int t = 0; t < d; t += 2) {
            const double u1 = (static_cast<double>(splitmix64(s) >> 11) + 1.0) * 0x1.0p-53;
            const double u2 = static_cast<double>(splitmix64(s) >> 11) * 0x1.0p-53;
            const double r = std::sqrt(-2.0 * std::log(u1));
            x[i * d + t] = static_cast<float>(r * std::cos(6.283185307179586 * u2));
            if (t + 1 < d) x[i * d + t + 1] = static_cast<float>(r * std::sin(6.283185307179586 * u2));
        }
    }
    return x;
}

// The Lloyd update of kmeans.cpp: mean of each non-empty cluster (empty ones keep
// their centroid here; the benchmark only needs the cost).
void update(const std::vector<double>& sums, const std::vector<int64_t>& counts, int k, int d,
            std::vector<float>& centroids) {
    for (int j = 0; j < k; ++j) {
        if (counts[j] == 0) continue;
        const double inv = 1.0 / static_cast<double>(counts[j]);
        for (int t = 0; t < d; ++t) centroids[size_t(j) * d + t] = static_cast<float>(sums[size_t(j) * d + t] * inv);
    }
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    if (pkv::cuda::device_count() == 0) {
        std::printf("no CUDA device\n");
        return 0;
    }
    const int64_t n = argc > 1 ? std::atoll(argv[1]) : 10000000;
    const int iters = std::max(1, argc > 2 ? std::atoi(argv[2]) : 3);
    const int64_t cpu_n = std::min<int64_t>(n, argc > 3 ? std::atoll(argv[3]) : 1000000);
    const int d = kDim;
    const auto dev = pkv::cuda::devices().front();
    std::printf("k-means CUDA assigner on %s (%d SMs, %.1f GiB): n = %lld, d = %d, %d timed iterations after 1 warm-up\n",
                dev.name.c_str(), dev.multiprocessors, dev.total_memory / 1073741824.0, static_cast<long long>(n), d,
                iters);
    auto t0 = std::chrono::steady_clock::now();
    const std::vector<float> x = gaussian(n, d);
    std::printf("generated %.2f GB of points in %.1f s\n", x.size() * 4.0 * 1e-9, seconds_since(t0));

    // CPU assigner (assign + double sums) on the first cpu_n points, scaled by n / cpu_n.
    std::map<int, double> cpu_scaled_s;
    const int ks[] = {16, 256, 1024};
    for (int k : ks) {
        std::vector<float> c(x.begin(), x.begin() + size_t(k) * d);
        std::vector<int32_t> labels(static_cast<size_t>(cpu_n));
        std::vector<float> dist2(static_cast<size_t>(cpu_n));
        std::vector<double> sums(size_t(k) * d);
        std::vector<int64_t> counts(static_cast<size_t>(k));
        pkv::CpuAssigner cpu;
        t0 = std::chrono::steady_clock::now();
        cpu.assign_accumulate(x.data(), cpu_n, d, c.data(), k, labels.data(), dist2.data(), sums.data(),
                              counts.data());
        cpu_scaled_s[k] = seconds_since(t0) * static_cast<double>(n) / static_cast<double>(cpu_n);
    }

    std::printf("\n%5s %5s %11s %11s %10s %10s %8s %9s %16s\n", "input", "k", "device ms", "call ms", "update ms",
                "HBM floor", "ratio", "TFLOP/s", "CPU s (scaled)");
    std::printf("%5s %5s %11s %11s %10s %10s %8s %9s %16s\n", "", "", "(cudaEvent)", "(+copies)", "(host)", "ms",
                "dev/flr", "(dev)", "");
    for (const auto prec : {pkv::cuda::InputPrecision::fp16, pkv::cuda::InputPrecision::fp32}) {
        pkv::cuda::CudaAssignerOptions opt;
        opt.precision = prec;
        pkv::cuda::CudaAssigner gpu(opt);
        const double elem = prec == pkv::cuda::InputPrecision::fp16 ? 2.0 : 4.0;
        t0 = std::chrono::steady_clock::now();
        gpu.begin(x.data(), n, d);
        const double upload_s = seconds_since(t0);
        const double floor_ms = static_cast<double>(n) * d * elem / kHbmBytesPerSecond * 1e3;
        for (int k : ks) {
            std::vector<float> c(x.begin(), x.begin() + size_t(k) * d);
            std::vector<int32_t> labels(static_cast<size_t>(n));
            std::vector<float> dist2(static_cast<size_t>(n));
            std::vector<double> sums(size_t(k) * d);
            std::vector<int64_t> counts(static_cast<size_t>(k));
            double dev_ms = 0, call_ms = 0, upd_ms = 0;
            for (int it = 0; it <= iters; ++it) {
                gpu.assign_accumulate(x.data(), n, d, c.data(), k, labels.data(), dist2.data(), sums.data(),
                                      counts.data());
                t0 = std::chrono::steady_clock::now();
                update(sums, counts, k, d, c);
                const double u = seconds_since(t0) * 1e3;
                if (it == 0) continue;  // warm-up
                dev_ms += gpu.last_timing().device_ms;
                call_ms += gpu.last_timing().wall_ms;
                upd_ms += u;
            }
            dev_ms /= iters;
            call_ms /= iters;
            upd_ms /= iters;
            const double tflops = 2.0 * static_cast<double>(n) * k * d / (dev_ms * 1e-3) * 1e-12;
            std::printf("%5s %5d %11.3f %11.3f %10.3f %10.3f %8.2f %9.2f %16.3f\n",
                        pkv::cuda::input_precision_name(prec), k, dev_ms, call_ms, upd_ms, floor_ms,
                        dev_ms / floor_ms, tflops, cpu_scaled_s[k]);
            std::fflush(stdout);
        }
        std::printf("  (%s: %.2f GB resident on the device, upload %.2f s, streaming %s)\n",
                    pkv::cuda::input_precision_name(prec), static_cast<double>(n) * (d * elem + 8) * 1e-9, upload_s,
                    gpu.streaming() ? "yes" : "no");
        gpu.end();
    }
    std::printf("\ndevice ms: centroid upload + fused assign/sum kernel (cudaEvent). call ms: the whole\n"
                "assign_accumulate call, including copying labels and dist2 (8 B/point) to the host.\n"
                "CPU s (scaled): CpuAssigner::assign_accumulate on the first %lld points, times n / %lld.\n",
                static_cast<long long>(cpu_n), static_cast<long long>(cpu_n));
    return 0;
}

#else

int main() {
    std::printf("built without CUDA\n");
    return 0;
}

#endif
