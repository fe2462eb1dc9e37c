// pkv/model/ops.h — the numeric building blocks of the Llama forward pass (CPU).
//
// Everything is row-major: a matrix of activations has one row per token. A weight
// matrix is [n_out, n_in] row-major, as a GGUF tensor with ne = {n_in, n_out} is laid
// out, so a projection is y = x · Wᵀ. These kernels are single-threaded when called
// inside an OpenMP parallel region (the forward pass splits token rows across
// threads itself) and only matmul_wt splits work when called outside one.
#pragma once

#include <cstdint>
#include <vector>

#include <Eigen/Core>

namespace pkv::ops {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// out[r] = x[r] / sqrt(mean(x[r]²) + eps) ⊙ w for `rows` rows of `cols` values, with
/// the mean accumulated in double. w has `cols` values; out may be x (in place) but may
/// not overlap it otherwise.
void rms_norm(const float* x, int64_t rows, int64_t cols, const float* w, float eps, float* out);

/// y = x · Wᵀ with x = [rows, n_in], W = [n_out, n_in], y = [rows, n_out], all
/// row-major and contiguous (y may not alias x or W). Outside a parallel region,
/// large products are split into one slice per OpenMP thread.
void matmul_wt(const float* x, int64_t rows, int64_t n_in, const float* w, int64_t n_out, float* y);

/// Causal grouped-query attention for query rows [row_begin, row_end) of one sequence,
/// single-threaded (callers split rows across threads).
/// q: [n, n_head * head_dim], k and v: [n, n_head_kv * head_dim], out: [n, n_head * head_dim],
/// all row-major; only rows [row_begin, row_end) of out are written and only rows
/// < row_end of k and v are read. Query head h reads KV head h / (n_head / n_head_kv);
/// scores are scaled by kq_scale (<= 0: 1/sqrt(head_dim)); row i attends to rows 0..i (with
/// window > 0: only rows i - window + 1 .. i, a sliding-window layer) with a
/// max-subtracted softmax. Scores are formed per head and per block of `q_block` query
/// rows in `scratch`, so it holds at most q_block · row_end floats.
void causal_attention_rows(const float* q, const float* k, const float* v, int n_head, int n_head_kv, int head_dim,
                           float* out, int row_begin, int row_end, RowMatrix& scratch, int q_block = 256,
                           float kq_scale = 0.0f, int window = 0);

/// causal_attention_rows over the cache a runtime holds at each step: query i reads,
/// for KV head g and key j <= i, k_hat[j] when k_flush[g] is non-null and
/// k_flush[g][j] <= i, else k[j] (likewise v_hat / v_flush for values). k_hat and
/// v_hat have the layout of k and v ([n, n_head_kv * head_dim]); k_flush and v_flush
/// hold n_head_kv pointers to [n] flush steps (a null pointer: that head is exact).
/// Per (head, query block) the scores against exact and reconstructed keys are both
/// formed and merged per element, and the probabilities are split into the part on
/// exact and the part on reconstructed values; blocks where every visible key (or
/// value) is on one side take the single product. `scratch2` holds the second
/// score/probability block.
void causal_attention_rows_cached(const float* q, const float* k, const float* v, const float* k_hat,
                                  const float* v_hat, const int32_t* const* k_flush, const int32_t* const* v_flush,
                                  int n_head, int n_head_kv, int head_dim, float* out, int row_begin, int row_end,
                                  RowMatrix& scratch, RowMatrix& scratch2, int q_block = 256, float kq_scale = 0.0f,
                                  int window = 0);

/// gate[i] ← silu(gate[i]) · up[i] for n values.
void swiglu_inplace(float* gate, const float* up, int64_t n);
/// gate[i] ← gelu(gate[i]) · up[i] with the tanh approximation
/// gelu(x) = x/2 · (1 + tanh(sqrt(2/π) · (x + 0.044715 x³))), for n values.
void geglu_tanh_inplace(float* gate, const float* up, int64_t n);

/// Running log-sum-exp, argmax and target logit of one row of logits seen in blocks
/// of the vocabulary, in double. Feeding every block once gives the exact log-softmax.
struct LogitRowStats {
    double max = -1e300;  ///< running maximum logit
    double sum = 0.0;     ///< Σ exp(logit - max) over the columns seen
    int32_t argmax = -1;  ///< first column holding the maximum
    double target = 0.0;  ///< logit of the target column once seen
    bool has_target = false;
    /// Adds logits[0..n) of columns col0..col0+n; `target_col` < 0 means no target.
    void add_block(const float* logits, int64_t n, int64_t col0, int64_t target_col);
    /// Combines statistics of disjoint column sets (any order).
    void merge(const LogitRowStats& o);
    /// -log softmax(target) = logsumexp - target.
    double nll() const;
    /// log Σ exp(logit) over the columns seen.
    double lse() const;
};

/// Streaming KL(p || q) of one row, p = softmax(a) (the reference), q = softmax(b),
/// seen in blocks of the vocabulary: with the running maximum m of a it keeps
/// sum = Σ exp(a - m) and w = Σ exp(a - m)(a - b), so that
/// KL = w / sum - lse(a) + lse(b). Within a block in float, across blocks in double.
struct KlRowStats {
    double max = -1e300;
    double sum = 0.0;
    double w = 0.0;
    void add_block(const float* a, const float* b, int64_t n);
    void merge(const KlRowStats& o);
    /// lse_a, lse_b: log-sum-exp of the full rows a and b (LogitRowStats::lse()).
    double kl(double lse_a, double lse_b) const;
};

}  // namespace pkv::ops
