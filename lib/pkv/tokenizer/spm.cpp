// pkv/tokenizer/spm.cpp — SentencePiece-style encoding by token scores (see spm.h).
#include "pkv/tokenizer/spm.h"

#include <cmath>
#include <queue>

#include "pkv/core/error.h"
#include "pkv/tokenizer/tokenizer.h"

namespace pkv {

namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581

// Length of a UTF-8 character from its lead byte alone; continuation and invalid
// bytes count as one, 0xF8-0xFF as four (llama.cpp reads the high nibble only).
size_t utf8_char_len(unsigned char lead) {
    if (lead < 0xC0) return 1;
    if (lead < 0xE0) return 2;
    if (lead < 0xF0) return 3;
    return 4;
}

TokenType type_of(const VocabData& v, int32_t id) {
    return v.token_types.empty() ? TokenType::normal : static_cast<TokenType>(v.token_types[id]);
}

// "<0xXX>" -> XX, -1 for any other text.
int byte_of_text(const std::string& text) {
    if (text.size() != 6 || text.compare(0, 3, "<0x") != 0 || text[5] != '>') return -1;
    int value = 0;
    for (size_t i = 3; i < 5; ++i) {
        const char c = text[i];
        int d = -1;
        if (c >= '0' && c <= '9') d = c - '0';
        if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        if (d < 0) return -1;
        value = value * 16 + d;
    }
    return value;
}

std::string hex_token(int byte) {
    static const char* hex = "0123456789ABCDEF";
    return std::string("<0x") + hex[byte >> 4] + hex[byte & 15] + ">";
}

// The byte-fallback token of each byte, -1 where the vocabulary has none.
std::array<int32_t, 256> find_byte_tokens(const std::unordered_map<std::string_view, int32_t>& text_to_id) {
    std::array<int32_t, 256> ids{};
    for (int b = 0; b < 256; ++b) {
        auto it = text_to_id.find(hex_token(b));
        if (it == text_to_id.end()) it = text_to_id.find(std::string(1, static_cast<char>(b)));
        ids[b] = it != text_to_id.end() ? it->second : -1;
    }
    return ids;
}

std::unordered_map<std::string_view, int32_t> text_map(const VocabData& vocab) {
    std::unordered_map<std::string_view, int32_t> map;
    map.reserve(vocab.tokens.size() * 2);
    // A later duplicate wins, as in llama.cpp's text-to-id map; empty texts never match.
    for (size_t id = 0; id < vocab.tokens.size(); ++id)
        if (!vocab.tokens[id].empty()) map[vocab.tokens[id]] = static_cast<int32_t>(id);
    return map;
}

}  // namespace

void SpmModel::validate(const VocabData& vocab, const std::string& where) {
    const size_t n = vocab.tokens.size();
    PKV_CHECK(vocab.scores.size() == n, invalid_argument,
              "{}: tokenizer.ggml.scores: a SentencePiece vocabulary needs one score per token: expected {}, got {}",
              where, n, vocab.scores.size());
    for (size_t id = 0; id < n; ++id) {
        PKV_CHECK(!std::isnan(vocab.scores[id]), invalid_argument,
                  "{}: tokenizer.ggml.scores[{}] (token '{}'): expected a number, got NaN", where, id,
                  vocab.tokens[id]);
        if (type_of(vocab, static_cast<int32_t>(id)) == TokenType::byte)
            PKV_CHECK(byte_of_text(vocab.tokens[id]) >= 0, invalid_argument,
                      "{}: tokenizer.ggml.tokens[{}]: a byte-type token must read <0xXX>, got '{}'", where, id,
                      vocab.tokens[id]);
    }
    const std::array<int32_t, 256> bytes = find_byte_tokens(text_map(vocab));
    std::string missing;
    int n_missing = 0;
    for (int b = 0; b < 256; ++b)
        if (bytes[b] < 0 && n_missing++ < 4) missing += (missing.empty() ? "" : " ") + hex_token(b);
    PKV_CHECK(n_missing == 0, invalid_argument,
              "{}: tokenizer.ggml.tokens: a SentencePiece vocabulary needs a byte-fallback token for each of the 256 "
              "bytes: {} missing ({}{})",
              where, n_missing, missing, n_missing > 4 ? " ..." : "");
}

SpmModel::SpmModel(const VocabData& vocab) : vocab_(vocab) {
    validate(vocab, "tokenizer");
    text_to_id_ = text_map(vocab);
    byte_token_ = find_byte_tokens(text_to_id_);
}

void SpmModel::encode(std::string_view fragment, bool prefix_space, std::vector<int32_t>& out) const {
    std::string text;
    text.reserve(fragment.size() + fragment.size() / 4 + 4);
    if (prefix_space) text += kSpaceMarker;
    for (char c : fragment) {
        if (c == ' ') {
            text += kSpaceMarker;
        } else {
            text.push_back(c);
        }
    }
    if (text.empty()) return;

    // Symbols form a linked list over `text`; a merged-away symbol has len 0.
    struct Sym {
        uint32_t start, len;
        int32_t prev, next;
    };
    std::vector<Sym> syms;
    syms.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) {
        const size_t len = std::min(utf8_char_len(static_cast<unsigned char>(text[pos])), text.size() - pos);
        const auto i = static_cast<int32_t>(syms.size());
        syms.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(len), i - 1, -1});
        if (i > 0) syms[i - 1].next = i;
        pos += len;
    }

    // A candidate merge of `left` with its right neighbour, valid while both still have
    // the lengths it was made from (any merge touching either changes one of them).
    struct Cand {
        float score;
        int32_t left, right;
        uint32_t len;
    };
    auto worse = [](const Cand& a, const Cand& b) { return a.score != b.score ? a.score < b.score : a.left > b.left; };
    std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
    auto consider = [&](int32_t left, int32_t right) {
        if (left < 0 || right < 0) return;
        const uint32_t len = syms[left].len + syms[right].len;
        auto it = text_to_id_.find(std::string_view(text).substr(syms[left].start, len));
        if (it != text_to_id_.end()) heap.push({vocab_.scores[it->second], left, right, len});
    };
    for (int32_t i = 1; i < static_cast<int32_t>(syms.size()); ++i) consider(i - 1, i);

    while (!heap.empty()) {
        const Cand c = heap.top();
        heap.pop();
        Sym& l = syms[c.left];
        Sym& r = syms[c.right];
        if (l.len == 0 || r.len == 0 || l.len + r.len != c.len) continue;
        l.len = c.len;
        r.len = 0;
        l.next = r.next;
        if (r.next >= 0) syms[r.next].prev = c.left;
        consider(l.prev, c.left);
        consider(c.left, l.next);
    }

    for (int32_t i = 0; i >= 0; i = syms[i].next) {
        const std::string_view s = std::string_view(text).substr(syms[i].start, syms[i].len);
        auto it = text_to_id_.find(s);
        if (it != text_to_id_.end()) {
            out.push_back(it->second);
            continue;
        }
        for (char b : s) out.push_back(byte_token_[static_cast<unsigned char>(b)]);
    }
}

std::string SpmModel::token_bytes(int32_t id) const {
    const std::string& text = vocab_.tokens[id];
    switch (type_of(vocab_, id)) {
        case TokenType::control:
        case TokenType::unknown:
        case TokenType::user_defined: return text;
        case TokenType::byte: return std::string(1, static_cast<char>(byte_of_text(text)));
        case TokenType::normal: {
            std::string out;
            for (size_t pos = 0; pos < text.size();) {
                if (text.compare(pos, kSpaceMarker.size(), kSpaceMarker) == 0) {
                    out.push_back(' ');
                    pos += kSpaceMarker.size();
                } else {
                    out.push_back(text[pos++]);
                }
            }
            return out;
        }
        default: return {};
    }
}

}  // namespace pkv
