// pkv/tokenizer/tokenizer.h — the model's own byte-level BPE tokenizer, built from
// the GGUF `tokenizer.ggml.*` metadata (model "gpt2").
//
// Encoding: split on special-token strings, pre-tokenization with the regex set
// selected by `tokenizer.ggml.pre` (PCRE2, Unicode properties), GPT-2 byte-to-unicode
// mapping, then BPE merges by rank (lowest rank first, leftmost on ties). A merged
// symbol with no token falls back to its single-byte tokens. Bytes with no token at
// all are dropped after the merges, as llama.cpp does (HF tokenizers drops them
// before, so " \x04'" differs: 2 tokens here, 1 there); dropped_bytes() counts them.
// Supported pre-tokenizers: "smollm" (isolate every \p{N} character, then the GPT-2
// pattern), "gpt2", "default" (treated as gpt2). Others are rejected naming the value.
// On SmolLM2 the ids match HF tokenizers given the GGUF's vocabulary and merges.
//
// Special strings: control tokens are matched only when the caller asks (parse_special);
// user-defined tokens are always matched, as llama.cpp and HF tokenizers do. At each
// position the longest special string wins; the text between them is pre-tokenized
// on its own.
//
// A Tokenizer is safe to use from several threads at once (pieces are cached under a
// lock).
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
    std::string model = "gpt2";        ///< tokenizer.ggml.model
    std::string pre = "default";       ///< tokenizer.ggml.pre
    std::vector<std::string> tokens;   ///< id -> token text in byte-to-unicode form
    std::vector<int32_t> token_types;  ///< id -> TokenType (may be empty: all normal)
    std::vector<std::string> merges;   ///< "left right", rank = index
    int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
    bool add_bos = false, add_eos = false;
};

/// Reads tokenizer.ggml.* from a GGUF; throws naming the file and key when absent or
/// when the model is not "gpt2".
VocabData vocab_from_gguf(const GgufFile& file);

/// tokenizer.ggml.add_bos_token of a GGUF (false when absent), without reading the
/// vocabulary.
bool gguf_adds_bos(const GgufFile& file);

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
    /// Input bytes that encode() dropped because no token holds them (SmolLM2 lacks
    /// a few raw bytes, e.g. 0x04 and 0xF5-0xFF), summed over all calls so far.
    uint64_t dropped_bytes() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// The GPT-2 byte table: the token-text character (as UTF-8) that stands for `byte`,
/// e.g. 0x20 -> "Ġ" (U+0120), 'a' -> "a".
std::string byte_to_token_text(uint8_t byte);
/// The inverse over a whole string: token text back to bytes. Characters outside the
/// table pass through unchanged.
std::string token_text_to_bytes(std::string_view text);

/// True when pkv was built with PCRE2 and can tokenize.
bool tokenizer_available();

}  // namespace pkv
