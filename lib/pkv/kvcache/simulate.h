// pkv/kvcache/simulate.h — KV-cache formats simulated per sequence, exactly as a
// runtime cache would hold one (layer, KV head) of one sequence.
//
// A sequence of n tokens is a prefill of its first P tokens (the prompt) followed by
// n - P decode steps, one token each. Step t (0-based position) is the query of token
// t attending over keys/values 0..t. Every method answers, per token j:
//   recon[j]      the value the cache holds once j is quantized;
//   flush_step[j] the first query position t whose attention sees that quantized
//                 form. Before it (t < flush_step[j]) the cache holds j exactly (fp16
//                 window). kNeverQuantized: j stays fp16 until the sequence ends.
// No method ever re-quantizes a flushed token, so the cache seen by the query at t is
// "exact if flush_step[j] > t, else recon[j]" — the attention metrics rely on this.
// Tokens with flush_step <= n - 1 or == n are quantized in the final cache state (n:
// flushed after the last query). docs/numerics.md ("Cache simulation", "Methods")
// gives every rule and the bit accounting.
//
// Sliding-window (local) layers, SimParams::ring = W > 0: query t attends only keys
// t - W + 1 .. t, and the cache is a ring of the last W tokens. The prompt's first
// s = max(0, P - W) tokens leave it when the prefill ends (they are only ever seen,
// exactly, by prefill queries), so the block methods (kivi, patternkv,
// patternkv-table) run on tokens s .. n - 1 with prefill P - s: their blocks, flushes
// and the prefill's k-means see only what the ring holds. q4_0, q8_0 and fp8 write
// every token quantized, as a runtime does. The final cache holds tokens
// max(0, n - W) .. n - 1 and SimBits counts only those (a K block of G tokens is
// freed when its last token leaves; the pattern bank is never evicted).
//
// Shapes: x and recon are row-major [n, D] float (one head, one sequence).
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace pkv {

enum class KvMethod { fp16, kivi, patternkv, q4_0, q8_0, fp8, patternkv_table };

/// "fp16", "kivi", "patternkv", "q4_0", "q8_0", "fp8", "patternkv-table".
const char* kv_method_name(KvMethod m);
/// Parses one method name; throws invalid_argument "unknown method 'x' in --methods:
/// expected one of fp16, kivi, patternkv, q4_0, q8_0, fp8, patternkv-table".
KvMethod parse_kv_method(const std::string& name);
/// True for the methods whose code width comes from --bits (kivi, patternkv).
bool kv_method_takes_bits(KvMethod m);
/// Nominal code width of a fixed-width method: fp16 16, q4_0 4, q8_0 8, fp8 8.
int kv_method_fixed_bits(KvMethod m);
/// True for the methods that keep up to --window recent tokens in fp16 and flush them in
/// blocks (kivi, patternkv, patternkv-table); in a sliding-window layer that part lives in
/// the ring, so their window must be at most the layer's.
bool kv_method_keeps_window(KvMethod m);
/// Throws invalid_argument "<what>: window R is longer than the sliding window W of
/// <where> (its fp16 tokens live in that ring): expected at most W" unless
/// ring == 0 or window <= ring.
void check_window_fits_ring(const std::string& what, int64_t window, int64_t ring, const std::string& where);

enum class KvTensor { k, v };

/// patternkv-table: one head's offline patterns (from a pattern table,
/// pkv/table/pattern_table.h) and the residual-quantizer parameters fitted with them.
struct TableHeadView {
    const float* patterns = nullptr;  ///< [M, D], in the basis of the simulated tensor
    int M = 0;
    float clip = 1.0f;                   ///< clip ratio of the residual quantizer, (0, 1]
    double gate_z = 1.6448536269514722;  ///< values: gate threshold
    bool assign_l2 = false;              ///< pattern choice by L2 (default min-max)
    /// This head's code width from the table's allocation (pkv.quant.allocation): 2, 3, 4
    /// or 8, or 16 (the head stays fp16: never flushed, 16 bits per element); 0: SimParams::bits.
    int bits = 0;
};

/// patternkv's prefill k-means stops after this many updates or at this largest
/// centroid coordinate change (KMeansParams::max_iter, tol).
constexpr int kPatternKMeansIters = 30;
constexpr double kPatternKMeansTol = 1e-4;

struct SimParams {
    KvMethod method = KvMethod::kivi;
    int bits = 2;            ///< kivi / patternkv code width (2, 3, 4 or 8)
    int group = 128;         ///< G: tokens per K channel group; V groups are min(G, D) channels
    int window = 128;        ///< R: fp16 window / flush block length (>= 1)
    int patterns = 32;       ///< patternkv: k-means patterns mined from the prefill
    int pattern_cap = 0;     ///< patternkv: bank size limit (0 = grows without limit)
    bool decode_l2 = false;  ///< patternkv: assign flushed blocks by L2 instead of min-max
    uint64_t seed = 0;       ///< patternkv: k-means seed (random init, one restart)
    /// patternkv-table: the head's key and value patterns (both required for that method).
    const TableHeadView* table_k = nullptr;
    const TableHeadView* table_v = nullptr;
    /// kivi / patternkv / patternkv-table: the first min(sinks, P) prompt tokens stay exact
    /// (attention sinks, 16 bits per element while the cache holds them) and take no part
    /// in any quantizer range; blocks and flushes keep their schedule (a sink's slot in its
    /// block holds it exact). Global layers and rings that still hold the prompt's start.
    int64_t sinks = 0;
    /// kivi / patternkv / patternkv-table: elements per quantizer group held out exact
    /// (dense-and-sparse, pkv/kvcache/outliers.h), 0..8; their values and positions count
    /// with the group's parameters.
    int outliers = 0;
    /// Sliding window W of a local layer (0: a global layer, every token is kept).
    /// kivi / patternkv / patternkv-table need window <= ring (the fp16 part lives in the ring).
    int64_t ring = 0;
};

constexpr int32_t kNeverQuantized = std::numeric_limits<int32_t>::max();

/// Storage of the final cache state of one sequence, in bits, by component.
struct SimBits {
    double codes = 0, params = 0;  ///< quantized codes; fp16 scales + zeros (or fp8/ggml scales)
    double index = 0, gate = 0;    ///< patternkv: ceil(log2 M)-bit pattern ids; 1-bit V gates
    double bank = 0;               ///< patternkv: M_final * D * 16
    double window = 0;             ///< tokens still in fp16 (16 per element)
    double total() const { return codes + params + index + gate + bank + window; }
};

/// Tokens [t0, t1) quantized together, whose storage the cache frees together (a K
/// group of G tokens; one token otherwise; fp8's per-head scale spans the sequence).
struct SimUnit {
    int64_t t0 = 0, t1 = 0;
    double codes = 0, params = 0, index = 0, gate = 0;
};

struct SimResult {
    std::vector<float> recon;         ///< [n, D]; exact copy for tokens never quantized
    std::vector<int32_t> flush_step;  ///< [n], see above
    SimBits bits;                     ///< the final cache: units with t1 > kept_from, window, bank
    std::vector<SimUnit> units;       ///< every quantized unit, in flush order
    /// First token the cache stores after the prefill (ring: max(0, P - W); 0 otherwise).
    /// Errors are measured over tokens stored_from .. n - 1.
    int64_t stored_from = 0;
    /// First token of the final cache (ring: max(0, n - W); 0 otherwise); SimBits counts
    /// (n - kept_from) * D elements.
    int64_t kept_from = 0;
    // patternkv only (empty otherwise):
    std::vector<int32_t> pattern;  ///< [n] bank row assigned to a quantized token, -1 for window tokens
    std::vector<float> bank;       ///< [M_final, D] pattern bank (patternkv-table: the table's)
    std::vector<uint8_t> gate;     ///< [n] V only: 1 when the pattern was subtracted
    int kmeans_k = 0;              ///< prefill patterns mined (min(--patterns, P); 0 when P = 0)
};

/// Bits of `elements` values a cache keeps exact (fp16, 16 bits each): the fp16 method,
/// the window, layers kept in fp16.
inline double exact_bits(double elements) { return 16.0 * elements; }
/// Stored bits per cached element (codes, parameters, indices, gates, bank, window);
/// 16 when nothing was cached.
inline double effective_bits(double bits, double elements) { return elements > 0 ? bits / elements : 16.0; }

/// Tokens a cache of a layer with sliding window `ring` (0: global) keeps after n tokens.
inline int64_t kept_tokens(int64_t n, int64_t ring) { return ring > 0 && ring < n ? ring : n; }

/// Simulates one tensor of one sequence. prefill P in [0, n]. Validates nothing the
/// caller already checked (bits, group fit, window <= ring); throws internal on broken
/// invariants.
SimResult simulate_cache(const SimParams& p, KvTensor tensor, const float* x, int64_t n, int D, int64_t prefill);

/// ceil(log2 M) for M >= 1 (0 for M = 1): bits of one pattern index into a bank of M.
int index_bits(int64_t M);

/// Stored bits per element of one patternkv-table tensor of a head at code width `bits`
/// (2, 3, 4, 8; 16: kept fp16, exactly 16), M patterns, group G, fp16 window R, head_dim D,
/// as SimBits counts them once every token is flushed (no fp16 window left):
///   K: bits + 32 ceil(R / G) / R + ceil(log2 M) / D   (a flush block of R tokens, per channel
///      groups of G tokens, each with a binary16 scale and zero; one index per token)
///   V: bits + 32 (D / min(G, D)) / D + (ceil(log2 M) + 1) / D   (per token: groups of
///      min(G, D) channels, an index and a gate bit)
/// simulate_cache's bits.total() / (n D) equals it when P and n - P are multiples of R and
/// G divides R (every flush block, the prefill's too, then splits into whole K groups).
/// outliers (SimParams::outliers): each quantized group also pays outlier_group_bits for
/// its exact elements (pkv/kvcache/outliers.h), per element of the group.
double table_element_bits(KvTensor tensor, int bits, int D, int64_t M, int group, int window, int outliers = 0);

/// The PatternKV value gate (one-sided z-test, 95% by default): subtract the pattern iff
///   1 - rho^2 >= (2 z / sqrt(5 d)) * sqrt(1 + rho^4),  z = 1.6448536269514722,
/// with rho = R(v - c) / R(v), R = max - min over the d channels. False when R(v) = 0
/// (rho infinite). Pattern tables carry a fitted z per head.
bool v_gate_passes(double rho, int d, double z = 1.6448536269514722);
/// rho of one value vector against its pattern (infinity when R(v) = 0).
double v_gate_rho(const float* v, const float* c, int d);

}  // namespace pkv
