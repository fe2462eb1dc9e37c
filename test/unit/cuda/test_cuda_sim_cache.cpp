// Parity of the batched cache simulation (pkv/cuda/sim_cache.h) with pkv::simulate_cache,
// problem by problem, on random data: every method it takes, bits 2/3/4/8, groups that do
// and do not divide n, windows, rings (W >= R, W < n, W > n), prefills 0 / mid / n, K and V,
// packed and strided layouts, and the Hadamard rotation.
//
// Tolerances:
//   flush_step, SimBits (every component), stored_from, kept_from: exact (plan_sim_batch
//   replays simulate.cpp's schedule; these tests need no GPU).
//   recon, fp16 / kivi / q4_0 / q8_0 / fp8: bit for bit. The device repeats the host's
//   float operations one by one, and none of them is a multiply-add the host compiler may
//   contract except exact ones.
//   recon, patternkv-table: bit for bit expected with the project's GCC build (the device
//   fuses what that build fuses: clip ratio < 1, the V gate, the L2 distance). Another
//   host compiler may contract otherwise, which moves a code or a gate or a pattern choice
//   on elements near a decision boundary: the test allows differing elements on at most
//   0.5% of a problem's tokens, and requires the device's largest error |recon - x| over
//   the quantized tokens to stay within 1.01 times the host's plus 1e-6. With the triangle
//   inequality that bounds every difference by 2.01 times the host's largest error, about
//   one quantization step of the problem's widest group. Any difference is printed (count
//   and first element), so a drift shows even when it passes.
//   patternkv: its k-means agrees with the host's statistically; check_pattern_device
//   states the bounds.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/cuda/device.h"
#include "pkv/cuda/sim_cache.h"
#include "pkv/kmeans/kmeans_exact.h"
#include "pkv/kmeans/minmax_assign.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/quant/hadamard.h"

namespace {

#define PKV_REQUIRE_GPU_SIM() \
    if (pkv::cuda::device_count() == 0) PKV_SKIP("no CUDA device: GPU cache simulation parity test not run")

using pkv::KvMethod;
using pkv::KvTensor;
using pkv::cuda::SimBatch;
using pkv::cuda::SimProblem;

// Keys and values with the traits that matter to the quantizers: channels of very
// different scales, an outlier channel, occasional exact zeros and repeated values.
std::vector<float> activations(int64_t rows, int64_t stride, uint64_t seed) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> scale(static_cast<size_t>(stride));
    for (auto& s : scale) s = std::exp(0.8f * nd(gen));
    scale[3 % stride] = 12.0f;
    std::vector<float> x(static_cast<size_t>(rows * stride));
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < stride; ++c) {
            float v = scale[c] * nd(gen);
            const uint64_t u = gen() % 97;
            if (u == 0) v = 0.0f;
            if (u == 1 && r > 0) v = x[(r - 1) * stride + c];
            x[r * stride + c] = v;
        }
    return x;
}

// Table patterns [M, D] near some of the data's tokens, so that the V gate passes for
// some tokens and fails for others.
std::vector<float> patterns_near(const std::vector<float>& x, int64_t rows, int64_t stride, int D, int M,
                                 uint64_t seed) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<float> nd(0.0f, 0.05f);
    std::vector<float> p(static_cast<size_t>(M) * D);
    for (int m = 0; m < M; ++m) {
        const int64_t r = static_cast<int64_t>(gen() % static_cast<uint64_t>(rows));
        const float shrink = m % 2 ? 1.0f : 0.3f;
        for (int d = 0; d < D; ++d) p[size_t(m) * D + d] = shrink * x[r * stride + d] + nd(gen);
    }
    return p;
}

struct Case {
    KvMethod method = KvMethod::kivi;
    int bits = 2, group = 32, window = 16, D = 64;
    int64_t stride_heads = 1;  // heads side by side per row (strided layout when > 1)
    bool rotate = false;
    float clip = 1.0f;
    bool l2 = false;
    int M = 8;    // patternkv-table: patterns per view; patternkv: k-means patterns
    int cap = 0;  // patternkv: bank limit
    std::vector<int64_t> lengths{1, 37, 200, 333};
    std::vector<int64_t> rings{0};
};

std::string describe(const Case& c) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s bits %d group %d window %d D %d heads %lld rotate %d clip %.3f %s M %d cap %d",
                  pkv::kv_method_name(c.method), c.bits, c.group, c.window, c.D, static_cast<long long>(c.stride_heads),
                  c.rotate ? 1 : 0, c.clip, c.l2 ? "l2" : "minmax", c.M, c.cap);
    return buf;
}

// Problems: every length x prefill (0, mid, n) x ring x tensor, spread over the heads of
// a [rows, heads · D] matrix (sequences back to back in rows).
struct Built {
    SimBatch batch;
    std::vector<float> x;
    std::vector<std::vector<float>> pats;  // per table view
};

Built build(const Case& c, uint64_t seed) {
    Built b;
    SimBatch& s = b.batch;
    s.params.method = c.method;
    s.params.bits = c.bits;
    s.params.group = c.group;
    s.params.window = c.window;
    s.D = c.D;
    s.rotate = c.rotate;
    if (c.method == KvMethod::patternkv) {
        s.params.patterns = c.M;
        s.params.pattern_cap = c.cap;
        s.params.decode_l2 = c.l2;
        s.params.seed = seed;
    }
    const int64_t stride = c.stride_heads * c.D;
    s.row_stride = c.stride_heads > 1 ? stride : 0;
    int64_t row = 0;
    int head = 0;
    std::vector<SimProblem> probs;
    for (int64_t n : c.lengths)
        for (int64_t P : {int64_t{0}, n / 2 + 1, n})
            for (int64_t W : c.rings)
                for (KvTensor t : {KvTensor::k, KvTensor::v}) {
                    SimProblem q;
                    q.n = n;
                    q.prefill = std::min(P, n);
                    q.ring = W;
                    q.tensor = t;
                    q.col0 = int64_t{head} * c.D;
                    q.row0 = row;
                    // Heads of one row range share rows; the next range starts below.
                    if (++head == c.stride_heads) {
                        head = 0;
                        row += n + 3;  // a gap of untouched rows
                    }
                    probs.push_back(q);
                }
    // A range left open by the last heads still needs its rows.
    int64_t rows = row;
    for (const SimProblem& q : probs) rows = std::max(rows, q.row0 + q.n + 3);
    s.rows = rows;
    b.x = activations(rows, stride, seed);
    if (c.method == KvMethod::patternkv_table) {
        // One view per (problem); views 2i and 2i + 1 alternate M and M = 1 on the V side.
        for (size_t i = 0; i < probs.size(); ++i) {
            const int M = probs[i].tensor == KvTensor::v && i % 5 == 1 ? 1 : c.M;
            b.pats.push_back(patterns_near(b.x, rows, stride, c.D, M, seed + 7 * i + 1));
            pkv::TableHeadView v;
            v.M = M;
            v.clip = c.clip;
            v.gate_z = i % 3 == 0 ? 0.5 : 1.6448536269514722;
            v.assign_l2 = c.l2;
            s.tables.push_back(v);
            probs[i].table = static_cast<int>(i);
        }
        for (size_t i = 0; i < s.tables.size(); ++i) s.tables[i].patterns = b.pats[i].data();
    }
    s.problems = probs;
    return b;
}

// The host reference of one problem: gather its rows, rotate, simulate, rotate back.
pkv::SimResult reference(const Built& b, size_t i) {
    const SimBatch& s = b.batch;
    const SimProblem& q = s.problems[i];
    const int D = s.D;
    const int64_t stride = s.row_stride > 0 ? s.row_stride : D;
    std::vector<float> x(static_cast<size_t>(q.n * D));
    for (int64_t t = 0; t < q.n; ++t) std::copy_n(b.x.begin() + (q.row0 + t) * stride + q.col0, D, x.begin() + t * D);
    if (s.rotate) pkv::hadamard_rotate_rows(x.data(), q.n, D);
    pkv::SimParams sp = s.params;
    sp.ring = q.ring;
    if (q.table >= 0) sp.table_k = sp.table_v = &s.tables[static_cast<size_t>(q.table)];
    pkv::SimResult r = pkv::simulate_cache(sp, q.tensor, x.data(), q.n, D, q.prefill);
    if (s.rotate) pkv::hadamard_rotate_rows(r.recon.data(), q.n, D, nullptr, true);
    return r;
}

void check_bits(const pkv::SimBits& got, const pkv::SimBits& want) {
    CHECK(got.codes == want.codes);
    CHECK(got.params == want.params);
    CHECK(got.index == want.index);
    CHECK(got.gate == want.gate);
    CHECK(got.bank == want.bank);
    CHECK(got.window == want.window);
}

void check_plan(const Built& b) {
    const pkv::cuda::SimBatchPlan plan = pkv::cuda::plan_sim_batch(b.batch);
    REQUIRE(plan.bits.size() == b.batch.problems.size());
    pkv::SimBits sum;
    for (size_t i = 0; i < b.batch.problems.size(); ++i) {
        const SimProblem& q = b.batch.problems[i];
        CAPTURE(i, q.n, q.prefill, q.ring, q.tensor == KvTensor::k ? "K" : "V");
        const pkv::SimResult r = reference(b, i);
        const std::vector<int32_t> flush(plan.flush_step.begin() + plan.offset[i],
                                         plan.flush_step.begin() + plan.offset[i + 1]);
        CHECK(flush == r.flush_step);
        check_bits(plan.bits[i], r.bits);
        CHECK(plan.stored_from[i] == r.stored_from);
        CHECK(plan.kept_from[i] == r.kept_from);
        sum.codes += r.bits.codes;
        sum.window += r.bits.window;
    }
    CHECK(plan.total().codes == sum.codes);
    CHECK(plan.total().window == sum.window);
}

// ws: a workspace reused across calls (null: a fresh one per call).
void check_device(const Built& b, bool exact, pkv::cuda::SimCacheWorkspace* ws = nullptr) {
    const SimBatch& s = b.batch;
    const pkv::cuda::SimBatchResult got =
        ws ? pkv::cuda::simulate_cache_batch(s, b.x.data(), *ws) : pkv::cuda::simulate_cache_batch(s, b.x.data());
    const int D = s.D;
    const int64_t stride = s.row_stride > 0 ? s.row_stride : D;
    REQUIRE(got.recon.size() == b.x.size());
    std::vector<uint8_t> inside(b.x.size(), 0);
    for (size_t i = 0; i < s.problems.size(); ++i) {
        const SimProblem& q = s.problems[i];
        CAPTURE(i, q.n, q.prefill, q.ring, q.tensor == KvTensor::k ? "K" : "V");
        const pkv::SimResult r = reference(b, i);
        const std::vector<int32_t> flush(got.plan.flush_step.begin() + got.plan.offset[i],
                                         got.plan.flush_step.begin() + got.plan.offset[i + 1]);
        CHECK(flush == r.flush_step);
        check_bits(got.plan.bits[i], r.bits);
        int64_t differ = 0, differ_tokens = 0, first = -1;
        double err_gpu = 0.0, err_cpu = 0.0;
        for (int64_t t = 0; t < q.n; ++t) {
            bool token_differs = false;
            for (int d = 0; d < D; ++d) {
                const size_t k = static_cast<size_t>((q.row0 + t) * stride + q.col0 + d);
                inside[k] = 1;
                const float g = got.recon[k], c = r.recon[static_cast<size_t>(t * D + d)];
                if (std::memcmp(&g, &c, sizeof g) != 0) {
                    ++differ;
                    token_differs = true;
                    if (first < 0) first = t * D + d;
                }
                if (r.flush_step[t] != pkv::kNeverQuantized) {
                    err_gpu = std::max(err_gpu, std::fabs(double(g) - b.x[k]));
                    err_cpu = std::max(err_cpu, std::fabs(double(c) - b.x[k]));
                }
            }
            differ_tokens += token_differs;
        }
        if (differ > 0) {
            const size_t k = static_cast<size_t>((q.row0 + first / D) * stride + q.col0 + first % D);
            UNSCOPED_INFO("first difference at token " << first / D << " channel " << first % D << ": device "
                                                       << got.recon[k] << ", host " << r.recon[size_t(first)]);
            WARN(differ << " of " << q.n * D << " elements (" << differ_tokens << " tokens) differ from the host");
        }
        if (exact) {
            CHECK(differ == 0);
        } else {
            CHECK(double(differ_tokens) <= 0.005 * double(q.n));
            CHECK(err_gpu <= 1.01 * err_cpu + 1e-6);
        }
    }
    // Elements outside every problem are x's, bit for bit.
    int64_t touched = 0;
    for (size_t k = 0; k < b.x.size(); ++k)
        if (!inside[k] && std::memcmp(&got.recon[k], &b.x[k], sizeof(float)) != 0) ++touched;
    CHECK(touched == 0);
}

std::vector<Case> sweep() {
    std::vector<Case> cases;
    const std::vector<std::vector<int64_t>> rings{{0}, {0, 48, 150, 1000}};
    for (const auto& ring : rings) {
        for (KvMethod m : {KvMethod::fp16, KvMethod::q4_0, KvMethod::q8_0, KvMethod::fp8}) {
            Case c;
            c.method = m;
            c.rings = ring;
            cases.push_back(c);
        }
        for (int bits : {2, 3, 4, 8})
            for (int group : {16, 32, 128})
                for (int window : {1, 16, 32, 48}) {
                    Case c;
                    c.bits = bits;
                    c.group = group;
                    c.window = window;
                    c.rings = ring;
                    cases.push_back(c);
                }
        for (bool l2 : {false, true})
            for (float clip : {1.0f, 0.85f})
                for (int window : {16, 32}) {
                    Case c;
                    c.method = KvMethod::patternkv_table;
                    c.bits = clip < 1.0f ? 3 : 2;
                    c.group = window == 16 ? 32 : 128;
                    c.window = window;
                    c.l2 = l2;
                    c.clip = clip;
                    c.M = l2 ? 16 : 8;
                    c.rings = ring;
                    cases.push_back(c);
                }
    }
    return cases;
}

bool exact_method(KvMethod m) { return m != KvMethod::patternkv_table; }

}  // namespace

TEST_CASE("cuda sim_cache: the plan's flush steps and bits are simulate_cache's", "[cuda][sim_cache]") {
    uint64_t seed = 100;
    for (const Case& c : sweep()) {
        INFO(describe(c));
        check_plan(build(c, seed++));
    }
}

TEST_CASE("cuda sim_cache: recon twins simulate_cache for every method", "[cuda][sim_cache][parity]") {
    PKV_REQUIRE_GPU_SIM();
    // One workspace for the whole sweep: its buffers grow, shrink back to smaller batches
    // and switch methods, and must never leak one call's state into the next.
    pkv::cuda::SimCacheWorkspace ws;
    uint64_t seed = 500;
    for (const Case& c : sweep()) {
        INFO(describe(c));
        check_device(build(c, seed++), exact_method(c.method), &ws);
    }
}

TEST_CASE("cuda sim_cache: strided heads, D 32 and 128, rotation", "[cuda][sim_cache][parity]") {
    PKV_REQUIRE_GPU_SIM();
    std::vector<Case> cases;
    for (KvMethod m : {KvMethod::kivi, KvMethod::q4_0, KvMethod::q8_0, KvMethod::fp8, KvMethod::patternkv_table}) {
        for (int D : {32, 128}) {
            Case c;
            c.method = m;
            c.D = D;
            c.stride_heads = 3;
            c.group = 32;
            c.window = 32;
            c.rings = {0, 64};
            cases.push_back(c);
        }
        for (bool rot : {false, true}) {
            Case c;
            c.method = m;
            c.rotate = rot;
            c.stride_heads = 2;
            c.rings = {0, 100};
            cases.push_back(c);
        }
    }
    Case fp16rot;
    fp16rot.method = KvMethod::fp16;
    fp16rot.rotate = true;
    cases.push_back(fp16rot);
    uint64_t seed = 900;
    for (const Case& c : cases) {
        INFO(describe(c));
        const Built b = build(c, seed++);
        check_plan(b);
        check_device(b, exact_method(c.method));
    }
}

TEST_CASE("cuda sim_cache: 2048-token sequences with G = R = 128 twin the host", "[cuda][sim_cache][parity]") {
    PKV_REQUIRE_GPU_SIM();
    Case c;
    c.bits = 2;
    c.group = 128;
    c.window = 128;
    c.lengths = {2048, 1500};
    for (KvMethod m : {KvMethod::kivi, KvMethod::q4_0, KvMethod::fp8}) {
        c.method = m;
        INFO(describe(c));
        check_device(build(c, 77), true);
    }
}

TEST_CASE("cuda sim_cache: bad batches are refused with the problem named", "[cuda][sim_cache]") {
    Case c;
    c.lengths = {40};
    Built b = build(c, 3);
    using pkv::Error;
    using pkv::ErrorCode;
    auto fails = [](const SimBatch& s, ErrorCode code, const std::string& text) {
        try {
            pkv::cuda::plan_sim_batch(s);
            FAIL("expected an error containing: " << text);
        } catch (const Error& e) {
            CHECK(e.code() == code);
            CHECK_THAT(std::string(e.what()), ContainsSubstring(text));
        }
    };
    SimBatch s = b.batch;
    s.params.method = KvMethod::patternkv;
    s.D = 512;
    fails(s, ErrorCode::unsupported, "patternkv with head_dim 512: the device k-means takes at most 256");
    s = b.batch;
    s.params.method = KvMethod::patternkv;
    s.params.patterns = 0;
    fails(s, ErrorCode::invalid_argument, "patternkv with 0 patterns");
    s = b.batch;
    s.problems[1].prefill = 41;
    fails(s, ErrorCode::invalid_argument, "problem 1: prefill 41 of 40 tokens");
    s = b.batch;
    s.problems[2].ring = 8;
    fails(s, ErrorCode::invalid_argument, "problem 2: window 16 is longer than the sliding window 8");
    s = b.batch;
    s.problems[0].row0 = s.rows - 10;
    fails(s, ErrorCode::invalid_argument, "problem 0: rows");
    s = b.batch;
    s.params.bits = 5;
    fails(s, ErrorCode::invalid_argument, "--bits 5");
    s = b.batch;
    s.params.group = 48;
    fails(s, ErrorCode::invalid_argument, "group size 48 does not divide head_dim 64");
    s = b.batch;
    s.params.method = KvMethod::q4_0;
    s.D = 48;
    s.row_stride = 64;
    fails(s, ErrorCode::invalid_argument, "head_dim 48: q4_0 needs a multiple of 32");
    s = b.batch;
    s.params.method = KvMethod::patternkv_table;
    fails(s, ErrorCode::invalid_argument, "problem 0: table view -1");
    s = b.batch;
    s.rotate = true;
    s.D = 48;
    s.row_stride = 64;
    fails(s, ErrorCode::invalid_argument, "hadamard rotation needs a power of two");
}

TEST_CASE("cuda sim_cache: a non-finite element is named by problem and token", "[cuda][sim_cache]") {
    PKV_REQUIRE_GPU_SIM();
    for (KvMethod m : {KvMethod::kivi, KvMethod::fp8, KvMethod::patternkv}) {
        Case c;
        c.method = m;
        c.lengths = {40};
        Built b = build(c, 5);
        // Problem 3 (V, prefill 21): token 2 is flushed at the prefill.
        const SimProblem& q = b.batch.problems[3];
        REQUIRE(q.tensor == KvTensor::v);
        b.x[static_cast<size_t>((q.row0 + 2) * 64 + 5)] = std::nanf("");
        try {
            pkv::cuda::simulate_cache_batch(b.batch, b.x.data());
            FAIL("a NaN input was accepted");
        } catch (const pkv::Error& e) {
            CHECK(e.code() == pkv::ErrorCode::invalid_argument);
            CHECK_THAT(std::string(e.what()), ContainsSubstring("problem 3 (V"));
            CHECK_THAT(std::string(e.what()), ContainsSubstring("token 2"));
            CHECK_THAT(std::string(e.what()), ContainsSubstring("expected finite"));
        }
    }
}

namespace {

// patternkv (sim_cache.h, "patternkv"). The device's bank must be kmeans_exact_ref's
// centroids and chebyshev_center's centres bit for bit. Against simulate_cache, whose
// k-means assigns with pkv::kmeans's CPU assigner:
//   - flush steps and bits exactly (check_plan, and here again from the device call);
//   - a problem whose k-means centroids came out equal on both sides (the usual case:
//     the assigners differ only on near-ties) has the host's reconstruction bit for bit,
//     everything after the k-means being exact;
//   - at least half of the problems with a k-means agree that way;
//   - over a case, the squared error of the device's quantized tokens is within 10% of
//     the host's (problems that diverged quantize against other, equally fitted patterns).
// "measured:" lines on stderr give the agreement and the error ratio of each case.
void check_pattern_device(const Built& b, pkv::cuda::SimCacheWorkspace& ws, const std::string& what) {
    const SimBatch& s = b.batch;
    const pkv::cuda::SimBatchResult got = pkv::cuda::simulate_cache_batch(s, b.x.data(), ws);
    const int D = s.D, R = s.params.window;
    const int64_t stride = s.row_stride > 0 ? s.row_stride : D;
    REQUIRE(got.plan.banks.size() == s.problems.size());
    REQUIRE(got.bank.size() == static_cast<size_t>(got.plan.bank_rows * D));
    int with_kmeans = 0, agree = 0;
    double err_dev = 0.0, err_host = 0.0;
    for (size_t i = 0; i < s.problems.size(); ++i) {
        const SimProblem& q = s.problems[i];
        CAPTURE(i, q.n, q.prefill, q.ring, q.tensor == KvTensor::k ? "K" : "V");
        const pkv::SimResult r = reference(b, i);
        const pkv::cuda::SimBatchPlan::Bank& bk = got.plan.banks[i];
        check_bits(got.plan.bits[i], r.bits);
        const std::vector<int32_t> flush(got.plan.flush_step.begin() + got.plan.offset[i],
                                         got.plan.flush_step.begin() + got.plan.offset[i + 1]);
        CHECK(flush == r.flush_step);
        // The problem's tokens in the simulated basis.
        std::vector<float> xr(static_cast<size_t>(q.n * D));
        for (int64_t t = 0; t < q.n; ++t)
            std::copy_n(b.x.begin() + (q.row0 + t) * stride + q.col0, D, xr.begin() + t * D);
        if (s.rotate) pkv::hadamard_rotate_rows(xr.data(), q.n, D);
        const float* bank = got.bank.data() + bk.row0 * D;
        const int64_t s0 = got.plan.stored_from[i];
        bool same_kmeans = bk.k == 0;
        if (bk.k > 0) {
            ++with_kmeans;
            pkv::ExactKMeansSpec spec;
            spec.k = bk.k;
            spec.max_iter = pkv::kPatternKMeansIters;
            spec.tol = pkv::kPatternKMeansTol;
            spec.slices = 1;  // the device sums each cluster in point order
            std::vector<float> cent(static_cast<size_t>(bk.k) * D);
            const int64_t* dr = got.plan.draws.data() + bk.draws;
            pkv::kmeans_exact_ref(xr.data() + s0 * D, bk.prefill, D, D, spec, dr, dr + bk.k,
                                  int64_t{bk.k} * pkv::kPatternKMeansIters, cent.data(), nullptr);
            CHECK(std::memcmp(cent.data(), bank, cent.size() * sizeof(float)) == 0);
            REQUIRE(r.bank.size() >= cent.size());
            same_kmeans = std::memcmp(r.bank.data(), bank, cent.size() * sizeof(float)) == 0;
            agree += same_kmeans;
        }
        std::vector<float> centre(static_cast<size_t>(D));
        for (int c = 0; c < bk.centres; ++c) {
            pkv::chebyshev_center(xr.data() + (s0 + bk.pq + int64_t{c} * R) * D, R, D, centre.data());
            CHECK(std::memcmp(centre.data(), bank + (int64_t{bk.k} + c) * D, D * sizeof(float)) == 0);
        }
        int64_t differ = 0;
        for (int64_t t = 0; t < q.n; ++t)
            for (int d = 0; d < D; ++d) {
                const size_t k = static_cast<size_t>((q.row0 + t) * stride + q.col0 + d);
                const float g = got.recon[k], h = r.recon[static_cast<size_t>(t * D + d)];
                differ += std::memcmp(&g, &h, sizeof g) != 0;
                if (r.flush_step[t] == pkv::kNeverQuantized) continue;
                err_dev += (double(g) - b.x[k]) * (double(g) - b.x[k]);
                err_host += (double(h) - b.x[k]) * (double(h) - b.x[k]);
            }
        if (same_kmeans) CHECK(differ == 0);
    }
    std::fprintf(stderr,
                 "measured: patternkv %s: k-means centroids equal to the host's in %d of %d problems; squared error "
                 "device / host %.4f\n",
                 what.c_str(), agree, with_kmeans, err_host > 0 ? err_dev / err_host : 1.0);
    CHECK(2 * agree >= with_kmeans);
    CHECK(err_dev <= 1.1 * err_host + 1e-9);
}

// patternkv over windows, caps and decode assignments, with rings.
std::vector<Case> pattern_sweep() {
    std::vector<Case> cases;
    for (int window : {16, 32})
        for (int cap : {0, 10})
            for (bool l2 : {false, true}) {
                Case c;
                c.method = KvMethod::patternkv;
                c.window = window;
                c.group = window == 16 ? 32 : 128;
                c.cap = cap;
                c.l2 = l2;
                c.rings = {0, 48, 150, 1000};
                cases.push_back(c);
            }
    return cases;
}

}  // namespace

TEST_CASE("cuda sim_cache: patternkv's plan is simulate_cache's", "[cuda][sim_cache]") {
    uint64_t seed = 300;
    for (const Case& c : pattern_sweep()) {
        INFO(describe(c));
        check_plan(build(c, seed++));
    }
}

TEST_CASE("cuda sim_cache: patternkv's bank twins the exact k-means, its caches the host's",
          "[cuda][sim_cache][parity]") {
    PKV_REQUIRE_GPU_SIM();
    pkv::cuda::SimCacheWorkspace ws;
    std::vector<Case> cases = pattern_sweep();
    for (int D : {32, 128, 256}) {
        Case c;
        c.method = KvMethod::patternkv;
        c.D = D;
        c.stride_heads = 3;
        c.group = 32;
        c.window = 32;
        c.M = 16;
        c.rings = {0, 64};
        cases.push_back(c);
    }
    Case rot;
    rot.method = KvMethod::patternkv;
    rot.rotate = true;
    rot.stride_heads = 2;
    rot.bits = 3;
    cases.push_back(rot);
    Case eval_shape;  // pkv eval's defaults: 32 patterns, G = R = 128, prefill half
    eval_shape.method = KvMethod::patternkv;
    eval_shape.M = 32;
    eval_shape.group = 128;
    eval_shape.window = 128;
    eval_shape.lengths = {1024, 2048};
    cases.push_back(eval_shape);
    uint64_t seed = 700;
    for (const Case& c : cases) {
        INFO(describe(c));
        const Built b = build(c, seed++);
        check_plan(b);
        check_pattern_device(b, ws, describe(c));
    }
}
