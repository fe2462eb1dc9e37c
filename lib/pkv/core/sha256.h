// pkv/core/sha256.h — SHA-256 (FIPS 180-4) for provenance: hashes of model and
// text files recorded in every output.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <future>
#include <string>

namespace pkv {

/// Blocks are compressed with the x86 SHA extensions when the CPU has them (about 5x the
/// portable code: the hash of a multi-gigabyte model is part of every command's start-up),
/// else with the portable code; both give the same digest.
class Sha256 {
public:
    /// hardware = false keeps the portable code (tests compare the two).
    explicit Sha256(bool hardware = true);
    void update(const void* data, size_t n);
    /// Finishes and returns the 32-byte digest; the object must not be updated afterwards.
    std::array<uint8_t, 32> digest();
    /// Finishes and returns the digest as 64 lowercase hex characters.
    std::string hex();

private:
    void blocks(const uint8_t* p, size_t n);  ///< n whole 64-byte blocks
    bool hw_ = false;
    uint32_t h_[8];
    uint8_t buf_[64];
    size_t buf_len_ = 0;
    uint64_t total_ = 0;
};

/// Whether this CPU has the SHA extensions Sha256 uses (x86 SHA with SSE4.1).
bool sha256_hardware();

std::string sha256_hex(const void* data, size_t n);
/// Hashes a whole file; throws not_found/io naming the path.
std::string sha256_file(const std::string& path);
/// sha256_file on a thread of its own, started now, so that the hash of a large model
/// overlaps with loading it; get() returns the digest or rethrows the error. The future's
/// destructor waits for the hash.
std::future<std::string> sha256_file_async(const std::string& path);

}  // namespace pkv
