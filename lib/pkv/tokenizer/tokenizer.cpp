// pkv/tokenizer/tokenizer.cpp — vocabulary loading, special-token splitting and
// decoding for both models, and byte-level BPE: the byte table and the merges.
// Pre-tokenization (PCRE2) lives in pretokenize.cpp, SentencePiece merging in spm.cpp.
#include "pkv/tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <fstream>
#include <mutex>
#include <queue>
#include <set>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/tokenizer/pretokenize.h"
#include "pkv/tokenizer/spm.h"

namespace pkv {

// ---------------------------------------------------------------------------------
// Byte table

namespace {

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

struct ByteTable {
    std::array<uint32_t, 256> to_cp{};       // byte -> code point
    std::array<std::string, 256> to_text{};  // byte -> UTF-8 of that code point
    std::array<int16_t, 324> to_byte{};      // code point -> byte, -1 when none

    ByteTable() {
        to_byte.fill(-1);
        uint32_t next = 256;
        for (uint32_t b = 0; b < 256; ++b) {
            // Printable Latin-1 bytes stand for themselves; the rest are moved past
            // U+00FF in byte order so that every byte has a visible character.
            bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
            to_cp[b] = printable ? b : next++;
            append_utf8(to_text[b], to_cp[b]);
            to_byte[to_cp[b]] = static_cast<int16_t>(b);
        }
    }
};

const ByteTable& byte_table() {
    static const ByteTable table;
    return table;
}

// Maps token text (byte-table alphabet) back to bytes. Characters outside the table,
// and malformed UTF-8, pass through unchanged.
std::string text_to_bytes(std::string_view text) {
    const ByteTable& t = byte_table();
    std::string out;
    out.reserve(text.size());
    size_t i = 0;
    while (i < text.size()) {
        auto c = static_cast<unsigned char>(text[i]);
        if (c < 0x80) {
            int b = t.to_byte[c];
            out.push_back(b >= 0 ? static_cast<char>(b) : static_cast<char>(c));
            ++i;
            continue;
        }
        if ((c & 0xE0) == 0xC0 && i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80) {
            uint32_t cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(text[i + 1]) & 0x3Fu);
            if (cp < t.to_byte.size() && t.to_byte[cp] >= 0) {
                out.push_back(static_cast<char>(t.to_byte[cp]));
            } else {
                out.append(text.substr(i, 2));
            }
            i += 2;
            continue;
        }
        // Longer sequences never belong to the table.
        out.push_back(static_cast<char>(c));
        ++i;
    }
    return out;
}

}  // namespace

std::string byte_to_token_text(uint8_t byte) { return byte_table().to_text[byte]; }

std::string token_text_to_bytes(std::string_view text) { return text_to_bytes(text); }

// ---------------------------------------------------------------------------------
// Vocabulary from GGUF

namespace {

// tokenizer.ggml.pre of a GGUF ("default" when absent, as llama.cpp reads it), refused
// when pkv does not know it.
std::string supported_pre(const GgufFile& file) {
    std::string pre = file.find_string("tokenizer.ggml.pre").value_or("default");
    PKV_CHECK(pre_tokenizer_supported(pre), unsupported, "{}: tokenizer.ggml.pre: expected one of {}, got '{}'",
              file.path(), supported_pre_tokenizers(), pre);
    return pre;
}

// llama.cpp also makes tokens control by their text when it loads a vocabulary (so
// they match only with parse_special): every end-of-generation marker below, and a
// fill-in-the-middle marker when the GGUF names no id for its kind. llama.cpp takes
// one fill-in-the-middle marker per kind, the first its hash map yields; pkv takes
// all, which differs only for a vocabulary holding two markers of one kind.
void mark_control_by_text(const GgufFile& file, VocabData& v) {
    static const std::set<std::string> kEndOfGeneration = {"<|eot_id|>",
                                                           "<|im_end|>",
                                                           "<|end|>",
                                                           "<|return|>",
                                                           "<|call|>",
                                                           "<|flush|>",
                                                           "<|calls|>",
                                                           "<end_of_turn>",
                                                           "<|endoftext|>",
                                                           "</s>",
                                                           "<|eom_id|>",
                                                           "<EOT>",
                                                           "_<EOT>",
                                                           "[EOT]",
                                                           "[EOS]",
                                                           "<|end_of_text|>",
                                                           "<end_of_utterance>",
                                                           "<eos>",
                                                           "<turn|>",
                                                           "<|tool_response>",
                                                           "<\uFF5Cend\u2581of\u2581sentence\uFF5C>",
                                                           "[e~["};
    static const std::vector<std::pair<const char*, std::set<std::string>>> kFillInTheMiddle = {
        {"tokenizer.ggml.fim_pre_token_id",
         {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uFF5Cfim\u2581begin\uFF5C>", "<PRE>", "\u2581<PRE>",
          "<|code_prefix|>", "<|prefix|>"}},
        {"tokenizer.ggml.fim_suf_token_id",
         {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uFF5Cfim\u2581hole\uFF5C>", "<SUF>", "\u2581<SUF>",
          "<|code_suffix|>", "<|suffix|>"}},
        {"tokenizer.ggml.fim_mid_token_id",
         {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uFF5Cfim\u2581end\uFF5C>", "<MID>", "\u2581<MID>",
          "<|code_middle|>", "<|middle|>"}},
        {"tokenizer.ggml.fim_pad_token_id", {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"}},
        {"tokenizer.ggml.fim_rep_token_id", {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}},
        {"tokenizer.ggml.fim_sep_token_id", {"<|file_sep|>"}},
    };
    std::set<std::string> texts = kEndOfGeneration;
    for (const auto& [key, kind] : kFillInTheMiddle)
        if (!file.has(key)) texts.insert(kind.begin(), kind.end());
    for (size_t id = 0; id < v.tokens.size(); ++id) {
        if (!texts.count(v.tokens[id])) continue;
        if (v.token_types.empty()) v.token_types.assign(v.tokens.size(), static_cast<int32_t>(TokenType::normal));
        v.token_types[id] = static_cast<int32_t>(TokenType::control);
    }
}

}  // namespace

namespace {

// llama.cpp strips the whitespace after special tokens of the models it recognises as
// Phi-3 by name; pkv does not, so it refuses them rather than give other ids.
void refuse_by_name(const GgufFile& file) {
    std::string name = file.find_string("general.name").value_or("");
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    PKV_CHECK(name.find("phi-3") == std::string::npos && name.find("phi3") == std::string::npos, unsupported,
              "{}: general.name '{}': Phi-3 tokenizers strip whitespace after special tokens, which pkv does not "
              "implement",
              file.path(), name);
}

// tokenizer.ggml.scores: float or integer, one per token.
std::vector<float> read_scores(const GgufFile& file, size_t n_tokens) {
    const std::string key = "tokenizer.ggml.scores";
    PKV_CHECK(file.has(key), data_loss,
              "{}: {}: a SentencePiece vocabulary (tokenizer.ggml.model 'llama') needs token scores, got none",
              file.path(), key);
    const GgufValue& v = file.get(key);
    PKV_CHECK(v.type == GgufType::ARRAY && (v.array_type == GgufType::F32 || v.array_type == GgufType::I32), data_loss,
              "{}: {}: expected an array of f32 or i32, got {}", file.path(), key, GgufFile::to_string(v, 2));
    const auto& items = std::get<std::vector<GgufValue>>(v.value);
    PKV_CHECK(items.size() == n_tokens, data_loss, "{}: {}: expected {} entries (one per token), got {}", file.path(),
              key, n_tokens, items.size());
    std::vector<float> scores;
    scores.reserve(items.size());
    for (const GgufValue& item : items) {
        if (v.array_type == GgufType::F32) {
            scores.push_back(static_cast<float>(std::get<double>(item.value)));
        } else {
            scores.push_back(static_cast<float>(std::get<int64_t>(item.value)));
        }
    }
    return scores;
}

}  // namespace

VocabData vocab_from_gguf(const GgufFile& file) {
    const std::string& path = file.path();
    VocabData v;
    v.model = file.get_string("tokenizer.ggml.model");
    PKV_CHECK(v.model == "gpt2" || v.model == "llama", unsupported,
              "{}: tokenizer.ggml.model: expected 'gpt2' (byte-level BPE) or 'llama' (SentencePiece), got '{}'", path,
              v.model);
    const bool spm = v.model == "llama";
    refuse_by_name(file);
    // SentencePiece ignores the pre-tokenizer, as llama.cpp does.
    v.pre = spm ? file.find_string("tokenizer.ggml.pre").value_or("default") : supported_pre(file);
    v.tokens = file.get_string_array("tokenizer.ggml.tokens");
    PKV_CHECK(!v.tokens.empty(), data_loss, "{}: tokenizer.ggml.tokens: expected at least one token, got 0", path);
    if (file.has("tokenizer.ggml.token_type")) {
        std::vector<int64_t> types = file.get_int_array("tokenizer.ggml.token_type");
        PKV_CHECK(types.size() == v.tokens.size(), data_loss,
                  "{}: tokenizer.ggml.token_type: expected {} entries (one per token), got {}", path, v.tokens.size(),
                  types.size());
        v.token_types.reserve(types.size());
        for (int64_t t : types) v.token_types.push_back(static_cast<int32_t>(t));
    }
    if (spm) {
        v.scores = read_scores(file, v.tokens.size());
        v.add_space_prefix = file.find_bool("tokenizer.ggml.add_space_prefix").value_or(true);
        // llama.cpp's defaults for this model, used when the vocabulary is large enough.
        const int32_t n = static_cast<int32_t>(v.tokens.size());
        v.bos_id = n > 1 ? 1 : -1;
        v.eos_id = n > 2 ? 2 : -1;
        v.unk_id = 0;
    } else {
        v.merges = file.get_string_array("tokenizer.ggml.merges");
    }
    mark_control_by_text(file, v);
    if (spm) SpmModel::validate(v, path);

    auto read_id = [&](const char* key, int32_t& out) {
        std::optional<uint64_t> id = file.find_u64(key);
        if (!id) return;
        PKV_CHECK(*id < v.tokens.size(), data_loss, "{}: {}: expected a token id below {}, got {}", path, key,
                  v.tokens.size(), *id);
        out = static_cast<int32_t>(*id);
    };
    read_id("tokenizer.ggml.bos_token_id", v.bos_id);
    read_id("tokenizer.ggml.eos_token_id", v.eos_id);
    read_id("tokenizer.ggml.unknown_token_id", v.unk_id);
    read_id("tokenizer.ggml.padding_token_id", v.pad_id);
    v.add_bos = gguf_adds_bos(file);
    v.add_eos = file.find_bool("tokenizer.ggml.add_eos_token").value_or(false);
    // llama.cpp would fall back to token 11 here; pkv refuses to guess.
    PKV_CHECK(!v.add_bos || v.bos_id >= 0, data_loss,
              "{}: tokenizer.ggml.bos_token_id: expected a BOS id (the vocabulary adds BOS), got none", path);
    PKV_CHECK(!v.add_eos || v.eos_id >= 0, data_loss,
              "{}: tokenizer.ggml.eos_token_id: expected an EOS id (add_eos_token is true), got none", path);
    return v;
}

bool gguf_adds_bos(const GgufFile& file) {
    if (std::optional<bool> add = file.find_bool("tokenizer.ggml.add_bos_token")) return *add;
    // Without the key the model and pre-tokenizer decide, as in llama.cpp: SentencePiece
    // and Llama 3 add BOS.
    if (file.find_string("tokenizer.ggml.model") == std::optional<std::string>("llama")) return true;
    return pre_tokenizer_rules(supported_pre(file)).add_bos;
}

// ---------------------------------------------------------------------------------
// Tokenizer

#ifdef PKV_HAVE_PCRE2

namespace {

struct MergeInfo {
    int32_t rank;
    int32_t result;  // symbol id of the merged pair
};

struct Special {
    std::string text;
    int32_t id;
    bool on_request;  // control and unknown tokens: matched only when parse_special is on
};

// A special string found in the text to encode.
struct SpecialHit {
    size_t pos;
    const Special* special;
};

struct PieceResult {
    std::vector<int32_t> ids;
    uint32_t dropped = 0;
};

constexpr size_t kCacheMaxEntries = 1u << 17;
constexpr size_t kCacheMaxPieceBytes = 256;

uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

}  // namespace

struct Tokenizer::Impl {
    VocabData vocab;
    std::vector<std::string> bytes_of;                        // id -> bytes, for decode
    std::vector<Special> specials;                            // longest first, then by id
    std::array<std::vector<uint32_t>, 256> special_by_first;  // first byte -> indices into specials

    // SentencePiece vocabularies (model "llama"): everything else below stays empty.
    std::unique_ptr<SpmModel> spm;

    // Byte-level BPE (model "gpt2").
    // BPE symbols: ids below n_vocab are tokens; higher ids are strings that merges
    // build but the vocabulary lacks (they fall back to byte tokens at the end).
    std::vector<std::string> extra_bytes;    // (symbol id - n_vocab) -> bytes
    std::array<int32_t, 256> byte_symbol{};  // byte -> its one-character symbol
    // byte -> the tokens a symbol missing from the vocabulary leaves for it (see bpe())
    std::array<std::vector<int32_t>, 256> byte_fallback;
    std::unordered_map<uint64_t, MergeInfo> merges;
    PreTokenizerRules rules;
    std::unordered_map<std::string, int32_t> whole_tokens;  // token text -> id, for rules.whole_piece_tokens
    std::unique_ptr<PreTokenizer> pre;

    mutable std::mutex cache_mutex;
    mutable std::unordered_map<std::string, PieceResult> cache;
    mutable std::atomic<uint64_t> dropped{0};

    explicit Impl(VocabData v);
    int32_t n_vocab() const { return static_cast<int32_t>(vocab.tokens.size()); }
    TokenType type_of(int32_t id) const {
        return vocab.token_types.empty() ? TokenType::normal : static_cast<TokenType>(vocab.token_types[id]);
    }
    void init_bpe(std::unordered_map<std::string, int32_t> text_to_id);
    void bpe(std::string_view piece, PieceResult& out) const;
    void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
    std::vector<SpecialHit> find_specials(std::string_view text, bool parse_special) const;
};

Tokenizer::Impl::Impl(VocabData v) : vocab(std::move(v)) {
    PKV_CHECK(vocab.model == "gpt2" || vocab.model == "llama", unsupported,
              "tokenizer model '{}': expected 'gpt2' (byte-level BPE) or 'llama' (SentencePiece)", vocab.model);
    PKV_CHECK(!vocab.tokens.empty(), invalid_argument, "tokenizer: expected at least one token, got 0");
    PKV_CHECK(vocab.token_types.empty() || vocab.token_types.size() == vocab.tokens.size(), invalid_argument,
              "tokenizer: expected {} token types (one per token), got {}", vocab.tokens.size(),
              vocab.token_types.size());
    PKV_CHECK(!vocab.add_bos || (vocab.bos_id >= 0 && vocab.bos_id < n_vocab()), invalid_argument,
              "tokenizer: expected a BOS id below {} (the vocabulary adds BOS), got {}", n_vocab(), vocab.bos_id);
    PKV_CHECK(!vocab.add_eos || (vocab.eos_id >= 0 && vocab.eos_id < n_vocab()), invalid_argument,
              "tokenizer: expected an EOS id below {} (the vocabulary adds EOS), got {}", n_vocab(), vocab.eos_id);
    if (vocab.model == "llama") {
        spm = std::make_unique<SpmModel>(vocab);
    } else {
        rules = pre_tokenizer_rules(vocab.pre);
        pre = make_pre_tokenizer(vocab.pre);
    }

    const int32_t n = n_vocab();
    std::unordered_map<std::string, int32_t> text_to_id;
    if (!spm) text_to_id.reserve(vocab.tokens.size() * 2);
    bytes_of.resize(vocab.tokens.size());
    for (int32_t id = 0; id < n; ++id) {
        const std::string& text = vocab.tokens[id];
        const TokenType type = type_of(id);
        if (!spm) text_to_id[text] = id;
        if (type == TokenType::control || type == TokenType::user_defined || type == TokenType::unknown) {
            // Special strings are written literally, not in the byte-table alphabet.
            bytes_of[id] = text;
            if (!text.empty()) specials.push_back({text, id, type != TokenType::user_defined});
        } else {
            bytes_of[id] = spm ? spm->token_bytes(id) : text_to_bytes(text);
        }
    }
    std::stable_sort(specials.begin(), specials.end(),
                     [](const Special& a, const Special& b) { return a.text.size() > b.text.size(); });
    for (size_t i = 0; i < specials.size(); ++i)
        special_by_first[static_cast<unsigned char>(specials[i].text[0])].push_back(static_cast<uint32_t>(i));
    if (!spm) init_bpe(std::move(text_to_id));
}

// The symbol table, byte fallbacks and merge ranks of byte-level BPE.
void Tokenizer::Impl::init_bpe(std::unordered_map<std::string, int32_t> text_to_id) {
    const int32_t n = n_vocab();
    std::unordered_map<std::string, int32_t> extra_ids;
    auto symbol_of = [&](const std::string& text) -> int32_t {
        auto it = text_to_id.find(text);
        if (it != text_to_id.end()) return it->second;
        auto [e, inserted] = extra_ids.emplace(text, n + static_cast<int32_t>(extra_bytes.size()));
        if (inserted) extra_bytes.push_back(text_to_bytes(text));
        return e->second;
    };
    const ByteTable& table = byte_table();
    for (int b = 0; b < 256; ++b) {
        byte_symbol[b] = symbol_of(table.to_text[b]);
        // llama.cpp looks each byte of the symbol's token text up as a one-byte token;
        // only printable ASCII stands for itself there, so other bytes usually vanish.
        for (char c : table.to_text[b]) {
            auto it = text_to_id.find(std::string(1, c));
            if (it != text_to_id.end()) byte_fallback[b].push_back(it->second);
        }
    }

    merges.reserve(vocab.merges.size() * 2);
    for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
        const std::string& m = vocab.merges[rank];
        // The left part may itself start with a space character, hence the search from 1.
        size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
        PKV_CHECK(sp != std::string::npos && sp + 1 < m.size(), invalid_argument,
                  "tokenizer merge {} '{}': expected 'left right'", rank, m);
        std::string left = m.substr(0, sp), right = m.substr(sp + 1);
        int32_t l = symbol_of(left), r = symbol_of(right);
        int32_t result = symbol_of(left + right);
        // A pair listed twice keeps its first (best) rank.
        merges.emplace(pair_key(l, r), MergeInfo{static_cast<int32_t>(rank), result});
    }
    if (rules.whole_piece_tokens) whole_tokens = std::move(text_to_id);
}

// Merges the pair of lowest rank first (leftmost on ties) until no listed pair is
// left, over a linked list of symbols with a heap of candidate merges; stale heap
// entries are recognised by the symbols they expected.
void Tokenizer::Impl::bpe(std::string_view piece, PieceResult& out) const {
    struct Sym {
        int32_t id;
        int32_t prev, next;
    };
    struct Cand {
        int32_t rank, left, left_id, right_id, result;
        bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    if (rules.whole_piece_tokens) {
        std::string text;
        for (char b : piece) text += byte_table().to_text[static_cast<unsigned char>(b)];
        auto it = whole_tokens.find(text);
        if (it != whole_tokens.end()) {
            out.ids.push_back(it->second);
            return;
        }
    }
    const int32_t len = static_cast<int32_t>(piece.size());
    std::vector<Sym> syms(piece.size());
    for (int32_t i = 0; i < len; ++i)
        syms[i] = {byte_symbol[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < len ? i + 1 : -1};

    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto consider = [&](int32_t left) {
        if (left < 0) return;
        int32_t right = syms[left].next;
        if (right < 0) return;
        auto it = merges.find(pair_key(syms[left].id, syms[right].id));
        if (it != merges.end()) heap.push({it->second.rank, left, syms[left].id, syms[right].id, it->second.result});
    };
    for (int32_t i = 0; i + 1 < len; ++i) consider(i);

    while (!heap.empty()) {
        Cand c = heap.top();
        heap.pop();
        Sym& l = syms[c.left];
        if (l.id != c.left_id || l.next < 0) continue;  // left was merged away or changed
        Sym& r = syms[l.next];
        if (r.id != c.right_id) continue;
        l.id = c.result;
        l.next = r.next;
        if (r.next >= 0) syms[r.next].prev = c.left;
        r.id = -1;  // dead: no candidate expects id -1
        consider(l.prev);
        consider(c.left);
    }

    const int32_t n = n_vocab();
    for (int32_t i = len > 0 ? 0 : -1; i >= 0; i = syms[i].next) {
        int32_t id = syms[i].id;
        if (id < n) {
            out.ids.push_back(id);
            continue;
        }
        for (char b : extra_bytes[id - n]) {
            const std::vector<int32_t>& f = byte_fallback[static_cast<unsigned char>(b)];
            out.ids.insert(out.ids.end(), f.begin(), f.end());
            if (f.empty()) ++out.dropped;
        }
    }
}

void Tokenizer::Impl::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
    if (piece.empty()) return;
    const bool cacheable = piece.size() <= kCacheMaxPieceBytes;
    std::string key;
    if (cacheable) {
        key.assign(piece);
        std::lock_guard<std::mutex> lock(cache_mutex);
        auto it = cache.find(key);
        if (it != cache.end()) {
            out.insert(out.end(), it->second.ids.begin(), it->second.ids.end());
            if (it->second.dropped) dropped.fetch_add(it->second.dropped, std::memory_order_relaxed);
            return;
        }
    }
    PieceResult r;
    bpe(piece, r);
    out.insert(out.end(), r.ids.begin(), r.ids.end());
    if (r.dropped) dropped.fetch_add(r.dropped, std::memory_order_relaxed);
    if (cacheable) {
        std::lock_guard<std::mutex> lock(cache_mutex);
        if (cache.size() >= kCacheMaxEntries) cache.clear();  // bounded memory on odd inputs
        cache.emplace(std::move(key), std::move(r));
    }
}

// Special strings cut the text as in llama.cpp: the longest special string first takes
// all its leftmost non-overlapping occurrences, then the next longest takes its own in
// the text still free, and so on. This differs from a leftmost-longest scan only where
// occurrences of different special strings overlap.
std::vector<SpecialHit> Tokenizer::Impl::find_specials(std::string_view text, bool parse_special) const {
    std::vector<std::pair<uint32_t, size_t>> found;  // (index into specials, position)
    for (size_t pos = 0; pos < text.size(); ++pos) {
        for (uint32_t i : special_by_first[static_cast<unsigned char>(text[pos])]) {
            const Special& s = specials[i];
            if ((parse_special || !s.on_request) && text.compare(pos, s.text.size(), s.text) == 0)
                found.emplace_back(i, pos);
        }
    }
    std::vector<SpecialHit> hits;
    if (found.empty()) return hits;
    std::sort(found.begin(), found.end());
    std::vector<bool> taken(text.size(), false);
    size_t free_from = 0;  // the current special's previous occurrence ends here
    for (size_t k = 0; k < found.size(); ++k) {
        const auto [i, pos] = found[k];
        if (k == 0 || found[k - 1].first != i) free_from = 0;
        const size_t len = specials[i].text.size();
        if (pos < free_from) continue;
        bool clear = true;
        for (size_t j = pos; j < pos + len && clear; ++j) clear = !taken[j];
        if (!clear) continue;
        std::fill(taken.begin() + static_cast<std::ptrdiff_t>(pos),
                  taken.begin() + static_cast<std::ptrdiff_t>(pos + len), true);
        hits.push_back({pos, &specials[i]});
        free_from = pos + len;
    }
    std::sort(hits.begin(), hits.end(), [](const SpecialHit& a, const SpecialHit& b) { return a.pos < b.pos; });
    return hits;
}

Tokenizer::Tokenizer(VocabData vocab) : impl_(std::make_unique<Impl>(std::move(vocab))) {}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special, bool add_specials) const {
    const Impl& im = *impl_;
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    if (add_specials && im.vocab.add_bos && im.vocab.bos_id >= 0) ids.push_back(im.vocab.bos_id);

    // SentencePiece puts a space before text that opens the input or follows a special
    // token (with add_space_prefix); an empty stretch between two specials is no text.
    bool after_special = true;
    auto encode_text = [&](std::string_view fragment) {
        if (im.spm) {
            if (fragment.empty()) return;
            im.spm->encode(fragment, im.vocab.add_space_prefix && after_special, ids);
            after_special = false;
            return;
        }
        im.pre->split(fragment, [&](std::string_view piece) { im.encode_piece(piece, ids); });
    };
    // The text between special strings is encoded on its own, so pre-tokenization
    // never looks across a special token.
    size_t start = 0;
    for (const SpecialHit& hit : im.find_specials(text, parse_special)) {
        encode_text(text.substr(start, hit.pos - start));
        ids.push_back(hit.special->id);
        after_special = true;
        start = hit.pos + hit.special->text.size();
    }
    encode_text(text.substr(start));

    if (add_specials && im.vocab.add_eos && im.vocab.eos_id >= 0) ids.push_back(im.vocab.eos_id);
    return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
    std::string out;
    for (int32_t id : ids) {
        PKV_CHECK(id >= 0 && id < impl_->n_vocab(), out_of_range, "token id {}: expected 0 <= id < {}", id,
                  impl_->n_vocab());
        out += impl_->bytes_of[id];
    }
    return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
    PKV_CHECK(id >= 0 && id < impl_->n_vocab(), out_of_range, "token id {}: expected 0 <= id < {}", id,
              impl_->n_vocab());
    return impl_->bytes_of[id];
}

size_t Tokenizer::n_vocab() const { return impl_->vocab.tokens.size(); }
const VocabData& Tokenizer::vocab() const { return impl_->vocab; }
uint64_t Tokenizer::dropped_bytes() const { return impl_->dropped.load(std::memory_order_relaxed); }

bool tokenizer_available() { return true; }

#else  // !PKV_HAVE_PCRE2

struct Tokenizer::Impl {
    VocabData vocab;
};

Tokenizer::Tokenizer(VocabData) {
    fail(ErrorCode::unsupported, "pkv was built without PCRE2: the tokenizer is unavailable");
}

std::vector<int32_t> Tokenizer::encode(std::string_view, bool, bool) const { return {}; }
std::string Tokenizer::decode(const std::vector<int32_t>&) const { return {}; }
std::string Tokenizer::token_bytes(int32_t) const { return {}; }
size_t Tokenizer::n_vocab() const { return impl_->vocab.tokens.size(); }
const VocabData& Tokenizer::vocab() const { return impl_->vocab; }
uint64_t Tokenizer::dropped_bytes() const { return 0; }

bool tokenizer_available() { return false; }

#endif  // PKV_HAVE_PCRE2

std::vector<int32_t> tokenize_file(const std::string& model_path, const std::string& text_path, bool add_specials,
                                   bool parse_special) {
    std::ifstream in(text_path, std::ios::binary);
    PKV_CHECK(in.good(), not_found, "{}: cannot open the text to tokenize", text_path);
    std::ostringstream text;
    text << in.rdbuf();
    PKV_CHECK(!in.bad(), io, "{}: read error", text_path);
    auto file = GgufFile::open(model_path);
    Tokenizer tok(vocab_from_gguf(*file));
    return tok.encode(text.str(), parse_special, add_specials);
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

}  // namespace pkv
