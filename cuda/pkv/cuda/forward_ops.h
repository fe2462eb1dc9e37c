// pkv/cuda/forward_ops.h — the CUDA forward engine's kernels on host arrays, for parity
// tests against the CPU functions they twin. No CUDA types: tests include it with the
// host compiler. Each call copies its inputs to device `device`, runs the kernel the
// engine runs, and copies the result back; Error(cuda) names a failing call.
//
//   pkv::cuda::rms_norm            twins  pkv::ops::rms_norm
//   pkv::cuda::rope_apply          twins  pkv::rope_apply (per-row positions)
//   pkv::cuda::split_qkv           twins  pkv::split_qkv_ref (engine_plan.h)
//   pkv::cuda::swiglu_inplace      twins  pkv::ops::swiglu_inplace
//   pkv::cuda::geglu_tanh_inplace  twins  pkv::ops::geglu_tanh_inplace
//   pkv::cuda::gated_activation_to twins  the two above, then float_to_bf16 / float_to_half
//   pkv::cuda::causal_attention    twins  pkv::ops::causal_attention_rows, per sequence
//   pkv::cuda::causal_attention_cached  twins  pkv::ops::causal_attention_rows_cached, per sequence
//   pkv::cuda::logit_row_stats     twins  pkv::ops::LogitRowStats (add_block per chunk, nll())
#pragma once

#include <cstdint>
#include <vector>

#include "pkv/core/rope.h"
#include "pkv/model/engine_plan.h"

namespace pkv::cuda {

/// out = rms_norm(x) for `rows` rows of `cols` values; out may be x.
void rms_norm(const float* x, int64_t rows, int cols, const float* w, float eps, float* out, int device = 0);

/// Rotates x = [rows, heads · head_dim] in place, row r by the table's row pos[r].
void rope_apply(float* x, int64_t rows, int heads, int head_dim, const RopeTable& table, const int32_t* pos,
                int device = 0);

/// split_qkv_ref on the device: qkv [rows, qd + 2 kd] into q, k, v plus their biases (null: none).
void split_qkv(const float* qkv, int64_t rows, int qd, int kd, const float* bq, const float* bk, const float* bv,
               float* q, float* k, float* v, int device = 0);

void swiglu_inplace(float* gate, const float* up, int64_t n, int device = 0);
void geglu_tanh_inplace(float* gate, const float* up, int64_t n, int device = 0);
/// swiglu_inplace (gelu: geglu_tanh_inplace) rounded to `type` (bf16 or fp16, nearest even)
/// in one kernel, as the engine feeds the down product: out gets n 2-byte values.
void gated_activation_to(const float* gate, const float* up, int64_t n, bool gelu, WeightType type, uint16_t* out,
                         int device = 0);

/// Causal (window > 0: sliding-window) GQA attention of sequences packed row after row:
/// lengths[s] rows each; q and out [rows, n_head · head_dim], k and v [rows, n_head_kv ·
/// head_dim]. kq_scale <= 0: 1/sqrt(head_dim). head_dim <= 256. math: f32 runs the float
/// kernel of the f32 engine; fp16 and bf16 the tensor-core kernel of the engines with those
/// weights (operands rounded to that type, sums in float).
void causal_attention(const float* q, const float* k, const float* v, const std::vector<int>& lengths, int n_head,
                      int n_head_kv, int head_dim, float* out, float kq_scale = 0.0f, int window = 0, int device = 0,
                      WeightType math = WeightType::f32);

/// causal_attention over the cache a runtime holds: k_hat and v_hat [rows, n_head_kv ·
/// head_dim] as k and v; k_flush and v_flush [n_head_kv, rows], the flush step of each
/// packed row relative to its sequence (pkv::kNeverFlushed: exact). Query i of a
/// sequence reads k_hat[j] when k_flush[g][j] <= i, else k[j] (values likewise).
void causal_attention_cached(const float* q, const float* k, const float* v, const float* k_hat, const float* v_hat,
                             const int32_t* k_flush, const int32_t* v_flush, const std::vector<int>& lengths,
                             int n_head, int n_head_kv, int head_dim, float* out, float kq_scale = 0.0f, int window = 0,
                             int device = 0, WeightType math = WeightType::f32);

/// Next-token NLL and first argmax of each row of logits [rows, n_vocab], seen in chunks
/// of `chunk` columns (targets[r] in [0, n_vocab); the row's NLL is -log softmax(target)).
void logit_row_stats(const float* logits, int64_t rows, int64_t n_vocab, int64_t chunk, const int32_t* targets,
                     float* nll, int32_t* argmax, int device = 0);

}  // namespace pkv::cuda
