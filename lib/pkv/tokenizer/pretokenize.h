// pkv/tokenizer/pretokenize.h — internal to the tokenizer: splits text into the
// pieces that BPE then encodes one by one, as selected by `tokenizer.ggml.pre`.
//
//   "smollm"            every \p{N} character becomes a piece of its own, then the
//                       GPT-2 pattern splits each stretch between them
//   "gpt2", "default"   the GPT-2 pattern alone
// GPT-2 pattern: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Pieces are contiguous, non-empty and cover the text; bytes that are not valid UTF-8
// never match the pattern and come out as pieces of their own stretch. \s means
// Unicode White_Space (tab to CR, U+0085 and \p{Z}); U+180E is not a space.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace pkv {

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
