// pkv/model/ops.cpp — numeric kernels of the forward pass; see ops.h for shapes.
#include "pkv/model/ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <omp.h>

namespace pkv::ops {

namespace {
using Stride = Eigen::OuterStride<>;
using ConstStridedMap = Eigen::Map<const RowMatrix, Eigen::Unaligned, Stride>;
using StridedMap = Eigen::Map<RowMatrix, Eigen::Unaligned, Stride>;
}  // namespace

void rms_norm(const float* x, int64_t rows, int64_t cols, const float* w, float eps, float* out) {
    const Eigen::Map<const Eigen::ArrayXf> weight(w, cols);
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        double ss = 0.0;
        for (int64_t c = 0; c < cols; ++c) ss += static_cast<double>(xr[c]) * xr[c];
        const auto inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(cols) + eps));
        Eigen::Map<Eigen::ArrayXf>(out + r * cols, cols) = Eigen::Map<const Eigen::ArrayXf>(xr, cols) * inv * weight;
    }
}

void matmul_wt(const float* x, int64_t rows, int64_t n_in, const float* w, int64_t n_out, float* y) {
    const Eigen::Map<const RowMatrix> X(x, rows, n_in);
    const Eigen::Map<const RowMatrix> W(w, n_out, n_in);
    Eigen::Map<RowMatrix> Y(y, rows, n_out);
    const int threads = omp_get_max_threads();
    const double flops = 2.0 * static_cast<double>(rows) * static_cast<double>(n_in) * static_cast<double>(n_out);
    if (threads == 1 || flops < 4e6 || omp_in_parallel()) {
        Y.noalias() = X * W.transpose();
        return;
    }
    // One contiguous slice per thread, each a single-threaded Eigen GEMM. Eigen's own
    // threading shares packed panels between threads and spins on their progress,
    // which collapses when the cores are shared with other processes; independent
    // slices only meet at the end. Each slice repacks the whole of the operand that
    // is not split, so the split runs along the larger one.
    const bool split_rows = rows * n_in >= n_out * n_in;
    const int64_t extent = split_rows ? rows : n_out;
    const int64_t step = ((extent + threads - 1) / threads + 7) / 8 * 8;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int t = 0; t < threads; ++t) {
        const int64_t a = std::min(extent, t * step), len = std::min(extent, a + step) - a;
        if (len <= 0) continue;
        if (split_rows) Y.middleRows(a, len).noalias() = X.middleRows(a, len) * W.transpose();
        else Y.middleCols(a, len).noalias() = X * W.middleRows(a, len).transpose();
    }
}

namespace {

// Row of scores against keys k0.. for query i: the scaled softmax over the keys it sees
// (i - window + 1 .. i, or 0 .. i without a window), zero elsewhere.
template <class Row>
void softmax_visible(Row row, int i, int k0, int window, float scale) {
    const int lo = (window > 0 ? std::max(0, i - window + 1) : 0) - k0, hi = i - k0 + 1;
    const int n = static_cast<int>(row.size());
    auto seg = row.segment(lo, hi - lo);
    const float m = seg.maxCoeff();
    seg = ((seg.array() - m) * scale).exp().matrix();
    seg *= 1.0f / seg.sum();
    if (lo > 0) row.head(lo).setZero();
    if (hi < n) row.tail(n - hi).setZero();
}

}  // namespace

void causal_attention_rows(const float* q, const float* k, const float* v, int n_head, int n_head_kv, int head_dim,
                           float* out, int row_begin, int row_end, RowMatrix& scores, int q_block, float kq_scale,
                           int window) {
    const int group = n_head / n_head_kv;
    const int64_t qd = static_cast<int64_t>(n_head) * head_dim, kd = static_cast<int64_t>(n_head_kv) * head_dim;
    const float scale = kq_scale > 0.0f ? kq_scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
    for (int r0 = row_begin; r0 < row_end; r0 += q_block) {
        // Keys [k0, r1) are visible to some query of the block; with a window only the
        // last `window` keys of each query are.
        const int r1 = std::min(row_end, r0 + q_block), nq = r1 - r0;
        const int k0 = window > 0 ? std::max(0, r0 - window + 1) : 0, nk = r1 - k0;
        for (int h = 0; h < n_head; ++h) {
            const int g = h / group;
            const int64_t off = k0 * kd + static_cast<int64_t>(g) * head_dim;
            const ConstStridedMap Q(q + r0 * qd + static_cast<int64_t>(h) * head_dim, nq, head_dim, Stride(qd));
            const ConstStridedMap K(k + off, nk, head_dim, Stride(kd));
            const ConstStridedMap V(v + off, nk, head_dim, Stride(kd));
            scores.resize(nq, nk);
            scores.noalias() = Q * K.transpose();
            for (int r = 0; r < nq; ++r) softmax_visible(scores.row(r), r0 + r, k0, window, scale);
            StridedMap O(out + r0 * qd + static_cast<int64_t>(h) * head_dim, nq, head_dim, Stride(qd));
            O.noalias() = scores * V;
        }
    }
}

namespace {

// First flush step among keys [0, nk) of one head; INT32_MAX when none is quantized.
int32_t first_flush(const int32_t* flush, int nk) {
    if (flush == nullptr) return INT32_MAX;
    int32_t m = INT32_MAX;
    for (int j = 0; j < nk; ++j) m = std::min(m, flush[j]);
    return m;
}

}  // namespace

void causal_attention_rows_cached(const float* q, const float* k, const float* v, const float* k_hat,
                                  const float* v_hat, const int32_t* const* k_flush, const int32_t* const* v_flush,
                                  int n_head, int n_head_kv, int head_dim, float* out, int row_begin, int row_end,
                                  RowMatrix& scores, RowMatrix& alt, int q_block, float kq_scale, int window) {
    const int group = n_head / n_head_kv;
    const int64_t qd = static_cast<int64_t>(n_head) * head_dim, kd = static_cast<int64_t>(n_head_kv) * head_dim;
    const float scale = kq_scale > 0.0f ? kq_scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
    for (int r0 = row_begin; r0 < row_end; r0 += q_block) {
        const int r1 = std::min(row_end, r0 + q_block), nq = r1 - r0;
        const int k0 = window > 0 ? std::max(0, r0 - window + 1) : 0, nk = r1 - k0;
        for (int h = 0; h < n_head; ++h) {
            const int g = h / group;
            const int64_t off = k0 * kd + static_cast<int64_t>(g) * head_dim;
            // Flush steps of keys k0.. (null: the head is exact).
            const int32_t* kf = k_flush[g] ? k_flush[g] + k0 : nullptr;
            const int32_t* vf = v_flush[g] ? v_flush[g] + k0 : nullptr;
            const ConstStridedMap Q(q + r0 * qd + static_cast<int64_t>(h) * head_dim, nq, head_dim, Stride(qd));
            const ConstStridedMap K(k + off, nk, head_dim, Stride(kd));
            scores.resize(nq, nk);
            scores.noalias() = Q * K.transpose();
            // Queries of this block are r0..r1-1: a key flushed at step s is seen
            // reconstructed by queries i >= s.
            if (first_flush(kf, nk) < r1) {
                const ConstStridedMap Kh(k_hat + off, nk, head_dim, Stride(kd));
                alt.resize(nq, nk);
                alt.noalias() = Q * Kh.transpose();
                for (int r = 0; r < nq; ++r) {
                    const int i = r0 + r;
                    for (int j = 0; j <= i - k0; ++j)
                        if (kf[j] <= i) scores(r, j) = alt(r, j);
                }
            }
            for (int r = 0; r < nq; ++r) softmax_visible(scores.row(r), r0 + r, k0, window, scale);
            const ConstStridedMap V(v + off, nk, head_dim, Stride(kd));
            StridedMap O(out + r0 * qd + static_cast<int64_t>(h) * head_dim, nq, head_dim, Stride(qd));
            if (first_flush(vf, nk) < r1) {
                // Move the weight on values already flushed for a query into `alt`.
                alt.setZero(nq, nk);
                for (int r = 0; r < nq; ++r) {
                    const int i = r0 + r;
                    for (int j = 0; j <= i - k0; ++j)
                        if (vf[j] <= i) alt(r, j) = scores(r, j), scores(r, j) = 0.0f;
                }
                const ConstStridedMap Vh(v_hat + off, nk, head_dim, Stride(kd));
                O.noalias() = scores * V;
                O.noalias() += alt * Vh;
            } else {
                O.noalias() = scores * V;
            }
        }
    }
}

void swiglu_inplace(float* gate, const float* up, int64_t n) {
    Eigen::Map<Eigen::ArrayXf> g(gate, n);
    const Eigen::Map<const Eigen::ArrayXf> u(up, n);
    g = g / (1.0f + (-g).exp()) * u;
}

void geglu_tanh_inplace(float* gate, const float* up, int64_t n) {
    Eigen::Map<Eigen::ArrayXf> g(gate, n);
    const Eigen::Map<const Eigen::ArrayXf> u(up, n);
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    g = 0.5f * g * (1.0f + (kSqrt2OverPi * (g + 0.044715f * g * g * g)).tanh()) * u;
}

void LogitRowStats::add_block(const float* logits, int64_t n, int64_t col0, int64_t target_col) {
    const Eigen::Map<const Eigen::ArrayXf> l(logits, n);
    Eigen::Index idx = 0;
    const float bm = l.maxCoeff(&idx);  // first maximal index, so ties keep the lowest id
    if (bm > max) {
        sum *= std::exp(max - bm);
        max = bm;
        argmax = static_cast<int32_t>(col0 + idx);
    }
    // Within a block the exponentials are summed in float (vectorized); blocks are
    // combined in double, relative to the running maximum.
    const float block_sum = (l - static_cast<float>(max)).exp().sum();
    sum += static_cast<double>(block_sum);
    if (target_col >= col0 && target_col < col0 + n) {
        target = logits[target_col - col0];
        has_target = true;
    }
}

void LogitRowStats::merge(const LogitRowStats& o) {
    if (o.argmax < 0) return;
    if (argmax < 0) {
        *this = o;
        return;
    }
    const double m = std::max(max, o.max);
    sum = sum * std::exp(max - m) + o.sum * std::exp(o.max - m);
    if (o.max > max || (o.max == max && o.argmax < argmax)) argmax = o.argmax;
    max = m;
    if (o.has_target) target = o.target, has_target = true;
}

double LogitRowStats::nll() const { return max + std::log(sum) - target; }

double LogitRowStats::lse() const { return max + std::log(sum); }

void KlRowStats::add_block(const float* a, const float* b, int64_t n) {
    const Eigen::Map<const Eigen::ArrayXf> A(a, n), B(b, n);
    const float bm = A.maxCoeff();
    if (bm > max) {
        const double f = std::exp(max - bm);
        sum *= f;
        w *= f;
        max = bm;
    }
    const Eigen::ArrayXf e = (A - static_cast<float>(max)).exp();
    sum += static_cast<double>(e.sum());
    w += static_cast<double>((e * (A - B)).sum());
}

void KlRowStats::merge(const KlRowStats& o) {
    if (o.sum == 0.0) return;
    if (sum == 0.0) {
        *this = o;
        return;
    }
    const double m = std::max(max, o.max), fa = std::exp(max - m), fb = std::exp(o.max - m);
    sum = sum * fa + o.sum * fb;
    w = w * fa + o.w * fb;
    max = m;
}

double KlRowStats::kl(double lse_a, double lse_b) const { return w / sum - lse_a + lse_b; }

}  // namespace pkv::ops
