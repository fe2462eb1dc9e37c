// pkv/tokenizer/tokenizer.h — the model's own byte-level BPE tokenizer, built from
// the GGUF `tokenizer.ggml.*` metadata (model "gpt2").
//
// Encoding: optional split on special tokens (control / user-defined tokens, when
// parse_special is true), pre-tokenization with the regex set selected by
// `tokenizer.ggml.pre` (PCRE2, Unicode properties), GPT-2 byte-to-unicode mapping,
// then BPE merges by rank. Bytes with no token are dropped, as llama.cpp does.
// Supported pre-tokenizers: "smollm" (isolate every digit, then the GPT-2 pattern),
// "gpt2", "default" (treated as gpt2). Others are rejected naming the value.
//
// Needs PCRE2: when pkv is built without it (PKV_HAVE_PCRE2 undefined), the
// constructor throws unsupported.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pkv {

class GgufFile;

/// Token types of tokenizer.ggml.token_type.
enum class TokenType : int32_t { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };

/// Everything the tokenizer needs, as stored in GGUF.
struct VocabData {
    std::string model = "gpt2";          ///< tokenizer.ggml.model
    std::string pre = "default";         ///< tokenizer.ggml.pre
    std::vector<std::string> tokens;     ///< id -> token text in byte-to-unicode form
    std::vector<int32_t> token_types;    ///< id -> TokenType (may be empty: all normal)
    std::vector<std::string> merges;     ///< "left right", rank = index
    int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
    bool add_bos = false, add_eos = false;
};

/// Reads tokenizer.ggml.* from a GGUF; throws naming the file and key when absent or
/// when the model is not "gpt2".
VocabData vocab_from_gguf(const GgufFile& file);

class Tokenizer {
public:
    explicit Tokenizer(VocabData vocab);
    ~Tokenizer();
    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;

    /// Token ids of `text` (UTF-8). parse_special: recognise special-token strings
    /// such as "<|im_start|>" in the text. BOS/EOS are added only when the vocabulary
    /// says so (add_bos/add_eos) and add_specials is true.
    std::vector<int32_t> encode(std::string_view text, bool parse_special = false, bool add_specials = true) const;
    /// Bytes of the token sequence (may be invalid UTF-8 mid-character).
    std::string decode(const std::vector<int32_t>& ids) const;
    /// Bytes of one token.
    std::string token_bytes(int32_t id) const;
    size_t n_vocab() const;
    const VocabData& vocab() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// True when pkv was built with PCRE2 and can tokenize.
bool tokenizer_available();

}  // namespace pkv
