// pkv/kvdump/kv_dump_internal.h — helpers shared by the KV dump writer, reader,
// validator and describer; not part of the public API.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
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

/// Shard files a reader has open, by resolved path (each opened once: HDF5 shares one
/// file's state between its handles, and closing one strongly would close the others').
using ShardFiles = std::map<std::string, std::shared_ptr<h5::File>>;

/// The "job" of a joined dump's "shards" attribute; empty when the file has none (then
/// shards are not matched to it). data_loss when the attribute is not such a record.
std::string joined_job(const h5::File& f);

/// An activation dataset as pkv reads it. A dump written by one worker stores it; a
/// joined dump holds a virtual dataset whose token ranges are the same dataset in shard
/// files, which this opens through h5::File::open_read (so a shard gets every check a
/// dump gets) and reads itself; HDF5 never reads through the mapping, which would give
/// fill values for a missing shard.
class ActivationData {
public:
    /// Opens `name` of `f` (which must outlive this). A virtual dataset must be rank 4 with
    /// mappings that tile its token axis in order, mapping [0:L, 0:H, t0:t0+n, 0:D] from
    /// dataset `name` of a shard named by a relative path without ".." (resolved against
    /// the folder of `f`); each shard is opened (not_found "<f>::<name>: missing shard
    /// <path> (tokens a-b of T)"), its dataset must be float16 [L, H, n, D] and stored,
    /// and its "shard" attribute must name `job` and t0 (when `job` is not empty).
    ActivationData(const h5::File& f, const std::string& name, const std::string& job, ShardFiles& files);
    hid_t id() const { return dset_.get(); }
    bool is_virtual() const { return !parts_.empty(); }
    /// h5::check_stored of the dataset, or of every shard's.
    void check_stored() const;
    /// [1, 1, n, D] float16 bits at (layer, head, t0), through h5::read_block of the
    /// dataset or of the shards holding those tokens.
    void read(uint64_t layer, uint64_t head, uint64_t t0, uint64_t n, hid_t f16, uint16_t* out) const;
    /// Chunks and filters of the dataset, or of the first shard's.
    std::vector<uint64_t> chunks() const;
    std::vector<std::string> filters() const;
    /// Bytes stored: of the dataset, or summed over the shards.
    uint64_t storage_bytes() const;
    /// The shard files as the mappings name them (empty when not virtual).
    std::vector<std::string> shard_files() const;

private:
    struct Part {
        uint64_t t0 = 0, n = 0;
        std::string file;  ///< as mapped
        std::shared_ptr<h5::File> f;
        h5::Id dset;
    };
    const h5::File* f_ = nullptr;
    std::string name_;
    h5::Id dset_;
    uint64_t D_ = 0;  ///< head_dim (the last extent)
    std::vector<Part> parts_;
};

/// One head vector from GGUF interleaved order to HF half-split order:
/// dst[i] = src[2i], dst[i + D/2] = src[2i+1]. head_dim must be even.
void gguf_to_hf_order(const float* src, float* dst, int head_dim);

}  // namespace pkv::kvdump_detail
