// Cache simulations behind simulate_cache(); the rules are in docs/numerics.md.
#include "pkv/kvcache/simulate.h"

#include <algorithm>
#include <cmath>

#include "pkv/core/error.h"
#include "pkv/kmeans/assigner.h"
#include "pkv/kmeans/kmeans.h"
#include "pkv/kmeans/minmax_assign.h"
#include "pkv/kvcache/outliers.h"
#include "pkv/kvcache/residual.h"
#include "pkv/quant/fp8.h"
#include "pkv/quant/ggml_kv.h"
#include "pkv/quant/minmax.h"

namespace pkv {

namespace {

struct MethodName {
    KvMethod m;
    const char* name;
};
constexpr MethodName kMethods[] = {{KvMethod::fp16, "fp16"},
                                   {KvMethod::kivi, "kivi"},
                                   {KvMethod::patternkv, "patternkv"},
                                   {KvMethod::q4_0, "q4_0"},
                                   {KvMethod::q8_0, "q8_0"},
                                   {KvMethod::fp8, "fp8"},
                                   {KvMethod::patternkv_table, "patternkv-table"}};

SimResult empty_result(const float* x, int64_t n, int D) {
    SimResult r;
    r.recon.assign(x, x + n * D);
    r.flush_step.assign(static_cast<size_t>(n), kNeverQuantized);
    return r;
}

// Quantizes `rows` rows of x with the min-max quantizer (K: per-channel groups of G
// tokens; V: per token, groups of min(G, D) channels) into recon, and records their
// storage as units starting at token tok0: one per K group, one per V token.
void quantize_rows(const SimParams& p, KvTensor tensor, const float* x, int64_t rows, int D, float* recon, int64_t tok0,
                   std::vector<SimUnit>& units, float clip = 1.0f) {
    if (rows <= 0) return;
    MinMaxSpec spec;
    spec.clip = clip;
    spec.bits = p.bits;
    spec.axis = tensor == KvTensor::k ? QuantAxis::channel : QuantAxis::token;
    spec.group = tensor == KvTensor::k ? p.group : std::min(p.group, D);
    // Dense-and-sparse (SimParams::outliers): the quantizer sees each group without its
    // held-out elements, which then stay exact; their values and positions count with the
    // group's parameters.
    const float* exact = x;
    std::vector<float> xs;
    std::vector<int64_t> held;
    if (p.outliers > 0) {
        xs.resize(static_cast<size_t>(rows * D));
        held = hold_out_outliers(x, rows, D, spec, p.outliers, xs.data());
        x = xs.data();
    }
    if (tensor == KvTensor::k) {
        // Groups of G tokens are independent, so quantizing them one by one is the same.
        for (int64_t a = 0; a < rows; a += p.group) {
            const int64_t m = std::min<int64_t>(p.group, rows - a);
            const MinMaxCost c = quantize_minmax(x + a * D, m, D, spec, recon + a * D);
            units.push_back({tok0 + a, tok0 + a + m, static_cast<double>(c.code_bits),
                             static_cast<double>(c.param_bits) + D * outlier_group_bits(m, p.outliers), 0.0, 0.0});
        }
    } else {
        const MinMaxCost c = quantize_minmax(x, rows, D, spec, recon);
        // Every token costs the same: D codes and D / group (scale, zero) pairs.
        const double codes = static_cast<double>(c.code_bits) / rows, params = static_cast<double>(c.param_bits) / rows;
        const double sparse = static_cast<double>(D / spec.group) * outlier_group_bits(spec.group, p.outliers);
        for (int64_t i = 0; i < rows; ++i) units.push_back({tok0 + i, tok0 + i + 1, codes, params + sparse, 0.0, 0.0});
    }
    for (const int64_t i : held) recon[i] = exact[i];
}

// The final cache's storage: the units still holding a token >= kept_from, the tokens
// it holds exactly, and (already set by patternkv) the bank.
void finish_bits(SimResult& r, int64_t n, int D, int64_t kept_from) {
    const double bank = r.bits.bank;
    r.bits = SimBits{};
    r.bits.bank = bank;
    r.kept_from = kept_from;
    for (const SimUnit& u : r.units) {
        if (u.t1 <= kept_from) continue;
        r.bits.codes += u.codes;
        r.bits.params += u.params;
        r.bits.index += u.index;
        r.bits.gate += u.gate;
    }
    int64_t exact = 0;
    for (int64_t j = kept_from; j < n; ++j) exact += r.flush_step[j] == kNeverQuantized;
    r.bits.window = exact_bits(static_cast<double>(exact) * D);
}

// KIVI: K flushes R-token blocks quantized per channel; V keeps a sliding window of
// the R most recent tokens and quantizes the token that leaves it.
SimResult simulate_kivi(const SimParams& p, KvTensor tensor, const float* x, int64_t n, int D, int64_t P) {
    SimResult r = empty_result(x, n, D);
    const int64_t R = p.window;
    if (tensor == KvTensor::k) {
        const int64_t pq = P - P % R;
        quantize_rows(p, tensor, x, pq, D, r.recon.data(), 0, r.units);
        for (int64_t j = 0; j < pq; ++j) r.flush_step[j] = static_cast<int32_t>(P);
        int64_t start = pq;
        for (int64_t t = P; t < n; ++t) {
            if (t - start + 1 < R) continue;
            quantize_rows(p, tensor, x + start * D, t + 1 - start, D, r.recon.data() + start * D, start, r.units);
            for (int64_t j = start; j <= t; ++j) r.flush_step[j] = static_cast<int32_t>(t + 1);
            start = t + 1;
        }
    } else {
        int64_t quantized = std::max<int64_t>(0, P - R);
        for (int64_t j = 0; j < quantized; ++j) r.flush_step[j] = static_cast<int32_t>(P);
        for (int64_t t = P; t < n; ++t) {
            // The step's attention sees R + 1 exact values; then the oldest leaves.
            if (t + 1 - quantized > R) r.flush_step[quantized++] = static_cast<int32_t>(t + 1);
        }
        quantize_rows(p, tensor, x, quantized, D, r.recon.data(), 0, r.units);  // per token: order-free
    }
    return r;
}

// Residualizes and quantizes rows [t0, t1) against their assigned patterns; `table`
// (patternkv-table) supplies the fitted clip ratio and gate threshold.
void pattern_block(const SimParams& p, KvTensor tensor, const float* x, int64_t t0, int64_t t1, int D, SimResult& r,
                   const TableHeadView* table = nullptr) {
    const int64_t rows = t1 - t0;
    if (rows <= 0) return;
    const int64_t M = static_cast<int64_t>(r.bank.size()) / D;
    std::vector<float> resid(static_cast<size_t>(rows * D)), rq(resid.size());
    for (int64_t i = 0; i < rows; ++i) {
        const int64_t j = t0 + i;
        const float* c = r.bank.data() + static_cast<int64_t>(r.pattern[j]) * D;
        bool subtract = true;
        if (tensor == KvTensor::v) {
            subtract = table ? v_gate_passes(v_gate_rho(x + j * D, c, D), D, table->gate_z)
                             : v_gate_passes(v_gate_rho(x + j * D, c, D), D);
            r.gate[j] = subtract ? 1 : 0;
        }
        for (int d = 0; d < D; ++d) resid[i * D + d] = x[j * D + d] - (subtract ? c[d] : 0.0f);
    }
    const size_t u0 = r.units.size();
    quantize_rows(p, tensor, resid.data(), rows, D, rq.data(), t0, r.units, table ? table->clip : 1.0f);
    // Each token also stores its pattern index and (V) its 1-bit gate.
    for (size_t u = u0; u < r.units.size(); ++u) {
        const double tokens = static_cast<double>(r.units[u].t1 - r.units[u].t0);
        r.units[u].index = tokens * index_bits(M);
        if (tensor == KvTensor::v) r.units[u].gate = tokens;
    }
    for (int64_t i = 0; i < rows; ++i) {
        const int64_t j = t0 + i;
        const float* c = r.bank.data() + static_cast<int64_t>(r.pattern[j]) * D;
        const bool add = tensor == KvTensor::k || r.gate[j];
        for (int d = 0; d < D; ++d) r.recon[j * D + d] = rq[i * D + d] + (add ? c[d] : 0.0f);
    }
}

// PatternKV as its official implementation runs it (see docs/numerics.md, "Methods").
SimResult simulate_patternkv(const SimParams& p, KvTensor tensor, const float* x, int64_t n, int D, int64_t P) {
    SimResult r = empty_result(x, n, D);
    r.pattern.assign(static_cast<size_t>(n), -1);
    if (tensor == KvTensor::v) r.gate.assign(static_cast<size_t>(n), 0);
    const int64_t R = p.window;
    const int64_t pq = P - P % R;
    if (P > 0) {
        KMeansParams kp;
        kp.k = static_cast<int>(std::min<int64_t>(p.patterns, P));
        kp.max_iter = kPatternKMeansIters;
        kp.tol = kPatternKMeansTol;
        kp.seed = p.seed;
        kp.init = KMeansInit::random;
        KMeansResult km = kmeans(x, P, D, kp);
        r.kmeans_k = kp.k;
        r.bank = std::move(km.centroids);
        // Prefill tokens keep their L2 label from k-means' final assignment pass.
        for (int64_t j = 0; j < pq; ++j) r.pattern[j] = km.assignments[j];
        pattern_block(p, tensor, x, 0, pq, D, r);
        for (int64_t j = 0; j < pq; ++j) r.flush_step[j] = static_cast<int32_t>(P);
    }
    int64_t start = pq;
    std::vector<float> center(static_cast<size_t>(D));
    std::vector<int32_t> labels;
    std::vector<float> dist2;
    for (int64_t t = P; t < n; ++t) {
        if (t - start + 1 < R) continue;
        const int64_t rows = t + 1 - start;
        int64_t M = static_cast<int64_t>(r.bank.size()) / D;
        if (p.pattern_cap <= 0 || M < p.pattern_cap) {
            chebyshev_center(x + start * D, rows, D, center.data());
            r.bank.insert(r.bank.end(), center.begin(), center.end());
            ++M;
        }
        labels.assign(static_cast<size_t>(rows), 0);
        if (p.decode_l2) {
            std::vector<double> d2(static_cast<size_t>(rows));
            assign_ref(x + start * D, rows, D, r.bank.data(), static_cast<int>(M), labels.data(), d2.data());
        } else {
            assign_minmax_ref(x + start * D, rows, D, r.bank.data(), static_cast<int>(M), labels.data(), nullptr);
        }
        for (int64_t i = 0; i < rows; ++i) r.pattern[start + i] = labels[i];
        pattern_block(p, tensor, x, start, t + 1, D, r);
        for (int64_t j = start; j <= t; ++j) r.flush_step[j] = static_cast<int32_t>(t + 1);
        start = t + 1;
    }
    r.bits.bank = 16.0 * static_cast<double>(r.bank.size());
    return r;
}

// patternkv-table: the cache flushes like patternkv (the prefill's whole R-token
// blocks at step P, then every R decode tokens), but the bank is the table's and never
// grows. The bank is a per-model constant shipped once, so it adds no bits to a
// sequence's cache (docs/numerics.md, "Pattern tables").
SimResult simulate_patternkv_table(const SimParams& p, KvTensor tensor, const float* x, int64_t n, int D, int64_t P) {
    const TableHeadView* tv = tensor == KvTensor::k ? p.table_k : p.table_v;
    PKV_ASSERT(tv != nullptr && tv->patterns != nullptr && tv->M >= 1);
    SimResult r = empty_result(x, n, D);
    // A head the allocation keeps in fp16 is never flushed (finish_bits counts 16 per element).
    if (tv->bits == 16) return r;
    SimParams own = p;
    if (tv->bits > 0) own.bits = tv->bits;
    r.pattern.assign(static_cast<size_t>(n), -1);
    if (tensor == KvTensor::v) r.gate.assign(static_cast<size_t>(n), 0);
    r.bank.assign(tv->patterns, tv->patterns + static_cast<int64_t>(tv->M) * D);
    const int64_t R = p.window;
    auto flush = [&](int64_t t0, int64_t t1, int32_t step) {
        assign_patterns(x + t0 * D, t1 - t0, D, tv->patterns, tv->M, tv->assign_l2, r.pattern.data() + t0);
        pattern_block(own, tensor, x, t0, t1, D, r, tv);
        for (int64_t j = t0; j < t1; ++j) r.flush_step[j] = step;
    };
    const int64_t pq = P - P % R;
    if (pq > 0) flush(0, pq, static_cast<int32_t>(P));
    for (int64_t start = pq, t = P; t < n; ++t) {
        if (t - start + 1 < R) continue;
        flush(start, t + 1, static_cast<int32_t>(t + 1));
        start = t + 1;
    }
    return r;
}

SimResult simulate_blocks(const SimParams& p, KvTensor tensor, const float* x, int64_t n, int D, int64_t P) {
    switch (p.method) {
        case KvMethod::kivi: return simulate_kivi(p, tensor, x, n, D, P);
        case KvMethod::patternkv: return simulate_patternkv(p, tensor, x, n, D, P);
        case KvMethod::patternkv_table: return simulate_patternkv_table(p, tensor, x, n, D, P);
        default: PKV_ASSERT(false);
    }
    return {};
}

// A ring's result on tokens s .. n - 1, placed in the whole sequence: tokens before s
// were never stored past the prefill, so every query that sees them sees them exactly.
SimResult shifted(SimResult in, const float* x, int64_t n, int D, int64_t s) {
    SimResult r = empty_result(x, n, D);
    std::copy(in.recon.begin(), in.recon.end(), r.recon.begin() + s * D);
    for (int64_t j = s; j < n; ++j) {
        const int32_t f = in.flush_step[j - s];
        r.flush_step[j] = f == kNeverQuantized ? f : static_cast<int32_t>(f + s);
    }
    if (!in.pattern.empty()) {
        r.pattern.assign(static_cast<size_t>(s), -1);
        r.pattern.insert(r.pattern.end(), in.pattern.begin(), in.pattern.end());
    }
    if (!in.gate.empty()) {
        r.gate.assign(static_cast<size_t>(s), 0);
        r.gate.insert(r.gate.end(), in.gate.begin(), in.gate.end());
    }
    r.units = std::move(in.units);
    for (SimUnit& u : r.units) u.t0 += s, u.t1 += s;
    r.bank = std::move(in.bank);
    r.bits.bank = in.bits.bank;
    r.kmeans_k = in.kmeans_k;
    return r;
}

// Exact sink tokens 0 .. S - 1 (SimParams::sinks): the blocks run as without them, on a
// copy of x whose sink rows repeat row S, so that the sinks take no part in any range (a
// repeated row changes no min or max; patternkv's prefill k-means sees it twice). The sinks
// then hold their exact rows, are never flushed (finish_bits counts them at 16 bits) and
// give back the codes, indices and gates their units charged for them; a unit of sinks
// only (a V token) gives back its parameters too.
SimResult simulate_with_sinks(const SimParams& p, KvTensor tensor, const float* x, int64_t n, int D, int64_t P,
                              int64_t S) {
    std::vector<float> xs(x, x + n * D);
    for (int64_t j = 0; j < S; ++j) std::copy(x + S * D, x + (S + 1) * D, xs.begin() + j * D);
    SimResult r = simulate_blocks(p, tensor, xs.data(), n, D, P);
    std::copy(x, x + S * D, r.recon.begin());
    for (int64_t j = 0; j < S; ++j) {
        r.flush_step[static_cast<size_t>(j)] = kNeverQuantized;
        if (!r.pattern.empty()) r.pattern[static_cast<size_t>(j)] = -1;
        if (!r.gate.empty()) r.gate[static_cast<size_t>(j)] = 0;
    }
    for (SimUnit& u : r.units) {
        if (u.t0 >= S) continue;
        const double share = static_cast<double>(std::min(u.t1, S) - u.t0) / static_cast<double>(u.t1 - u.t0);
        u.codes -= u.codes * share, u.index -= u.index * share, u.gate -= u.gate * share;
        if (u.t1 <= S) u.params = 0.0;
    }
    return r;
}

// fp16, q4_0, q8_0 and fp8 hold every token in its final form from the moment it is written.
SimResult simulate_write_through(const SimParams& p, const float* x, int64_t n, int D) {
    SimResult r = empty_result(x, n, D);
    if (p.method == KvMethod::fp16 || n == 0) return r;
    if (p.method == KvMethod::fp8) {
        const Fp8Result f = quantize_fp8_e4m3(x, n * D, r.recon.data());
        const double codes = 8.0 * D;
        for (int64_t j = 0; j < n; ++j) r.units.push_back({j, j + 1, codes, 0.0, 0.0, 0.0});
        // The static per-head scale serves the whole sequence.
        r.units.push_back({0, n, 0.0, static_cast<double>(f.storage_bits) - codes * static_cast<double>(n), 0.0, 0.0});
    } else {
        PKV_ASSERT(p.method == KvMethod::q4_0 || p.method == KvMethod::q8_0);
        // llama.cpp writes every token to the quantized cache before attending.
        const GgmlType type = p.method == KvMethod::q4_0 ? GgmlType::Q4_0 : GgmlType::Q8_0;
        const double bits = static_cast<double>(quantize_ggml_kv(type, x, n, D, r.recon.data())) / n;
        for (int64_t j = 0; j < n; ++j) r.units.push_back({j, j + 1, bits, 0.0, 0.0, 0.0});
    }
    for (int64_t j = 0; j < n; ++j) r.flush_step[j] = static_cast<int32_t>(j);
    return r;
}

}  // namespace

const char* kv_method_name(KvMethod m) {
    for (const auto& e : kMethods)
        if (e.m == m) return e.name;
    return "?";
}

KvMethod parse_kv_method(const std::string& name) {
    for (const auto& e : kMethods)
        if (name == e.name) return e.m;
    fail(ErrorCode::invalid_argument,
         "unknown method '{}' in --methods: expected one of fp16, kivi, patternkv, q4_0, q8_0, fp8, patternkv-table",
         name);
}

bool kv_method_takes_bits(KvMethod m) { return m == KvMethod::kivi || m == KvMethod::patternkv; }

int kv_method_fixed_bits(KvMethod m) {
    switch (m) {
        case KvMethod::fp16: return 16;
        case KvMethod::q4_0: return 4;
        case KvMethod::q8_0: return 8;
        case KvMethod::fp8: return 8;
        default: return 0;
    }
}

bool kv_method_keeps_window(KvMethod m) {
    return m == KvMethod::kivi || m == KvMethod::patternkv || m == KvMethod::patternkv_table;
}

void check_window_fits_ring(const std::string& what, int64_t window, int64_t ring, const std::string& where) {
    PKV_CHECK(ring == 0 || window <= ring, invalid_argument,
              "{}: window {} is longer than the sliding window {} of {} (its fp16 tokens live in that ring): expected "
              "at most {}",
              what, window, ring, where, ring);
}

int index_bits(int64_t M) {
    int b = 0;
    while ((int64_t{1} << b) < M) ++b;
    return b;
}

double table_element_bits(KvTensor tensor, int bits, int D, int64_t M, int group, int window, int outliers) {
    if (bits == 16) return 16.0;
    const double idx = index_bits(M);
    if (tensor == KvTensor::k) {
        // A flush block's channel splits into groups of `group` tokens, the last one shorter.
        const int64_t groups = (window + group - 1) / group;
        double sparse = 0.0;
        for (int64_t a = 0; a < window; a += group)
            sparse += outlier_group_bits(std::min<int64_t>(group, window - a), outliers);
        return bits + 32.0 * static_cast<double>(groups) / window + idx / D + sparse / window;
    }
    const int g = std::min(group, D);
    return bits + (32.0 + outlier_group_bits(g, outliers)) * static_cast<double>(D / g) / D + (idx + 1.0) / D;
}

double v_gate_rho(const float* v, const float* c, int d) {
    float vmin = v[0], vmax = v[0], rmin = v[0] - c[0], rmax = rmin;
    for (int i = 1; i < d; ++i) {
        vmin = std::min(vmin, v[i]);
        vmax = std::max(vmax, v[i]);
        const float e = v[i] - c[i];
        rmin = std::min(rmin, e);
        rmax = std::max(rmax, e);
    }
    const double rv = static_cast<double>(vmax) - vmin;
    if (rv <= 0.0) return std::numeric_limits<double>::infinity();
    return (static_cast<double>(rmax) - rmin) / rv;
}

bool v_gate_passes(double rho, int d, double z) {
    if (!std::isfinite(rho)) return false;
    const double rho2 = rho * rho;
    return 1.0 - rho2 >= (2.0 * z / std::sqrt(5.0 * d)) * std::sqrt(1.0 + rho2 * rho2);
}

SimResult simulate_cache(const SimParams& p, KvTensor tensor, const float* x, int64_t n, int D, int64_t prefill) {
    PKV_ASSERT(n >= 0 && D >= 1 && prefill >= 0 && prefill <= n && p.window >= 1 && p.ring >= 0);
    const int64_t W = p.ring;
    const int64_t stored_from = W > 0 ? std::max<int64_t>(0, prefill - W) : 0;
    SimResult r;
    if (kv_method_keeps_window(p.method)) {
        PKV_ASSERT(W == 0 || p.window <= W);
        const int64_t sinks = stored_from == 0 ? std::min<int64_t>(std::max<int64_t>(p.sinks, 0), prefill) : 0;
        if (sinks > 0 && sinks < n) r = simulate_with_sinks(p, tensor, x, n, D, prefill, sinks);
        else if (stored_from == 0) r = simulate_blocks(p, tensor, x, n, D, prefill);
        else
            r = shifted(simulate_blocks(p, tensor, x + stored_from * D, n - stored_from, D, prefill - stored_from), x,
                        n, D, stored_from);
    } else {
        r = simulate_write_through(p, x, n, D);
    }
    r.stored_from = stored_from;
    finish_bits(r, n, D, n - kept_tokens(n, W));
    return r;
}

}  // namespace pkv
