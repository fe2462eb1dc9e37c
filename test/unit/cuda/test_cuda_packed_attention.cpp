// Parity of the device decode attention over a packed cache (pkv/cuda/packed_attention.h)
// with pkv_rt::PackedCache::decode_attention_ref on the same cache, and the mirror's
// refusals. Every case needs a CUDA device and skips (saying so) without one.
//
// Tolerance: 1e-4 of the largest |v̂| of the cache, on every output element, against both
// decode_attention_ref (fp32) and a softmax in double over dequantize(). Both fp32 paths
// compute the same sums in different orders (the device splits each dot product over the
// threads of a token and merges splits all at once): scores are D-term sums (plus the
// pattern and zero-point terms) of size |q||k| ~ D, and outputs n-term weighted sums of
// values up to max|v̂|, each within a few hundred float roundings (u = 2^-24); 1e-4 max|v̂|
// bounds both with margin for n <= 1100 and D <= 256 (the runtime's own test uses the same
// bound against double). That the bound resolves errors that matter is checked too: the
// quantized caches' outputs differ from attention over the unquantized rows by more than
// 10 times the tolerance, and attention without its top-scoring token by more than it.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/cuda/device.h"
#include "pkv/cuda/packed_attention.h"
#include "unit/runtime/packed_fixture.h"

namespace {

#define PKV_REQUIRE_GPU_PACKED() \
    if (pkv::cuda::device_count() == 0) PKV_SKIP("no CUDA device: packed-cache attention test not run")

using pkv::cuda::PackedCacheDevice;
using pkv_rt::CacheMethod;
using pkv_rt::KvPart;
using rt_test::error_of;
using rt_test::Floats;
using rt_test::PackedCase;
using rt_test::plain_attention;

// A cache of c.n_seq sequences, sequence s holding lengths[s] tokens (its own data of
// max_tokens rows, seed 100 + s), every one past its prefill of c.P tokens; one table
// (sequence 0's) serves all.
struct Filled {
    std::vector<rt_test::PackedData> data;
    std::unique_ptr<pkv_rt::PackedCache> cache;
};

Filled fill(PackedCase c, const std::vector<int64_t>& lengths, int64_t max_tokens) {
    Filled f;
    c.n = max_tokens;
    for (int s = 0; s < c.n_seq; ++s) f.data.push_back(rt_test::make_data(c, 100 + static_cast<uint32_t>(s)));
    f.cache = std::make_unique<pkv_rt::PackedCache>(rt_test::make_config(c, max_tokens));
    rt_test::give_patterns(*f.cache, c, f.data[0]);
    for (int s = 0; s < c.n_seq; ++s) {
        rt_test::append_range(*f.cache, c, f.data[static_cast<size_t>(s)], s, 0, std::min(c.P, lengths[s]));
        f.cache->end_prefill(s);
    }
    for (int s = 0; s < c.n_seq; ++s)
        for (int64_t t = c.P; t < lengths[static_cast<size_t>(s)]; ++t)
            rt_test::append_range(*f.cache, c, f.data[static_cast<size_t>(s)], s, t, t + 1);
    return f;
}

std::vector<float> queries(const PackedCase& c, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> q(static_cast<size_t>(c.n_seq * c.n_head * c.D));
    for (float& x : q) x = normal(rng);
    return q;
}

struct Worst {
    double ref = 0, plain = 0, exact = 0, dropped = 1e300, vmax = 0;
};

// Device output `dev` against decode_attention_ref and plain attention over the cache.
Worst compare(const PackedCase& c, const Filled& f, const float* q, const float* dev) {
    const pkv_rt::PackedCache& cache = *f.cache;
    const int H = c.n_head, D = c.D;
    Floats ref(static_cast<size_t>(c.n_seq * H * D));
    cache.decode_attention_ref(0, q, c.n_seq, ref.data());
    Worst w;
    for (int s = 0; s < c.n_seq; ++s) {
        const int64_t n = cache.tokens(0, s);
        std::vector<float> k(static_cast<size_t>(n * D)), v(k.size());
        for (int qh = 0; qh < H; ++qh) {
            const int h = qh / (H / c.n_head_kv);
            cache.dequantize(0, s, h, KvPart::k, k.data());
            cache.dequantize(0, s, h, KvPart::v, v.data());
            for (const float x : v) w.vmax = std::max(w.vmax, static_cast<double>(std::fabs(x)));
            const float* qv = q + (s * H + qh) * D;
            const std::vector<double> plain = plain_attention(qv, k.data(), v.data(), n, D);
            const std::vector<double> dropped = plain_attention(qv, k.data(), v.data(), n, D, true);
            const rt_test::PackedData& dd = f.data[static_cast<size_t>(s)];
            const std::vector<double> exact =
                plain_attention(qv, dd.k[static_cast<size_t>(h)].data(), dd.v[static_cast<size_t>(h)].data(), n, D);
            double drop = 0.0;
            for (int e = 0; e < D; ++e) {
                const size_t at = static_cast<size_t>((s * H + qh) * D + e);
                const double x = dev[at];
                w.ref = std::max(w.ref, std::fabs(x - ref.data()[at]));
                w.plain = std::max(w.plain, std::fabs(x - plain[static_cast<size_t>(e)]));
                w.exact = std::max(w.exact, std::fabs(x - exact[static_cast<size_t>(e)]));
                drop = std::max(drop, std::fabs(x - dropped[static_cast<size_t>(e)]));
            }
            w.dropped = std::min(w.dropped, drop);
        }
    }
    return w;
}

// Builds the case's cache, uploads it and checks the device against the reference with
// the chosen split count and with 1 and 3 splits.
void check_case(const PackedCase& c, const std::vector<int64_t>& lengths, const std::string& kernel = "general") {
    const Filled f = fill(c, lengths, *std::max_element(lengths.begin(), lengths.end()) + 5);
    PackedCacheDevice dev(f.cache->config());
    dev.upload(*f.cache);
    const std::vector<float> qv = queries(c, 7);
    Floats q(qv.size()), out(qv.size());
    std::copy(qv.begin(), qv.end(), q.data());
    for (const int splits : {0, 1, 3}) {
        dev.decode_attention(0, q.data(), c.n_seq, out.data(), splits);
        const Worst w = compare(c, f, q.data(), out.data());
        const double tol = 1e-4 * w.vmax;
        INFO(pkv_rt::to_string(c.method) << " D " << c.D << " M " << c.M << " bits " << c.bits << " R " << c.R << " G "
                                         << c.G << " heads " << c.n_head << "/" << c.n_head_kv << " seqs " << c.n_seq
                                         << " splits " << splits << " (chosen " << dev.choose_splits(0)
                                         << "): worst vs ref " << w.ref << ", vs double " << w.plain
                                         << ", vs unquantized " << w.exact << ", one token dropped " << w.dropped
                                         << ", tol " << tol);
        CHECK(std::string(dev.last_split_kernel()) == kernel);
        CHECK(w.ref <= tol);
        CHECK(w.plain <= tol);
        CHECK(w.dropped > tol);
        if (c.method != CacheMethod::fp16) CHECK(w.exact > 10 * tol);
    }
}

double max_difference(const float* a, const float* b, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
    return worst;
}

}  // namespace

// The general split kernel (PKV_DECODE_KERNEL=general) on every geometry it serves.
TEST_CASE("cuda packed attention: patternkv-table equals decode_attention_ref") {
    PKV_REQUIRE_GPU_PACKED();
    struct General {
        General() { setenv("PKV_DECODE_KERNEL", "general", 1); }
        ~General() { unsetenv("PKV_DECODE_KERNEL"); }
    } general;
    PackedCase c;
    c.P = 70;
    SECTION("D 64, M 16, 2 bits, GQA 2:1, one sequence of 201 tokens") { check_case(c, {201}); }
    SECTION("D 64, M 16, 2 bits, GQA 2:1, five sequences") {
        c.n_seq = 5;
        check_case(c, {201, 150, 71, 333, 97});
    }
    SECTION("D 128, M 256, 3 bits, G 16, GQA 4:1, five sequences") {
        c.D = 128, c.M = 256, c.bits = 3, c.G = 16, c.n_head = 8, c.n_head_kv = 2, c.n_seq = 5;
        check_case(c, {190, 257, 70, 101, 223});
    }
    SECTION("D 128, M 1, 4 bits, GQA 1:1") {
        c.D = 128, c.M = 1, c.bits = 4, c.n_head = 2, c.n_head_kv = 2;
        check_case(c, {245});
    }
    SECTION("D 64, M 16, 3 bits, GQA 8:1, R 64, G 8, a long context (many splits)") {
        c.bits = 3, c.R = 64, c.G = 8, c.n_head = 8, c.n_head_kv = 1, c.n_seq = 2;
        check_case(c, {1037, 600});
    }
    SECTION("D 256, M 16, 2 bits, GQA 4:1") {
        c.D = 256, c.n_head = 8, c.n_head_kv = 2, c.G = 16;
        check_case(c, {150});
    }
    SECTION("D 128, M 16, 4 bits, minmax and L2 assignment, R 128, G 128 (Llama-like)") {
        c.D = 128, c.bits = 4, c.R = 128, c.G = 128, c.n_head = 8, c.n_head_kv = 2, c.P = 300;
        c.assign = pkv_rt::Assign::l2;
        check_case(c, {530});
    }
}

TEST_CASE("cuda packed attention: kivi and fp16 equal decode_attention_ref") {
    PKV_REQUIRE_GPU_PACKED();
    struct General {
        General() { setenv("PKV_DECODE_KERNEL", "general", 1); }
        ~General() { unsetenv("PKV_DECODE_KERNEL"); }
    } general;
    PackedCase c;
    c.P = 70;
    SECTION("kivi, D 128, 2 bits, GQA 4:1, five sequences") {
        c.method = CacheMethod::kivi, c.D = 128, c.n_head = 8, c.n_head_kv = 2, c.n_seq = 5;
        check_case(c, {201, 150, 71, 333, 97});
    }
    SECTION("kivi, D 64, 3 bits, GQA 1:1") {
        c.method = CacheMethod::kivi, c.bits = 3, c.n_head = 2, c.n_head_kv = 2;
        check_case(c, {199});
    }
    SECTION("kivi, D 64, 4 bits, G 16") {
        c.method = CacheMethod::kivi, c.bits = 4, c.G = 16;
        check_case(c, {250});
    }
    SECTION("fp16, D 128, GQA 4:1, five sequences") {
        c.method = CacheMethod::fp16, c.D = 128, c.n_head = 8, c.n_head_kv = 2, c.n_seq = 5;
        check_case(c, {201, 150, 71, 333, 97});
    }
    SECTION("fp16, D 64, GQA 1:1, 300 tokens (three 128-token tiles)") {
        c.method = CacheMethod::fp16, c.n_head = 2, c.n_head_kv = 2;
        check_case(c, {300});
    }
    SECTION("fp16, D 64, GQA 2:1, sequences of 1037 and 45 tokens (many splits)") {
        c.method = CacheMethod::fp16, c.n_head = 4, c.n_head_kv = 2, c.n_seq = 2;
        check_case(c, {1037, 45});
    }
}

// The fp16 warp split kernel (packed_attention_fp16.cu, the default where it applies) against
// the same reference and tolerance: GQA 1, 2 and 4 at D 64 and 128, rounds of 8 tokens that
// end mid-split, splits without tokens; GQA 8 falls back to the general kernel.
TEST_CASE("cuda packed attention: the fp16 warp kernel equals decode_attention_ref") {
    PKV_REQUIRE_GPU_PACKED();
    PackedCase c;
    c.P = 70;
    c.method = CacheMethod::fp16;
    SECTION("D 128, GQA 4:1, five sequences") {
        c.D = 128, c.n_head = 8, c.n_head_kv = 2, c.n_seq = 5;
        check_case(c, {201, 150, 71, 333, 97}, "fp16-warp");
    }
    SECTION("D 64, GQA 1:1, 300 tokens") {
        c.n_head = 2, c.n_head_kv = 2;
        check_case(c, {300}, "fp16-warp");
    }
    SECTION("D 64, GQA 2:1, sequences of 1037 and 45 tokens") {
        c.n_head = 4, c.n_head_kv = 2, c.n_seq = 2;
        check_case(c, {1037, 45}, "fp16-warp");
    }
    SECTION("D 128, GQA 8:1 (the general kernel)") {
        c.D = 128, c.n_head = 8, c.n_head_kv = 1;
        check_case(c, {333});
    }
}

// The quantized warp split kernel (packed_attention_quant.cu, the default where it applies)
// against the same reference and tolerance: KIVI and patternkv-table at 2 and 4 bits, D 64
// and 128, GQA 1, 2 and 4, V groups of 32 and 128 channels, K groups smaller than a block,
// ring tokens, rounds ending mid-split, splits without tokens; 3 bits and GQA 8 fall back to
// the general kernel. Run twice: by default (the lanes' path everywhere) and with
// PKV_DECODE_KERNEL=mma (2 bits: flushed splits on the tensor-core path, "quant-mma").
TEST_CASE("cuda packed attention: the quantized warp kernel equals decode_attention_ref") {
    PKV_REQUIRE_GPU_PACKED();
    const bool tensor_cores = GENERATE(false, true);
    struct Mode {
        explicit Mode(bool on) {
            if (!on) setenv("PKV_DECODE_KERNEL", "lanes", 1);
        }
        ~Mode() { unsetenv("PKV_DECODE_KERNEL"); }
    } mode(tensor_cores);
    const std::string two_bit = tensor_cores ? "quant-mma" : "quant-warp";
    INFO("PKV_DECODE_KERNEL=" << (tensor_cores ? "(default)" : "lanes"));
    PackedCase c;
    c.P = 70;
    SECTION("patternkv-table, D 64, M 16, 2 bits, GQA 2:1, five sequences") {
        c.n_seq = 5;
        check_case(c, {201, 150, 71, 333, 97}, two_bit);
    }
    SECTION("patternkv-table, D 128, M 32, 2 bits, GQA 4:1, R 128, G 128, sequences of 1037 and 45 tokens") {
        c.D = 128, c.M = 32, c.R = 128, c.G = 128, c.n_head = 8, c.n_head_kv = 2, c.n_seq = 2, c.P = 300;
        check_case(c, {1037, 45}, two_bit);
    }
    SECTION("patternkv-table, D 128, M 256, 4 bits, L2 assignment, GQA 1:1, R 64, G 32") {
        c.D = 128, c.M = 256, c.bits = 4, c.R = 64, c.G = 32, c.n_head = 2, c.n_head_kv = 2;
        c.assign = pkv_rt::Assign::l2;
        check_case(c, {530}, "quant-warp");
    }
    SECTION("kivi, D 128, 2 bits, GQA 4:1, five sequences") {
        c.method = CacheMethod::kivi, c.D = 128, c.n_head = 8, c.n_head_kv = 2, c.n_seq = 5;
        check_case(c, {201, 150, 71, 333, 97}, two_bit);
    }
    SECTION("kivi, D 64, 4 bits, GQA 1:1") {
        c.method = CacheMethod::kivi, c.bits = 4, c.n_head = 2, c.n_head_kv = 2;
        check_case(c, {250}, "quant-warp");
    }
    SECTION("kivi, D 64, 2 bits, GQA 2:1, R 64, G 32, sequences of 1037 and 600 tokens") {
        c.method = CacheMethod::kivi, c.R = 64, c.n_seq = 2;
        check_case(c, {1037, 600}, two_bit);
    }
    SECTION("patternkv-table, D 128, M 256, 2 bits, GQA 1:1, R 64, G 32 (V groups of 32), 1037 tokens") {
        c.D = 128, c.M = 256, c.R = 64, c.G = 32, c.n_head = 2, c.n_head_kv = 2;
        check_case(c, {1037}, two_bit);
    }
    SECTION("kivi, D 128, 2 bits, GQA 4:1, R 128, G 64 (V groups of 64), sequences of 2000 and 700 tokens") {
        c.method = CacheMethod::kivi, c.D = 128, c.R = 128, c.G = 64, c.n_head = 8, c.n_head_kv = 2, c.n_seq = 2;
        c.P = 300;
        check_case(c, {2000, 700}, two_bit);
    }
    SECTION("patternkv-table, D 64, 3 bits (the general kernel)") {
        c.bits = 3;
        check_case(c, {201});
    }
    SECTION("kivi, D 128, 2 bits, GQA 8:1 (the general kernel)") {
        c.method = CacheMethod::kivi, c.D = 128, c.n_head = 8, c.n_head_kv = 1;
        check_case(c, {333});
    }
}

// That the tensor-core path really serves the flushed splits: its sums are ordered and
// rounded differently from the lanes' path, so the two outputs differ in their last bits
// (and agree within the tolerance of the parity tests above, which bound both).
TEST_CASE("cuda packed attention: flushed 2-bit splits take the tensor-core path") {
    PKV_REQUIRE_GPU_PACKED();
    for (const CacheMethod method : {CacheMethod::patternkv_table, CacheMethod::kivi}) {
        PackedCase c;
        c.method = method, c.D = 128, c.M = 32, c.R = 64, c.G = 64, c.n_head = 8, c.n_head_kv = 2, c.P = 300;
        const Filled f = fill(c, {1037}, 1040);
        PackedCacheDevice mma(f.cache->config());
        setenv("PKV_DECODE_KERNEL", "lanes", 1);
        PackedCacheDevice lanes(f.cache->config());
        unsetenv("PKV_DECODE_KERNEL");
        mma.upload(*f.cache);
        lanes.upload(*f.cache);
        const std::vector<float> qv = queries(c, 9);
        Floats q(qv.size()), a(qv.size()), b(qv.size());
        std::copy(qv.begin(), qv.end(), q.data());
        mma.decode_attention(0, q.data(), c.n_seq, a.data(), 8);
        lanes.decode_attention(0, q.data(), c.n_seq, b.data(), 8);
        const Worst w = compare(c, f, q.data(), a.data());
        const double diff = max_difference(a.data(), b.data(), qv.size());
        INFO(pkv_rt::to_string(method) << ": tensor-core vs lanes' path " << diff << ", vs ref " << w.ref << ", tol "
                                       << 1e-4 * w.vmax);
        CHECK(std::string(mma.last_split_kernel()) == "quant-mma");
        CHECK(std::string(lanes.last_split_kernel()) == "quant-warp");
        CHECK(diff > 0.0);
        CHECK(diff <= 1e-4 * w.vmax);
        CHECK(w.ref <= 1e-4 * w.vmax);
    }
}

TEST_CASE("cuda packed attention: sync copies only what decode steps changed") {
    PKV_REQUIRE_GPU_PACKED();
    for (const CacheMethod method : {CacheMethod::patternkv_table, CacheMethod::kivi, CacheMethod::fp16}) {
        PackedCase c;
        c.method = method, c.n_seq = 2, c.P = 70;
        const int64_t steps = 70;
        Filled f = fill(c, {100, 120}, 120 + steps);
        PackedCacheDevice inc(f.cache->config()), full(f.cache->config());
        inc.upload(*f.cache);
        const int64_t full_bytes = inc.last_upload_bytes();
        const std::vector<float> qv = queries(c, 8);
        Floats q(qv.size()), a(qv.size()), b(qv.size());
        std::copy(qv.begin(), qv.end(), q.data());
        // Decode steps crossing block flushes (R = 32), synced every 7 steps and at the end.
        for (int64_t t = 0; t < steps; ++t) {
            rt_test::append_range(*f.cache, c, f.data[0], 0, 100 + t, 101 + t);
            rt_test::append_range(*f.cache, c, f.data[1], 1, 120 + t, 121 + t);
            if (t % 7 != 0 && t != steps - 1) continue;
            inc.sync(*f.cache);
            INFO(pkv_rt::to_string(method) << " step " << t << ": sync copied " << inc.last_upload_bytes()
                                           << " bytes, a full upload " << full_bytes);
            CHECK(inc.last_upload_bytes() < full_bytes / 2);
            full.upload(*f.cache);
            inc.decode_attention(0, q.data(), c.n_seq, a.data(), 2);
            full.decode_attention(0, q.data(), c.n_seq, b.data(), 2);
            // The same bytes in both mirrors: the same results but for the order of the
            // kernels' shared-memory atomic adds (a few float roundings); a missed ring row
            // or block would move them by far more (the tolerance of check_case).
            const Worst w = compare(c, f, q.data(), a.data());
            CHECK(w.ref <= 1e-4 * w.vmax);
            CHECK(max_difference(a.data(), b.data(), qv.size()) <= 1e-6 * w.vmax);
        }
        f.cache->flush(0);
        f.cache->flush(1);
        inc.sync(*f.cache);
        full.upload(*f.cache);
        inc.decode_attention(0, q.data(), c.n_seq, a.data());
        full.decode_attention(0, q.data(), c.n_seq, b.data());
        const Worst w = compare(c, f, q.data(), a.data());
        CHECK(w.ref <= 1e-4 * w.vmax);
        CHECK(max_difference(a.data(), b.data(), qv.size()) <= 1e-6 * w.vmax);
    }
}

TEST_CASE("cuda packed attention: mismatched caches, bad batches and overlong states are refused") {
    PKV_REQUIRE_GPU_PACKED();
    PackedCase c;
    c.n_seq = 2, c.P = 40;
    Filled f = fill(c, {60, 50}, 80);
    const pkv_rt::CacheConfig cfg = f.cache->config();
    {
        pkv_rt::CacheConfig other = cfg;
        other.head_dim = 128;
        PackedCacheDevice dev(other);
        CHECK(error_of([&] { dev.upload(*f.cache); }) ==
              "packed cache (device): upload: the host cache's head_dim is 64 but the device cache's is 128");
        other = cfg;
        other.max_tokens = 70;
        PackedCacheDevice shorter(other);
        CHECK(error_of([&] { shorter.upload(*f.cache); }) ==
              "packed cache (device): upload: the host cache's max_tokens is 80 but the device cache's is 70");
        other = cfg;
        other.bits = 3;
        PackedCacheDevice bits3(other);
        CHECK(error_of([&] { bits3.sync(*f.cache); }) ==
              "packed cache (device): upload: the host cache's bits is 2 but the device cache's is 3");
        other = cfg;
        other.method = CacheMethod::kivi, other.k_patterns = other.v_patterns = 0;
        PackedCacheDevice kivi(other);
        CHECK(error_of([&] { kivi.upload(*f.cache); }) ==
              "packed cache (device): upload: the host cache's method is patternkv-table but the device cache's is "
              "kivi");
    }
    PackedCacheDevice dev(cfg);
    dev.upload(*f.cache);
    const size_t elems = static_cast<size_t>(c.n_seq * c.n_head * c.D);
    Floats q(elems + 4), out(elems + 4);
    CHECK(error_of([&] { dev.decode_attention(0, q.data(), 2, out.data()); }).empty());
    CHECK(error_of([&] { dev.decode_attention(0, q.data(), 1, out.data()); }) ==
          "packed cache (device): decode_attention: a query batch of 1 sequences, expected one query per sequence "
          "(2)");
    CHECK(error_of([&] { dev.decode_attention(0, q.data() + 1, 2, out.data()); }) ==
          "packed cache (device): decode_attention: the query array is not aligned to 16 bytes");
    CHECK(error_of([&] { dev.decode_attention(0, q.data(), 2, out.data() + 2); }) ==
          "packed cache (device): decode_attention: the output array is not aligned to 16 bytes");
    CHECK(error_of([&] { dev.decode_attention(1, q.data(), 2, out.data()); }) ==
          "packed cache (device): decode_attention: layer 1 is outside [0, 1)");
    // Counts set by hand: longer than allocated, not a block prefix, beyond the ring.
    CHECK(error_of([&] { dev.set_state(0, 0, 81, 64, 64); }) ==
          "packed cache (device): set_state: layer 0 sequence 0: 81 tokens, expected 0..80 (allocated)");
    CHECK(error_of([&] { dev.set_state(0, 0, 70, 40, 32); }) ==
          "packed cache (device): set_state: layer 0 sequence 0: nK 40, expected a multiple of R 32 in [0, 70]");
    CHECK(error_of([&] { dev.set_state(0, 1, 70, 32, 32); }) ==
          "packed cache (device): set_state: layer 0 sequence 1: 38 K and 38 V ring tokens exceed the ring's R + 1 "
          "= 33 slots");
    // A sequence back in its prefill (a fresh host cache) is refused, as the reference does.
    pkv_rt::PackedCache fresh(cfg);
    rt_test::give_patterns(fresh, c, f.data[0]);
    rt_test::append_range(fresh, c, f.data[0], 0, 0, 10);
    rt_test::append_range(fresh, c, f.data[1], 1, 0, 10);
    fresh.end_prefill(0);
    dev.upload(fresh);
    CHECK(error_of([&] { dev.decode_attention(0, q.data(), 2, out.data()); }) ==
          "packed cache (device): decode_attention: sequence 1 is still in its prefill (attend over the prompt in "
          "full precision; call end_prefill first)");
    // Geometries without a kernel.
    pkv_rt::CacheConfig odd = cfg;
    odd.head_dim = 32, odd.group = 32;
    CHECK(error_of([&] { PackedCacheDevice d(odd); }) ==
          "packed cache (device): head_dim 32 has no kernel: expected 64, 128 or 256");
    odd = cfg;
    odd.n_head = 6;
    CHECK(error_of([&] { PackedCacheDevice d(odd); }) ==
          "packed cache (device): n_head / n_head_kv = 3 has no kernel: expected 1, 2, 4 or 8");
}

namespace {

// Bytes of a host cache's array as the device mirror lays it out (the host's arrays are
// contiguous from their first element).
std::vector<uint8_t> host_bytes(const pkv_rt::PackedCache& h, pkv::cuda::PackedArray a, int64_t bytes) {
    const uint8_t* p = nullptr;
    switch (a) {
        case pkv::cuda::PackedArray::k_blocks: p = h.block(0, 0, 0, KvPart::k, 0); break;
        case pkv::cuda::PackedArray::v_blocks: p = h.block(0, 0, 0, KvPart::v, 0); break;
        default: p = reinterpret_cast<const uint8_t*>(h.ring_row(0, 0, 0, KvPart::k, 0)); break;
    }
    return std::vector<uint8_t>(p, p + bytes);
}

// Device decode steps against the host's: sequence s starts at starts[s] tokens (past a
// prefill of c.P) and takes `steps` more, one per step in every sequence; the K blocks, V
// blocks and ring must equal the host's byte for byte after every few steps, and attention
// over the result must equal the reference.
void check_append(PackedCase c, const std::vector<int64_t>& starts, int64_t steps) {
    const int64_t max_tokens = *std::max_element(starts.begin(), starts.end()) + steps;
    Filled f = fill(c, starts, max_tokens);
    PackedCacheDevice dev(f.cache->config());
    dev.upload(*f.cache);
    const size_t row = static_cast<size_t>(c.n_head_kv) * static_cast<size_t>(c.D);
    std::vector<float> k(static_cast<size_t>(c.n_seq) * row), v(k.size());
    using pkv::cuda::PackedArray;
    for (int64_t step = 0; step < steps; ++step) {
        for (int s = 0; s < c.n_seq; ++s) {
            const int64_t t = starts[static_cast<size_t>(s)] + step;
            const rt_test::PackedData& d = f.data[static_cast<size_t>(s)];
            rt_test::append_range(*f.cache, c, d, s, t, t + 1);
            for (int h = 0; h < c.n_head_kv; ++h)
                for (int e = 0; e < c.D; ++e) {
                    const size_t dst = static_cast<size_t>(s) * row + static_cast<size_t>(h * c.D + e);
                    k[dst] = d.k[static_cast<size_t>(h)][static_cast<size_t>(t * c.D + e)];
                    v[dst] = d.v[static_cast<size_t>(h)][static_cast<size_t>(t * c.D + e)];
                }
        }
        dev.append(0, k.data(), v.data());
        if (step % 5 != 4 && step != steps - 1) continue;
        for (const PackedArray a : {PackedArray::k_blocks, PackedArray::v_blocks, PackedArray::ring}) {
            const std::vector<uint8_t> got = dev.download(a);
            const std::vector<uint8_t> want = host_bytes(*f.cache, a, static_cast<int64_t>(got.size()));
            size_t first = 0;
            while (first < got.size() && got[first] == want[first]) ++first;
            INFO(pkv_rt::to_string(c.method) << " D " << c.D << " M " << c.M << " bits " << c.bits << " R " << c.R
                                             << " G " << c.G << " step " << step << " array " << static_cast<int>(a)
                                             << ": first differing byte " << first << " of " << got.size());
            CHECK(first == got.size());
        }
    }
    const std::vector<float> qv = queries(c, 9);
    Floats q(qv.size()), out(qv.size());
    std::copy(qv.begin(), qv.end(), q.data());
    dev.decode_attention(0, q.data(), c.n_seq, out.data());
    const Worst w = compare(c, f, q.data(), out.data());
    CHECK(w.ref <= 1e-4 * w.vmax);
    CHECK(w.dropped > 1e-4 * w.vmax);
}

}  // namespace

TEST_CASE("cuda packed append: device decode steps write the host's bytes") {
    PKV_REQUIRE_GPU_PACKED();
    PackedCase c;
    c.n_seq = 3;
    SECTION("patternkv-table, D 64, M 16, 2 bits, min-max, three sequences crossing flushes") {
        check_append(c, {70, 95, 130}, 75);
    }
    SECTION("patternkv-table, D 128, M 256, 3 bits, G 16, GQA 4:1, L2") {
        c.D = 128, c.M = 256, c.bits = 3, c.G = 16, c.n_head = 8, c.assign = pkv_rt::Assign::l2;
        check_append(c, {70, 101, 64}, 70);
    }
    SECTION("patternkv-table, D 256, M 8, 4 bits, R 64, G 64") {
        c.D = 256, c.M = 8, c.bits = 4, c.R = 64, c.G = 64, c.n_seq = 2;
        check_append(c, {80, 128}, 140);
    }
    SECTION("kivi, D 128, 2 bits, GQA 4:1") {
        c.method = CacheMethod::kivi, c.D = 128, c.n_head = 8;
        check_append(c, {70, 90, 33}, 70);
    }
    SECTION("kivi, D 64, 3 bits, G 16") {
        c.method = CacheMethod::kivi, c.bits = 3, c.G = 16;
        check_append(c, {70, 75, 100}, 40);
    }
    SECTION("fp16, D 64") {
        c.method = CacheMethod::fp16;
        check_append(c, {70, 80, 90}, 20);
    }
}

TEST_CASE("cuda packed append: prefill, overlong caches and bad rows are refused") {
    PKV_REQUIRE_GPU_PACKED();
    PackedCase c;
    c.n_seq = 2, c.P = 40;
    Filled f = fill(c, {60, 50}, 61);
    PackedCacheDevice dev(f.cache->config());
    dev.upload(*f.cache);
    const size_t elems = static_cast<size_t>(c.n_seq * c.n_head_kv * c.D);
    std::vector<float> k(elems, 0.25f), v(elems, -0.5f);
    CHECK(error_of([&] { dev.append(0, k.data(), v.data()); }).empty());
    CHECK(error_of([&] { dev.append(0, k.data(), v.data()); }) ==
          "packed cache (device): append: layer 0 sequence 0: 61 + 1 tokens exceed the 61 allocated per sequence");
    CHECK(error_of([&] { dev.append(1, k.data(), v.data()); }) ==
          "packed cache (device): append: layer 1 is outside [0, 1)");
    dev.upload(*f.cache);
    v[5] = 70000.0f;
    CHECK(error_of([&] { dev.append(0, k.data(), v.data()); }) ==
          "packed cache (device): append: layer 0: a new row is not a finite binary16 value, or a quantizer group's "
          "zero or scale is beyond the binary16 range (upload the cache again before using it)");
    CHECK(dev.fault());
    dev.upload(*f.cache);
    CHECK_FALSE(dev.fault());
    pkv_rt::PackedCache fresh(f.cache->config());
    rt_test::give_patterns(fresh, c, f.data[0]);
    rt_test::append_range(fresh, c, f.data[0], 0, 0, 10);
    rt_test::append_range(fresh, c, f.data[1], 1, 0, 10);
    fresh.end_prefill(0);
    dev.upload(fresh);
    CHECK(error_of([&] { dev.append(0, k.data(), v.data()); }) ==
          "packed cache (device): append: sequence 1 is still in its prefill (device appends are decode steps; append "
          "the prompt on the host, end_prefill, then upload)");
}
