// The CUDA forward engine's attention kernels side by side (pkv/cuda/forward_ops.cuh): the
// float kernel of the f32 engine against the tensor-core kernel of the bf16 / fp16 engines,
// on the shapes of the benchmark models, over packed batches of sequences as a dump runs
// them. Causal FLOPs count 4 · head_dim per (query head, visible key) pair.
// Usage: pkv_bench_forward_attention [--ctx 2048] [--reps 5]
// Prints one row per (shape, kernel): milliseconds (best of reps, CUDA events), TFLOP/s,
// the ratio to the float kernel, and the largest |difference| from the float kernel's
// output relative to the largest |v|.
#include <cstdio>

#ifdef PKV_HAVE_CUDA
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "pkv/cuda/device.h"
#include "pkv/cuda/forward_ops.cuh"
#include "pkv/model/engine_plan.h"

namespace {

#define CHECK_CUDA(x)                                                                                  \
    do {                                                                                               \
        cudaError_t e_ = (x);                                                                          \
        if (e_ != cudaSuccess) {                                                                       \
            std::fprintf(stderr, "pkv_bench_forward_attention: %s: %s\n", #x, cudaGetErrorString(e_)); \
            std::exit(1);                                                                              \
        }                                                                                              \
    } while (0)

struct Shape {
    const char* name;
    int n_head, n_head_kv, head_dim, seqs, window;
};

template <typename T>
T* device_copy(const std::vector<T>& h) {
    T* d = nullptr;
    CHECK_CUDA(cudaMalloc(&d, h.size() * sizeof(T)));
    CHECK_CUDA(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

}  // namespace

int main(int argc, char** argv) {
    int ctx = 2048, reps = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--ctx")) ctx = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
        else {
            std::fprintf(stderr, "usage: pkv_bench_forward_attention [--ctx N] [--reps R]\n");
            return 2;
        }
    }
    if (pkv::cuda::device_count() == 0) {
        std::fprintf(stderr, "pkv_bench_forward_attention: no CUDA device\n");
        return 1;
    }
    cudaDeviceProp prop{};
    CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("# %s, ctx %d, best of %d\n", prop.name, ctx, reps);
    std::printf(
        "| shape | heads / KV heads x head_dim | tokens | kernel | ms | TFLOP/s | vs float | max |diff| / max |v| |\n");
    std::printf("|---|---|--:|---|--:|--:|--:|--:|\n");
    const Shape shapes[] = {{"SmolLM2-135M", 9, 3, 64, 8, 0},
                            {"Llama-3-8B", 32, 8, 128, 4, 0},
                            {"Gemma-3-270M global", 4, 1, 256, 8, 0},
                            {"Gemma-3-270M local (window 512)", 4, 1, 256, 8, 512}};
    cudaEvent_t e0, e1;
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    for (const Shape& sh : shapes) {
        std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(sh.seqs), std::vector<int32_t>(ctx, 0));
        const pkv::PackedBatch b = pkv::pack_batch(seqs);
        const auto tiles = pkv::attention_tiles(b, pkv::cuda::fwd::kAttentionTileRows);
        const int64_t rows = b.n_rows();
        const size_t nq = static_cast<size_t>(rows) * sh.n_head * sh.head_dim;
        const size_t nk = static_cast<size_t>(rows) * sh.n_head_kv * sh.head_dim;
        std::mt19937 rng(7);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> hq(nq), hk(nk), hv(nk);
        for (auto& x : hq) x = 2.0f * nd(rng);
        for (auto& x : hk) x = 2.0f * nd(rng);
        for (auto& x : hv) x = nd(rng);
        float vmax = 0.0f;
        for (float x : hv) vmax = std::max(vmax, std::fabs(x));
        float* q = device_copy(hq);
        float* k = device_copy(hk);
        float* v = device_copy(hv);
        auto* dt = device_copy(tiles);
        float* out = nullptr;
        CHECK_CUDA(cudaMalloc(&out, nq * sizeof(float)));
        const float scale = 1.0f / std::sqrt(static_cast<float>(sh.head_dim));
        double pairs = 0.0;  // visible (query, key) pairs per query head
        for (int i = 0; i < ctx; ++i) pairs += sh.window > 0 ? std::min(i + 1, sh.window) : i + 1;
        const double flop = 4.0 * sh.head_dim * pairs * sh.n_head * sh.seqs;
        std::vector<float> base(nq), got(nq);
        double float_ms = 0.0;
        for (const pkv::WeightType math : {pkv::WeightType::f32, pkv::WeightType::fp16, pkv::WeightType::bf16}) {
            auto run = [&] {
                pkv::cuda::fwd::attention(q, k, v, dt, static_cast<int>(tiles.size()), sh.n_head, sh.n_head_kv,
                                          sh.head_dim, scale, sh.window, math, out, nullptr);
            };
            run();  // warm-up
            CHECK_CUDA(cudaDeviceSynchronize());
            double best = 1e30;
            for (int r = 0; r < reps; ++r) {
                CHECK_CUDA(cudaEventRecord(e0));
                run();
                CHECK_CUDA(cudaEventRecord(e1));
                CHECK_CUDA(cudaEventSynchronize(e1));
                float ms = 0.0f;
                CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
                best = std::min(best, static_cast<double>(ms));
            }
            CHECK_CUDA(cudaMemcpy(got.data(), out, nq * sizeof(float), cudaMemcpyDeviceToHost));
            if (math == pkv::WeightType::f32) {
                base = got;
                float_ms = best;
            }
            double diff = 0.0;
            for (size_t i = 0; i < nq; ++i) diff = std::max(diff, static_cast<double>(std::fabs(got[i] - base[i])));
            const std::string kernel =
                math == pkv::WeightType::f32 ? "float" : std::string("tensor cores, ") + pkv::weight_type_name(math);
            std::printf("| %s | %d / %d x %d | %lld | %s | %.3f | %.1f | %.2fx | %.2e |\n", sh.name, sh.n_head,
                        sh.n_head_kv, sh.head_dim, static_cast<long long>(rows), kernel.c_str(), best,
                        flop / (best * 1e-3) / 1e12, float_ms / best, diff / vmax);
        }
        CHECK_CUDA(cudaFree(q));
        CHECK_CUDA(cudaFree(k));
        CHECK_CUDA(cudaFree(v));
        CHECK_CUDA(cudaFree(dt));
        CHECK_CUDA(cudaFree(out));
    }
    return 0;
}

#else
int main() {
    std::fprintf(stderr, "pkv_bench_forward_attention: built without CUDA\n");
    return 1;
}
#endif
