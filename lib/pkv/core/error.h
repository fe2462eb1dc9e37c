// pkv/core/error.h — the one error type every pkv component throws.
//
// Messages follow one style: lowercase, no trailing period, the input first
// (file, HDF5 object or GGUF field), then what was expected and what was found:
//   "dump.h5::/k_post: expected rank 4, got 3"
//   "model.gguf: tensor 'blk.0.attn_q.weight': data [4096, 8192) runs past end of file (6000 bytes)"
// The CLI prints the message on one line and maps the code to an exit status.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace pkv {

/// What went wrong, in the sense of abseil's StatusCode.
enum class ErrorCode : int {
    invalid_argument = 1,     ///< a malformed argument or option value
    not_found = 2,            ///< a file, key, tensor or dataset that is absent
    failed_precondition = 3,  ///< valid input the current state cannot accept (existing output without --force)
    out_of_range = 4,         ///< a value outside what is supported (more tokens than the text holds)
    data_loss = 5,            ///< a corrupt or truncated file
    unsupported = 6,          ///< a well-formed input pkv does not implement (architecture, tensor type)
    io = 7,                   ///< an operating-system I/O failure (full disk, permissions)
    cuda = 8,                 ///< a CUDA runtime failure
    interrupted = 9,          ///< the user interrupted the work (SIGINT/SIGTERM)
    internal = 10,            ///< a broken invariant: a bug in pkv
};

class Error : public std::runtime_error {
public:
    Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
    ErrorCode code() const noexcept { return code_; }

private:
    ErrorCode code_;
};

/// Throws pkv::Error(code, fmt::format(...)).
template <typename... Args>
[[noreturn]] void fail(ErrorCode code, fmt::format_string<Args...> format, Args&&... args) {
    throw Error(code, fmt::format(format, std::forward<Args>(args)...));
}

/// a * b for sizes read from files; throws data_loss naming `what` on overflow.
uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& what);
/// a + b for sizes read from files; throws data_loss naming `what` on overflow.
uint64_t checked_add(uint64_t a, uint64_t b, const std::string& what);
/// a + b clamped to the int64 range: sums of counts from a file that are checked after.
int64_t saturating_add(int64_t a, int64_t b);

}  // namespace pkv

/// User-facing check: throws pkv::Error(code, message) when `cond` is false.
#define PKV_CHECK(cond, code, ...)                                     \
    do {                                                               \
        if (!(cond)) ::pkv::fail(::pkv::ErrorCode::code, __VA_ARGS__); \
    } while (0)

/// Internal invariant: a failure is a bug in pkv, reported with file and line.
#define PKV_ASSERT(cond)                                                                                              \
    do {                                                                                                              \
        if (!(cond))                                                                                                  \
            ::pkv::fail(::pkv::ErrorCode::internal, "internal error: {} failed at {}:{}", #cond, __FILE__, __LINE__); \
    } while (0)
