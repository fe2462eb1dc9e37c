// pkv/tokenizer/pretokenize.h — internal to the tokenizer: what a `tokenizer.ggml.pre`
// value means. It selects the patterns that split text into the pieces BPE encodes
// one by one, and two encoding rules that come with them.
//
// A value names a list of patterns applied in turn: the first splits the text, each
// next one splits every piece the one before gave; at every stage both the matches and
// the text between them are pieces. The values are the names llama.cpp gives them:
//
//   value                          patterns                        merges        BOS
//   "llama3" "llama-v3" "llama-bpe" LLAMA3                         see below     yes
//   "qwen2" "deepseek-r1-qwen"      QWEN2                          always        no
//   "smollm" "starcoder" "refact"   \p{N}, then GPT-2              always        no
//   "gpt-2"                         GPT-2                          always        no
//   "default" (or no key)           [\p{P}$+<=>^~|]+, then GPT-2,  always        no
//                                   then \p{N}+, then [0-9]{3}
//
//   GPT-2   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   LLAMA3  '[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+
//           |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   QWEN2   LLAMA3 with \p{N} in place of \p{N}{1,3}
//
// The models' own patterns write the contractions as (?i:'s|'t|...); the case pairs
// spelled out above give the same pieces without case folding, which would also take
// "'ſ" (U+017F folds to s) where llama.cpp does not.
// Merges "see below" (llama.cpp's ignore_merges): a piece whose whole text is a token is
// that token; only other pieces go through the BPE merges. BOS is the default of
// tokenizer.ggml.add_bos_token when a GGUF lacks the key.
//
// Pieces are contiguous, non-empty and cover the text; bytes that are not valid UTF-8
// never match a pattern and come out as pieces of their own stretch (llama.cpp turns
// each into U+FFFD instead). \s means Unicode White_Space (tab to CR, U+0085 and
// \p{Z}), the set llama.cpp uses; U+180E is not a space. \p{L}, \p{N} and \p{P} follow
// PCRE2's Unicode tables, which may trail llama.cpp's by a Unicode version for code
// points assigned recently.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace pkv {

/// The encoding rules a `pre` value brings besides its patterns.
struct PreTokenizerRules {
    bool whole_piece_tokens = false;  ///< a piece that is a token in full skips the merges
    bool add_bos = false;             ///< BOS when tokenizer.ggml.add_bos_token is absent
};

/// True when `pre` is one of the values above.
bool pre_tokenizer_supported(const std::string& pre);
/// The supported values, comma-separated, for messages.
std::string supported_pre_tokenizers();
/// The rules of `pre`; throws unsupported naming `pre` and the supported values when
/// it is not one of them.
PreTokenizerRules pre_tokenizer_rules(const std::string& pre);

class PreTokenizer {
public:
    /// Throws unsupported naming `pre` when it is not one of the values above, or
    /// when pkv was built without PCRE2.
    explicit PreTokenizer(const std::string& pre);
    ~PreTokenizer();
    PreTokenizer(const PreTokenizer&) = delete;
    PreTokenizer& operator=(const PreTokenizer&) = delete;

    /// Calls emit(piece) for each piece of `text`, in order. Thread-safe.
    void split(std::string_view text, const std::function<void(std::string_view)>& emit) const;

private:
    struct State;
    std::unique_ptr<State> s_;
};

inline std::unique_ptr<PreTokenizer> make_pre_tokenizer(const std::string& pre) {
    return std::make_unique<PreTokenizer>(pre);
}

}  // namespace pkv
