// pkv/gguf/gguf_writer.h — writes GGUF v3 files: metadata of every value type and
// tensors given as raw bytes of any supported ggml type. Used by tests to make tiny
// models and by `pkv export` for GGUF pattern tables. Output is written atomically.
#pragma once

#include <cstdint>
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

    /// Writes the file to `path` (temporary name, then rename); refuses an existing
    /// file unless `force`.
    void write(const std::string& path, bool force = false) const;
    /// The encoded file as bytes (for tests that corrupt it).
    std::vector<uint8_t> encode() const;

private:
    struct Tensor {
        std::string name;
        std::vector<uint64_t> ne;
        GgmlType type;
        std::vector<uint8_t> data;
    };
    uint32_t alignment_;
    std::vector<std::pair<std::string, GgufValue>> kv_;
    std::vector<Tensor> tensors_;
};

}  // namespace pkv
