// pkv/kvdump/kv_dump_internal.h — helpers shared by the KV dump writer, reader,
// validator and describer; not part of the public API.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <hdf5.h>
#include <nlohmann/json.hpp>

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
/// One head vector from GGUF interleaved order to HF half-split order:
/// dst[i] = src[2i], dst[i + D/2] = src[2i+1]. head_dim must be even.
void gguf_to_hf_order(const float* src, float* dst, int head_dim);

}  // namespace pkv::kvdump_detail
