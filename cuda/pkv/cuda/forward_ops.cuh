// Internal: launchers of the CUDA forward engine's kernels, on device pointers and one
// stream (the engine's, and the host-memory twins of forward_ops.h). Kernels are private
// to forward_ops.cu, forward_attention.cu and forward_attention_mma.cu. Every launcher
// checks the launch.
// Shapes follow lib/pkv/model/ops.h: row-major, one row per packed token.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "pkv/model/engine_plan.h"

namespace pkv::cuda::fwd {

/// ops::rms_norm: out[r] = x[r] / sqrt(mean(x[r]²) + eps) ⊙ w, the mean in double;
/// out may be x.
void rms_norm(const float* x, int64_t rows, int cols, const float* w, float eps, float* out, cudaStream_t s);

/// pkv::rope_apply of x = [rows, heads · head_dim] with the angles of table row pos[r]
/// (cos, sin: [n_pos, n_pairs] from pkv::rope_table); pairs interleaved or half split.
void rope(float* x, int64_t rows, int heads, int head_dim, const float* cos, const float* sin, int n_pairs,
          bool interleaved, const int32_t* pos, cudaStream_t s);

/// ops::swiglu_inplace / ops::geglu_tanh_inplace over n values.
void swiglu(float* gate, const float* up, int64_t n, cudaStream_t s);
void geglu_tanh(float* gate, const float* up, int64_t n, cudaStream_t s);
/// The same activation (gelu: geglu_tanh, else swiglu) rounded to bf16 or binary16 (type,
/// as convert) into out, n 2-byte values; gate is left as it was.
void gated_to(const float* gate, const float* up, int64_t n, bool gelu, WeightType type, void* out, cudaStream_t s);

/// The fused product's rows qkv [rows, qd + 2 kd] split into q [rows, qd], k and v
/// [rows, kd], each plus its bias (null: none); split_qkv_ref's rule.
void split_qkv(const float* qkv, int64_t rows, int qd, int kd, const float* bq, const float* bk, const float* bv,
               float* q, float* k, float* v, cudaStream_t s);
/// y[r] += b for rows of `cols` values; x += y over n values.
void add_bias(float* y, int64_t rows, int cols, const float* b, cudaStream_t s);
void add_inplace(float* x, const float* y, int64_t n, cudaStream_t s);
/// x -= y over n values (float, as the host's `x[i] -= y[i]`); x[i] = value over n values.
void sub_inplace(float* x, const float* y, int64_t n, cudaStream_t s);
void fill(int32_t* x, int32_t value, int64_t n, cudaStream_t s);

/// n floats to bf16 or binary16 (type, round to nearest even); out holds 2-byte values.
void convert(const float* x, int64_t n, WeightType type, void* out, cudaStream_t s);
/// n floats to binary16 bits, round to nearest even (pkv::float_to_half).
void to_half(const float* x, int64_t n, uint16_t* out, cudaStream_t s);

/// The cache a cached attention kernel reads (device pointers; forward_attention.cu and
/// forward_attention_mma.cu): k_hat / v_hat laid out as k / v, flush steps
/// [n_head_kv][flush_stride] per packed row, relative to the row's sequence.
struct AttentionCacheView {
    const float* k_hat = nullptr;
    const float* v_hat = nullptr;
    const int32_t* k_flush = nullptr;
    const int32_t* v_flush = nullptr;
    int64_t flush_stride = 0;
};

/// ops::causal_attention_rows over packed rows: q [rows, n_head · head_dim], k and v
/// [rows, n_head_kv · head_dim]; each tile (device array) is a block of queries of one
/// sequence (engine_plan.h); query i of a sequence attends to its keys max(0, i - window
/// + 1) .. i (window 0: 0 .. i) with softmax scale `scale` (> 0). head_dim <= 256.
/// math f32: float operands and sums (forward_attention.cu, the f32 engine's); fp16 or
/// bf16: tensor cores (forward_attention_mma.cu), q, k, v (and the reconstructions) and
/// the probabilities rounded to that type as they are staged, scores, softmax statistics
/// and outputs in float (the bf16 and fp16 engines', with fp16).
void attention(const float* q, const float* k, const float* v, const AttentionTile* tiles, int n_tiles, int n_head,
               int n_head_kv, int head_dim, float scale, int window, WeightType math, float* out, cudaStream_t s);
/// attention over the cache a runtime holds (ops::causal_attention_rows_cached on packed
/// rows): query i of a sequence reads, for KV head g and key j, k_hat[j] when
/// k_flush[g · rows + j] <= i, else k[j] (values likewise with v_hat / v_flush). k_hat and
/// v_hat have the layout of k and v; the flush steps ([n_head_kv, rows], device) count
/// positions within the row's sequence (engine_cache.h: kNeverFlushed keeps a key exact).
void attention_cached(const float* q, const float* k, const float* v, const float* k_hat, const float* v_hat,
                      const int32_t* k_flush, const int32_t* v_flush, int64_t rows, const AttentionTile* tiles,
                      int n_tiles, int n_head, int n_head_kv, int head_dim, float scale, int window, WeightType math,
                      float* out, cudaStream_t s);
/// The tensor-core halves of attention and attention_cached (math fp16 or bf16); called
/// through them.
void attention_mma(const float* q, const float* k, const float* v, const AttentionTile* tiles, int n_tiles, int n_head,
                   int n_head_kv, int head_dim, float scale, int window, WeightType math, float* out, cudaStream_t s);
void attention_cached_mma(const float* q, const float* k, const float* v, const float* k_hat, const float* v_hat,
                          const int32_t* k_flush, const int32_t* v_flush, int64_t rows, const AttentionTile* tiles,
                          int n_tiles, int n_head, int n_head_kv, int head_dim, float scale, int window,
                          WeightType math, float* out, cudaStream_t s);
/// Queries per attention tile (engine_plan's attention_tiles(batch, kAttentionTileRows)).
constexpr int kAttentionTileRows = 16;
constexpr int kMaxHeadDim = 256;

/// Per-row running statistics of the logits (ops::LogitRowStats), one entry per row.
struct LogitStats {
    double* max = nullptr;
    double* sum = nullptr;
    int32_t* argmax = nullptr;
    float* target = nullptr;
};
/// Resets rows [0, rows) to "nothing seen".
void logit_stats_reset(const LogitStats& st, int64_t rows, cudaStream_t s);
/// LogitRowStats::add_block for rows [0, rows) of logits [rows, n_cols] (columns
/// col0 .. col0 + n_cols of the vocabulary), targets[r] < 0: none.
void logit_stats_add(const float* logits, int64_t rows, int64_t n_cols, int64_t col0, const int32_t* targets,
                     const LogitStats& st, cudaStream_t s);
/// nll[r] = max + log(sum) - target (float of the double) and argmax[r], for rows with a target.
void logit_stats_finish(const LogitStats& st, const int32_t* targets, int64_t rows, float* nll, int32_t* argmax,
                        cudaStream_t s);

}  // namespace pkv::cuda::fwd
