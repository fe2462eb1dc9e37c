// pkv/gguf/gguf_writer.h — writes GGUF v3 files: metadata of every value type and
// tensors given as raw bytes of any ggml type, as floats converted to F32, BF16 or Q8_0,
// or streamed: produced row by row while the file is written, so that a model larger
// than memory (bench/make_random_gguf.cpp) never exists in memory as a whole. Used by
// tests to make tiny models and by `pkv export` for GGUF pattern tables. Output is
// written atomically.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "pkv/gguf/gguf.h"

namespace pkv {

class GgufWriter {
public:
    /// alignment: the data-section alignment written to general.alignment when not 32.
    explicit GgufWriter(uint32_t alignment = 32);

    void set_u32(const std::string& key, uint32_t v);
    void set_i32(const std::string& key, int32_t v);
    void set_u64(const std::string& key, uint64_t v);
    void set_f32(const std::string& key, float v);
    void set_f64(const std::string& key, double v);
    void set_bool(const std::string& key, bool v);
    void set_string(const std::string& key, const std::string& v);
    void set_string_array(const std::string& key, const std::vector<std::string>& v);
    void set_i32_array(const std::string& key, const std::vector<int32_t>& v);
    void set_f32_array(const std::string& key, const std::vector<float>& v);
    /// Any value, including nested arrays.
    void set(const std::string& key, const GgufValue& v);

    /// ne in ggml order (fastest first); data must hold exactly the tensor's bytes.
    void add_tensor(const std::string& name, const std::vector<uint64_t>& ne, GgmlType type, std::vector<uint8_t> data);
    /// Convenience: an F32 tensor from floats.
    void add_tensor_f32(const std::string& name, const std::vector<uint64_t>& ne, const std::vector<float>& data);
    /// A BF16 tensor from floats, rounded to nearest even (NaN stays NaN).
    void add_tensor_bf16(const std::string& name, const std::vector<uint64_t>& ne, const std::vector<float>& data);
    /// A Q8_0 tensor from floats with ggml's reference rounding (quantize_row_q8_0_ref):
    /// blocks of 32 values along ne[0] (which must be a multiple of 32), each an fp16
    /// scale d = max|x| / 127 and 32 int8 q = round(x / d); the reader gives back q * d.
    void add_tensor_q8_0(const std::string& name, const std::vector<uint64_t>& ne, const std::vector<float>& data);

    /// Fills rows [first_row, first_row + n_rows) of a streamed tensor: dst holds n_rows
    /// rows of ggml_row_size(type, ne[0]) bytes each. A row is ne[0] elements; a tensor
    /// has product(ne[1..]) rows.
    using RowSource = std::function<void(uint64_t first_row, uint64_t n_rows, uint8_t* dst)>;
    /// A tensor whose bytes come from `rows` while the file is written (write() or
    /// encode()): rows are asked for in order, in runs of about 32 MiB, one call at a
    /// time but possibly from another thread, and the next run is made while the previous
    /// one is being written. Memory held: two runs. An exception from `rows` ends the
    /// write and no file appears.
    void add_tensor_streamed(const std::string& name, const std::vector<uint64_t>& ne, GgmlType type, RowSource rows);

    /// Writes the file to `path` (temporary name, then rename); refuses an existing
    /// file unless `force`.
    void write(const std::string& path, bool force = false) const;
    /// The encoded file as bytes (for tests that corrupt it).
    std::vector<uint8_t> encode() const;

private:
    struct Tensor {
        std::string name;
        std::vector<uint64_t> ne;
        GgmlType type = GgmlType::F32;
        std::vector<uint8_t> data;
        RowSource rows;      ///< set for a streamed tensor (data then empty)
        uint64_t bytes = 0;  ///< size of the tensor's data
        uint64_t row_bytes = 0;
    };
    /// Checks name, shape and type; returns the tensor's size in bytes.
    uint64_t check_tensor(const std::string& name, const std::vector<uint64_t>& ne, GgmlType type) const;
    uint32_t alignment_;
    std::vector<std::pair<std::string, GgufValue>> kv_;
    std::vector<Tensor> tensors_;
};

}  // namespace pkv
