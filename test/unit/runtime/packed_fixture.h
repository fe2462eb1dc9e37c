// test/unit/runtime/packed_fixture.h — clustered binary16 K/V streams and packed caches
// fed with them, shared by the packed cache tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "pkv/core/half.h"
#include "pkv/runtime/packed_cache.h"

namespace rt_test {

/// One geometry and schedule under test.
struct PackedCase {
    pkv_rt::CacheMethod method = pkv_rt::CacheMethod::patternkv_table;
    int D = 64, M = 16, bits = 2, R = 32, G = 32;
    int64_t n = 150, P = 70;
    pkv_rt::Assign assign = pkv_rt::Assign::minmax;
    int n_head_kv = 2, n_head = 4, n_seq = 1;
};

/// Everything the cache was given, per KV head h: patterns [H][M, D] (fp32, not binary16
/// values), K and V rows [H][n, D] (binary16 values: pattern + noise, outlier channel 1),
/// clip ratios and gate z.
struct PackedData {
    std::vector<std::vector<float>> k_patterns, v_patterns, k, v;
    std::vector<float> k_clip, v_clip;
    std::vector<double> gate_z;
};

inline float to_half_value(float x) { return pkv::half_to_float(pkv::float_to_half(x)); }

inline PackedData make_data(const PackedCase& c, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> pick(0, c.M - 1);
    PackedData d;
    const size_t MD = static_cast<size_t>(c.M) * static_cast<size_t>(c.D);
    for (int h = 0; h < c.n_head_kv; ++h) {
        for (auto* bank : {&d.k_patterns, &d.v_patterns}) {
            std::vector<float> p(MD);
            for (float& x : p) x = 2.0f * normal(rng);
            // Pattern M - 1 is pattern 1 shifted by 0.5 in binary16 values, exactly: the
            // min-max distance ties them, and the lowest index must win.
            if (c.M >= 4)
                for (int e = 0; e < c.D; ++e) {
                    float& a = p[static_cast<size_t>(c.D + e)];
                    a = to_half_value(a);
                    p[static_cast<size_t>((c.M - 1) * c.D + e)] = a + 0.5f;
                }
            bank->push_back(p);
        }
        for (int part = 0; part < 2; ++part) {
            const std::vector<float>& P = part ? d.v_patterns.back() : d.k_patterns.back();
            std::vector<float> x(static_cast<size_t>(c.n) * static_cast<size_t>(c.D));
            for (int64_t t = 0; t < c.n; ++t) {
                const int p = pick(rng);
                // Every 7th value token is flat-ish noise, so that the gate says no to some.
                const float pat = part == 1 && t % 7 == 3 ? 0.0f : 1.0f;
                for (int e = 0; e < c.D; ++e)
                    x[static_cast<size_t>(t * c.D + e)] = to_half_value(pat * P[static_cast<size_t>(p * c.D + e)] +
                                                                        0.3f * normal(rng) + (e == 1 ? 4.0f : 0.0f));
            }
            (part ? d.v : d.k).push_back(x);
        }
        d.k_clip.push_back(h == 0 ? 1.0f : 0.75f);
        d.v_clip.push_back(h == 0 ? 0.9f : 1.0f);
        d.gate_z.push_back(h == 0 ? 1.6448536269514722 : 0.5);
    }
    return d;
}

inline pkv_rt::CacheConfig make_config(const PackedCase& c, int64_t max_tokens) {
    pkv_rt::CacheConfig cfg;
    cfg.method = c.method;
    cfg.n_layer = 1;
    cfg.n_head = c.n_head;
    cfg.n_head_kv = c.n_head_kv;
    cfg.head_dim = c.D;
    cfg.n_seq = c.n_seq;
    cfg.max_tokens = max_tokens;
    cfg.window = c.R;
    cfg.group = c.G;
    cfg.bits = c.bits;
    if (c.method == pkv_rt::CacheMethod::patternkv_table) cfg.k_patterns = cfg.v_patterns = c.M;
    return cfg;
}

inline void give_patterns(pkv_rt::PackedCache& cache, const PackedCase& c, const PackedData& d) {
    if (c.method != pkv_rt::CacheMethod::patternkv_table) return;
    for (int h = 0; h < c.n_head_kv; ++h) {
        const size_t i = static_cast<size_t>(h);
        cache.set_patterns(0, h, pkv_rt::KvPart::k, d.k_patterns[i].data(), c.M, d.k_clip[i], 0.0, c.assign);
        cache.set_patterns(0, h, pkv_rt::KvPart::v, d.v_patterns[i].data(), c.M, d.v_clip[i], d.gate_z[i], c.assign);
    }
}

/// Appends tokens [t0, t1) of every head of layer 0, sequence seq.
inline void append_range(pkv_rt::PackedCache& cache, const PackedCase& c, const PackedData& d, int seq, int64_t t0,
                         int64_t t1) {
    const size_t row = static_cast<size_t>(c.n_head_kv) * static_cast<size_t>(c.D);
    std::vector<float> k(static_cast<size_t>(t1 - t0) * row), v(k.size());
    for (int64_t t = t0; t < t1; ++t)
        for (int h = 0; h < c.n_head_kv; ++h)
            for (int e = 0; e < c.D; ++e) {
                const size_t dst = static_cast<size_t>(t - t0) * row + static_cast<size_t>(h * c.D + e);
                const size_t src = static_cast<size_t>(t * c.D + e);
                k[dst] = d.k[static_cast<size_t>(h)][src];
                v[dst] = d.v[static_cast<size_t>(h)][src];
            }
    cache.append(0, seq, k.data(), v.data(), t1 - t0);
}

/// The CacheError message fn throws; empty when it throws none.
inline std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const pkv_rt::CacheError& e) {
        return e.what();
    }
    return "";
}

/// 16-byte aligned float storage (std::vector<float> guarantees only alignof(float)), with
/// one spare quad so that a test may offset a pointer by a few floats.
struct alignas(16) Quad {
    float f[4];
};
struct Floats {
    std::vector<Quad> q;
    explicit Floats(size_t n) : q((n + 3) / 4 + 1) {}
    float* data() { return q.front().f; }
};

/// softmax(q k / sqrt(D)) v in double over [n, D] keys and values (the reference both packed
/// attention tests compare with); drop_top: without the token of the highest score, an error
/// the tests' tolerance must resolve.
inline std::vector<double> plain_attention(const float* q, const float* k, const float* v, int64_t n, int D,
                                           bool drop_top = false) {
    std::vector<double> s(static_cast<size_t>(n)), out(static_cast<size_t>(D), 0.0);
    for (int64_t j = 0; j < n; ++j) {
        double dot = 0.0;
        for (int e = 0; e < D; ++e) dot += static_cast<double>(q[e]) * k[j * D + e];
        s[static_cast<size_t>(j)] = dot / std::sqrt(static_cast<double>(D));
    }
    if (drop_top && n > 1) *std::max_element(s.begin(), s.end()) = -INFINITY;
    const double m = *std::max_element(s.begin(), s.end());
    double l = 0.0;
    for (int64_t j = 0; j < n; ++j) {
        const double a = std::exp(s[static_cast<size_t>(j)] - m);
        l += a;
        for (int e = 0; e < D; ++e) out[static_cast<size_t>(e)] += a * v[j * D + e];
    }
    for (double& o : out) o /= l;
    return out;
}

}  // namespace rt_test
