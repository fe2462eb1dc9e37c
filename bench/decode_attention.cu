// Decode attention over a packed cache on one GPU (pkv/cuda/packed_attention.h): the fp16,
// KIVI-2 and PatternKV-2 (patternkv-table, 2 bits) kernels side by side on Llama-3-8B's
// attention shape (32 query heads, 8 KV heads, head_dim 128; R = G = 128), one layer.
// Usage: pkv_bench_cuda_decode_attention [--contexts 4096,32768,131072] [--batches 1,16]
//          [--reps 50] [--patterns 32] [--bits 2] [--device 0] [--splits N (default: choose_splits)]
//
// Per (method, batch, context): the median of --reps timings (CUDA events around 10
// decode_attention_device calls queued back to back, divided by 10; a call is q·c, the
// split kernel and the combine), the bytes one call
// reads (blocks, ring rows, patterns: PackedCacheDevice::bytes_read) over that time in GB/s,
// and that as a share of the HBM peak (memory clock x bus width x 2, from
// cudaDeviceGetAttribute) and of a device-to-device copy measured in the same run (read +
// write bytes over time, the practical peak). Then, per (batch, context), PatternKV-2's
// throughput over fp16's and over KIVI-2's (time ratios).
//
// The caches are filled on the device with random content, not quantized through the CPU
// path (128k tokens x 16 sequences would take minutes there): random codes, binary16
// scales in [2^-6, 2^-2] and zeros in [-1, 0], random pattern indices below M and random
// gate bits, random fp16 ring rows and fp32 patterns. The kernels' work does not depend on
// the values, only on the counts, which are those of a decode step: nK = the largest
// multiple of R below n (the ring holds 1..R keys), KIVI V one more ring token.
//
// Then the device append of one decode step (PackedCacheDevice::append_device) on the same
// cache: the mean over R + 1 steps (one of which flushes a K block, and a V block for
// PatternKV; KIVI's V flushes a token every step) and the flushing step alone, as a share of
// the decode_attention call (the issue's target: <= 10%).
//
// Output: a header (#-lines) and one row per measurement, whitespace-separated:
//   method batch context splits median_us MB_read GB_s pct_peak pct_copy
// bench/sdpa_decode.py prints the same rows for PyTorch's SDPA; bench/decode_vs_sdpa.sh runs both.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/packed_attention.h"

namespace {

using pkv::cuda::PackedArray;
using pkv::cuda::PackedCacheDevice;
using pkv_rt::CacheMethod;

__device__ uint32_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return static_cast<uint32_t>(x);
}

// Random bytes with valid sections: codes anything, (scale, zero) pairs binary16 in the
// stated ranges, indices below M, gate bits anything.
__global__ void fill_blocks(uint8_t* blk, int64_t total, int64_t bytes, int64_t params, int64_t params_end,
                            int64_t index, int64_t index_end, int M, uint64_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total / 2;
         i += int64_t{gridDim.x} * blockDim.x) {
        const int64_t at = (2 * i) % bytes;  // even: a byte pair
        const uint32_t r = mix(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(i));
        uint16_t v = static_cast<uint16_t>(r);
        if (at >= params && at < params_end) {
            // scale: exponent 2^-6..2^-2; zero: -(0..1)
            v = ((at - params) % 4 == 0) ? static_cast<uint16_t>(((9 + (r >> 16) % 5) << 10) | (r & 0x3ff))
                                         : static_cast<uint16_t>(0x8000u | (r & 0x3bff));
        } else if (at >= index && at < index_end) {
            v = static_cast<uint16_t>((r % static_cast<uint32_t>(M)) | (((r >> 16) % static_cast<uint32_t>(M)) << 8));
        }
        reinterpret_cast<uint16_t*>(blk)[i] = v;
    }
}

// Binary16 values in (-1, 1) (exponent below 15), or fp32 in (-2, 2) for patterns.
__global__ void fill_halves(uint16_t* x, int64_t n, uint64_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
        const uint32_t r = mix(seed + static_cast<uint64_t>(i));
        x[i] = static_cast<uint16_t>((r & 0x83ffu) | ((8 + (r >> 16) % 7) << 10));
    }
}
__global__ void fill_floats(float* x, int64_t n, uint64_t seed) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        x[i] = (static_cast<float>(mix(seed + static_cast<uint64_t>(i)) % 40000u) - 20000.0f) * 1e-4f;
}

std::vector<int64_t> parse_list(const char* s) {
    std::vector<int64_t> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) out.push_back(std::atoll(item.c_str()));
    return out;
}

struct Options {
    std::vector<int64_t> contexts = {4096, 32768, 131072}, batches = {1, 16};
    int reps = 50, patterns = 32, bits = 2, device = 0;
    int splits = 0;  // 0: PackedCacheDevice::choose_splits
};

void fill(PackedCacheDevice& dev, uint64_t seed) {
    const pkv_rt::CacheConfig& c = dev.config();
    const PackedArray blocks[2] = {PackedArray::k_blocks, PackedArray::v_blocks};
    for (int p = 0; p < 2; ++p) {
        int64_t bytes = 0;
        auto* b = static_cast<uint8_t*>(dev.device_array(blocks[p], &bytes));
        if (!b) continue;
        const pkv_rt::BlockLayout L = pkv_rt::block_layout(c, static_cast<pkv_rt::KvPart>(p));
        const int64_t pe = L.params + L.param_groups * pkv_rt::kParamBytes;
        const int64_t ix = L.index >= 0 ? L.index : L.bytes, ie = L.index >= 0 ? L.index + c.window : L.bytes;
        fill_blocks<<<1024, 256>>>(b, bytes, L.bytes, L.params, pe, ix, ie,
                                   std::max(1, p ? c.v_patterns : c.k_patterns), seed + static_cast<uint64_t>(p));
        PKV_CUDA_CHECK(cudaGetLastError());
    }
    int64_t bytes = 0;
    auto* ring = static_cast<uint16_t*>(dev.device_array(PackedArray::ring, &bytes));
    fill_halves<<<1024, 256>>>(ring, bytes / 2, seed + 7);
    PKV_CUDA_CHECK(cudaGetLastError());
    for (const PackedArray a : {PackedArray::k_patterns, PackedArray::v_patterns})
        if (auto* pat = static_cast<float*>(dev.device_array(a, &bytes))) {
            fill_floats<<<256, 256>>>(pat, bytes / 4, seed + 11);
            PKV_CUDA_CHECK(cudaGetLastError());
        }
    PKV_CUDA_CHECK(cudaDeviceSynchronize());
}

struct Row {
    std::string method;
    int64_t batch, context;
    int splits;
    double us, mb;
    double append_us = 0, flush_us = 0;  // a decode step's append: mean over R + 1 steps, the flushing step
    std::string kernel;                  // the split kernel that ran (PackedCacheDevice::last_split_kernel)
};

double median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

Row run(CacheMethod method, const Options& o, int64_t batch, int64_t ctx, const char* name) {
    pkv_rt::CacheConfig c;
    c.method = method;
    c.n_layer = 1, c.n_head = 32, c.n_head_kv = 8, c.head_dim = 128, c.n_seq = static_cast<int>(batch);
    c.max_tokens = ctx, c.window = 128, c.group = 128, c.bits = o.bits;
    if (method == CacheMethod::patternkv_table) c.k_patterns = c.v_patterns = o.patterns;
    PackedCacheDevice dev(c, o.device);
    fill(dev, 1234);
    const int64_t R = c.window;
    for (int s = 0; s < c.n_seq; ++s) {
        const int64_t nk = method == CacheMethod::fp16 ? 0 : (ctx - 1) / R * R;
        const int64_t nv = method == CacheMethod::kivi ? std::max<int64_t>(0, ctx - R - 1) : nk;
        dev.set_state(0, s, ctx, nk, nv);
    }
    const size_t elems = static_cast<size_t>(batch) * c.n_head * c.head_dim;
    float *q = nullptr, *out = nullptr;
    PKV_CUDA_CHECK(cudaMalloc(&q, elems * 4));
    PKV_CUDA_CHECK(cudaMalloc(&out, elems * 4));
    fill_floats<<<256, 256>>>(q, static_cast<int64_t>(elems), 99);
    PKV_CUDA_CHECK(cudaGetLastError());
    cudaEvent_t e0, e1;
    PKV_CUDA_CHECK(cudaEventCreate(&e0));
    PKV_CUDA_CHECK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; ++i) dev.decode_attention_device(0, q, batch, out, o.splits);
    // Each timing covers kInner calls queued back to back, as a decode step queues its
    // layers, so that short calls are not timed with the host's launch latency between them.
    constexpr int kInner = 10;
    std::vector<float> ms;
    for (int i = 0; i < o.reps; ++i) {
        PKV_CUDA_CHECK(cudaEventRecord(e0));
        for (int k = 0; k < kInner; ++k) dev.decode_attention_device(0, q, batch, out, o.splits);
        PKV_CUDA_CHECK(cudaEventRecord(e1));
        PKV_CUDA_CHECK(cudaEventSynchronize(e1));
        float t = 0;
        PKV_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
        ms.push_back(t / kInner);
    }
    Row row{
        name, batch, ctx, o.splits > 0 ? o.splits : dev.choose_splits(0), median(ms) * 1e3, dev.bytes_read(0) / 1e6};
    row.kernel = dev.last_split_kernel();
    // Appends: from n0 = ctx - 2R tokens with an empty K ring (KIVI V: R + 1 in its ring), R
    // steps without a K flush and then the step that flushes a block (KIVI V flushes one
    // token every step); timed as the mean over the R + 1 steps and that last step alone.
    // The new rows are the query array's first n_seq x 8 x 128 floats.
    std::vector<float> mean_ms, flush_ms;
    for (int i = 0; i < std::max(3, o.reps / 10); ++i) {
        const int64_t n0 = ctx - 2 * R;
        for (int s = 0; s < c.n_seq; ++s)
            dev.set_state(0, s, n0, method == CacheMethod::fp16 ? 0 : n0,
                          method == CacheMethod::kivi   ? n0 - R - 1
                          : method == CacheMethod::fp16 ? 0
                                                        : n0);
        cudaEvent_t e2;
        PKV_CUDA_CHECK(cudaEventCreate(&e2));
        PKV_CUDA_CHECK(cudaEventRecord(e0));
        for (int64_t k = 0; k < R; ++k) dev.append_device(0, q, q, nullptr);
        PKV_CUDA_CHECK(cudaEventRecord(e2));
        dev.append_device(0, q, q, nullptr);
        PKV_CUDA_CHECK(cudaEventRecord(e1));
        PKV_CUDA_CHECK(cudaEventSynchronize(e1));
        float all = 0, last = 0;
        PKV_CUDA_CHECK(cudaEventElapsedTime(&all, e0, e1));
        PKV_CUDA_CHECK(cudaEventElapsedTime(&last, e2, e1));
        PKV_CUDA_CHECK(cudaEventDestroy(e2));
        if (i > 0) mean_ms.push_back(all / static_cast<float>(R + 1)), flush_ms.push_back(last);
    }
    row.append_us = median(mean_ms) * 1e3;
    row.flush_us = median(flush_ms) * 1e3;
    PKV_CUDA_CHECK(cudaEventDestroy(e0));
    PKV_CUDA_CHECK(cudaEventDestroy(e1));
    PKV_CUDA_CHECK(cudaFree(q));
    PKV_CUDA_CHECK(cudaFree(out));
    return row;
}

// Read + write bandwidth of a device-to-device copy of 1 GiB, in GB/s (median of 10).
double copy_gbs() {
    const size_t n = size_t{1} << 30;
    void *a = nullptr, *b = nullptr;
    PKV_CUDA_CHECK(cudaMalloc(&a, n));
    PKV_CUDA_CHECK(cudaMalloc(&b, n));
    PKV_CUDA_CHECK(cudaMemset(a, 1, n));
    cudaEvent_t e0, e1;
    PKV_CUDA_CHECK(cudaEventCreate(&e0));
    PKV_CUDA_CHECK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int i = 0; i < 11; ++i) {
        PKV_CUDA_CHECK(cudaEventRecord(e0));
        PKV_CUDA_CHECK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice));
        PKV_CUDA_CHECK(cudaEventRecord(e1));
        PKV_CUDA_CHECK(cudaEventSynchronize(e1));
        float t = 0;
        PKV_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
        if (i > 0) ms.push_back(t);
    }
    PKV_CUDA_CHECK(cudaEventDestroy(e0));
    PKV_CUDA_CHECK(cudaEventDestroy(e1));
    PKV_CUDA_CHECK(cudaFree(a));
    PKV_CUDA_CHECK(cudaFree(b));
    return 2.0 * static_cast<double>(n) / (median(ms) * 1e-3) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
        if (!v) {
            std::fprintf(stderr, "decode_attention: %s needs a value\n", a.c_str());
            return 2;
        }
        if (a == "--contexts") o.contexts = parse_list(v);
        else if (a == "--batches") o.batches = parse_list(v);
        else if (a == "--reps") o.reps = std::max(1, std::atoi(v));
        else if (a == "--patterns") o.patterns = std::atoi(v);
        else if (a == "--bits") o.bits = std::atoi(v);
        else if (a == "--splits") o.splits = std::atoi(v);
        else if (a == "--device") o.device = std::atoi(v);
        else {
            std::fprintf(stderr, "decode_attention: unknown option %s\n", a.c_str());
            return 2;
        }
        ++i;
    }
    try {
        PKV_CUDA_CHECK(cudaSetDevice(o.device));
        cudaDeviceProp prop{};
        PKV_CUDA_CHECK(cudaGetDeviceProperties(&prop, o.device));
        int clock_khz = 0, bus_bits = 0;
        PKV_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, o.device));
        PKV_CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, o.device));
        const double peak = 2.0 * clock_khz * 1e3 * bus_bits / 8.0 / 1e9;  // GB/s, double data rate
        const double copy = copy_gbs();
        std::printf(
            "# pkv decode attention: %s, %d SMs; HBM peak %.0f GB/s (clock %d kHz x %d bits x 2), "
            "device copy %.0f GB/s\n",
            prop.name, prop.multiProcessorCount, peak, clock_khz, bus_bits, copy);
        std::printf(
            "# shape: 32 query heads, 8 KV heads, head_dim 128, R = G = 128, %d bits, M = %d, one layer; "
            "median of %d\n",
            o.bits, o.patterns, o.reps);
        std::printf("%-14s %5s %8s %6s %10s %9s %8s %8s %8s\n", "method", "batch", "context", "splits", "median_us",
                    "MB_read", "GB_s", "pct_peak", "pct_copy");
        const std::string b = std::to_string(o.bits);
        const std::string kivi = "kivi-" + b, pkv = "patternkv-" + b;
        std::map<std::pair<int64_t, int64_t>, std::map<std::string, double>> us;
        std::vector<Row> appends;
        for (const int64_t batch : o.batches)
            for (const int64_t ctx : o.contexts)
                for (const auto& m :
                     {std::make_pair(CacheMethod::fp16, std::string("fp16")), std::make_pair(CacheMethod::kivi, kivi),
                      std::make_pair(CacheMethod::patternkv_table, pkv)}) {
                    const Row r = run(m.first, o, batch, ctx, m.second.c_str());
                    const double gbs = r.mb * 1e6 / (r.us * 1e-6) / 1e9;
                    std::printf("%-14s %5lld %8lld %6d %10.1f %9.1f %8.0f %8.1f %8.1f\n", r.method.c_str(),
                                static_cast<long long>(batch), static_cast<long long>(ctx), r.splits, r.us, r.mb, gbs,
                                100.0 * gbs / peak, 100.0 * gbs / copy);
                    std::fflush(stdout);
                    us[{batch, ctx}][r.method] = r.us;
                    appends.push_back(r);
                }
        std::printf("# throughput ratios (time of the other kernel / time of %s)\n", pkv.c_str());
        std::printf("# %5s %8s %12s %12s\n", "batch", "context", (pkv + "/fp16").c_str(), (pkv + "/" + kivi).c_str());
        for (const auto& kv : us) {
            const auto& t = kv.second;
            std::printf("# %5lld %8lld %12.2f %12.2f\n", static_cast<long long>(kv.first.first),
                        static_cast<long long>(kv.first.second), t.at("fp16") / t.at(pkv), t.at(kivi) / t.at(pkv));
        }
        std::printf("# append (device, one decode step of the layer): mean over R + 1 steps and the step that\n");
        std::printf("# flushes a block, in us and as a share of that decode_attention call; the call's split kernel\n");
        std::printf("# %-12s %5s %8s %10s %10s %8s %8s %s\n", "method", "batch", "context", "mean_us", "flush_us",
                    "pct_mean", "pct_flush", "kernel");
        for (const Row& r : appends)
            std::printf("# %-12s %5lld %8lld %10.2f %10.2f %8.1f %8.1f %s\n", r.method.c_str(),
                        static_cast<long long>(r.batch), static_cast<long long>(r.context), r.append_us, r.flush_us,
                        100.0 * r.append_us / r.us, 100.0 * r.flush_us / r.us, r.kernel.c_str());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "decode_attention: %s\n", e.what());
        return 1;
    }
    return 0;
}
