// Time per Lloyd iteration of the CUDA k-means assigner (one batched pass: fused
// assign + centroid sums + objective, then the host update) on random Gaussian data,
// d = 128 (--dim), k = 16 / 256 / 1024, fp16 / bf16 / fp32 input, next to the HBM floor (one
// read of the points per iteration at 4.3e12 B/s) and the CPU assigner timed on a
// subsample and scaled to n.
// Usage: pkv_bench_cuda_kmeans [n] [iterations] [cpu_n] [--csv] [--precisions fp16,...]
//          [--ks 16,256,1024] [--all-kernels] [--dim 128]
//        pkv_bench_cuda_kmeans --model [problems] [tokens] [d] [iterations] [--csv]
//          [--workers 1,2,...]
//        pkv_bench_cuda_kmeans --sharded [n] [k] [iterations] [--workers 1,2,...]
//   defaults: 10000000 3 200000 (cpu_n = 0 skips the CPU column); --model: a whole
//   model's calibration shape, 90 problems (SmolLM2-135M: 30 layers x 3 KV heads) x
//   100000 tokens x d = 64, k = 32 and 256, 30 iterations through kmeans_batch (fp16).
// --workers (model mode): the same calibration spread over W GPU workers by
// kmeans_batch_multi (what `pkv calibrate --devices` does), worker i on GPU i % count,
// for each W listed: wall time, speed-up over the first W and efficiency (speed-up per
// GPU used; workers that share a GPU only show the overhead of sharing), and the same
// for the slowest worker's Lloyd iterations alone.
// --sharded: one problem (default n = 1e8, d = 128, k = 256, 5 iterations, fp16) data
// parallel over W GPU assigners (ShardedAssigner, what --devices does for a problem
// larger than one GPU), worker i on GPU i % count: seconds per Lloyd iteration, speed-up
// over the first W, efficiency per GPU used, the objective's relative difference and
// whether the centroids equal the first row's bitwise; each W >= 2 that has as many GPUs
// runs twice, the shards' sums added on the host and by an NCCL all-reduce (when built
// with NCCL).
// --csv prints one machine-readable line per measurement ("pkv,..."), used by
// bench/kmeans_gpu_vs_torch.sh. --all-kernels (or --both-sums) adds rows for the other
// kernels next to the default: fused_small_k off (the one-hot kernel, k <= 16 at d = 128);
// onehot_sums off (the shared-memory fixed-point kernel, k below the wide kernel's
// wide_min_k); wide_assign off (the general kernel) and
// the other wide_chunk (64 or 128, k >= wide_min_k); the wide kernel and sorted sums below it
// (wide_min_k 1); wgmma off (the wide kernel's products by mma.sync, k >= wide_min_k, and
// the one-hot kernel on mma.sync, 16 < k <= 64, on devices where wgmma is the default).
// Device memory: n * (128 * s + 8) bytes for the points (s = 4 fp32, 2 fp16) plus
// O(k * d); 10^7 fp32 points take 5.2 GB. Host memory: n * 128 * 4 bytes.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#ifdef PKV_HAVE_CUDA
#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <vector>

#include "pkv/cuda/device.h"
#include "pkv/cuda/kmeans_assign.h"
#include "pkv/kmeans/assigner.h"
#include "pkv/kmeans/kmeans.h"
#include "pkv/kmeans/kmeans_multi.h"
#include "pkv/kmeans/sharded_assigner.h"

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

// Forwards to a CudaAssigner (both the one-pass and the two-slot calls) and adds up
// its passes' timings, so the model mode can split a Lloyd iteration into device time,
// the rest of the pass and the host update.
class TimedAssigner final : public pkv::KMeansAssigner {
public:
    explicit TimedAssigner(pkv::cuda::CudaAssigner& a) : a_(a) {}
    const char* name() const override { return a_.name(); }
    void begin_batch(const std::vector<pkv::AssignData>& data, int d) override {
        const auto t0 = std::chrono::steady_clock::now();
        a_.begin_batch(data, d);
        if (upload_s == 0.0) upload_s = seconds_since(t0);  // the Lloyd loop's batch (the first)
    }
    void end_batch() noexcept override { a_.end_batch(); }
    void assign(const float* x, int64_t n, int d, const float* c, int k, int32_t* labels, float* dist2) override {
        a_.assign(x, n, d, c, k, labels, dist2);
    }
    void assign_batch(std::vector<pkv::AssignTask>& tasks, int k) override {
        a_.assign_batch(tasks, k);
        record(tasks.front().sums != nullptr);
    }
    int pipeline_depth() const override { return a_.pipeline_depth(); }
    void submit_batch(std::vector<pkv::AssignTask>& tasks, int k, int slot) override {
        a_.submit_batch(tasks, k, slot);
        lloyd_pass[slot] = tasks.front().sums != nullptr;
    }
    void collect_batch(int slot) override {
        a_.collect_batch(slot);
        record(lloyd_pass[slot]);
    }
    // Sums of CudaPassTiming's times over passes.
    struct Times {
        double device_ms = 0.0, issue_ms = 0.0, wait_ms = 0.0, finish_ms = 0.0;
        void add(const pkv::cuda::CudaPassTiming& t) {
            device_ms += t.device_ms;
            issue_ms += t.issue_ms;
            wait_ms += t.wait_ms;
            finish_ms += t.finish_ms;
        }
    };
    Times first, later;  // the first iteration's passes, the others'
    double upload_s = 0.0;
    int seen = 0;
    std::string kernel;

private:
    // The final labels pass is not a Lloyd iteration; the first iteration's passes (one a
    // slot) also allocate the assigner's buffers.
    void record(bool lloyd) {
        if (!lloyd) return;
        const pkv::cuda::CudaPassTiming t = a_.last_timing();
        (++seen <= a_.pipeline_depth() ? first : later).add(t);
        kernel = t.kernel;
    }
    pkv::cuda::CudaAssigner& a_;
    bool lloyd_pass[2] = {false, false};
};

// Whole-model shape: `problems` data sets of `tokens` x d, batched, fixed iterations;
// each k with two passes in flight (the default) and with one at a time.
int run_model(int64_t problems, int64_t tokens, int d, int iters, bool csv) {
    std::printf("k-means batched calibration: %lld problems x %lld tokens x d = %d, %d iterations, fp16\n",
                static_cast<long long>(problems), static_cast<long long>(tokens), d, iters);
    const std::vector<float> x = gaussian(problems * tokens, d);
    std::vector<pkv::KMeansProblem> probs;
    for (int64_t p = 0; p < problems; ++p)
        probs.push_back({x.data() + p * tokens * d, tokens, static_cast<uint64_t>(p + 1)});
    pkv::cuda::CudaAssignerOptions opt;
    opt.precision = pkv::cuda::InputPrecision::fp16;
    pkv::cuda::CudaAssigner piped(opt);
    opt.pipeline = false;
    pkv::cuda::CudaAssigner serial(opt);
    const double floor_s = iters * static_cast<double>(problems * tokens) * d * 2.0 / kHbmBytesPerSecond;
    std::printf("%5s %5s %8s %8s %9s %9s %8s %8s %7s %9s %8s %8s %8s %8s  %s\n", "k", "pipe", "total s", "upload s",
                "Lloyd s", "first ms", "iter ms", "floor ms", "ratio", "device ms", "issue", "wait", "finish",
                "host ms", "kernel");
    for (int k : {32, 256})
        for (pkv::cuda::CudaAssigner* gpu : {&piped, &serial}) {
            pkv::KMeansParams params;
            params.k = k;
            params.max_iter = iters;
            params.tol = -1.0;  // exactly `iters` iterations
            TimedAssigner timed(*gpu);
            const auto t0 = std::chrono::steady_clock::now();
            const std::vector<pkv::KMeansResult> res = pkv::kmeans_batch(probs, d, params, &timed);
            const double total = seconds_since(t0);
            // Every problem's stats carry its group's iteration times; the last group to
            // finish gives the loop's wall time.
            double lloyd = 0.0, first = 0.0;
            for (const auto& r : res) {
                double sum = 0.0;
                for (const auto& st : r.stats) sum += st.seconds;
                lloyd = std::max(lloyd, sum);
                first = std::max(first, r.stats.front().seconds);
            }
            const int later = std::max(iters - 1, 1);
            const double iter_ms = (lloyd - first) * 1e3 / later;
            const TimedAssigner::Times& lt = timed.later;
            const double pass_ms = (lt.issue_ms + lt.wait_ms + lt.finish_ms) / later;
            const bool pipe = gpu->options().pipeline;
            std::printf("%5d %5s %8.3f %8.3f %9.4f %9.2f %8.3f %8.3f %7.1f %9.3f %8.3f %8.3f %8.3f %8.3f  %s\n", k,
                        pipe ? "2" : "1", total, timed.upload_s, lloyd, first * 1e3, iter_ms, floor_s * 1e3 / iters,
                        iter_ms / (floor_s * 1e3 / iters), lt.device_ms / later, lt.issue_ms / later,
                        lt.wait_ms / later, lt.finish_ms / later, iter_ms - pass_ms, timed.kernel.c_str());
            std::printf("      first iteration: issue %.3f wait %.3f finish %.3f device %.3f ms\n",
                        timed.first.issue_ms, timed.first.wait_ms, timed.first.finish_ms, timed.first.device_ms);
            if (csv)
                std::printf("pkv,model,%lld,%lld,%d,%d,%d,%.6f,%.6f,%.6f,%.6f,%d\n", static_cast<long long>(problems),
                            static_cast<long long>(tokens), d, k, iters, total, lloyd, floor_s, first, pipe ? 2 : 1);
            std::fflush(stdout);
        }
    std::printf(
        "pipe: passes in flight (2: kmeans_batch updates half of the problems on the host while\n"
        "the device runs the other half's pass). total s: kmeans_batch end to end (upload, init,\n"
        "%d iterations, final labels); upload s: of it, the points' upload (begin_batch: rounded to\n"
        "fp16, copied, max|x| per set). Lloyd s: the %d iterations; first ms: the first of them\n"
        "(it also allocates the assigner's buffers); iter ms: the mean of the others, against the\n"
        "floor (one read of all points); per iteration, summed over its passes: device ms = uploads\n"
        "and kernels (cudaEvent), issue (host packs the centroids and queues the work), wait (for\n"
        "the device), finish (fixed-point sums to the tasks' outputs); host ms = iter ms minus\n"
        "those three (the host centroid update, and with pipe 2 nothing the device waits for).\n",
        iters, iters);
    return 0;
}

// W fp16 GPU assigners, worker i on GPU i % gpus; with `nccl` (2 <= W <= gpus, pkv
// built with NCCL) the workers form one NCCL group.
struct Workers {
    std::vector<std::unique_ptr<pkv::cuda::CudaAssigner>> owned;
    std::vector<pkv::KMeansAssigner*> ptrs;
    static bool nccl_possible(int w, int gpus) { return pkv::cuda::built_with_nccl() && w >= 2 && w <= gpus; }
    Workers(int w, int gpus, bool nccl = false) {
        std::vector<pkv::cuda::NcclMember> members;
        if (nccl) {
            std::vector<int> devs;
            for (int i = 0; i < w; ++i) devs.push_back(i);
            members = pkv::cuda::nccl_local_group(devs);
        }
        for (int i = 0; i < w; ++i) {
            pkv::cuda::CudaAssignerOptions opt;
            opt.device = i % gpus;
            opt.precision = pkv::cuda::InputPrecision::fp16;
            if (nccl) opt.nccl = members[static_cast<size_t>(i)];
            owned.push_back(std::make_unique<pkv::cuda::CudaAssigner>(opt));
            ptrs.push_back(owned.back().get());
        }
    }
};

// The model shape over W workers (kmeans_batch_multi), k = 32 and 256, for each W.
int run_workers(int64_t problems, int64_t tokens, int d, int iters, const std::vector<int>& workers, bool csv) {
    const int gpus = pkv::cuda::device_count();
    std::printf(
        "\nk-means calibration over workers: %lld problems x %lld tokens x d = %d, %d iterations, fp16, "
        "%d GPU(s)\n",
        static_cast<long long>(problems), static_cast<long long>(tokens), d, iters, gpus);
    const std::vector<float> x = gaussian(problems * tokens, d);
    std::vector<pkv::KMeansProblem> probs;
    for (int64_t p = 0; p < problems; ++p)
        probs.push_back({x.data() + p * tokens * d, tokens, static_cast<uint64_t>(p + 1)});
    std::printf("%5s %8s %6s %10s %9s %11s %9s %9s %10s\n", "k", "workers", "GPUs", "total s", "speed-up", "efficiency",
                "Lloyd s", "speed-up", "identical");
    for (int k : {32, 256}) {
        pkv::KMeansParams params;
        params.k = k;
        params.max_iter = iters;
        params.tol = -1.0;
        double first = 0.0, first_lloyd = 0.0;
        std::vector<pkv::KMeansResult> ref;
        for (size_t wi = 0; wi < workers.size(); ++wi) {
            const int w = workers[wi];
            Workers ws(w, gpus);
            const std::vector<pkv::KMeansAssigner*>& ptrs = ws.ptrs;
            const auto t0 = std::chrono::steady_clock::now();
            std::vector<pkv::KMeansResult> res = pkv::kmeans_batch_multi(probs, d, params, ptrs);
            const double total = seconds_since(t0);
            // The slowest worker's Lloyd iterations (every problem of a worker's batch
            // carries its batch's iteration times).
            double lloyd = 0.0;
            for (const pkv::KMeansResult& r : res) {
                double s = 0.0;
                for (const auto& st : r.stats) s += st.seconds;
                lloyd = std::max(lloyd, s);
            }
            if (wi == 0) {
                first = total;
                first_lloyd = lloyd;
                ref = std::move(res);
            }
            bool same = true;
            for (size_t i = 0; wi > 0 && i < res.size(); ++i) same = same && res[i].centroids == ref[i].centroids;
            const int used = std::min(w, gpus);
            const double speedup = first / total;
            std::printf("%5d %8d %6d %10.3f %9.2f %11.2f %9.4f %9.2f %10s\n", k, w, used, total, speedup,
                        speedup / used, lloyd, first_lloyd / lloyd, same ? "yes" : "NO");
            if (csv)
                std::printf("pkv,workers,%lld,%lld,%d,%d,%d,%d,%.6f\n", static_cast<long long>(problems),
                            static_cast<long long>(tokens), d, k, w, used, total);
            std::fflush(stdout);
        }
    }
    std::printf(
        "total s: kmeans_batch_multi end to end (upload of the fp32 points, init, iterations, final labels).\n"
        "Lloyd s: the iterations alone, of the slowest worker. identical: centroids bitwise equal to the\n"
        "first row's (the problems are independent).\n");
    return 0;
}

// "16,256,1024" -> {16, 256, 1024}; false (after saying why) on anything else.
bool parse_counts(const char* option, const char* text, std::vector<int>& out) {
    out.clear();
    for (const char* p = text; *p;) {
        char* end = nullptr;
        const long v = std::strtol(p, &end, 10);
        if (end == p || v < 1 || (*end != ',' && *end != '\0')) {
            std::fprintf(stderr, "%s: expected a comma-separated list of integers >= 1, got '%s'\n", option, text);
            return false;
        }
        out.push_back(static_cast<int>(v));
        p = *end == ',' ? end + 1 : end;
    }
    return !out.empty();
}

// One problem over W workers by ShardedAssigner, fixed iterations, for each W.
int run_sharded(int64_t n, int k, int iters, std::vector<int> workers, bool csv) {
    const int gpus = pkv::cuda::device_count();
    const int d = kDim;
    if (workers.empty()) workers = {1, 2, 4, 8};
    std::printf(
        "k-means, one problem sharded over GPU workers: n = %lld, d = %d, k = %d, %d iterations, fp16, %d GPU(s)\n",
        static_cast<long long>(n), d, k, iters, gpus);
    const std::vector<float> x = gaussian(n, d);
    pkv::KMeansParams params;
    params.k = k;
    params.max_iter = iters;
    params.tol = -1.0;
    params.init = pkv::KMeansInit::random;
    std::printf("%8s %6s %6s %14s %9s %11s %14s %10s\n", "workers", "GPUs", "sums", "s / iteration", "speed-up",
                "efficiency", "objective diff", "identical");
    double first = 0.0, ref_obj = 0.0;
    std::vector<float> ref_centroids;
    for (size_t wi = 0; wi < workers.size(); ++wi) {
        const int w = workers[wi];
        for (const bool nccl : {false, true}) {
            if (nccl && !Workers::nccl_possible(w, gpus)) continue;
            Workers ws(w, gpus, nccl);
            pkv::ShardedAssigner sharded(ws.ptrs);
            const pkv::KMeansResult r = pkv::kmeans(x.data(), n, d, params, &sharded);
            double lloyd = 0.0;
            for (const auto& st : r.stats) lloyd += st.seconds;
            const double per_iter = lloyd / static_cast<double>(std::max<size_t>(r.stats.size(), 1));
            if (ref_centroids.empty()) {
                first = per_iter;
                ref_obj = r.objective;
                ref_centroids = r.centroids;
            }
            const int used = std::min(w, gpus);
            const char* sums = sharded.group_sums() ? "nccl" : "host";
            std::printf("%8d %6d %6s %14.4f %9.2f %11.2f %14.2e %10s\n", w, used, sums, per_iter, first / per_iter,
                        first / per_iter / used, std::fabs(r.objective - ref_obj) / ref_obj,
                        r.centroids == ref_centroids ? "yes" : "no");
            if (csv)
                std::printf("pkv,sharded,%lld,%d,%d,%d,%d,%s,%.6f,%.17g\n", static_cast<long long>(n), d, k, w, used,
                            sums, per_iter, r.objective);
            std::fflush(stdout);
        }
    }
    std::printf(
        "s / iteration: the Lloyd iterations on the wall clock (every shard's pass, the combine of the\n"
        "shards' sums and the host update); workers on one GPU share it. sums: added on the host, or on\n"
        "the GPUs by an NCCL all-reduce of the fixed-point sums (workers = GPUs). identical: final\n"
        "centroids bitwise equal to the first row's.\n");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (pkv::cuda::device_count() == 0) {
        std::printf("no CUDA device\n");
        return 0;
    }
    bool csv = false, model = false, both = false, sharded = false;
    std::vector<int> workers;
    std::vector<int> ks = {16, 256, 1024};
    int dim = kDim;
    std::vector<std::string> pos;
    std::vector<pkv::cuda::InputPrecision> precs = {pkv::cuda::InputPrecision::fp16, pkv::cuda::InputPrecision::bf16,
                                                    pkv::cuda::InputPrecision::fp32};
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--csv")) csv = true;
        else if (!std::strcmp(argv[i], "--model")) model = true;
        else if (!std::strcmp(argv[i], "--all-kernels") || !std::strcmp(argv[i], "--both-sums")) both = true;
        else if (!std::strcmp(argv[i], "--sharded")) sharded = true;
        else if (!std::strcmp(argv[i], "--workers") && i + 1 < argc) {
            if (!parse_counts("--workers", argv[++i], workers)) return 2;
        } else if (!std::strcmp(argv[i], "--ks") && i + 1 < argc) {
            if (!parse_counts("--ks", argv[++i], ks)) return 2;
        } else if (!std::strcmp(argv[i], "--dim") && i + 1 < argc) {
            dim = std::atoi(argv[++i]);
            if (dim < 1) {
                std::fprintf(stderr, "--dim: expected a positive dimension, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (!std::strcmp(argv[i], "--precisions") && i + 1 < argc) {
            precs.clear();
            const std::string list = argv[++i];
            for (const auto p :
                 {pkv::cuda::InputPrecision::fp16, pkv::cuda::InputPrecision::bf16, pkv::cuda::InputPrecision::fp32})
                if (list.find(pkv::cuda::input_precision_name(p)) != std::string::npos) precs.push_back(p);
        } else pos.push_back(argv[i]);
    }
    auto arg = [&](size_t i, long long def) { return i < pos.size() ? std::atoll(pos[i].c_str()) : def; };
    if (sharded)
        return run_sharded(arg(0, 100000000), static_cast<int>(arg(1, 256)), static_cast<int>(arg(2, 5)), workers, csv);
    if (model)
        return workers.empty() ? run_model(arg(0, 90), arg(1, 100000), static_cast<int>(arg(2, 64)),
                                           static_cast<int>(arg(3, 30)), csv)
                               : run_workers(arg(0, 90), arg(1, 100000), static_cast<int>(arg(2, 64)),
                                             static_cast<int>(arg(3, 30)), workers, csv);
    const int64_t n = arg(0, 10000000);
    const int iters = std::max(1, static_cast<int>(arg(1, 3)));
    const int64_t cpu_n = std::min<int64_t>(n, arg(2, 200000));
    const int d = dim;
    const auto dev = pkv::cuda::devices().front();
    std::printf(
        "k-means CUDA assigner on %s (%d SMs, %.1f GiB): n = %lld, d = %d, %d timed iterations after 1 warm-up\n",
        dev.name.c_str(), dev.multiprocessors, dev.total_memory / 1073741824.0, static_cast<long long>(n), d, iters);
    auto t0 = std::chrono::steady_clock::now();
    const std::vector<float> x = gaussian(n, d);
    std::printf("generated %.2f GB of points in %.1f s\n", x.size() * 4.0 * 1e-9, seconds_since(t0));

    // CPU assigner (assign + double sums) on the first cpu_n points, scaled by n / cpu_n.
    std::map<int, double> cpu_scaled_s;
    for (int k : ks) {
        if (cpu_n <= 0) break;
        std::vector<float> c(x.begin(), x.begin() + size_t(k) * d);
        std::vector<int32_t> labels(static_cast<size_t>(cpu_n));
        std::vector<float> dist2(static_cast<size_t>(cpu_n));
        std::vector<double> sums(size_t(k) * d);
        std::vector<int64_t> counts(static_cast<size_t>(k));
        pkv::CpuAssigner cpu;
        t0 = std::chrono::steady_clock::now();
        cpu.assign_accumulate(x.data(), cpu_n, d, c.data(), k, labels.data(), dist2.data(), sums.data(), counts.data());
        cpu_scaled_s[k] = seconds_since(t0) * static_cast<double>(n) / static_cast<double>(cpu_n);
    }

    std::printf("\n%5s %5s %-12s %11s %10s %11s %10s %10s %8s %9s %14s\n", "input", "k", "kernel", "device ms",
                "assign ms", "iter ms", "update ms", "HBM floor", "ratio", "TFLOP/s", "CPU s (scaled)");
    std::printf("%5s %5s %-12s %11s %10s %11s %10s %10s %8s %9s %14s\n", "", "", "", "(cudaEvent)", "(no sums)",
                "(wall)", "(host)", "ms", "iter/flr", "(iter)", "");
    // Variant 0: the defaults; with --all-kernels also, where they pick another kernel
    // than the defaults, 1: onehot_sums off and 4: the wide kernel (k < wide_min_k),
    // 2: wide_assign off and 3 / 7: wide_chunk 64 / 128 where the default is the other
    // (k >= wide_min_k), 5: fused_small_k off
    // (k <= 16), 6: wgmma off (k >= kWgmmaMinK or 16 < k <= 64, where wgmma is supported).
    const int wide_min_k = pkv::cuda::CudaAssignerOptions{}.wide_min_k;
    for (const auto prec : precs)
        for (int variant = 0; variant < 8; ++variant) {
            if (variant > 0 && !both) continue;
            pkv::cuda::CudaAssignerOptions opt;
            opt.precision = prec;
            opt.onehot_sums = variant != 1;
            opt.wide_assign = variant != 2;
            opt.wide_chunk = variant == 3 ? 64 : variant == 7 ? 128 : 0;
            if (variant == 4) opt.wide_min_k = 1;
            opt.fused_small_k = variant != 5;
            opt.wgmma = variant != 6;
            if (variant == 6 && !pkv::cuda::wgmma_supported(opt.device)) continue;
            pkv::cuda::CudaAssigner gpu(opt);
            const double elem = prec == pkv::cuda::InputPrecision::fp32 ? 4.0 : 2.0;
            t0 = std::chrono::steady_clock::now();
            gpu.begin_batch({pkv::AssignData{x.data(), n}}, d);
            const double upload_s = seconds_since(t0);
            const double floor_ms = static_cast<double>(n) * d * elem / kHbmBytesPerSecond * 1e3;
            for (int k : ks) {
                // Rows that would repeat the default kernel are skipped.
                const bool wide_default = k >= wide_min_k;
                if (variant == 5 && k > pkv::cuda::fused_max_k(d)) continue;
                if ((variant == 1 || variant == 4) && wide_default) continue;
                if ((variant == 2 || variant == 3 || variant == 7) && !wide_default) continue;
                const bool wg = pkv::cuda::wgmma_supported(opt.device);
                const bool wgmma_default = k >= pkv::cuda::kWgmmaMinK && wg;
                const bool wg_onehot_default = wg && k > pkv::cuda::fused_max_k(d) && k <= 64;
                if (variant == 6 && !wgmma_default && !wg_onehot_default) continue;
                if ((variant == 3 && !wgmma_default) || (variant == 7 && wgmma_default)) continue;
                std::vector<float> c(x.begin(), x.begin() + size_t(k) * d);
                std::vector<double> sums(size_t(k) * d);
                std::vector<int64_t> counts(static_cast<size_t>(k));
                std::vector<pkv::AssignTask> tasks(1);
                double dev_ms = 0, iter_ms = 0, upd_ms = 0;
                for (int it = 0; it <= iters; ++it) {
                    const auto it0 = std::chrono::steady_clock::now();
                    tasks[0].centroids = c.data();
                    tasks[0].sums = sums.data();
                    tasks[0].counts = counts.data();
                    gpu.assign_batch(tasks, k);
                    t0 = std::chrono::steady_clock::now();
                    update(sums, counts, k, d, c);
                    const double u = seconds_since(t0) * 1e3;
                    const double w = seconds_since(it0) * 1e3;
                    if (it == 0) continue;  // warm-up
                    dev_ms += gpu.last_timing().device_ms;
                    iter_ms += w;
                    upd_ms += u;
                }
                dev_ms /= iters;
                iter_ms /= iters;
                upd_ms /= iters;
                const std::string kernel = std::string(gpu.last_timing().kernel) + (variant == 3   ? "/64"
                                                                                    : variant == 7 ? "/128"
                                                                                                   : "");
                // The assignment alone: the same pass without sums (labels and objective only).
                double assign_ms = 0.0;
                for (int it = 0; it < iters; ++it) {
                    tasks[0].sums = nullptr;
                    tasks[0].counts = nullptr;
                    gpu.assign_batch(tasks, k);
                    assign_ms += gpu.last_timing().device_ms / iters;
                }
                const double tflops = 2.0 * static_cast<double>(n) * k * d / (iter_ms * 1e-3) * 1e-12;
                const double cpu_s = cpu_scaled_s.count(k) ? cpu_scaled_s[k] : 0.0;
                std::printf("%5s %5d %-12s %11.3f %11.3f %10.3f %10.3f %10.3f %8.2f %9.1f %14.3f\n",
                            pkv::cuda::input_precision_name(prec), k, kernel.c_str(), dev_ms, assign_ms, iter_ms,
                            upd_ms, floor_ms, iter_ms / floor_ms, tflops, cpu_s);
                if (csv)
                    std::printf("pkv,single,%s,%lld,%d,%d,%.6f,%.6f,%.6f,%s\n", pkv::cuda::input_precision_name(prec),
                                static_cast<long long>(n), d, k, iter_ms, dev_ms, floor_ms, kernel.c_str());
                std::fflush(stdout);
            }
            std::printf("  (%s: %.2f GB resident on the device, upload %.2f s, streaming %s)\n",
                        pkv::cuda::input_precision_name(prec), static_cast<double>(n) * d * elem * 1e-9, upload_s,
                        gpu.streaming() ? "yes" : "no");
            gpu.end_batch();
        }
    std::printf(
        "\ndevice ms: centroid upload + batched kernels + objective reduction (cudaEvent); assign ms:\n"
        "the same for a pass without sums (labels and objective only). iter ms: the\n"
        "whole Lloyd iteration on the wall clock: assign_batch (objective, sums and counts copied back;\n"
        "labels stay on the device) plus the host centroid update. kernel: fused (k <= 16; 32 at d <= 64) and\n"
        "onehot (k < 96; onehot-wgmma: on Hopper's warpgroup MMA, k <= 64), sums on tensor cores; mma\n"
        "(shared-memory fixed-point sums), wide (k >= 96: streamed centroid chunks\n"
        "of 64, /128 of 128), wgmma (the same on Hopper's warpgroup MMA, k >= 256: chunks of 128, /64 of 64)\n"
        "and mma (the general kernel), +sorted: sums by the sorted reduction,\n"
        "fma (fp32).\n"
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
