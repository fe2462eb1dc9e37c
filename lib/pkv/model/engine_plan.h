// pkv/model/engine_plan.h — the host-side plans of a batched forward engine (the CUDA
// engine, cuda/pkv/cuda/forward_engine.h): how the sequences of a batch are packed into
// rows, how work is cut into chunks, where each weight lives in one device allocation and
// how a weight is converted to the type the device multiplies in. Plain C++, so that every
// plan is unit-tested on machines without a GPU.
//
// Packed rows: the sequences of a batch follow one another, row r of the packed matrices
// holding token pos[r] of its sequence; row0[s] is the first row of sequence s.
//
// Row slabs: every matrix product runs over slabs of exactly `slab_rows` rows (the last
// one padded), so a product always has the same shape whatever the batch holds and the
// BLAS picks the same algorithm for it: a row's result then depends on that row alone,
// and a sequence gives the same figures in any batch as when it runs alone.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "pkv/model/arch.h"
#include "pkv/model/llama.h"

namespace pkv {

class GgufFile;
struct GgufTensorInfo;

/// The type weight matrices are held and multiplied in (norms, biases and the residual
/// stream stay in float; products accumulate in float).
enum class WeightType { bf16, fp16, f32 };
const char* weight_type_name(WeightType t);  ///< "bf16", "fp16", "f32"
int weight_type_bytes(WeightType t);         ///< 2, 2, 4

/// The sequences of one batch packed row after row (see the file comment).
struct PackedBatch {
    std::vector<int32_t> tokens;  ///< [n_rows]
    std::vector<int32_t> pos;     ///< [n_rows] position of the row in its sequence
    std::vector<int32_t> target;  ///< [n_rows] the next token of the sequence; -1 on its last row
    std::vector<int64_t> row0;    ///< [n_seq + 1]; row0[n_seq] = n_rows
    int max_len = 0;              ///< longest sequence
    int64_t n_rows() const { return static_cast<int64_t>(tokens.size()); }
    int n_seq() const { return static_cast<int>(row0.size()) - 1; }
};
PackedBatch pack_batch(const std::vector<std::vector<int32_t>>& sequences);

/// A block of query rows of one sequence, the unit of work of the attention kernel:
/// sequence rows start at `row0`, queries are positions q0 .. q0 + nq - 1 of it.
struct AttentionTile {
    int32_t row0 = 0, q0 = 0, nq = 0;
};
/// Tiles of at most `tile_rows` queries covering every row of the batch, in row order;
/// no tile crosses a sequence boundary.
std::vector<AttentionTile> attention_tiles(const PackedBatch& b, int tile_rows);

/// A contiguous range [begin, begin + count).
struct Range {
    int64_t begin = 0, count = 0;
    bool operator==(const Range& o) const { return begin == o.begin && count == o.count; }
};
/// [0, total) cut into ranges of `step` (the last shorter); empty when total is 0.
std::vector<Range> split_even(int64_t total, int64_t step);
/// Consecutive sequences grouped into sub-batches of at most `max_rows` tokens each (a
/// sequence longer than that forms a sub-batch of its own); ranges of sequence indices.
std::vector<Range> group_sequences(const std::vector<std::vector<int32_t>>& sequences, int64_t max_rows);
/// `rows` rounded up to whole slabs (at least one slab).
int64_t padded_rows(int64_t rows, int64_t slab_rows);
/// The slab a model's products run over by default: 1024 rows, doubled (up to 8192) while
/// the doubled slab's narrowest product (n_embd outputs) holds at most 4096 · 1024 values
/// (1024 at n_embd 4096, 4096 at 576). Narrow models' products over 1024 rows are too
/// small to fill a large GPU; a slab is fixed per model, so results stay batch-independent.
int default_slab_rows(const LlamaHparams& hp);

/// Vocabulary rows per chunk of the logits: slab_rows · chunk floats fit in budget_bytes,
/// a multiple of 256 (at least 256), at most n_vocab. Depends on the slab, not the batch.
int64_t vocab_chunk_rows(int64_t n_vocab, int64_t slab_rows, int64_t budget_bytes);

/// Device bytes one packed row of activations needs: the float buffers of a layer (x, its
/// norm, q, k, v, attention output, gate (at least the width of the fused q | k | v
/// product), up, projection), the weight-type copy fed to the
/// products, two binary16 capture buffers of k_pre, k_post, v and q, and a cache hook's
/// float k_hat and v_hat and int32 flush steps per KV head.
int64_t activation_bytes_per_row(const LlamaHparams& hp, WeightType type);
/// Rows (a whole number of slabs, at most `cap`) whose activations fit in `budget_bytes`;
/// 0 when not even one slab fits.
int64_t rows_for_memory(int64_t budget_bytes, int64_t per_row_bytes, int64_t slab_rows, int64_t cap);

/// One tensor in the device weight allocation. Matrices (the projections and the output
/// matrix) are held in the weight type, everything else in float.
struct DeviceTensor {
    const GgufTensorInfo* info = nullptr;
    int layer = -1;  ///< -1: output or output_norm
    LayerPart part = LayerPart::attn_norm;
    bool matrix = false;  ///< held in the weight type; else float
    int64_t rows = 0, cols = 0;
    /// Bytes from the start of the allocation: 256-byte aligned, but for a layer's wk and wv,
    /// which follow wq and wk without a gap (qkv_adjacent).
    int64_t offset = 0;
    int64_t bytes = 0;
};
/// Where every weight the device needs lives. The token embeddings are not on the device
/// (the engine gathers the batch's rows on the host); a tied output matrix is token_embd.
struct WeightLayout {
    WeightType type = WeightType::bf16;
    std::vector<DeviceTensor> tensors;
    int64_t total_bytes = 0;
    /// Index into tensors of layer l's part, -1 when the model has none.
    std::vector<std::array<int, kLayerParts>> layer_index;
    int output = -1, output_norm = -1;
};
/// The layout of `model`'s weights (its hparams and file) in `type`.
WeightLayout weight_layout(const LlamaModel& model, WeightType type);
/// Whether layer `layer`'s wq, wk and wv lie back to back with one row length, so that
/// they form one [QD + 2 KD, n_embd] matrix starting at wq (one product gives q | k | v).
bool qkv_adjacent(const WeightLayout& w, int layer);
/// The rows of that one product, qkv [rows, qd + 2 kd] (q | k | v per row), split into
/// q [rows, qd], k and v [rows, kd], each value plus its bias (bq, bk, bv; null: none),
/// one float sum as the CPU pass adds a bias. The CUDA engine's split_qkv twins it.
void split_qkv_ref(const float* qkv, int64_t rows, int qd, int kd, const float* bq, const float* bk, const float* bv,
                   float* q, float* k, float* v);

/// Rows [row0, row0 + n_rows) of `t` dequantized as GgufFile::dequantize_rows does and
/// converted to `type` (round to nearest even) into dst (n_rows · row_length values of
/// weight_type_bytes(type) bytes); split over OpenMP threads when large.
void pack_rows(const GgufFile& f, const GgufTensorInfo& t, uint64_t row0, uint64_t n_rows, WeightType type, void* dst);

/// The batch's token embeddings as the CPU forward pass forms them: the rows of
/// token_embd dequantized, times hp.embd_scale in float when it is set. out: [n, n_embd].
void embed_rows(const GgufFile& f, const LlamaHparams& hp, const std::vector<int32_t>& tokens, float* out);

/// The checks LlamaModel::forward makes of each sequence and of the options, with its
/// messages, plus the engine's own (pos0 = 0, no cache hook); throws before any work.
void check_engine_batch(const GgufFile& f, const LlamaHparams& hp, const std::vector<std::vector<int32_t>>& sequences,
                        const ForwardOptions& opts, bool has_sink);

/// Refuses a result with a non-finite NLL or hidden value, naming the file, the sequence
/// (sequence0 + its index in the batch), the position and `why` (what the engine knows may
/// cause it), so that no report carries a nan for a figure. Checks what the results hold.
void check_finite_results(const GgufFile& f, const std::vector<ForwardResult>& results, size_t begin, size_t end,
                          int64_t sequence0, const char* why);

}  // namespace pkv
