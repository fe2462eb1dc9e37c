// pkv/tokenizer/spm.h — internal to the tokenizer: SentencePiece-style vocabularies
// (`tokenizer.ggml.model = llama`: Llama 1/2, Mistral, Gemma 1-3, ...), encoded as
// llama.cpp encodes them, so that the ids are the same.
//
// A fragment of text (the text between two special strings) is encoded on its own:
//   1. with add_space_prefix, a space is put in front of a fragment that opens the
//      text or follows a special token (llama.cpp's rule; Gemma has the key false);
//   2. every ASCII space becomes U+2581 '▁' (nothing else is normalized: no NFKC, no
//      whitespace folding, even where tokenizer.ggml.remove_extra_whitespaces says so,
//      as llama.cpp ignores that key for this model);
//   3. the text is cut into symbols of one UTF-8 character each, the length read from
//      the lead byte alone (so invalid UTF-8 is cut the same way llama.cpp cuts it, and
//      a lead byte at the end takes what is left);
//   4. neighbouring symbols whose concatenation is a token (any token, of any type) are
//      merged, highest token score first, leftmost first on equal scores, until no
//      neighbouring pair forms a token;
//   5. each symbol is its token, or when it is none (a character the vocabulary
//      lacks) the byte tokens of its bytes: "<0xXX>" (upper-case hex), or the one-byte
//      token when the vocabulary has no "<0xXX>" for that byte.
// There is no pre-tokenization: merges run over a whole fragment, newlines included.
//
// The constructor refuses a vocabulary without one score per token, with a NaN score,
// with a byte-type token not written "<0xXX>", or lacking a token for some byte (the
// error names the missing bytes): llama.cpp would abort mid-encoding on such a byte.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace pkv {

struct VocabData;

class SpmModel {
public:
    /// `vocab` must outlive the model (token texts are referenced, not copied). Throws
    /// what validate() throws.
    explicit SpmModel(const VocabData& vocab);

    /// Throws invalid_argument, the message starting with `where` (a file name), for the
    /// vocabularies refused above.
    static void validate(const VocabData& vocab, const std::string& where);

    /// Appends the ids of one fragment (raw text, spaces not yet escaped) to `out`;
    /// prefix_space: put a space in front first (step 1 above, decided by the caller).
    void encode(std::string_view fragment, bool prefix_space, std::vector<int32_t>& out) const;

    /// Bytes a token stands for, as llama.cpp renders it with special tokens shown:
    /// normal tokens with '▁' back to spaces, byte tokens as their byte, control,
    /// unknown and user-defined tokens as their text, other types as nothing.
    std::string token_bytes(int32_t id) const;

private:
    const VocabData& vocab_;
    std::unordered_map<std::string_view, int32_t> text_to_id_;
    std::array<int32_t, 256> byte_token_{};  // byte -> its fallback token
};

}  // namespace pkv
