// The hooked forward pass: per-step cache attention against a direct computation,
// streaming KL against a direct sum, the unhooked path left untouched, rotv64's block rotation.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "catch.h"
#include "naive_cached.h"
#include "pkv/gguf/gguf.h"
#include "pkv/kvcache/kv_spec.h"
#include "pkv/kvcache/simulate.h"
#include "pkv/model/llama.h"
#include "pkv/model/ops.h"
#include "pkv/pipeline/eval_cache.h"
#include "pkv/quant/hadamard.h"
#include "support/scratch_dir.h"

using namespace pkv;
using namespace pkv_test;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

// A hand-made cache: an affine "reconstruction" (far from exact, so mistakes in
// the bookkeeping show) with keys flushed in blocks of 4 (every sixth token kept
// exact) and values leaving a sliding window of 3; layer 1's head 0 keys exact.
void hand_cache(const KvHookInput& in, KvHookOutput& out) {
    const int n = in.n_tokens, D = in.head_dim;
    if (in.layer == 1 && in.kv_head == 0 && !in.value) return;
    out.recon.resize(static_cast<size_t>(n) * D);
    out.flush_step.resize(n);
    for (int j = 0; j < n; ++j) {
        for (int d = 0; d < D; ++d)
            out.recon[j * D + d] = 0.7f * in.x[j * D + d] + 0.03f * static_cast<float>((j + d) % 5 - 2);
        if (in.value) out.flush_step[j] = j + 3;
        else out.flush_step[j] = j % 6 == 5 ? kNeverQuantized : (j / 4) * 4 + 4;
    }
}

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
}

}  // namespace

TEST_CASE("cached attention equals attention over the per-step cache", "[eval][attention]") {
    const int n = 37, H = 4, HKV = 2, D = 8, qd = H * D, kd = HKV * D;
    const auto q = randn(static_cast<size_t>(n) * qd, 1), k = randn(static_cast<size_t>(n) * kd, 2),
               v = randn(static_cast<size_t>(n) * kd, 3), kh = randn(static_cast<size_t>(n) * kd, 4),
               vh = randn(static_cast<size_t>(n) * kd, 5);
    std::vector<int32_t> kf0(n), vf1(n);
    for (int j = 0; j < n; ++j) {
        kf0[j] = j % 4 == 0 ? kNeverQuantized : j + j % 3;  // some flushed at once, some later
        vf1[j] = std::max(0, j - 2);                        // flush steps before the token itself
    }
    const int32_t* kflush[] = {kf0.data(), nullptr};
    const int32_t* vflush[] = {nullptr, vf1.data()};
    std::vector<float> out(static_cast<size_t>(n) * qd, 0.0f);
    ops::RowMatrix s1, s2;
    // Two row ranges and small query blocks: blocks where the cache is all exact,
    // all reconstructed and mixed.
    ops::causal_attention_rows_cached(q.data(), k.data(), v.data(), kh.data(), vh.data(), kflush, vflush, H, HKV, D,
                                      out.data(), 0, 20, s1, s2, 8);
    ops::causal_attention_rows_cached(q.data(), k.data(), v.data(), kh.data(), vh.data(), kflush, vflush, H, HKV, D,
                                      out.data(), 20, n, s1, s2, 8);
    double worst = 0;
    for (int t = 0; t < n; ++t)
        for (int h = 0; h < H; ++h) {
            const int g = h / (H / HKV);
            auto key = [&](int j, int e) {
                const bool rec = kflush[g] && kflush[g][j] <= t;
                return static_cast<double>((rec ? kh : k)[j * kd + g * D + e]);
            };
            auto val = [&](int j, int e) {
                const bool rec = vflush[g] && vflush[g][j] <= t;
                return static_cast<double>((rec ? vh : v)[j * kd + g * D + e]);
            };
            std::vector<double> sc(t + 1);
            double mx = -1e300, z = 0;
            for (int j = 0; j <= t; ++j) {
                double d = 0;
                for (int e = 0; e < D; ++e) d += q[t * qd + h * D + e] * key(j, e);
                sc[j] = d / std::sqrt(static_cast<double>(D));
                mx = std::max(mx, sc[j]);
            }
            for (int j = 0; j <= t; ++j) z += (sc[j] = std::exp(sc[j] - mx));
            for (int e = 0; e < D; ++e) {
                double o = 0;
                for (int j = 0; j <= t; ++j) o += sc[j] / z * val(j, e);
                worst = std::max(worst, std::fabs(o - out[t * qd + h * D + e]));
            }
        }
    CHECK(worst < 2e-5);

    // No flushed entries at all: identical to the plain kernel, bit for bit.
    const int32_t* none[] = {nullptr, nullptr};
    std::vector<float> a(out.size()), b(out.size());
    ops::causal_attention_rows_cached(q.data(), k.data(), v.data(), kh.data(), vh.data(), none, none, H, HKV, D,
                                      a.data(), 0, n, s1, s2, 8);
    ops::causal_attention_rows(q.data(), k.data(), v.data(), H, HKV, D, b.data(), 0, n, s1, 8);
    CHECK(a == b);
}

TEST_CASE("streaming KL over vocabulary blocks equals the direct sum", "[eval][kl]") {
    const int V = 1000;
    const auto a = randn(V, 7, 3.0f), b0 = randn(V, 8, 0.3f);
    std::vector<float> b(V);
    for (int i = 0; i < V; ++i) b[i] = a[i] + b0[i];
    const std::vector<double> ad(a.begin(), a.end()), bd(b.begin(), b.end());
    const double want = kl_direct(ad, bd);
    // Blocks split between two partial accumulators, then merged.
    ops::KlRowStats s1, s2;
    ops::LogitRowStats la, lb;
    for (int c = 0; c * 97 < V; ++c) {
        const int i0 = c * 97, len = std::min(97, V - i0);
        ((c % 3 == 0) ? s2 : s1).add_block(a.data() + i0, b.data() + i0, len);
        la.add_block(a.data() + i0, len, i0, -1);
        lb.add_block(b.data() + i0, len, i0, -1);
    }
    s1.merge(s2);
    const double got = s1.kl(la.lse(), lb.lse());
    CHECK(want > 1e-3);
    CHECK(got == Approx(want).epsilon(1e-5));
    // Identical rows: zero.
    ops::KlRowStats same;
    same.add_block(a.data(), a.data(), V);
    CHECK(std::fabs(same.kl(la.lse(), la.lse())) < 1e-6);
}

TEST_CASE("hooked forward equals a direct computation over the per-step cache", "[eval][forward]") {
    ScratchDir dir;
    TinySpec s;  // 2 layers, 4 heads, 2 KV heads, head_dim 8, 64 tokens in the vocabulary
    const std::string path = dir.path("tiny.gguf");
    const TinyModel tm = write_tiny_llama(path, s);
    LlamaModel model(GgufFile::open(path));
    const int n = 48;  // >= 32: the forward pass splits rows across threads
    const auto tok = random_tokens(n, s.n_vocab, 5);

    ForwardOptions plain;
    plain.want_hidden = true;
    const ForwardResult r0 = model.forward(tok, plain);

    SECTION("a hand-made cache") {
        ForwardOptions o = plain;
        o.kv_cache = hand_cache;
        const ForwardResult r = model.forward(tok, o);
        const CachedRef ref = naive_forward_cached(tm, tok, hand_cache);
        CHECK(max_abs_diff(r.nll, ref.nll) < 2e-4);
        // The cache matters: the hooked NLL is far from the exact one.
        double moved = 0;
        for (int i = 0; i + 1 < n; ++i) moved = std::max(moved, std::fabs(double(r.nll[i]) - r0.nll[i]));
        CHECK(moved > 0.05);

        // KL and top-1 from the shared output pass against the direct logits.
        const auto st = model.compare_next_token(tok, {r0.hidden.data(), r.hidden.data()});
        REQUIRE(st.size() == 2);
        CHECK(st[0].kl.empty());
        REQUIRE(st[1].kl.size() == static_cast<size_t>(n - 1));
        const CachedRef exact = naive_forward_cached(tm, tok, [](const KvHookInput&, KvHookOutput&) {});
        for (int i = 0; i + 1 < n; ++i) {
            CHECK(st[0].nll[i] == r0.nll[i]);
            CHECK(st[0].argmax[i] == r0.argmax[i]);
            CHECK(st[1].nll[i] == r.nll[i]);
            CHECK(st[1].kl[i] == Approx(kl_direct(exact.logits[i], ref.logits[i])).margin(2e-5).epsilon(1e-3));
        }
    }
    // The eval cache's own hook: the reference replays the caches the forward pass
    // received (recon and flush steps), so a quantizer rounding the reference's
    // slightly different K/V to another code cannot blur the comparison; the exact
    // entries are still the reference's own.
    auto replay_check = [&](const std::string& spec, double max_moved) {
        MethodCache cache(parse_kv_spec(spec), 0, std::vector<bool>(s.n_layer, false), model.hparams());
        cache.begin_sequence(n, 16);
        std::map<std::tuple<int, int, bool>, KvHookOutput> seen;
        std::mutex mu;
        ForwardOptions o = plain;
        o.kv_cache = [&](const KvHookInput& in, KvHookOutput& out) {
            cache.hook()(in, out);
            std::lock_guard<std::mutex> lock(mu);
            seen[{in.layer, in.kv_head, in.value}] = out;
        };
        const ForwardResult r = model.forward(tok, o);
        REQUIRE(seen.size() == static_cast<size_t>(2 * s.n_layer * s.n_head_kv));
        const CachedRef ref = naive_forward_cached(tm, tok, [&](const KvHookInput& in, KvHookOutput& out) {
            out = seen.at({in.layer, in.kv_head, in.value});
        });
        CHECK(max_abs_diff(r.nll, ref.nll) < 2e-4);
        double moved = 0;
        for (int i = 0; i + 1 < n; ++i) moved = std::max(moved, std::fabs(double(r.nll[i]) - r0.nll[i]));
        CHECK(moved > 0);
        CHECK(moved < max_moved);
        const double elems = double(n) * s.head_dim * s.n_head_kv * s.n_layer;
        CHECK(cache.key_bits() / elems < 16.0);
        CHECK(cache.key_bits() / elems > 2.0);
    };
    SECTION("kivi 2-bit through the eval cache (window 4, group 4, prefill 16)") { replay_check("kivi:2:g4:w4", 10.0); }
    SECTION("kivi 8-bit with pre-RoPE keys and rotation") { replay_check("kivi:8:g8:w8:pre:rot", 0.5); }
    SECTION("exact heads and keep-fp16 layers leave the forward pass bit-identical") {
        ForwardOptions o = plain;
        o.kv_cache = [](const KvHookInput&, KvHookOutput&) {};
        CHECK(model.forward(tok, o).nll == r0.nll);
        MethodCache cache(parse_kv_spec("kivi:2:g4:w4"), 0, std::vector<bool>(s.n_layer, true), model.hparams());
        cache.begin_sequence(n, 16);
        o.kv_cache = cache.hook();
        CHECK(model.forward(tok, o).nll == r0.nll);
        CHECK(cache.key_bits() == 16.0 * n * s.head_dim * s.n_head_kv * s.n_layer);
    }
    SECTION("a hook returning the wrong shape is an internal error") {
        ForwardOptions o = plain;
        o.kv_cache = [](const KvHookInput&, KvHookOutput& out) { out.flush_step.assign(3, 0); };
        CHECK_THROWS_WITH(model.forward(tok, o), ContainsSubstring("KV cache hook, layer 0 KV head"));
    }
}

TEST_CASE("pre-RoPE keys: the cache holds RoPE of the reconstructed pre-RoPE key", "[eval][rope]") {
    LlamaHparams hp;
    hp.n_layer = 1;
    hp.n_head_kv = 1;
    hp.head_dim = 8;
    hp.n_rot = 8;
    hp.rope_freq_base = 100.0f;
    const int n = 40, D = 8;
    const auto pre = randn(static_cast<size_t>(n) * D, 9);
    auto rope = [&](const float* x, int pos, std::vector<double>& y) {  // direct, in double
        y.assign(x, x + D);
        for (int i = 0; i < D / 2; ++i) {
            const double th = pos * std::pow(100.0, -2.0 * i / D);
            y[2 * i] = x[2 * i] * std::cos(th) - x[2 * i + 1] * std::sin(th);
            y[2 * i + 1] = x[2 * i] * std::sin(th) + x[2 * i + 1] * std::cos(th);
        }
    };
    std::vector<float> post(pre.size());
    std::vector<double> y;
    for (int t = 0; t < n; ++t) {
        rope(pre.data() + t * D, t, y);
        for (int d = 0; d < D; ++d) post[t * D + d] = static_cast<float>(y[d]);
    }
    MethodCache cache(parse_kv_spec("kivi:2:g4:w8:pre"), 0, {false}, hp);
    cache.begin_sequence(n, 16);
    KvHookInput in;
    in.n_tokens = n;
    in.head_dim = D;
    in.x = post.data();
    in.k_pre = pre.data();
    KvHookOutput out;
    cache.hook()(in, out);
    const SimResult want =
        simulate_cache(kv_spec_sim_params(parse_kv_spec("kivi:2:g4:w8"), 0), KvTensor::k, pre.data(), n, D, 16);
    REQUIRE(out.flush_step == want.flush_step);
    double worst = 0, moved = 0;
    for (int t = 0; t < n; ++t) {
        rope(want.recon.data() + t * D, t, y);
        for (int d = 0; d < D; ++d) {
            worst = std::max(worst, std::fabs(double(out.recon[t * D + d]) - y[d]));
            moved = std::max(moved, double(std::fabs(out.recon[t * D + d] - post[t * D + d])));
        }
    }
    CHECK(worst < 1e-5);
    CHECK(moved > 0.05);  // 2-bit keys are far from exact
}

TEST_CASE("rotv64: keys rotated by H_D, values in 64-element blocks (llama.cpp's rotation)", "[eval][rotate]") {
    // The hook's reconstruction of one head under `spec`.
    auto hooked = [](const std::string& spec, const LlamaHparams& hp, const std::vector<float>& x, int n, bool value) {
        MethodCache cache(parse_kv_spec(spec), 0, {false}, hp);
        cache.begin_sequence(n, n / 2);
        KvHookInput in;
        in.n_tokens = n;
        in.head_dim = static_cast<int>(hp.head_dim);
        in.x = x.data();
        in.value = value;
        KvHookOutput out;
        cache.hook()(in, out);
        return out.recon;
    };
    for (const int D : {64, 128}) {
        LlamaHparams hp;
        hp.n_layer = 1;
        hp.n_head_kv = 1;
        hp.head_dim = D;
        hp.n_rot = D;
        const int n = 24;
        const auto x = randn(static_cast<size_t>(n) * D, 17 + D);
        CHECK(MethodCache(parse_kv_spec("q4_0:rotv64"), 0, {false}, hp).host_only());
        CHECK_FALSE(MethodCache(parse_kv_spec("q4_0:rot"), 0, {false}, hp).host_only());
        // Keys: the whole-head rotation, as `rot`.
        CHECK(hooked("q4_0:rotv64", hp, x, n, false) == hooked("q4_0:rot", hp, x, n, false));
        // Values: each 64-element piece rotated on its own, quantized, rotated back.
        std::vector<float> r = x;
        hadamard_rotate_rows(r.data(), static_cast<int64_t>(n) * (D / 64), 64);
        SimResult want =
            simulate_cache(kv_spec_sim_params(parse_kv_spec("q4_0"), 0), KvTensor::v, r.data(), n, D, n / 2);
        hadamard_rotate_rows(want.recon.data(), static_cast<int64_t>(n) * (D / 64), 64, nullptr, true);
        const std::vector<float> got = hooked("q4_0:rotv64", hp, x, n, true);
        CHECK(got == want.recon);
        // At head_dim 64 the two rotations are one matrix; at 128 they are not.
        if (D == 64) CHECK(got == hooked("q4_0:rot", hp, x, n, true));
        else CHECK(got != hooked("q4_0:rot", hp, x, n, true));
    }
}
