// Parity of the GPU attention metrics (pkv/cuda/analyze_attention.h) with
// pkv::accumulate_attention, the CPU reference `pkv analyze` uses. Tolerances per cache
// accumulator (the header explains where the difference comes from):
//   kl_rows, rel_rows   equal
//   kl_sum              |gpu - cpu| <= 5e-3 · cpu + 1e-9 · kl_rows
//   rel_sum             |gpu - cpu| <= 1e-3 · cpu + 1e-7 · rel_rows
//   a cache equal to the exact K/V gives 0 exactly on both sides.
// The data: Gaussian queries, keys and values; caches with large and small key/value
// errors, flush steps mixed (flushed at once, later, in blocks, never), sliding windows,
// query strides > 1, several query heads per KV head.
#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/cuda/analyze_attention.h"
#include "pkv/cuda/device.h"
#include "pkv/kvcache/metrics.h"
#include "pkv/kvcache/simulate.h"

namespace {

#define PKV_REQUIRE_GPU_ANALYZE() \
    if (pkv::cuda::device_count() == 0) PKV_SKIP("no CUDA device: GPU attention metric parity test not run")

std::vector<float> normal(size_t n, std::mt19937& rng, float sd = 1.0f) {
    std::normal_distribution<float> d(0.0f, sd);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

// One simulated cache: its arrays and its accumulator.
struct TestCache {
    std::string name;
    std::vector<float> k_hat, v_hat;
    std::vector<int32_t> flush_k, flush_v;
};

enum class Flush { at_once, never, blocks, mixed };

std::vector<int32_t> flush_steps(Flush f, int64_t n, std::mt19937& rng) {
    std::vector<int32_t> s(static_cast<size_t>(n));
    std::uniform_int_distribution<int> pick(0, 3), delay(0, 40);
    for (int64_t j = 0; j < n; ++j) {
        switch (f) {
            case Flush::at_once: s[j] = static_cast<int32_t>(j); break;
            case Flush::never: s[j] = pkv::kNeverQuantized; break;
            case Flush::blocks: s[j] = static_cast<int32_t>((j / 16 + 1) * 16); break;  // kivi-like, window 16
            case Flush::mixed: {
                const int kind = pick(rng);
                s[j] = kind == 0   ? pkv::kNeverQuantized
                       : kind == 1 ? static_cast<int32_t>(j)
                       : kind == 2 ? static_cast<int32_t>(j + delay(rng))
                                   : 0;  // flushed before its own query (a prefill token)
                break;
            }
        }
    }
    return s;
}

// x + noise of standard deviation sd · |x| + floor.
std::vector<float> perturbed(const std::vector<float>& x, float rel, std::mt19937& rng) {
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> y = x;
    for (float& e : y) e += rel * (std::fabs(e) + 0.1f) * d(rng);
    return y;
}

std::vector<TestCache> make_caches(const std::vector<float>& k, const std::vector<float>& v, int64_t n,
                                   std::mt19937& rng) {
    std::vector<TestCache> c;
    c.push_back({"exact copy, flushed at once", k, v, flush_steps(Flush::at_once, n, rng),
                 flush_steps(Flush::at_once, n, rng)});
    c.push_back({"coarse (2-bit-like), mixed flushes", perturbed(k, 0.3f, rng), perturbed(v, 0.3f, rng),
                 flush_steps(Flush::mixed, n, rng), flush_steps(Flush::mixed, n, rng)});
    c.push_back({"fine (8-bit-like), block flushes", perturbed(k, 1e-2f, rng), perturbed(v, 1e-2f, rng),
                 flush_steps(Flush::blocks, n, rng), flush_steps(Flush::blocks, n, rng)});
    c.push_back({"keys only, values never flushed", perturbed(k, 5e-2f, rng), perturbed(v, 0.5f, rng),
                 flush_steps(Flush::at_once, n, rng), flush_steps(Flush::never, n, rng)});
    c.push_back({"values only", k, perturbed(v, 5e-2f, rng), flush_steps(Flush::at_once, n, rng),
                 flush_steps(Flush::mixed, n, rng)});
    c.push_back({"never flushed", perturbed(k, 0.3f, rng), perturbed(v, 0.3f, rng), flush_steps(Flush::never, n, rng),
                 flush_steps(Flush::never, n, rng)});
    return c;
}

std::vector<pkv::AttnCache> views(const std::vector<TestCache>& tc, std::vector<pkv::AttnAccum>& acc) {
    std::vector<pkv::AttnCache> out;
    for (size_t i = 0; i < tc.size(); ++i)
        out.push_back({tc[i].k_hat.data(), tc[i].flush_k.data(), tc[i].v_hat.data(), tc[i].flush_v.data(), &acc[i]});
    return out;
}

void require_close(const pkv::AttnAccum& gpu, const pkv::AttnAccum& cpu, const std::string& what) {
    INFO(what << ": kl_sum gpu " << gpu.kl_sum << " cpu " << cpu.kl_sum << ", rel_sum gpu " << gpu.rel_sum << " cpu "
              << cpu.rel_sum << ", rows " << gpu.kl_rows << "/" << cpu.kl_rows << " " << gpu.rel_rows << "/"
              << cpu.rel_rows);
    REQUIRE(gpu.kl_rows == cpu.kl_rows);
    REQUIRE(gpu.rel_rows == cpu.rel_rows);
    REQUIRE(std::fabs(gpu.kl_sum - cpu.kl_sum) <= 5e-3 * cpu.kl_sum + 1e-9 * static_cast<double>(cpu.kl_rows));
    REQUIRE(std::fabs(gpu.rel_sum - cpu.rel_sum) <= 1e-3 * cpu.rel_sum + 1e-7 * static_cast<double>(cpu.rel_rows));
}

// CPU reference and GPU twin on the same job; checks every cache.
void check_job(int64_t n, int D, int G, int stride, int64_t window, float kq_scale, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<std::vector<float>> q;
    for (int g = 0; g < G; ++g) q.push_back(normal(static_cast<size_t>(n) * D, rng));
    const std::vector<float> k = normal(static_cast<size_t>(n) * D, rng), v = normal(static_cast<size_t>(n) * D, rng);
    const std::vector<TestCache> tc = make_caches(k, v, n, rng);
    std::vector<pkv::AttnAccum> cpu(tc.size()), gpu(tc.size());
    const std::vector<pkv::AttnCache> cpu_caches = views(tc, cpu), gpu_caches = views(tc, gpu);
    std::vector<const float*> qp;
    for (const auto& qh : q) {
        pkv::accumulate_attention(qh.data(), k.data(), v.data(), n, D, stride, cpu_caches, window, kq_scale);
        qp.push_back(qh.data());
    }
    pkv::cuda::accumulate_attention(qp, k.data(), v.data(), n, D, stride, gpu_caches, window, kq_scale);
    std::ostringstream cfg;
    cfg << "n " << n << " D " << D << " G " << G << " stride " << stride << " window " << window << " kq_scale "
        << kq_scale << " seed " << seed;
    for (size_t c = 0; c < tc.size(); ++c) require_close(gpu[c], cpu[c], cfg.str() + ", cache " + tc[c].name);
    // The unchanged cache is exact on both sides, not merely close.
    REQUIRE(cpu[0].kl_sum == 0.0);
    REQUIRE(gpu[0].kl_sum == 0.0);
    REQUIRE(gpu[0].rel_sum == 0.0);
    // The errors are real: the coarse cache's KL is far from 0 (where a row sees more
    // than one key).
    if (n >= 8 && window != 1 && stride < n) REQUIRE(gpu[1].kl_sum > 1e-3 * static_cast<double>(gpu[1].kl_rows));
}

}  // namespace

TEST_CASE("cuda attention metrics twin accumulate_attention", "[cuda][analyze][parity]") {
    PKV_REQUIRE_GPU_ANALYZE();
    uint32_t seed = 1;
    for (int D : {64, 32, 128}) {
        for (int stride : {1, 3}) {
            for (int64_t window : {int64_t{0}, int64_t{37}}) {
                check_job(300, D, 3, stride, window, 0.0f, seed++);
            }
        }
    }
}

TEST_CASE("cuda attention metrics: edge shapes", "[cuda][analyze][parity]") {
    PKV_REQUIRE_GPU_ANALYZE();
    // One token; fewer tokens than a key tile; rows not a multiple of the row tile; the
    // largest head; head dims that are not powers of two; a window of 1; a stride longer
    // than the sequence; an explicit kq_scale; one query head.
    check_job(1, 64, 2, 1, 0, 0.0f, 101);
    check_job(7, 64, 1, 1, 0, 0.0f, 102);
    check_job(33, 16, 4, 1, 5, 0.0f, 103);
    check_job(257, 256, 2, 1, 0, 0.0f, 104);
    check_job(130, 256, 1, 2, 64, 0.0f, 105);
    check_job(150, 80, 3, 1, 0, 0.125f, 106);
    check_job(90, 8, 2, 1, 1, 0.0f, 107);
    check_job(40, 64, 2, 64, 0, 0.0f, 108);
    check_job(1100, 64, 3, 1, 512, 0.0f, 109);
}

TEST_CASE("cuda attention scorer: jobs queue, accumulators add up, bad input is named", "[cuda][analyze]") {
    PKV_REQUIRE_GPU_ANALYZE();
    const int64_t n = 120;
    const int D = 64;
    std::mt19937 rng(7);
    const std::vector<float> q = normal(size_t(n) * D, rng), k = normal(size_t(n) * D, rng),
                             v = normal(size_t(n) * D, rng);
    const std::vector<TestCache> tc = make_caches(k, v, n, rng);
    // Two jobs into one accumulator per cache, and two caches sharing one accumulator,
    // equal the CPU's sums of the same calls.
    std::vector<pkv::AttnAccum> cpu(tc.size()), gpu(tc.size());
    std::vector<pkv::AttnCache> cpu_c = views(tc, cpu), gpu_c = views(tc, gpu);
    cpu_c[2].acc = cpu_c[1].acc;
    gpu_c[2].acc = gpu_c[1].acc;
    auto scorer = pkv::cuda::make_attention_scorer(0);
    CHECK(scorer->description().rfind("cuda:0 ", 0) == 0);
    pkv::AttentionJob job;
    job.q = {q.data()};
    job.k = k.data();
    job.v = v.data();
    job.n = n;
    job.D = D;
    job.caches = gpu_c;
    scorer->submit(job);
    job.n = 100;  // a prefix: another sequence of the same head
    scorer->submit(job);
    scorer->finish();
    for (int64_t len : {n, int64_t{100}})
        pkv::accumulate_attention(q.data(), k.data(), v.data(), len, D, 1, cpu_c, 0, 0.0f);
    for (size_t c = 0; c < tc.size(); ++c)
        if (c != 2) require_close(gpu[c], cpu[c], "two jobs, cache " + tc[c].name);
    CHECK(gpu[2].kl_rows == 0);

    std::vector<float> wide(size_t(n) * 300, 0.5f);
    job.q = {wide.data()};
    job.k = job.v = wide.data();
    job.D = 300;
    job.caches = {{wide.data(), tc[0].flush_k.data(), wide.data(), tc[0].flush_v.data(), &gpu[0]}};
    CHECK_THROWS_WITH(scorer->submit(job), ContainsSubstring("head_dim 300") && ContainsSubstring("at most 256"));
    CHECK_THROWS_WITH(pkv::cuda::make_attention_scorer(pkv::cuda::device_count()), ContainsSubstring("no CUDA device"));
}
