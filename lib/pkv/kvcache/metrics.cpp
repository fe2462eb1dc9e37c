// Metric accumulators of `pkv analyze`; formulas in docs/numerics.md ("Metrics").
#include "pkv/kvcache/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <Eigen/Dense>

namespace pkv {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMat>;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Range / std of one group given as strided values; false when std is 0.
bool group_ros(const float* x, int64_t n, int64_t stride, double& ros) {
    double mn = x[0], mx = x[0], s1 = 0, s2 = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double v = x[i * stride];
        mn = std::min(mn, v);
        mx = std::max(mx, v);
        s1 += v;
        s2 += v * v;
    }
    const double mean = s1 / n, var = std::max(0.0, s2 / n - mean * mean);
    if (!(var > 0.0)) return false;
    ros = (mx - mn) / std::sqrt(var);
    return true;
}

void add_values(FlatAccum& a, const float* x, int64_t count) {
    for (int64_t i = 0; i < count; ++i) {
        const double v = x[i], v2 = v * v;
        a.s1 += v;
        a.s2 += v2;
        a.s3 += v2 * v;
        a.s4 += v2 * v2;
    }
    a.count += count;
}

// Group statistics of rows [0, rows) of m ([rows, D]) in the tensor's layout.
void add_groups(FlatAccum& a, KvTensor tensor, const float* m, int64_t rows, int D, int group) {
    double ros = 0;
    if (tensor == KvTensor::k) {
        for (int64_t t0 = 0; t0 < rows; t0 += group) {
            const int64_t len = std::min<int64_t>(group, rows - t0);
            for (int d = 0; d < D; ++d)
                if (group_ros(m + t0 * D + d, len, D, ros)) a.ros_sum += ros, ++a.groups;
        }
    } else {
        const int g = std::min(group, D);
        for (int64_t t = 0; t < rows; ++t)
            for (int d0 = 0; d0 < D; d0 += g)
                if (group_ros(m + t * D + d0, g, 1, ros)) a.ros_sum += ros, ++a.groups;
    }
    add_values(a, m, rows * D);
}

}  // namespace

void ErrorAccum::add(const float* x, const float* recon, int64_t count) {
    for (int64_t i = 0; i < count; ++i) {
        const double e = static_cast<double>(x[i]) - recon[i];
        err2 += e * e;
        ref2 += static_cast<double>(x[i]) * x[i];
    }
}

double FlatAccum::mean_ros() const { return groups > 0 ? ros_sum / groups : kNaN; }

double FlatAccum::kurtosis() const {
    if (count == 0) return kNaN;
    const double n = static_cast<double>(count), m = s1 / n;
    const double m2 = s2 / n - m * m;
    if (!(m2 > 0.0)) return kNaN;
    // Central fourth moment from the power sums (all in double).
    const double m4 = s4 / n - 4 * m * s3 / n + 6 * m * m * s2 / n - 3 * m * m * m * m;
    return std::max(-2.0, m4 / (m2 * m2) - 3.0);
}

double FlatnessAccum::var_explained() const {
    if (!has_resid || tokens == 0) return kNaN;
    double mean2 = 0;
    for (double s : sum) mean2 += s * s;
    const double total = sq - mean2 / static_cast<double>(tokens);
    if (!(total > 0.0)) return kNaN;
    return std::clamp(1.0 - resid2 / total, 0.0, 1.0);
}

void accumulate_flatness(FlatnessAccum& acc, KvTensor tensor, const float* x, int64_t n, int D, int group,
                         const SimResult* sim) {
    const bool patterns = sim && !sim->pattern.empty();
    if (!patterns) {
        add_groups(acc.raw, tensor, x, n, D, group);
        return;
    }
    acc.has_resid = true;
    if (acc.sum.empty()) acc.sum.assign(static_cast<size_t>(D), 0.0);
    // Pattern tokens form one run: from the first token the cache stored (0, or a
    // sliding-window ring's first) up to the fp16 window at the tail.
    const int64_t s0 = sim->stored_from;
    x += s0 * D;
    const int32_t* pat = sim->pattern.data() + s0;
    const uint8_t* gate = sim->gate.empty() ? nullptr : sim->gate.data() + s0;
    int64_t rows = 0;
    while (s0 + rows < n && pat[rows] >= 0) ++rows;
    std::vector<float> resid(static_cast<size_t>(rows * D));
    for (int64_t t = 0; t < rows; ++t) {
        const float* c = sim->bank.data() + static_cast<int64_t>(pat[t]) * D;
        const bool sub = tensor == KvTensor::k || gate[t];
        for (int d = 0; d < D; ++d) {
            const float v = x[t * D + d];
            const float r = v - (sub ? c[d] : 0.0f);
            resid[t * D + d] = r;
            acc.resid2 += static_cast<double>(r) * r;
            acc.sum[d] += v;
            acc.sq += static_cast<double>(v) * v;
        }
    }
    acc.tokens += rows;
    add_groups(acc.raw, tensor, x, rows, D, group);
    add_groups(acc.resid, tensor, resid.data(), rows, D, group);
}

void accumulate_attention(const float* q, const float* k, const float* v, int64_t n, int D, int stride,
                          const std::vector<AttnCache>& caches, int64_t window, float kq_scale) {
    if (n <= 0 || caches.empty()) return;
    constexpr int64_t kBlock = 64;
    const float scale = kq_scale > 0.0f ? kq_scale : 1.0f / std::sqrt(static_cast<float>(D));
    // First key query t sees: a sliding-window layer drops keys t - window and older.
    auto first = [window](int64_t t) { return window > 0 ? std::max<int64_t>(0, t - window + 1) : int64_t{0}; };
    const ConstMap K(k, n, D), V(v, n, D);
    // Value corrections v_hat - v, zero where the cache keeps the value exact forever.
    std::vector<RowMat> dv(caches.size());
    for (size_t c = 0; c < caches.size(); ++c) dv[c] = ConstMap(caches[c].v_hat, n, D) - V;

    std::vector<int64_t> rows;
    for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
        const int64_t b1 = std::min(n, b0 + kBlock);
        rows.clear();
        for (int64_t t = b0; t < b1; ++t)
            if (t % stride == 0) rows.push_back(t);
        if (rows.empty()) continue;
        const int64_t m = static_cast<int64_t>(rows.size()), cols = rows.back() + 1;
        RowMat Q(m, D);
        for (int64_t i = 0; i < m; ++i) Q.row(i) = ConstMap(q + rows[i] * D, 1, D);
        RowMat S = (Q * K.topRows(cols).transpose()) * scale;
        // Exact log-probabilities and output.
        RowMat P = RowMat::Zero(m, cols);
        std::vector<double> lse(static_cast<size_t>(m));
        for (int64_t i = 0; i < m; ++i) {
            const int64_t t = rows[i], j0 = first(t);
            double mx = -std::numeric_limits<double>::infinity(), z = 0;
            for (int64_t j = j0; j <= t; ++j) mx = std::max(mx, static_cast<double>(S(i, j)));
            for (int64_t j = j0; j <= t; ++j) z += std::exp(S(i, j) - mx);
            lse[i] = mx + std::log(z);
            for (int64_t j = j0; j <= t; ++j) P(i, j) = static_cast<float>(std::exp(S(i, j) - lse[i]));
        }
        const RowMat O = P * V.topRows(cols);

#pragma omp parallel for schedule(dynamic)
        for (int64_t c = 0; c < static_cast<int64_t>(caches.size()); ++c) {
            const AttnCache& ca = caches[c];
            RowMat Sh = (Q * ConstMap(ca.k_hat, n, D).topRows(cols).transpose()) * scale;
            RowMat Ph = RowMat::Zero(m, cols), Pm = RowMat::Zero(m, cols);
            double kl_sum = 0, rel_sum = 0;
            int64_t rel_rows = 0;
            for (int64_t i = 0; i < m; ++i) {
                const int64_t t = rows[i], j0 = first(t);
                double mx = -std::numeric_limits<double>::infinity(), z = 0;
                for (int64_t j = j0; j <= t; ++j) {
                    if (ca.flush_k[j] > t) Sh(i, j) = S(i, j);
                    mx = std::max(mx, static_cast<double>(Sh(i, j)));
                }
                for (int64_t j = j0; j <= t; ++j) z += std::exp(Sh(i, j) - mx);
                const double lse_h = mx + std::log(z);
                double kl = 0;
                for (int64_t j = j0; j <= t; ++j) {
                    const double lp = S(i, j) - lse[i], lph = Sh(i, j) - lse_h;
                    kl += std::exp(lp) * (lp - lph);
                    const float ph = static_cast<float>(std::exp(lph));
                    Ph(i, j) = ph;
                    if (ca.flush_v[j] <= t) Pm(i, j) = ph;
                }
                kl_sum += std::max(0.0, kl);
            }
            // o_hat - o formed directly: no cancellation, and exactly 0 for an exact cache.
            Ph -= P;
            const RowMat dO = Ph * V.topRows(cols) + Pm * dv[c].topRows(cols);
            for (int64_t i = 0; i < m; ++i) {
                const double on = O.row(i).cast<double>().norm();
                if (!(on > 0.0)) continue;
                rel_sum += dO.row(i).cast<double>().norm() / on;
                ++rel_rows;
            }
            ca.acc->kl_sum += kl_sum;
            ca.acc->kl_rows += m;
            ca.acc->rel_sum += rel_sum;
            ca.acc->rel_rows += rel_rows;
        }
    }
}

void HistAccum::add(const float* raw_v, int64_t n_raw, const float* resid_v, int64_t n_resid, int bins) {
    if (!ready) {
        if (n_raw == 0) return;
        lo = *std::min_element(raw_v, raw_v + n_raw);
        hi = *std::max_element(raw_v, raw_v + n_raw);
        if (!(hi > lo)) hi = lo + 1.0;
        raw.assign(static_cast<size_t>(bins), 0);
        resid.assign(static_cast<size_t>(bins), 0);
        ready = true;
    }
    const int nb = static_cast<int>(raw.size());
    auto bin = [&](double v) {
        const int b = static_cast<int>(std::floor((v - lo) / (hi - lo) * nb));
        return std::clamp(b, 0, nb - 1);
    };
    for (int64_t i = 0; i < n_raw; ++i) ++raw[bin(raw_v[i])];
    for (int64_t i = 0; i < n_resid; ++i) ++resid[bin(resid_v[i])];
}

nlohmann::json json_number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace pkv
