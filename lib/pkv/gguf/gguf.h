// pkv/gguf/gguf.h — a bounds-checked reader of GGUF v2/v3 model files.
//
// The file is memory-mapped; nothing read from it is trusted: every length, count,
// offset and size is checked against the file size before use, and a failure names
// the file and the field ("model.gguf: metadata 'llama.block_count': expected an
// integer, got string"). Tensor data stay in the mapping until dequantized.
//
// Layout (docs/formats/gguf.md): header (magic "GGUF", version, tensor count, kv
// count), metadata key/values, tensor infos, padding to `general.alignment`
// (default 32), tensor data. ne[0] is the fastest-varying dimension: a 2-D weight
// with ne = {n_in, n_out} is n_out rows of n_in contiguous values.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "pkv/gguf/ggml_types.h"

namespace pkv {

/// GGUF metadata value types (u32 on disk).
enum class GgufType : uint32_t {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    BOOL = 7,
    STRING = 8,
    ARRAY = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
};
const char* gguf_type_name(GgufType t);

/// One metadata value. Scalars of every integer type are held widened; `type`
/// keeps the on-disk type. Arrays hold their element type and elements.
struct GgufValue {
    GgufType type = GgufType::U32;
    std::variant<uint64_t, int64_t, double, bool, std::string, std::vector<GgufValue>> value;
    GgufType array_type = GgufType::U8;  ///< element type when type == ARRAY
};

struct GgufTensorInfo {
    std::string name;
    std::vector<uint64_t> ne;  ///< dims, fastest first (ggml order)
    uint32_t type_id = 0;      ///< raw ggml type id (may be unsupported)
    uint64_t offset = 0;       ///< relative to the data section
    uint64_t nbytes = 0;       ///< computed from ne and type; 0 for ids with no known layout
    GgmlType type() const { return static_cast<GgmlType>(type_id); }
    uint64_t n_elements() const;
    uint64_t row_length() const { return ne.empty() ? 1 : ne[0]; }  ///< elements per row
    uint64_t n_rows() const;                                        ///< product of ne[1..]
};

class GgufFile {
public:
    /// Maps and parses `path`. Throws not_found (missing), data_loss (not GGUF,
    /// truncated, corrupt) naming the path and the offending field.
    static std::shared_ptr<GgufFile> open(const std::string& path);
    ~GgufFile();
    GgufFile(const GgufFile&) = delete;
    GgufFile& operator=(const GgufFile&) = delete;

    const std::string& path() const { return path_; }
    uint32_t version() const { return version_; }
    uint64_t file_size() const { return size_; }
    uint32_t alignment() const { return alignment_; }

    /// Metadata keys in file order.
    const std::vector<std::string>& keys() const { return key_order_; }
    bool has(const std::string& key) const { return kv_.count(key) != 0; }
    /// Throws not_found: "<file>: metadata key '<key>' is missing".
    const GgufValue& get(const std::string& key) const;
    /// Any integer type widened; throws invalid type / negative value naming the key.
    uint64_t get_u64(const std::string& key) const;
    std::optional<uint64_t> find_u64(const std::string& key) const;
    /// F32/F64 (or an integer) as double.
    double get_f64(const std::string& key) const;
    std::optional<double> find_f64(const std::string& key) const;
    std::string get_string(const std::string& key) const;
    std::optional<std::string> find_string(const std::string& key) const;
    bool get_bool(const std::string& key) const;
    std::optional<bool> find_bool(const std::string& key) const;
    std::vector<std::string> get_string_array(const std::string& key) const;
    /// Integer array elements widened to int64.
    std::vector<int64_t> get_int_array(const std::string& key) const;
    /// A readable one-line rendering of a value (arrays abbreviated), for `pkv info`.
    static std::string to_string(const GgufValue& v, size_t max_items = 8);

    const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
    /// nullptr when absent.
    const GgufTensorInfo* find_tensor(const std::string& name) const;
    /// Throws not_found naming the file and tensor.
    const GgufTensorInfo& tensor(const std::string& name) const;
    /// Pointer to a tensor's bytes inside the mapping.
    const uint8_t* tensor_data(const GgufTensorInfo& t) const;
    /// Dequantizes rows [row0, row0 + n_rows) into out (n_rows * row_length floats).
    /// Throws unsupported naming the tensor and its type for types pkv cannot read.
    void dequantize_rows(const GgufTensorInfo& t, uint64_t row0, uint64_t n_rows, float* out) const;
    /// Dequantizes the whole tensor.
    std::vector<float> dequantize(const GgufTensorInfo& t) const;

private:
    GgufFile() = default;
    void parse();

    std::string path_;
    int fd_ = -1;
    const uint8_t* base_ = nullptr;
    uint64_t size_ = 0;
    uint32_t version_ = 0;
    uint32_t alignment_ = 32;
    uint64_t data_offset_ = 0;
    std::vector<std::string> key_order_;
    std::map<std::string, GgufValue> kv_;
    std::vector<GgufTensorInfo> tensors_;
    std::map<std::string, size_t> tensor_index_;
};

}  // namespace pkv
