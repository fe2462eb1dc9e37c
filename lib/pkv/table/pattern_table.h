// pkv/table/pattern_table.h — the PatternKV pattern table, format "pkv.pattern_table" 1.1
// (1.2 when it records a width allocation).
//
// A pattern table holds, for every calibrated model layer and KV head, the key and
// value patterns mined offline by `pkv calibrate` plus the residual-quantizer
// parameters fitted with them. Runtimes subtract a token's nearest pattern and
// quantize only the residual (docs/numerics.md, "PatternKV"; docs/formats/pattern_table.md).
//
// Container: safetensors (pkv/table/safetensors.h). Every tensor name and metadata key
// is a constant below; the writer, the reader, the validator, `pkv export` and the
// dependency-free runtime reader (lib/pkv/runtime/pattern_table_reader.h) use only these.
//
// Tensors, per calibrated model layer l (decimal, no padding), H = n_head_kv,
// Mk / Mv = key / value patterns per head, D = head_dim:
//   layers.{l}.k_patterns  F32 [H, Mk, D]  key patterns in the table's key basis and dim order
//   layers.{l}.v_patterns  F32 [H, Mv, D]  value patterns (values are never RoPE'd or permuted)
//   layers.{l}.k_counts    I64 [H, Mk]     calibration tokens assigned to each key pattern
//   layers.{l}.v_counts    I64 [H, Mv]     the same for values
//   layers.{l}.k_clip      F32 [H]         fitted clip ratio of the key residual quantizer, (0, 1]
//   layers.{l}.v_clip      F32 [H]         fitted clip ratio of the value residual quantizer, (0, 1]
//   layers.{l}.v_gate_z    F32 [H]         fitted z of the value gate (>= 0; 1.6448536 is the paper's)
// Clip ratio a: a min-max group [mn, mx] is quantized over [c - a h, c + a h] with
// c = (mn + mx) / 2, h = (mx - mn) / 2; values outside are clamped (a = 1: plain min-max).
// Value gate z: subtract the pattern iff 1 - rho^2 >= (2 z / sqrt(5 D)) sqrt(1 + rho^4)
// (see pkv/kvcache/simulate.h, v_gate_passes); z = 0 subtracts whenever it shrinks the range.
//
// __metadata__ (safetensors string -> string): the keys below; integers in decimal,
// "pkv.calibration" a JSON object (provenance and per-head held-out statistics, see the spec).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pkv {

namespace ptable {
constexpr const char* kFormat = "pkv.pattern_table";
constexpr const char* kFormatVersion = "1.1";
/// The version of a table without per-layer geometry (PatternTable::layer_geometry false).
constexpr const char* kFormatVersion10 = "1.0";
/// The version of a table with a width allocation (kMetaAllocation); without one pkv
/// writes kFormatVersion, so such tables stay byte for byte what they were.
constexpr const char* kFormatVersion12 = "1.2";
/// The version of a table whose clip ratios were fitted with exact outliers (kMetaOutliers).
constexpr const char* kFormatVersion13 = "1.3";
constexpr int kVersionMajor = 1;
// Metadata keys.
constexpr const char* kMetaFormat = "pkv.format";                 ///< kFormat
constexpr const char* kMetaFormatVersion = "pkv.format_version";  ///< "1.1"; readers accept major 1
constexpr const char* kMetaModelName = "pkv.model.name";          ///< general.name of the GGUF
constexpr const char* kMetaModelArch = "pkv.model.arch";          ///< "llama"
constexpr const char* kMetaModelSha256 = "pkv.model.sha256";  ///< SHA-256 (hex) of the GGUF file: the model fingerprint
/// Optional JSON object: the model's RoPE, {"type": "norm"|"neox", "n_rot", "base",
/// "freq_scale", "scaling", "freq_factors": null or [n_rot/2]}, what a runtime needs to
/// apply (or undo) it around pre-RoPE keys. Absent in tables of synthetic data.
constexpr const char* kMetaModelRope = "pkv.model.rope";
constexpr const char* kMetaNLayer = "pkv.model.n_layer";  ///< layers of the model
constexpr const char* kMetaNHead = "pkv.model.n_head";
constexpr const char* kMetaNHeadKv = "pkv.model.n_head_kv";
constexpr const char* kMetaHeadDim = "pkv.model.head_dim";
constexpr const char* kMetaLayers = "pkv.layers";  ///< calibrated model layers, "0,1,2" (ascending)
/// One decimal integer per entry of pkv.layers, same order, comma-separated: the layer's
/// sliding window in tokens, "512,512,0" (0: a global layer). Required from 1.1 on.
constexpr const char* kMetaLayersWindow = "pkv.layers.window";
/// One number per entry of pkv.layers: the RoPE frequency base of the layer's keys as the
/// shortest decimal that reads back as the same double ("10000,10000,1000000", exponents
/// allowed: "1e+20"); 0: not recorded. Required from 1.1 on.
constexpr const char* kMetaLayersRopeBase = "pkv.layers.rope_base";
constexpr const char* kMetaKeyBasis = "pkv.key.basis";          ///< "pre_rope" | "post_rope"
constexpr const char* kMetaKeyDimOrder = "pkv.key.dim_order";   ///< "gguf_interleaved" | "hf_half_split" (as kvdump)
constexpr const char* kMetaRotation = "pkv.rotation";           ///< "none" | "hadamard" (K and V both, when on)
constexpr const char* kMetaRotationSeed = "pkv.rotation.seed";  ///< "0" = plain Sylvester H_D (no random signs)
constexpr const char* kMetaBits = "pkv.quant.bits";             ///< residual code width: 2, 3, 4 or 8
/// Optional (1.2): per-head code widths under a budget (`pkv calibrate --bits-budget`), a
/// JSON object {"budget": B, "bits": mean bits per element, "k": [[w per KV head] per entry
/// of pkv.layers], "v": [...]}, each w one of 2, 3, 4, 8, 16 (16: the head's K or V stays
/// fp16). The clip and gate tensors then hold each head's fit at its own width.
constexpr const char* kMetaAllocation = "pkv.quant.allocation";
/// Optional (1.3; absent: 0): elements of each min-max group a runtime keeps exact
/// (dense-and-sparse, docs/numerics.md "Exact sinks and outliers"), 1..8; the clip ratios
/// and gate z were fitted with them held out, so a runtime should hold them out too.
constexpr const char* kMetaOutliers = "pkv.quant.outliers";
constexpr const char* kMetaGroup = "pkv.quant.group";        ///< K tokens per channel group; V channels per group
constexpr const char* kMetaWindow = "pkv.quant.window";      ///< fp16 window / flush block length R
constexpr const char* kMetaAssign = "pkv.assign";            ///< "l2" | "minmax": how runtimes pick a pattern
constexpr const char* kMetaKPatterns = "pkv.k_patterns";     ///< Mk
constexpr const char* kMetaVPatterns = "pkv.v_patterns";     ///< Mv
constexpr const char* kMetaCalibration = "pkv.calibration";  ///< JSON object, see the spec
// Values.
constexpr const char* kBasisPre = "pre_rope";
constexpr const char* kBasisPost = "post_rope";
constexpr const char* kRotationNone = "none";
constexpr const char* kRotationHadamard = "hadamard";
constexpr const char* kAssignL2 = "l2";
constexpr const char* kAssignMinmax = "minmax";
// Tensor name suffixes: the full name is "layers.<l>." + suffix.
constexpr const char* kKPatterns = "k_patterns";
constexpr const char* kVPatterns = "v_patterns";
constexpr const char* kKCounts = "k_counts";
constexpr const char* kVCounts = "v_counts";
constexpr const char* kKClip = "k_clip";
constexpr const char* kVClip = "v_clip";
constexpr const char* kVGateZ = "v_gate_z";
/// The largest kMetaOutliers a table may record (pkv/kvcache/outliers.h kMaxOutliers).
constexpr int kMaxOutliers = 8;
/// The paper's value-gate z (one-sided 95%).
constexpr double kDefaultGateZ = 1.6448536269514722;
/// "layers.<layer>.<suffix>".
std::string tensor_name(int layer, const char* suffix);
}  // namespace ptable

/// The model a table was calibrated on (what a runtime declares to load it).
struct PatternTableModel {
    std::string name;
    std::string arch = "llama";
    std::string sha256;  ///< of the GGUF file; may be empty only for tables of synthetic data
    int n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
    std::string rope;  ///< kMetaModelRope as JSON text; empty: not recorded
};

/// One calibrated model layer; H = n_head_kv, D = head_dim.
struct PatternLayer {
    int layer = 0;                  ///< model layer index
    int window = 0;                 ///< the layer's sliding window in tokens; 0: a global layer
    double rope_base = 0.0;         ///< RoPE frequency base of this layer's keys; 0: not recorded
    std::vector<float> k_patterns;  ///< [H, Mk, D]
    std::vector<float> v_patterns;  ///< [H, Mv, D]
    std::vector<int64_t> k_counts;  ///< [H, Mk]
    std::vector<int64_t> v_counts;  ///< [H, Mv]
    std::vector<float> k_clip;      ///< [H]
    std::vector<float> v_clip;      ///< [H]
    std::vector<float> v_gate_z;    ///< [H]
    /// [H] code widths of the allocation (2, 3, 4, 8 or 16); empty in a table without one.
    std::vector<int> k_bits, v_bits;
};

struct PatternTable {
    PatternTableModel model;
    std::string key_basis = ptable::kBasisPost;
    std::string key_dim_order = "gguf_interleaved";
    std::string rotation = ptable::kRotationNone;
    uint64_t rotation_seed = 0;
    int bits = 2, group = 128, window = 128;
    int outliers = 0;  ///< kMetaOutliers: exact elements per min-max group the fit assumed, 0..8
    std::string assign = ptable::kAssignMinmax;
    int k_patterns = 0, v_patterns = 0;  ///< Mk, Mv (same for every layer and head)
    std::vector<PatternLayer> layers;    ///< ascending model layer index
    /// Whether layers[].window / rope_base are recorded: true for every table pkv builds
    /// (written as kFormatVersion); false only for a 1.0 table as read, whose layers then
    /// hold 0 / 0 meaning "unknown" (written back as kFormatVersion10 without the keys).
    bool layer_geometry = true;
    nlohmann::json calibration = nlohmann::json::object();  ///< provenance + per-head statistics
    /// The width allocation (kMetaAllocation): alloc_budget > 0 when recorded, and then every
    /// layer holds k_bits and v_bits; alloc_bits is its mean bits per element (<= the budget).
    double alloc_budget = 0.0, alloc_bits = 0.0;
    bool has_allocation() const { return alloc_budget > 0.0; }
    /// The code width of one head's K (value = false) or V: the allocation's, else `bits`.
    int head_bits(size_t layer_index, int head, bool value) const;
};

/// Checks shapes and enumerations (not the numeric content); throws internal
/// naming the field ("pattern table: layers.3.k_clip: expected 3 values, got 2"). Layer
/// geometry: window >= 0 and rope_base finite and >= 0; both 0 without layer_geometry.
void check_pattern_table(const PatternTable& t);

/// The pkv.format_version t is written with: kFormatVersion13 for a table fitted with
/// outliers, kFormatVersion12 for one with a width allocation, kFormatVersion10 for one without layer geometry, else
/// kFormatVersion.
const char* pattern_table_format_version(const PatternTable& t);

/// kMetaAllocation's JSON object for t (has_allocation() true): {"bits", "budget", "k", "v"}.
nlohmann::json pattern_table_allocation_json(const PatternTable& t);
/// A width an allocation may give a head's K or V: 2, 3, 4, 8 or 16.
bool pattern_table_alloc_width(int w);
/// kMetaAllocation of `meta`, when present, into t (whose layers are read): a budget and
/// bits in (0, 16], and for "k" and "v" one list per entry of pkv.layers of n_head_kv
/// widths; anything else throws data_loss "<path>::pkv.quant.allocation...: expected ...".
void read_pattern_table_allocation(const std::map<std::string, std::string>& meta, const std::string& path,
                                   PatternTable& t);

/// Writes t to `path` atomically (temporary name, then rename); fails when the file
/// exists and force is false. Calls check_pattern_table first.
void write_pattern_table(const PatternTable& t, const std::string& path, bool force);
/// The safetensors bytes write_pattern_table would write.
std::vector<uint8_t> encode_pattern_table(const PatternTable& t);

/// Reads and checks a table; any missing key/tensor, wrong dtype or shape, unknown
/// enumeration value or other major version throws pkv::Error(data_loss) with
/// "<path>::<name>: expected ..., got ..." (e.g. "t.safetensors::layers.0.k_patterns:
/// expected shape [3, 32, 64], got [3, 16, 64]"). Pattern tensors may also be F16
/// (`pkv export --dtype f16`); they are widened exactly. Unknown tensors are ignored.
/// kMetaLayersWindow / kMetaLayersRopeBase: required from minor version 1 on, optional in
/// 1.0 (absent: 0 and layer_geometry false); a wrong count, a negative window or a rope
/// base that is not a finite number >= 0 is refused ("t.safetensors::pkv.layers.window:
/// expected 18 values, got 17").
PatternTable read_pattern_table(const std::string& path);

/// Degenerate content, one line per finding, empty when none: NaN/Inf in any tensor,
/// a clip ratio <= 0 or > 1, every clip ratio of the table exactly 1 (nothing fitted),
/// a negative gate z, dead patterns (count 0), duplicate patterns (two rows of one head
/// equal within 1e-6 relative), a counts sum that differs between heads of a layer.
std::vector<std::string> pattern_table_findings(const PatternTable& t);

/// True when `path` starts like a safetensors file whose metadata names kFormat.
bool is_pattern_table_file(const std::string& path);

}  // namespace pkv
