// pkv/table/safetensors.h — a self-contained reader and writer for the
// safetensors container that pkv pattern tables are stored in.
//
// File layout (all little-endian):
//   u64 N                 length of the header in bytes
//   N bytes of JSON       one object: per tensor
//                           "name": {"dtype": "F32", "shape": [3, 8], "data_offsets": [begin, end]}
//                         plus an optional "__metadata__": {string: string}
//   data buffer           the rest of the file; offsets are relative to its start, end exclusive;
//                         tensors are row-major (C order), little-endian, without strides
//
// The writer lays tensors out in name order (so identical inputs give identical bytes),
// omits "__metadata__" when there is none, and pads the header with spaces so the data
// buffer starts at a multiple of 8.
//
// The reader rejects (pkv::Error data_loss, or unsupported for an unknown dtype) any file
// whose header is longer than 100 MB or than the file, is not a JSON object, has duplicate
// keys at any level, has an entry without a string dtype / an array of unsigned shape
// integers / two unsigned data_offsets, has end < begin, has end - begin != numel x dtype
// size (other fields are ignored), has offsets that do not tile the data buffer exactly (gaps, overlaps, bytes left
// over at the end), or whose "__metadata__" is not an object of strings. Rank-0 tensors
// (shape [], one element) and empty tensors (a zero dimension, zero bytes) are valid.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace pkv {

/// An owned tensor: dtype is a safetensors dtype string ("F32", "F16", "BF16", "I32",
/// "U8", ...); data holds numel x dtype_size bytes, row-major little-endian.
struct StTensor {
    std::string name;
    std::string dtype;
    std::vector<uint64_t> shape;
    std::vector<uint8_t> data;
};

/// A tensor inside an open SafetensorsFile; `data` points into the file's buffer and
/// lives as long as the file object.
struct StTensorView {
    std::string name;
    std::string dtype;
    std::vector<uint64_t> shape;
    const uint8_t* data = nullptr;
    size_t size = 0;  ///< bytes
    /// Product of shape (1 for rank 0).
    uint64_t numel() const;
    /// An owned copy.
    StTensor to_tensor() const;
};

/// Bytes per element of a safetensors dtype string, 0 when pkv does not know it.
/// Known: BOOL U8 I8 F8_E4M3 F8_E5M2 (1), U16 I16 F16 BF16 (2), U32 I32 F32 (4), U64 I64 F64 (8).
size_t st_dtype_size(const std::string& dtype);

class SafetensorsWriter {
public:
    /// Adds a tensor; throws invalid_argument on an empty or reserved ("__metadata__")
    /// name, a name already added, an unknown dtype, or a data size that is not
    /// numel x dtype size.
    void add(StTensor tensor);
    /// Sets one "__metadata__" entry (replacing an earlier value for the key).
    void set_metadata(const std::string& key, const std::string& value);
    /// The whole file as bytes.
    std::vector<uint8_t> encode() const;
    /// Writes encode() to `path` atomically; fails (failed_precondition) when the file
    /// exists and `force` is false.
    void write(const std::string& path, bool force) const;

private:
    std::map<std::string, StTensor> tensors_;
    std::map<std::string, std::string> metadata_;
};

class SafetensorsFile {
public:
    /// Reads and validates the whole file; errors name `path`.
    static SafetensorsFile open(const std::string& path);
    /// Validates `bytes` as a file; errors name `label`.
    static SafetensorsFile parse(std::vector<uint8_t> bytes, const std::string& label);

    // Views point into bytes_, whose heap buffer survives a move but not a copy.
    SafetensorsFile(SafetensorsFile&&) = default;
    SafetensorsFile& operator=(SafetensorsFile&&) = default;
    SafetensorsFile(const SafetensorsFile&) = delete;
    SafetensorsFile& operator=(const SafetensorsFile&) = delete;

    const std::string& label() const { return label_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    /// Tensor names in sorted order.
    std::vector<std::string> names() const;
    bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
    /// Throws not_found when the file holds no tensor `name`.
    const StTensorView& tensor(const std::string& name) const;

private:
    SafetensorsFile() = default;
    std::string label_;
    std::vector<uint8_t> bytes_;
    std::map<std::string, std::string> metadata_;
    std::map<std::string, StTensorView> tensors_;
};

}  // namespace pkv
