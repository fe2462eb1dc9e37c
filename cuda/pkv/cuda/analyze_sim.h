// pkv/cuda/analyze_sim.h — `pkv analyze --device cuda`: the cache simulation of every
// method on the GPU, the sequences of many heads in one batch (sim_cache.h). No CUDA
// types: apps and tests include it with the host compiler.
//
// Agreement with the host (simulate_cache, what analyze runs without it): fp16, kivi,
// q4_0, q8_0, fp8 and patternkv-table bit for bit (sim_cache.h gives the one caveat, a
// host compiler that contracts other multiply-adds than GCC's); patternkv statistically,
// as the device k-means assigns points with other rounding than the host's
// (sim_cache.h, "patternkv"): most problems give the host's result bit for bit, the rest
// quantize against other, equally fitted patterns. The pattern labels and V gates come
// back from the device's reconstruction; the gate is recomputed on the host from them
// with the host's own test, which the device repeats exactly.
//
// Run on the host instead, job by job with simulate_cache: patternkv when it cannot run
// on the device (head_dim > 256, more than kDevicePatternMax patterns) or when the
// environment sets PKV_CUDA_PATTERNKV=0; a patternkv-table head that its table keeps in
// fp16 (nothing to simulate).
#pragma once

#include <memory>

#include "pkv/kvcache/cache_simulator.h"

namespace pkv::cuda {

/// Elements of x per call the simulator asks for (batch_tokens = this / head_dim): two
/// tensors' worth (keys and values) of reconstructions come back to the host per run.
constexpr int64_t kAnalyzeSimElements = int64_t{1} << 22;

/// The simulator `pkv analyze --device cuda:N` uses, on GPU `device`; description():
/// "cuda:N <device name>". Throws invalid_argument for a device that does not exist.
std::unique_ptr<CacheSimulator> make_cache_simulator(int device = 0);

}  // namespace pkv::cuda
