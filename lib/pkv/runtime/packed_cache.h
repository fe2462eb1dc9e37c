// pkv/runtime/packed_cache.h — a packed low-bit KV cache for decoding with a pkv pattern
// table (patternkv-table), KIVI or plain fp16, and the CPU reference of decode attention
// over it. C++17 and the standard library only (with pattern_table_reader.h beside it and
// packed_cache.cpp): a runtime copies the three files as they are.
//
// The byte layout is specified in docs/formats/packed_cache.md and docs/runtime.md walks a
// runtime author through this API. In short, per (layer, sequence, KV head) and for K and V
// apart:
//   - flushed tokens live in fixed-size blocks of R tokens: codes bit-packed per token,
//     binary16 (scale, zero) pairs, a uint8 pattern index per token and (V) one gate bit
//     per token; no pointers inside a block, every section 16-byte aligned;
//   - the recent tokens live in an fp16 ring of R + 1 slots (token j in slot j mod (R + 1));
//   - the table's patterns stay resident in fp32, per (layer, KV head).
// A cache holds n_seq independent sequences (a batch), each up to max_tokens tokens.
//
// When tokens are quantized (the schedule of pkv's cache simulation, pkv/kvcache/simulate.h,
// so that a sequence's cache equals simulate_cache's bit for bit):
//   - Prefill: append() the prompt's P tokens (in any chunks), then end_prefill(): the first
//     P - P mod R tokens are quantized in R-token blocks (KIVI V: all but the last R).
//     decode_attention_ref refuses a sequence still in prefill: the runtime attends over the
//     prompt in full precision itself, as KIVI and PatternKV do.
//   - Decode: every append() of one token first flushes what the previous step completed
//     (a block of R pending tokens; KIVI V: the oldest token beyond R), then writes the new
//     token to the fp16 ring. So the query of step t sees its own block in fp16, exactly as
//     simulate_cache's f(j) = t + 1 says. flush() does the same without a new token (after
//     the last step), giving simulate_cache's final state.
// Rows are rounded to binary16 when appended (the ring stores binary16) and blocks are
// quantized from those values: on binary16 inputs (every pkv dump) nothing is lost.
//
// Errors: every misuse throws pkv_rt::CacheError (a std::runtime_error) with a one-line
// message naming the call, the layer or sequence and what was expected. Arguments are
// checked before anything is written, so a refused call changes nothing; the one error found
// while quantizing (a residual range beyond binary16) keeps the tokens appended before it.
// Thread-safety: const members may run concurrently; append/flush/end_prefill/set_* of one
// layer must not run concurrently with anything reading that layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "pattern_table_reader.h"

namespace pkv_rt {

/// Thrown for every invalid configuration, table, append or query batch.
class CacheError : public std::runtime_error {
public:
    explicit CacheError(const std::string& message) : std::runtime_error(message) {}
};

// ---- layout constants (docs/formats/packed_cache.md) -----------------------------------

/// Every block, every section of a block and the cache's arrays start at a multiple of this
/// many bytes (one 128-bit load on a GPU).
constexpr int kPackedAlign = 16;
/// Pattern indices are one uint8 per token, so a table may hold at most this many patterns.
constexpr int kMaxPackedPatterns = 256;
/// One group's parameters: binary16 scale (bytes 0-1) then binary16 zero (bytes 2-3).
constexpr int kParamBytes = 4;
/// A token's code row is a whole number of little-endian 32-bit words.
constexpr int kCodeWordBytes = 4;
/// The fp16 ring holds R + kWindowSlack tokens: KIVI's V attends over R + 1 recent tokens.
constexpr int kWindowSlack = 1;
/// Bytes of one binary16 value.
constexpr int kHalfBytes = 2;

static_assert(kPackedAlign % kCodeWordBytes == 0, "code rows must not straddle an aligned section start");
static_assert(kPackedAlign % kParamBytes == 0, "parameter pairs must stay aligned");
static_assert(kMaxPackedPatterns - 1 <= UINT8_MAX, "a pattern index must fit one byte");
static_assert(kParamBytes == 2 * kHalfBytes, "a parameter pair is two binary16 numbers");

enum class CacheMethod { fp16, kivi, patternkv_table };
enum class KvPart { k = 0, v = 1 };

/// "fp16", "kivi", "patternkv-table" (the names of pkv's --methods).
inline const char* to_string(CacheMethod m) {
    return m == CacheMethod::fp16 ? "fp16" : m == CacheMethod::kivi ? "kivi" : "patternkv-table";
}

/// What one cache holds. Checked by PackedCache's constructor (and block_layout).
struct CacheConfig {
    CacheMethod method = CacheMethod::patternkv_table;
    int n_layer = 0;
    int n_head = 0;          ///< query heads; a multiple of n_head_kv (GQA)
    int n_head_kv = 0;       ///< KV heads
    int head_dim = 0;        ///< D, even
    int n_seq = 1;           ///< sequences of the batch, each with its own tokens
    int64_t max_tokens = 0;  ///< per sequence
    int window = 128;        ///< R: fp16 window / flush block in tokens (kivi, patternkv-table)
    int group = 128;         ///< G: K tokens per channel group (must divide R); V: min(G, D) channels
    int bits = 2;            ///< residual code width: 2, 3 or 4
    int k_patterns = 0;      ///< Mk (patternkv-table), 1..256
    int v_patterns = 0;      ///< Mv (patternkv-table), 1..256
};

/// Byte offsets of one block's sections (K or V), from the block's start; -1: absent.
struct BlockLayout {
    int64_t row_bytes = 0;     ///< one token's D codes: 4 * ceil(D * bits / 32)
    int64_t codes = 0;         ///< [R] code rows
    int64_t params = -1;       ///< [param_groups] (scale, zero) pairs
    int64_t param_groups = 0;  ///< K: (R / G) * D, group-major; V: R * (D / Gv), token-major
    int64_t index = -1;        ///< [R] uint8 pattern indices (patternkv-table)
    int64_t gate = -1;         ///< [ceil(R / 8)] bytes, bit t % 8 of byte t / 8 (patternkv-table V)
    int64_t bytes = 0;         ///< block size, a multiple of kPackedAlign
};

/// The block layout of `part` under `c` (all zero for fp16, which has no blocks). Throws
/// CacheError for an invalid configuration.
BlockLayout block_layout(const CacheConfig& c, KvPart part);

/// V's channel group: min(G, D).
inline int value_group(const CacheConfig& c) { return c.group < c.head_dim ? c.group : c.head_dim; }

/// Bits of one (layer, sequence, KV head, part) as pkv's analyze and eval count them
/// (pkv::SimBits without the bank, which a table does not charge to a sequence).
struct CacheBits {
    double codes = 0, params = 0, index = 0, gate = 0, window = 0;
    double total() const { return codes + params + index + gate + window; }
};

/// Code i of a packed row: bits [i * bits, (i + 1) * bits) of the row read as one
/// little-endian bit stream (bit k is bit k % 8 of byte k / 8).
inline unsigned packed_code(const uint8_t* row, int i, int bits) {
    const unsigned p = static_cast<unsigned>(i) * static_cast<unsigned>(bits);
    unsigned w = row[p >> 3];
    if ((p & 7u) + static_cast<unsigned>(bits) > 8u) w |= static_cast<unsigned>(row[(p >> 3) + 1]) << 8;
    return (w >> (p & 7u)) & ((1u << bits) - 1u);
}

/// Writes code q (< 2^bits) as code i of a row whose bits there are zero.
inline void pack_code(uint8_t* row, int i, int bits, unsigned q) {
    const unsigned p = static_cast<unsigned>(i) * static_cast<unsigned>(bits);
    const unsigned w = q << (p & 7u);
    row[p >> 3] = static_cast<uint8_t>(row[p >> 3] | (w & 0xffu));
    if ((p & 7u) + static_cast<unsigned>(bits) > 8u)
        row[(p >> 3) + 1] = static_cast<uint8_t>(row[(p >> 3) + 1] | (w >> 8));
}

/// float -> IEEE binary16, round to nearest even; overflow gives +-inf, NaN stays NaN
/// (the conversion pkv's quantizer uses, bit for bit).
uint16_t f32_to_f16(float f);

/// One pkv cache of a batch of sequences. See the top of this file for the schedule.
class PackedCache {
public:
    /// Validates c (CacheError naming the field) and allocates every block and ring.
    explicit PackedCache(const CacheConfig& c);

    const CacheConfig& config() const { return cfg_; }
    const BlockLayout& layout(KvPart part) const { return layout_[static_cast<int>(part)]; }
    int64_t max_blocks() const { return max_blocks_; }            ///< blocks per (layer, seq, head, part)
    int64_t window_capacity() const { return window_capacity_; }  ///< ring slots (fp16: max_tokens)

    /// patternkv-table: the patterns ([M, D] floats, finite) of one (layer, KV head, part),
    /// the clip ratio in (0, 1] of its residual quantizer, the gate z >= 0 (V) and how
    /// tokens pick a pattern. M must be the configured Mk / Mv. Copied; before any append.
    void set_patterns(int layer, int head, KvPart part, const float* patterns, int M, float clip, double gate_z,
                      Assign assign);
    /// set_patterns for every layer and KV head from a loaded table. Refuses a table of
    /// another n_layer, n_head, n_head_kv, head_dim, bit width or pattern counts, one
    /// missing a layer (keep uncalibrated layers in another cache), or one whose width
    /// allocation (format 1.2) gives a head another width than the cache's.
    void set_table(const PatternTable& table);

    /// Appends n >= 0 tokens of one layer of sequence `seq`: k and v are [n, n_head_kv, D]
    /// floats (finite and within binary16's range). Refuses a cache longer than max_tokens,
    /// a layer without patterns (patternkv-table) and non-finite rows.
    void append(int layer, int seq, const float* k, const float* v, int64_t n);
    /// Ends seq's prefill: quantizes the prompt's whole blocks in every layer (which must all
    /// hold the same number of tokens). Later appends are decode steps.
    void end_prefill(int seq);
    /// Quantizes what the last decode step completed, in every layer of seq (see the top).
    void flush(int seq);

    int64_t tokens(int layer, int seq) const;
    /// Tokens of (layer, seq) whose `part` is quantized (the first ones; the rest are fp16).
    int64_t quantized(int layer, int seq, KvPart part) const;
    bool in_prefill(int seq) const;

    /// The cache's values of (layer, seq, head, part) as attention sees them: out is
    /// [tokens, D]; quantized tokens as k̂ = c + r̂ / v̂ = g c + r̂, the rest from the ring.
    void dequantize(int layer, int seq, int head, KvPart part, float* out) const;

    /// Decode attention of one query per sequence over layer `layer`: q and out are
    /// [n_q, n_head, D] floats with n_q == n_seq, 16-byte aligned; query head i reads KV head
    /// i / (n_head / n_head_kv). out = softmax(q k̂ / sqrt(D)) v̂ over each sequence's tokens,
    /// computed from the packed codes as the CUDA kernel does: q·c once per pattern, then
    /// per token q·c[idx] + q·r̂; values as Σ_p (Σ_{idx=p, gate} a) c_p + Σ a r̂; the ring
    /// exactly. Tokens are taken in splits of `split_blocks` blocks (0: one split), merged as
    /// split-K partial softmaxes are; fp32 arithmetic throughout.
    void decode_attention_ref(int layer, const float* q, int64_t n_q, float* out, int split_blocks = 0) const;

    /// What analyze/eval count for (layer, seq, head, part) in its present state.
    CacheBits counted_bits(int layer, int seq, int head, KvPart part) const;
    /// Bytes that state occupies: its used blocks (KIVI V: the last one partly filled, whole)
    /// plus 2 D bytes per ring token.
    int64_t packed_bytes(int layer, int seq, int head, KvPart part) const;

    // ---- raw access, for kernels and tests (layout: docs/formats/packed_cache.md) ----
    const uint8_t* block(int layer, int seq, int head, KvPart part, int64_t b) const;
    const uint16_t* ring_row(int layer, int seq, int head, KvPart part, int64_t token) const;  ///< [D] binary16
    const float* patterns(int layer, int head, KvPart part) const;                             ///< [M, D]
    float clip(int layer, int head, KvPart part) const;
    Assign assign(int layer, int head, KvPart part) const;  ///< how tokens pick a pattern (patternkv-table)
    double gate_z(int layer, int head) const;

private:
    struct HeadParams {
        float clip = 1.0f;
        double gate_z = 0.0;
        Assign assign = Assign::minmax;
        bool set = false;
    };
    // 16-byte chunks, so that std::vector's storage is 16-byte aligned.
    struct alignas(kPackedAlign) Chunk {
        uint8_t b[kPackedAlign];
    };

    CacheConfig cfg_;
    BlockLayout layout_[2];
    int64_t max_blocks_ = 0, window_capacity_ = 0;
    std::vector<Chunk> blocks_[2];       // [n_layer, n_seq, n_head_kv, max_blocks] blocks
    std::vector<uint16_t> ring_;         // [n_layer, n_seq, n_head_kv, 2, window_capacity, D]
    std::vector<float> patterns_[2];     // [n_layer, n_head_kv, M, D]
    std::vector<HeadParams> params_[2];  // [n_layer, n_head_kv]
    std::vector<int64_t> tokens_;        // [n_layer, n_seq]
    std::vector<int64_t> quantized_[2];  // [n_layer, n_seq]
    std::vector<uint8_t> prefill_;       // [n_seq]

    int M(KvPart part) const { return part == KvPart::k ? cfg_.k_patterns : cfg_.v_patterns; }
    size_t ls(int layer, int seq) const;
    size_t lh(int layer, int head) const;
    uint8_t* block_mut(int layer, int seq, int head, KvPart part, int64_t b);
    uint16_t* ring_mut(int layer, int seq, int head, KvPart part, int64_t token);
    void check_layer_seq(const char* what, int layer, int seq) const;
    void flush_due(int layer, int seq);
    void flush_k_block(int layer, int seq, int64_t t0);
    void flush_v_tokens(int layer, int seq, int64_t t0, int64_t t1);
    void split_attention(int layer, int seq, int qh, const float* q, const float* qc, int64_t j0, int64_t j1, float& m,
                         float& l, float* acc, float* pattern_weight) const;
};

}  // namespace pkv_rt
