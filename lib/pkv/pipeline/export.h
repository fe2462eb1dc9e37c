// pkv/pipeline/export.h — `pkv export`, `pkv info` and `pkv validate` for pattern tables.
//
// Export writes one table (pattern_table.h) in another container or layout:
//   safetensors  the table itself, optionally with key patterns in the other dim order
//                and/or F16 patterns (readers accept F16 patterns, docs/formats/pattern_table.md)
//   gguf         a GGUF v3 file in the manner of llama.cpp's imatrix files: general.type
//                "pkv_patterns", every metadata entry as a typed pkv.* key (per-layer
//                window and RoPE base as i32 / f64 arrays beside pkv.layers), tensors
//                blk.<l>.pkv_<suffix> with ne listed fastest first (ne[0] = D)
//   json         everything for inspection: metadata (pkv.calibration parsed), each
//                calibrated layer's window and RoPE base, and every tensor as dtype, shape
//                and nested arrays (non-finite values as null)
// Key dim order (RoPE pairs): gguf_interleaved pairs dims (2i, 2i+1); hf_half_split pairs
// (i, i + D/2); hf[i] = gguf[2i], hf[i + D/2] = gguf[2i + 1] for 0 <= i < D/2. Only key
// patterns move; values are never permuted.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/table/pattern_table.h"

namespace pkv {

constexpr const char* kGgufPatternsType = "pkv_patterns";  ///< general.type of an exported GGUF
constexpr const char* kDimOrderGguf = "gguf_interleaved";
constexpr const char* kDimOrderHf = "hf_half_split";

/// out = in permuted from gguf_interleaved to hf_half_split (one vector of even length D).
void key_dims_gguf_to_hf(const float* in, float* out, int D);
/// The inverse of key_dims_gguf_to_hf.
void key_dims_hf_to_gguf(const float* in, float* out, int D);

/// A copy of t with key patterns in `order` (kDimOrderGguf or kDimOrderHf) and
/// key_dim_order set to it; unchanged when already there. Throws invalid_argument for
/// another order, and unsupported for a Hadamard-rotated table (the rotation mixes
/// every dimension, so no permutation of rotated patterns matches the other layout).
PatternTable with_key_dim_order(const PatternTable& t, const std::string& order);

/// Pattern dtypes an export can write.
enum class PatternDtype { f32, f16 };

/// The safetensors bytes of t with F32 or F16 patterns (F32: encode_pattern_table(t)).
std::vector<uint8_t> encode_table_safetensors(const PatternTable& t, PatternDtype dtype);
/// The GGUF bytes of t (see the header comment and the spec for keys and tensors).
std::vector<uint8_t> encode_table_gguf(const PatternTable& t, PatternDtype dtype);
/// The JSON document of t: {"format", "format_version", "metadata", "layers", "tensors"};
/// "layers" is [{"layer", "window", "rope_base"}] in pkv.layers order, window and
/// rope_base null when t has no layer geometry (a 1.0 table).
nlohmann::json table_to_json(const PatternTable& t, PatternDtype dtype);

/// The "__metadata__" map write_pattern_table would write, with pkv.calibration parsed
/// into an object: the document schemas/pattern_table.schema.json describes.
nlohmann::json pattern_table_metadata_json(const PatternTable& t);

struct ExportOptions {
    std::string format;         ///< "safetensors" | "gguf" | "json"
    std::string key_order;      ///< "" (keep), "gguf" | "hf" (or the full names)
    std::string dtype = "f32";  ///< "f32" | "f16": pattern dtype (counts stay I64, clips F32)
    bool force = false;         ///< overwrite an existing output
};

/// What export_pattern_table wrote.
struct ExportSummary {
    std::string out_path, format, key_dim_order, dtype;
    uint64_t bytes = 0;
    size_t tensors = 0;
};

/// Reads the table at `table_path` and writes it to `out_path` atomically. Bad options
/// throw invalid_argument before anything is read; an existing output without force
/// throws failed_precondition; a corrupt table the reader's data_loss error.
ExportSummary export_pattern_table(const std::string& table_path, const std::string& out_path,
                                   const ExportOptions& options);

/// `pkv info TABLE`: model, basis, order, rotation, bits, layers (with a local/global
/// line when any calibrated layer has a sliding window), Mk/Mv, clip/gate ranges, dead
/// patterns and a calibration summary.
std::string describe_pattern_table(const std::string& path);
/// `pkv info --json TABLE`: {"kind": "pattern_table", "file", "file_bytes",
/// "metadata" (pattern_table_metadata_json), "tensors": {name: {"dtype", "shape"}}}.
nlohmann::json describe_pattern_table_json(const std::string& path);
/// `pkv validate TABLE`: the read error, or every finding prefixed "<path>::"; empty
/// when the table is clean.
std::vector<std::string> validate_pattern_table(const std::string& path);

}  // namespace pkv
