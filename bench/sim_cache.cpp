// Throughput of the batched CUDA cache simulation (pkv/cuda/sim_cache.h) next to the host
// path it twins: pkv::simulate_cache per (sequence, layer, KV head, tensor), OpenMP over
// those problems on all cores, gathering each head's rows and scattering its
// reconstruction as pkv eval's cache hook does.
// Workload: the SmolLM2-135M shape, 30 layers x 3 KV heads x D 64 x {K, V}, S sequences of
// n = 2048 tokens (prefill P), laid out as the forward leaves them: one row per (layer,
// sequence, token) of 2 x 3 x 64 floats (K heads, then V heads). Random activations with
// per-channel scales and an outlier channel; patternkv-table gets 32 patterns per head.
// Each method runs `reps` times on both sides after one untimed device call (context and
// allocator warm-up); the best time counts. Device columns: the kernels (CUDA events); the
// host-array call (plan, allocation, copies both ways, kernels); the device-resident call
// with a reused workspace, once for the whole batch and once per layer (the calls a
// forward's cache hook would make); then host / device ratios, kernel throughput, and the
// elements whose reconstruction differs from the host's bitwise.
// Usage: pkv_bench_sim_cache [--seqs 2] [--reps 3] [--prefill 512] [--tokens 2048]
//                            [--layers 30] [--methods fp16,kivi2,kivi4,q4_0,q8_0,fp8,table,patternkv]
// patternkv's prefill k-means agrees with the host's statistically, not bit for bit
// (sim_cache.h), so its "differ" column counts the elements of problems whose k-means
// took another path.
#include <cstdio>

#ifdef PKV_HAVE_CUDA
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cuda_runtime.h>

#include "pkv/cuda/device.h"
#include "pkv/cuda/sim_cache.h"
#include "pkv/kvcache/simulate.h"

namespace {

constexpr int kHeads = 3, kDim = 64;

struct Options {
    int seqs = 2, reps = 3, layers = 30;
    int64_t tokens = 2048, prefill = 512;
    std::string methods = "fp16,kivi2,kivi4,q4_0,q8_0,fp8,table,patternkv";
};

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<float> activations(size_t n, int stride, uint64_t seed) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> scale(static_cast<size_t>(stride));
    for (auto& s : scale) s = std::exp(0.8f * nd(gen));
    for (int c = 3; c < stride; c += kDim) scale[static_cast<size_t>(c)] = 12.0f;
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = scale[i % static_cast<size_t>(stride)] * nd(gen);
    return x;
}

// x uploaded once, a reconstruction and the flush steps on the device.
struct DeviceArrays {
    float* x = nullptr;
    float* recon = nullptr;
    int32_t* flush = nullptr;
    DeviceArrays(const std::vector<float>& host, size_t tokens) {
        cudaMalloc(&x, host.size() * sizeof(float));
        cudaMalloc(&recon, host.size() * sizeof(float));
        cudaMalloc(&flush, tokens * sizeof(int32_t));
        cudaMemcpy(x, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice);
    }
    ~DeviceArrays() {
        cudaFree(x);
        cudaFree(recon);
        cudaFree(flush);
    }
    DeviceArrays(const DeviceArrays&) = delete;
    DeviceArrays& operator=(const DeviceArrays&) = delete;
};

// The host path: one simulate_cache per problem, OpenMP over problems.
std::vector<float> host_run(const pkv::cuda::SimBatch& b, const std::vector<float>& x) {
    std::vector<float> recon(x);
    const int64_t stride = b.row_stride;
    const auto n_prob = static_cast<int64_t>(b.problems.size());
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n_prob; ++i) {
        const pkv::cuda::SimProblem& q = b.problems[static_cast<size_t>(i)];
        std::vector<float> h(static_cast<size_t>(q.n * b.D));
        for (int64_t t = 0; t < q.n; ++t)
            std::copy_n(x.begin() + (q.row0 + t) * stride + q.col0, b.D, h.begin() + t * b.D);
        pkv::SimParams sp = b.params;
        sp.ring = q.ring;
        if (q.table >= 0) sp.table_k = sp.table_v = &b.tables[static_cast<size_t>(q.table)];
        const pkv::SimResult r = pkv::simulate_cache(sp, q.tensor, h.data(), q.n, b.D, q.prefill);
        for (int64_t t = 0; t < q.n; ++t)
            std::copy_n(r.recon.begin() + t * b.D, b.D, recon.begin() + (q.row0 + t) * stride + q.col0);
    }
    return recon;
}

bool parse(int argc, char** argv, Options& o) {
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) return false;
        const char* v = argv[++i];
        if (a == "--seqs") o.seqs = std::atoi(v);
        else if (a == "--reps") o.reps = std::atoi(v);
        else if (a == "--layers") o.layers = std::atoi(v);
        else if (a == "--tokens") o.tokens = std::atoll(v);
        else if (a == "--prefill") o.prefill = std::atoll(v);
        else if (a == "--methods") o.methods = v;
        else return false;
    }
    return o.seqs >= 1 && o.reps >= 1 && o.layers >= 1 && o.tokens >= 1 && o.prefill >= 0 && o.prefill <= o.tokens;
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    if (!parse(argc, argv, o)) {
        std::fprintf(stderr,
                     "usage: pkv_bench_sim_cache [--seqs 2] [--reps 3] [--prefill 512] [--tokens 2048] [--layers 30] "
                     "[--methods fp16,kivi2,kivi4,q4_0,q8_0,fp8,table]\n");
        return 2;
    }
    if (pkv::cuda::device_count() == 0) {
        std::printf("no CUDA device\n");
        return 0;
    }
    const int stride = 2 * kHeads * kDim;
    const int64_t rows = int64_t{o.layers} * o.seqs * o.tokens;
    const std::vector<float> x = activations(static_cast<size_t>(rows) * stride, stride, 1);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    const int64_t problems = int64_t{o.layers} * o.seqs * kHeads * 2;
    std::printf(
        "pkv sim_cache bench: %d layers x %d KV heads x {K, V} x %d sequences of %lld tokens, D %d, prefill "
        "%lld: %lld problems, %.1f M elements; host: simulate_cache, OpenMP on %d threads\n",
        o.layers, kHeads, o.seqs, static_cast<long long>(o.tokens), kDim, static_cast<long long>(o.prefill),
        static_cast<long long>(problems), static_cast<double>(rows) * stride / 1e6, threads);
    std::printf("%-8s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s\n", "method", "host", "kernels", "h2d+d2h", "resident",
                "per-layer", "x kern", "x resid", "x layer", "Mtok/s", "differ");

    // Table patterns: 32 per (layer, head, tensor), tokens of the first sequence plus noise.
    std::vector<std::vector<float>> pats;
    std::mt19937_64 gen(7);
    std::normal_distribution<float> nd(0.0f, 0.05f);
    std::stringstream ms(o.methods);
    std::string name;
    while (std::getline(ms, name, ',')) {
        pkv::cuda::SimBatch b;
        b.D = kDim;
        b.rows = rows;
        b.row_stride = stride;
        b.params.group = 128;
        b.params.window = 128;
        if (name == "fp16") b.params.method = pkv::KvMethod::fp16;
        else if (name == "kivi2" || name == "kivi4") {
            b.params.method = pkv::KvMethod::kivi;
            b.params.bits = name == "kivi2" ? 2 : 4;
        } else if (name == "q4_0") b.params.method = pkv::KvMethod::q4_0;
        else if (name == "q8_0") b.params.method = pkv::KvMethod::q8_0;
        else if (name == "fp8") b.params.method = pkv::KvMethod::fp8;
        else if (name == "table") {
            b.params.method = pkv::KvMethod::patternkv_table;
            b.params.bits = 2;
        } else if (name == "patternkv") {
            b.params.method = pkv::KvMethod::patternkv;  // 32 patterns mined from each prefill
            b.params.bits = 2;
        } else {
            std::fprintf(stderr,
                         "unknown method '%s' in --methods: expected fp16, kivi2, kivi4, q4_0, q8_0, fp8, table, "
                         "patternkv\n",
                         name.c_str());
            return 2;
        }
        const bool table = b.params.method == pkv::KvMethod::patternkv_table;
        if (table && pats.empty()) {
            const int M = 32;
            for (int v = 0; v < o.layers * kHeads * 2; ++v) {
                std::vector<float> p(static_cast<size_t>(M) * kDim);
                const int layer = v / (kHeads * 2), col = (v % (kHeads * 2)) * kDim;
                for (int m = 0; m < M; ++m) {
                    const int64_t r =
                        int64_t{layer} * o.seqs * o.tokens + static_cast<int64_t>(gen() % 2048 % o.tokens);
                    for (int d = 0; d < kDim; ++d)
                        p[static_cast<size_t>(m * kDim + d)] = x[static_cast<size_t>(r * stride + col + d)] + nd(gen);
                }
                pats.push_back(std::move(p));
            }
        }
        if (table)
            for (const auto& p : pats) {
                pkv::TableHeadView v;
                v.patterns = p.data();
                v.M = 32;
                b.tables.push_back(v);
            }
        for (int l = 0; l < o.layers; ++l)
            for (int s = 0; s < o.seqs; ++s)
                for (int h = 0; h < 2 * kHeads; ++h) {
                    pkv::cuda::SimProblem q;
                    q.row0 = (int64_t{l} * o.seqs + s) * o.tokens;
                    q.col0 = int64_t{h} * kDim;
                    q.n = o.tokens;
                    q.prefill = o.prefill;
                    q.tensor = h < kHeads ? pkv::KvTensor::k : pkv::KvTensor::v;
                    q.table = table ? l * kHeads * 2 + h : -1;
                    b.problems.push_back(q);
                }
        pkv::cuda::simulate_cache_batch(b, x.data());  // warm-up
        double host = 1e300, kern = 1e300, total = 1e300, resident = 1e300, layered = 1e300;
        std::vector<float> ref, got;
        for (int r = 0; r < o.reps; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            ref = host_run(b, x);
            host = std::min(host, ms_since(t0));
            pkv::cuda::SimBatchResult res = pkv::cuda::simulate_cache_batch(b, x.data());
            kern = std::min(kern, res.kernel_ms);
            total = std::min(total, res.total_ms);
            got = std::move(res.recon);
        }
        // x already on the device, one workspace: the whole batch in one call, and one
        // call per layer on that layer's rows (what a forward's cache hook would make).
        {
            DeviceArrays d(x, static_cast<size_t>(problems) * o.tokens);
            pkv::cuda::SimCacheWorkspace ws;
            const int64_t layer_rows = int64_t{o.seqs} * o.tokens;
            std::vector<pkv::cuda::SimBatch> layers(static_cast<size_t>(o.layers), b);
            for (int l = 0; l < o.layers; ++l) {
                pkv::cuda::SimBatch& lb = layers[static_cast<size_t>(l)];
                lb.rows = layer_rows;
                lb.problems.clear();
                for (const pkv::cuda::SimProblem& q : b.problems)
                    if (q.row0 / layer_rows == l) {
                        lb.problems.push_back(q);
                        lb.problems.back().row0 -= int64_t{l} * layer_rows;
                    }
            }
            for (int r = 0; r <= o.reps; ++r) {  // the first round warms the workspace up
                auto t0 = std::chrono::steady_clock::now();
                pkv::cuda::simulate_cache_batch_on_device(b, pkv::cuda::plan_sim_batch(b), d.x, d.recon, d.flush, ws);
                if (r > 0) resident = std::min(resident, ms_since(t0));
                t0 = std::chrono::steady_clock::now();
                for (int l = 0; l < o.layers; ++l) {
                    const size_t off = static_cast<size_t>(l) * static_cast<size_t>(layer_rows) * stride;
                    const pkv::cuda::SimBatch& lb = layers[static_cast<size_t>(l)];
                    pkv::cuda::simulate_cache_batch_on_device(lb, pkv::cuda::plan_sim_batch(lb), d.x + off,
                                                              d.recon + off, d.flush, ws);
                }
                if (r > 0) layered = std::min(layered, ms_since(t0));
            }
        }
        int64_t differ = 0;
        for (size_t i = 0; i < got.size(); ++i) differ += std::memcmp(&got[i], &ref[i], sizeof(float)) != 0;
        const double toks = static_cast<double>(problems) * o.tokens;
        std::printf("%-8s %9.1f %9.2f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.0f %9lld\n", name.c_str(), host, kern,
                    total, resident, layered, host / std::max(kern, 1e-6), host / resident, host / layered,
                    toks / (kern * 1e3), static_cast<long long>(differ));
    }
    std::printf(
        "ms, best of %d. host: simulate_cache per problem on %d OpenMP threads; kernels: the device time of the "
        "whole batch; h2d+d2h: simulate_cache_batch from host arrays (plan, allocation, copies, kernels); "
        "resident: simulate_cache_batch_on_device with x on the device (plan, its upload, kernels); per-layer: the "
        "same, one call per layer. x: host ms over the device column. Mtok/s: problem-tokens (one head's K or V "
        "vector) per second through the kernels. differ: elements whose reconstruction differs from the host's.\n",
        o.reps, threads);
    return 0;
}

#else

int main() {
    std::printf("built without CUDA\n");
    return 0;
}

#endif
