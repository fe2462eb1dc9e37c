// test/unit/pipeline/naive_cached.h — a scalar double-precision Llama forward in which
// every query attends to the per-step cache a KvCacheHook describes, built directly
// from the definition: at query t, key/value j is recon[j] if flush_step[j] <= t,
// else the exact vector. Written per token with plain loops; shares no code with
// lib/pkv/model (the hook receives this reference's own K/V, rounded to float).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "pkv/model/llama.h"
#include "unit/model/tiny_llama.h"

namespace pkv_test {

struct CachedRef {
    std::vector<double> nll;                  ///< n - 1
    std::vector<std::vector<double>> logits;  ///< [n - 1][n_vocab]
};

inline CachedRef naive_forward_cached(const TinyModel& m, const std::vector<int32_t>& tok,
                                      const pkv::KvCacheHook& hook) {
    const TinySpec& s = m.spec;
    const int n = static_cast<int>(tok.size()), E = s.n_embd, hd = s.head_dim, HKV = s.n_head_kv;
    const int qd = s.n_head * hd, kd = HKV * hd;
    auto W = [&](const std::string& name) -> const std::vector<float>& { return m.w.at(name); };
    auto matvec = [](const std::vector<float>& w, const std::vector<double>& x, int n_out) {
        std::vector<double> y(n_out, 0.0);
        for (int o = 0; o < n_out; ++o)
            for (size_t i = 0; i < x.size(); ++i) y[o] += static_cast<double>(w[o * x.size() + i]) * x[i];
        return y;
    };
    auto rms = [](const std::vector<double>& x, const std::vector<float>& g) {
        double ss = 0;
        for (double t : x) ss += t * t;
        const double inv = 1.0 / std::sqrt(ss / x.size() + 1e-5);
        std::vector<double> y(x.size());
        for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * g[i];
        return y;
    };
    auto rope = [&](std::vector<double>& x, int heads, int pos) {
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < m.rot() / 2; ++i) {
                const double th = pos * m.freq_scale() * std::pow(static_cast<double>(s.rope_base), -2.0 * i / m.rot());
                double& a = x[h * hd + 2 * i];
                double& b = x[h * hd + 2 * i + 1];
                const double a0 = a, b0 = b;
                a = a0 * std::cos(th) - b0 * std::sin(th);
                b = a0 * std::sin(th) + b0 * std::cos(th);
            }
    };
    std::vector<std::vector<double>> x(n, std::vector<double>(E));
    for (int t = 0; t < n; ++t)
        for (int i = 0; i < E; ++i) x[t][i] = W("token_embd.weight")[static_cast<size_t>(tok[t]) * E + i];
    for (int l = 0; l < s.n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        std::vector<std::vector<double>> Q(n), K(n), V(n), Kpre(n);
        for (int t = 0; t < n; ++t) {
            const auto h = rms(x[t], W(p + "attn_norm.weight"));
            Q[t] = matvec(W(p + "attn_q.weight"), h, qd);
            K[t] = matvec(W(p + "attn_k.weight"), h, kd);
            V[t] = matvec(W(p + "attn_v.weight"), h, kd);
            Kpre[t] = K[t];
            rope(Q[t], s.n_head, t);
            rope(K[t], HKV, t);
        }
        // The cache per (head, tensor): the hook sees this reference's own values.
        std::vector<std::vector<float>> rk(HKV), rv(HKV);
        std::vector<std::vector<int32_t>> fk(HKV), fv(HKV);
        for (int g = 0; g < HKV; ++g)
            for (int value = 0; value < 2; ++value) {
                std::vector<float> xs(static_cast<size_t>(n) * hd), pre(xs.size());
                for (int t = 0; t < n; ++t)
                    for (int e = 0; e < hd; ++e) {
                        xs[t * hd + e] = static_cast<float>((value ? V : K)[t][g * hd + e]);
                        pre[t * hd + e] = static_cast<float>(Kpre[t][g * hd + e]);
                    }
                pkv::KvHookInput in;
                in.layer = l;
                in.kv_head = g;
                in.value = value == 1;
                in.n_tokens = n;
                in.head_dim = hd;
                in.x = xs.data();
                in.k_pre = value ? nullptr : pre.data();
                pkv::KvHookOutput out;
                hook(in, out);
                (value ? rv : rk)[g] = out.recon;
                (value ? fv : fk)[g] = out.flush_step;
            }
        auto seen = [&](const std::vector<std::vector<double>>& X, const std::vector<float>& r,
                        const std::vector<int32_t>& f, int g, int j, int t, int e) {
            if (!f.empty() && f[j] <= t) return static_cast<double>(r[j * hd + e]);
            return X[j][g * hd + e];
        };
        for (int t = 0; t < n; ++t) {
            std::vector<double> att(qd, 0.0);
            for (int h = 0; h < s.n_head; ++h) {
                const int g = h / (s.n_head / HKV);
                std::vector<double> sc(t + 1);
                double mx = -1e300;
                for (int j = 0; j <= t; ++j) {
                    double d = 0;
                    for (int e = 0; e < hd; ++e) d += Q[t][h * hd + e] * seen(K, rk[g], fk[g], g, j, t, e);
                    sc[j] = d / std::sqrt(static_cast<double>(hd));
                    mx = std::max(mx, sc[j]);
                }
                double z = 0;
                for (int j = 0; j <= t; ++j) z += (sc[j] = std::exp(sc[j] - mx));
                for (int j = 0; j <= t; ++j)
                    for (int e = 0; e < hd; ++e) att[h * hd + e] += sc[j] / z * seen(V, rv[g], fv[g], g, j, t, e);
            }
            const auto o = matvec(W(p + "attn_output.weight"), att, E);
            for (int i = 0; i < E; ++i) x[t][i] += o[i];
            const auto h = rms(x[t], W(p + "ffn_norm.weight"));
            auto gate = matvec(W(p + "ffn_gate.weight"), h, s.n_ff);
            const auto up = matvec(W(p + "ffn_up.weight"), h, s.n_ff);
            for (int i = 0; i < s.n_ff; ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
            const auto d = matvec(W(p + "ffn_down.weight"), gate, E);
            for (int i = 0; i < E; ++i) x[t][i] += d[i];
        }
    }
    CachedRef r;
    for (int t = 0; t + 1 < n; ++t) {
        const auto logits = matvec(m.output(), rms(x[t], W("output_norm.weight")), s.n_vocab);
        double mx = -1e300;
        for (double v : logits) mx = std::max(mx, v);
        double z = 0;
        for (double v : logits) z += std::exp(v - mx);
        r.nll.push_back(mx + std::log(z) - logits[tok[t + 1]]);
        r.logits.push_back(logits);
    }
    return r;
}

/// KL(softmax(a) || softmax(b)) in double.
inline double kl_direct(const std::vector<double>& a, const std::vector<double>& b) {
    double ma = -1e300, mb = -1e300;
    for (size_t i = 0; i < a.size(); ++i) ma = std::max(ma, a[i]), mb = std::max(mb, b[i]);
    double za = 0, zb = 0;
    for (size_t i = 0; i < a.size(); ++i) za += std::exp(a[i] - ma), zb += std::exp(b[i] - mb);
    const double la = ma + std::log(za), lb = mb + std::log(zb);
    double kl = 0;
    for (size_t i = 0; i < a.size(); ++i) kl += std::exp(a[i] - la) * ((a[i] - la) - (b[i] - lb));
    return kl;
}

}  // namespace pkv_test
