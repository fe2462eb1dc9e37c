// pkv/core/sha256.h — SHA-256 (FIPS 180-4) for provenance: hashes of model and
// text files recorded in every output.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace pkv {

class Sha256 {
public:
    Sha256();
    void update(const void* data, size_t n);
    /// Finishes and returns the 32-byte digest; the object must not be updated afterwards.
    std::array<uint8_t, 32> digest();
    /// Finishes and returns the digest as 64 lowercase hex characters.
    std::string hex();

private:
    void block(const uint8_t* p);
    uint32_t h_[8];
    uint8_t buf_[64];
    size_t buf_len_ = 0;
    uint64_t total_ = 0;
};

std::string sha256_hex(const void* data, size_t n);
/// Hashes a whole file; throws not_found/io naming the path.
std::string sha256_file(const std::string& path);

}  // namespace pkv
