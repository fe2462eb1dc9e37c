#include "pkv/cuda/phase_clock.cuh"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "pkv/cuda/check.cuh"

namespace pkv::cuda {

namespace {
constexpr const char* kNames[PhaseClock::count] = {"input",   "norms",      "q/k/v gemm", "rope+bias",
                                                   "capture", "cache sim",  "attention",  "out gemm",
                                                   "ffn in",  "activation", "ffn down",   "logits"};
}

PhaseClock::PhaseClock() {
    const char* env = std::getenv("PKV_CUDA_PROFILE");
    on_ = env != nullptr && std::strcmp(env, "1") == 0;
}

PhaseClock::~PhaseClock() {
    if (!on_) return;
    double total = 0;
    for (double v : ms_) total += v;
    if (total > 0) {
        std::string line = "cuda profile (" + std::to_string(batches_) + " batches, GPU ms):";
        for (int p = 0; p < count; ++p)
            if (ms_[p] > 0) line += fmt::format(" {} {:.1f} ({:.1f}%);", kNames[p], ms_[p], 100.0 * ms_[p] / total);
        fmt::print(stderr, "{} total {:.1f}\n", line, total);
    }
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
}

void PhaseClock::mark(Phase p, cudaStream_t s) {
    if (used_ == pool_.size()) {
        cudaEvent_t e = nullptr;
        PKV_CUDA_CHECK(cudaEventCreate(&e));
        pool_.push_back(e);
        phases_.push_back(count);
    }
    PKV_CUDA_CHECK(cudaEventRecord(pool_[used_], s));
    phases_[used_] = p;
    ++used_;
}

void PhaseClock::collect() {
    if (!on_ || used_ == 0) return;
    PKV_CUDA_CHECK(cudaEventSynchronize(pool_[used_ - 1]));
    for (size_t i = 1; i < used_; ++i) {
        if (phases_[i] == count) continue;  // a new interval starts here
        float ms = 0;
        PKV_CUDA_CHECK(cudaEventElapsedTime(&ms, pool_[i - 1], pool_[i]));
        ms_[static_cast<size_t>(phases_[i])] += ms;
    }
    used_ = 0;
    ++batches_;
}

}  // namespace pkv::cuda
