// `pkv calibrate --objective`: the contract is in calibrate_objective.h.
#include "pkv/pipeline/calibrate_objective.h"

#include <algorithm>
#include <cmath>

#include "pkv/core/error.h"

namespace pkv {

const char* calib_objective_name(CalibObjective o) {
    switch (o) {
        case CalibObjective::kv: return "kv";
        case CalibObjective::qk: return "qk";
        case CalibObjective::qk_mine: return "qk-mine";
        case CalibObjective::qk_full: return "qk-full";
    }
    return "kv";
}

CalibObjective parse_calib_objective(const std::string& name) {
    if (name == "kv") return CalibObjective::kv;
    if (name == "qk") return CalibObjective::qk;
    if (name == "qk-mine") return CalibObjective::qk_mine;
    if (name == "qk-full") return CalibObjective::qk_full;
    fail(ErrorCode::invalid_argument, "--objective: expected kv, qk, qk-mine or qk-full, got '{}'", name);
}

namespace calib {

std::vector<int> rope_partners(int D, const std::string& dim_order, int n_rot) {
    if (n_rot <= 0 || n_rot > D) n_rot = D;
    std::vector<int> p(static_cast<size_t>(D));
    for (int c = 0; c < D; ++c) p[c] = c;
    const bool half = dim_order == "hf_half_split";
    for (int i = 0; i < n_rot / 2; ++i) {
        const int a = half ? i : 2 * i, b = half ? i + n_rot / 2 : 2 * i + 1;
        p[a] = b;
        p[b] = a;
    }
    return p;
}

void add_query_moments(const float* q, int64_t n, int D, std::vector<double>& sum, int64_t& count) {
    sum.resize(static_cast<size_t>(D), 0.0);
    for (int64_t t = 0; t < n; ++t)
        for (int c = 0; c < D; ++c) {
            const double v = q[t * D + c];
            sum[c] += v * v;
        }
    count += n;
}

std::vector<double> query_channel_weights(const std::vector<double>& sum, int64_t count,
                                          const std::vector<int>& partners, const std::string& what) {
    const size_t D = sum.size();
    PKV_CHECK(count > 0 && D > 0, invalid_argument, "{}: no query tokens to weigh the key channels with", what);
    std::vector<double> w(D);
    for (size_t c = 0; c < D; ++c) w[c] = sum[c] / static_cast<double>(count);
    if (!partners.empty()) {
        const std::vector<double> m = w;
        for (size_t c = 0; c < D; ++c) w[c] = 0.5 * (m[c] + m[static_cast<size_t>(partners[c])]);
    }
    double mean = 0.0;
    for (double v : w) mean += v;
    mean /= static_cast<double>(D);
    PKV_CHECK(mean > 0.0 && std::isfinite(mean), invalid_argument,
              "{}: query second moments are {} on average; expected a positive finite value", what, mean);
    for (double& v : w) v = std::max(v / mean, 1e-6);
    return w;
}

void add_query_products(const float* q, int64_t n, int D, std::vector<double>& sum, int64_t& count) {
    sum.resize(static_cast<size_t>(D) * D, 0.0);
    for (int64_t t = 0; t < n; ++t) {
        const float* r = q + t * D;
        for (int c = 0; c < D; ++c) {
            const double a = r[c];
            double* row = sum.data() + static_cast<size_t>(c) * D;
            for (int e = c; e < D; ++e) row[e] += a * r[e];
        }
    }
    count += n;
}

std::vector<double> query_metric_factor(const std::vector<double>& sum, int64_t count, int D, const std::string& what) {
    PKV_CHECK(count > 0 && D > 0 && sum.size() == static_cast<size_t>(D) * D, invalid_argument,
              "{}: no query tokens to form the key metric with", what);
    double trace = 0.0;
    for (int c = 0; c < D; ++c) trace += sum[static_cast<size_t>(c) * D + c];
    const double scale = static_cast<double>(D) / trace;
    PKV_CHECK(trace > 0.0 && std::isfinite(scale), invalid_argument,
              "{}: query second moments are {} on average; expected a positive finite value", what,
              trace / static_cast<double>(count) / D);
    auto M = [&](int a, int b) {  // the upper triangle holds both
        return sum[static_cast<size_t>(std::min(a, b)) * D + std::max(a, b)] * scale + (a == b ? 1e-6 : 0.0);
    };
    std::vector<double> U(static_cast<size_t>(D) * D, 0.0);
    for (int j = 0; j < D; ++j) {
        double djj = M(j, j);
        for (int i = 0; i < j; ++i) djj -= U[static_cast<size_t>(i) * D + j] * U[static_cast<size_t>(i) * D + j];
        // Positive by the ridge unless rounding ate it; then the channel is dependent: keep it tiny.
        const double ujj = std::sqrt(std::max(djj, 1e-12));
        U[static_cast<size_t>(j) * D + j] = ujj;
        for (int e = j + 1; e < D; ++e) {
            double v = M(j, e);
            for (int i = 0; i < j; ++i) v -= U[static_cast<size_t>(i) * D + j] * U[static_cast<size_t>(i) * D + e];
            U[static_cast<size_t>(j) * D + e] = v / ujj;
        }
    }
    return U;
}

void transform_rows(float* x, int64_t n, int D, const std::vector<double>& U) {
    std::vector<double> y(static_cast<size_t>(D));
    for (int64_t t = 0; t < n; ++t) {
        float* r = x + t * D;
        for (int j = 0; j < D; ++j) {
            double v = 0.0;
            for (int d = j; d < D; ++d) v += U[static_cast<size_t>(j) * D + d] * r[d];
            y[j] = v;
        }
        for (int j = 0; j < D; ++j) r[j] = static_cast<float>(y[j]);
    }
}

void untransform_rows(float* y, int64_t n, int D, const std::vector<double>& U) {
    std::vector<double> x(static_cast<size_t>(D));
    for (int64_t t = 0; t < n; ++t) {
        float* r = y + t * D;
        for (int j = D - 1; j >= 0; --j) {
            double v = r[j];
            for (int d = j + 1; d < D; ++d) v -= U[static_cast<size_t>(j) * D + d] * x[d];
            x[j] = v / U[static_cast<size_t>(j) * D + j];
        }
        for (int j = 0; j < D; ++j) r[j] = static_cast<float>(x[j]);
    }
}

void to_metric(float* x, int64_t n, int D, const KeyMetric& m, bool forward) {
    if (!m.factor.empty()) {
        if (forward) transform_rows(x, n, D, m.factor);
        else untransform_rows(x, n, D, m.factor);
        return;
    }
    if (m.weight.empty()) return;
    std::vector<double> s(m.weight.size());
    for (size_t d = 0; d < s.size(); ++d) s[d] = forward ? std::sqrt(m.weight[d]) : 1.0 / std::sqrt(m.weight[d]);
    scale_rows(x, n, D, s);
}

void scale_rows(float* x, int64_t n, int D, const std::vector<double>& s) {
    for (int64_t t = 0; t < n; ++t)
        for (int c = 0; c < D; ++c) x[t * D + c] = static_cast<float>(x[t * D + c] * s[c]);
}

double assignment_objective(const float* x, int64_t n, int D, const float* centroids, const int32_t* labels) {
    double s = 0.0;
    for (int64_t t = 0; t < n; ++t) {
        const float* c = centroids + static_cast<int64_t>(labels[t]) * D;
        for (int d = 0; d < D; ++d) {
            const double e = static_cast<double>(x[t * D + d]) - c[d];
            s += e * e;
        }
    }
    return s;
}

}  // namespace calib
}  // namespace pkv
