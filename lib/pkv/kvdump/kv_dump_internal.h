// pkv/kvdump/kv_dump_internal.h — helpers shared by the KV dump writer, reader,
// validator and describer; not part of the public API.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <hdf5.h>
#include <nlohmann/json.hpp>

#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump.h"

namespace pkv::kvdump_detail {

using namespace pkv::kvdump;

/// The format_version major this build reads; minors only add optional objects.
constexpr int kSupportedMajor = 1;

/// Compact JSON text; invalid UTF-8 bytes are replaced instead of throwing.
std::string json_text(const nlohmann::json& j);
/// Parses a root JSON-text attribute; data_loss naming "<where>: attribute '<name>'" when it is not JSON.
nlohmann::json parse_json_attr(hid_t obj, const std::string& where, const std::string& name);
/// Fields of the model record and their types (docs/formats/kv_dump.md): the validator
/// requires them all, the reader checks the type of those present.
constexpr const char* kModelIntFields[] = {"n_layer", "n_head", "n_head_kv", "head_dim",   "n_rot",
                                           "n_embd",  "n_ff",   "n_vocab",   "n_ctx_train"};
constexpr const char* kModelNumberFields[] = {"rope_freq_base", "rope_freq_scale", "rms_eps"};
constexpr const char* kModelStringFields[] = {"name", "file", "sha256", "arch", "rope_type"};
/// parse_json_attr for a root record (model, provenance, summary): data_loss unless a
/// JSON object; for the model record also unless every field readers use has its spec type.
nlohmann::json parse_record_attr(hid_t obj, const std::string& where, const std::string& name);
/// ["layer", "kv_head" | "head", "token", "dim"] for an activation dataset.
std::vector<std::string> axes_of(const std::string& dataset);
/// k_pre, k_post and q carry RoPE dims (and a dim_order); v does not.
bool is_rope_dataset(const std::string& dataset);
/// The dim_order attribute a writer with header `h` stores.
const char* dim_order_of(const KvDumpHeader& h);
/// "k_post" -> "/k_post"; absolute names stay.
std::string normalize(const std::string& dataset);
/// "1.0" -> 1, 0; false unless "<digits>.<digits>".
bool parse_version(const std::string& v, int* major, int* minor);
/// "[30, 3, 1000, 64]"
std::string shape_text(const std::vector<uint64_t>& shape);
/// /layer_info as stored, one entry per stored layer (integers widened so that values
/// beyond int32 are seen, not clipped).
struct LayerInfoColumns {
    std::vector<int64_t> window, n_head_kv, head_dim;
    std::vector<double> rope_base;
};
/// Largest sliding window a file may record (KvDumpLayerInfo::window is int32).
constexpr int64_t kMaxWindow = std::min<int64_t>(kMaxTokens, int64_t{2147483647});
/// The value checks of /layer_info (window in [0, kMaxWindow], rope_base finite and >= 0,
/// n_head_kv and head_dim equal to the root attributes): for each dataset with a bad
/// value, its name and "expected ..., got ... at index i" for the first one. Columns of
/// unequal lengths are the caller's to refuse.
std::vector<std::pair<const char*, std::string>> layer_info_value_problems(const LayerInfoColumns& c, int64_t n_head_kv,
                                                                           int64_t head_dim);
/// What format 1.0 files imply (KvDumpReader::layer_info): from the model record, for the
/// stored `layers`. data_loss naming "<where>: attribute 'model'" when swa_layers lists a
/// stored layer but sliding_window is not an integer in [1, kMaxWindow].
std::vector<KvDumpLayerInfo> derive_layer_info(const nlohmann::json& model, const std::vector<int32_t>& layers,
                                               int n_head_kv, int head_dim, const std::string& where);
/// The stored layers' geometry of an open dump: /layer_info when any of its datasets
/// exists (then all four must, each [L] of an integer type, rope_base a float type, with
/// the values above), else derive_layer_info when `required` is false (format 1.0);
/// data_loss naming "<file>::<dataset>" otherwise.
std::vector<KvDumpLayerInfo> read_layer_info(const h5::File& f, bool required, const nlohmann::json& model,
                                             const std::vector<int32_t>& layers, int n_head_kv, int head_dim);
/// Whether format_version major.minor requires /layer_info (1.1 and later minors).
inline bool requires_layer_info(int major, int minor) { return major > 1 || (major == 1 && minor >= 1); }
/// The writer's check of h.layer_info before anything is written: one entry per stored
/// layer, for that layer, with the values above; internal error (a bug in the caller) otherwise.
void check_header_layer_info(const std::string& path, const KvDumpHeader& h);
/// Writes /layer_info of a header that passed check_header_layer_info.
void write_layer_info(const h5::File& f, const KvDumpHeader& h);

/// One head vector from GGUF interleaved order to HF half-split order:
/// dst[i] = src[2i], dst[i + D/2] = src[2i+1]. head_dim must be even.
void gguf_to_hf_order(const float* src, float* dst, int head_dim);

}  // namespace pkv::kvdump_detail
