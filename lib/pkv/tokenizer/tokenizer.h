// pkv/tokenizer/tokenizer.h — the model's own tokenizer, built from the GGUF
// `tokenizer.ggml.*` metadata: byte-level BPE (model "gpt2", below) or SentencePiece-style
// (model "llama": Llama 2, Mistral, Gemma 3, ...; the encoding is described in spm.h).
// Other models (WordPiece, Unigram, Gemma 4's "gemma4", ...) are refused in one line.
//
// BPE: encoding follows llama.cpp's (llama-vocab.cpp) for the `tokenizer.ggml.pre` values
// pkv knows (Llama 3, Qwen2/2.5/3, SmolLM, StarCoder, GPT-2, ...: see pretokenize.h):
// split on special-token strings, pre-tokenization with the patterns the value selects
// (PCRE2, Unicode properties), GPT-2 byte-to-unicode mapping, then BPE merges by rank
// (lowest rank first, leftmost on ties). Llama 3 first looks the whole piece up as a
// token. Other values are refused, naming the value and the supported ones.
// A merged symbol with no token falls back to the one-byte tokens llama.cpp finds for
// it; bytes with no token at all are dropped after the merges (HF tokenizers drops them
// before, so " \x04'" differs: 2 tokens here, 1 there); dropped_bytes() counts them.
// Invalid UTF-8 keeps its bytes (llama.cpp encodes U+FFFD for each bad byte instead).
// The ids equal llama.cpp's on its vocabulary test files and the texts of
// test/integration/tokenizer_llama_cpp.sh; on SmolLM2 they also match HF tokenizers.
//
// SentencePiece: no pre-tokenizer (tokenizer.ggml.pre is not read, as in llama.cpp),
// merges by token score (tokenizer.ggml.scores, required), byte-fallback tokens <0xXX>
// for characters the vocabulary lacks (required for all 256 bytes), spaces as U+2581,
// and a space put in front of the text and after each special token when
// tokenizer.ggml.add_space_prefix is true (the default; Gemma sets it false).
//
// Special strings (both models): control and unknown tokens are matched only when the caller asks
// (parse_special); user-defined tokens are always matched, as llama.cpp and HF
// tokenizers do. vocab_from_gguf makes end-of-generation and fill-in-the-middle
// markers control tokens by their text, as llama.cpp does when it loads a vocabulary.
// The longest special string takes its occurrences first, as in llama.cpp; the text
// between special strings is pre-tokenized on its own.
//
// BOS/EOS: tokenizer.ggml.add_bos_token / add_eos_token; without the key, BOS is added
// for Llama 3 and SentencePiece vocabularies only and EOS never, as llama.cpp does.
// SentencePiece vocabularies without id keys take BOS 1, EOS 2, unknown 0 (llama.cpp's
// defaults) when the vocabulary is that large.
//
// A GGUF whose general.name contains "phi-3" or "phi3" is refused: llama.cpp strips the
// whitespace after special tokens for those models by name, which pkv does not do.
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
    std::vector<std::string> merges;   ///< "left right", rank = index (gpt2 only)
    std::vector<float> scores;         ///< id -> merge priority, higher first (llama only)
    bool add_space_prefix = false;     ///< llama only: a space before text that follows BOS/special
    int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
    bool add_bos = false, add_eos = false;
};

/// Reads tokenizer.ggml.* from a GGUF (a vocabulary-only GGUF with no tensors will do);
/// throws naming the file and key when absent, when the model is not "gpt2" or "llama",
/// when a gpt2 pre-tokenizer is not one pkv knows, when a llama vocabulary has no
/// scores, or when BOS/EOS must be added but has no id.
VocabData vocab_from_gguf(const GgufFile& file);

/// Whether encoding adds BOS for a GGUF: tokenizer.ggml.add_bos_token, or when absent
/// the default of its model and pre-tokenizer (true for SentencePiece and Llama 3). Does
/// not read the vocabulary; throws unsupported for an unknown pre-tokenizer of a model
/// other than "llama" when the key is absent.
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
    /// Bytes of the token sequence (may be invalid UTF-8 mid-character). SentencePiece:
    /// '▁' becomes a space, the space add_space_prefix put in front is kept, unused
    /// tokens give nothing.
    std::string decode(const std::vector<int32_t>& ids) const;
    /// Bytes of one token.
    std::string token_bytes(int32_t id) const;
    size_t n_vocab() const;
    const VocabData& vocab() const;
    /// Input bytes that encode() dropped because no token holds them (SmolLM2 lacks
    /// a few raw bytes, e.g. 0x04 and 0xF5-0xFF), summed over all calls so far. Always
    /// 0 for SentencePiece vocabularies, which must hold every byte.
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

/// Token ids of the bytes of the file at `text_path`, as they are, under the tokenizer
/// of the GGUF at `model_path` (a vocabulary-only GGUF will do; tensors are not read).
/// add_specials and parse_special as in Tokenizer::encode. Throws naming the file that
/// cannot be read or whose vocabulary pkv cannot use.
std::vector<int32_t> tokenize_file(const std::string& model_path, const std::string& text_path, bool add_specials,
                                   bool parse_special);

/// True when pkv was built with PCRE2 and can tokenize (either model).
bool tokenizer_available();

}  // namespace pkv
