// pkv/tokenizer/pretokenize.cpp — the PCRE2 pre-tokenizer (see pretokenize.h).
#include "pkv/tokenizer/pretokenize.h"

#include <vector>

#include "pkv/core/error.h"

#ifdef PKV_HAVE_PCRE2
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#endif

namespace pkv {

namespace {

enum class Split { gpt2, llama3, qwen2, digits_then_gpt2, llama_default };

struct Known {
    const char* name;
    Split split;
    PreTokenizerRules rules;
};

// clang-format off
constexpr Known kKnown[] = {
    {"llama3",           Split::llama3,           {true, true}},
    {"llama-v3",         Split::llama3,           {true, true}},
    {"llama-bpe",        Split::llama3,           {true, true}},
    {"qwen2",            Split::qwen2,            {false, false}},
    {"deepseek-r1-qwen", Split::qwen2,            {false, false}},
    {"smollm",           Split::digits_then_gpt2, {false, false}},
    {"starcoder",        Split::digits_then_gpt2, {false, false}},
    {"refact",           Split::digits_then_gpt2, {false, false}},
    {"command-r",        Split::digits_then_gpt2, {false, false}},
    {"gpt-2",            Split::gpt2,             {false, false}},
    {"mpt",              Split::gpt2,             {false, false}},
    {"default",          Split::llama_default,    {false, false}},
};
// clang-format on

const Known* find_known(const std::string& pre) {
    for (const Known& k : kKnown)
        if (pre == k.name) return &k;
    return nullptr;
}

const Known& known_or_throw(const std::string& pre) {
    const Known* k = find_known(pre);
    PKV_CHECK(k, unsupported, "tokenizer.ggml.pre '{}': expected one of {}", pre, supported_pre_tokenizers());
    return *k;
}

}  // namespace

bool pre_tokenizer_supported(const std::string& pre) { return find_known(pre) != nullptr; }

std::string supported_pre_tokenizers() {
    std::string out;
    for (const Known& k : kKnown) out += (out.empty() ? "" : ", ") + std::string(k.name);
    return out;
}

PreTokenizerRules pre_tokenizer_rules(const std::string& pre) { return known_or_throw(pre).rules; }

#ifdef PKV_HAVE_PCRE2

namespace {

// \s and \S spelled out as Unicode White_Space (the meaning both llama.cpp and HF
// tokenizers give them): PCRE2's own \s also takes U+180E, which has been a format
// character, not a space, since Unicode 6.3.
#define PKV_WS "\\t-\\r\\x{85}\\p{Z}"
constexpr const char* kGpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" PKV_WS
                                     "\\p{L}\\p{N}]+"
                                     "|[" PKV_WS "]+(?![^" PKV_WS "])|[" PKV_WS "]+";
#define PKV_LLAMA3_LIKE(digits)                                                                                  \
    "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" digits "| ?[^" PKV_WS \
    "\\p{L}\\p{N}]+[\\r\\n]*|[" PKV_WS "]*[\\r\\n]+|[" PKV_WS "]+(?![^" PKV_WS "])|[" PKV_WS "]+"
constexpr const char* kLlama3Pattern = PKV_LLAMA3_LIKE("\\p{N}{1,3}");
constexpr const char* kQwen2Pattern = PKV_LLAMA3_LIKE("\\p{N}");
#undef PKV_LLAMA3_LIKE
#undef PKV_WS

// Invalid UTF-8 is tolerated (never matched) where PCRE2 can do it; older releases
// check the whole subject at each match, so there the check runs only on the first
// match of a text and invalid input is rejected.
#ifdef PCRE2_MATCH_INVALID_UTF
constexpr uint32_t kCompileOptions = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF;
constexpr bool kTolerantUtf = true;
#else
constexpr uint32_t kCompileOptions = PCRE2_UTF | PCRE2_UCP;
constexpr bool kTolerantUtf = false;
#endif

std::string pcre2_message(int code) {
    PCRE2_UCHAR buf[256];
    if (pcre2_get_error_message(code, buf, sizeof buf) < 0) return fmt::format("pcre2 error {}", code);
    return reinterpret_cast<const char*>(buf);
}

struct Regex {
    pcre2_code* code = nullptr;

    explicit Regex(const char* pattern) {
        int err = 0;
        PCRE2_SIZE err_offset = 0;
        code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED, kCompileOptions, &err,
                             &err_offset, nullptr);
        if (!code)
            fail(ErrorCode::internal, "tokenizer pattern '{}' at offset {}: {}", pattern, err_offset,
                 pcre2_message(err));
        // JIT is only a speed-up: without it (unsupported platform, no executable
        // memory) the interpreter gives the same matches.
        (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    }
    ~Regex() { pcre2_code_free(code); }
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;
};

// Per-call match state: the compiled patterns are shared between threads, match data
// is not.
struct Matcher {
    const Regex& re;
    pcre2_match_data* md;
    bool checked = kTolerantUtf;

    explicit Matcher(const Regex& r) : re(r), md(pcre2_match_data_create_from_pattern(r.code, nullptr)) {
        if (!md) fail(ErrorCode::internal, "tokenizer: out of memory for pcre2 match data");
    }
    ~Matcher() { pcre2_match_data_free(md); }
    Matcher(const Matcher&) = delete;
    Matcher& operator=(const Matcher&) = delete;

    /// Next match of the pattern in subject[offset, size): true and [begin, end), or
    /// false when there is none.
    bool next(std::string_view subject, size_t offset, size_t& begin, size_t& end) {
        uint32_t options = checked ? PCRE2_NO_UTF_CHECK : 0;
        int rc = pcre2_match(re.code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), offset, options, md,
                             nullptr);
        checked = true;
        if (rc == PCRE2_ERROR_NOMATCH) return false;
        if (rc <= PCRE2_ERROR_UTF8_ERR1 && rc >= PCRE2_ERROR_UTF8_ERR21)
            fail(ErrorCode::invalid_argument, "text to tokenize: expected UTF-8, got an invalid sequence ({})",
                 pcre2_message(rc));
        if (rc < 0) fail(ErrorCode::internal, "tokenizer: pcre2 match failed: {}", pcre2_message(rc));
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        begin = ov[0];
        end = ov[1];
        // Every alternative consumes a character; guard anyway against looping forever.
        if (end <= begin) fail(ErrorCode::internal, "tokenizer: empty pre-tokenizer match at byte {}", begin);
        return true;
    }
};

// The stages of a value, in order; see pretokenize.h.
std::vector<const char*> patterns_of(Split split) {
    switch (split) {
        case Split::gpt2: return {kGpt2Pattern};
        case Split::llama3: return {kLlama3Pattern};
        case Split::qwen2: return {kQwen2Pattern};
        case Split::digits_then_gpt2: return {R"(\p{N})", kGpt2Pattern};
        case Split::llama_default: return {R"([\p{P}$+<=>^~|]+)", kGpt2Pattern, R"(\p{N}+)", "[0-9]{3}"};
    }
    fail(ErrorCode::internal, "tokenizer: unknown split kind {}", static_cast<int>(split));
}

}  // namespace

struct PreTokenizer::State {
    std::vector<std::unique_ptr<Regex>> stages;
};

PreTokenizer::PreTokenizer(const std::string& pre) : s_(std::make_unique<State>()) {
    for (const char* pattern : patterns_of(known_or_throw(pre).split))
        s_->stages.push_back(std::make_unique<Regex>(pattern));
}

PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::split(std::string_view text, const std::function<void(std::string_view)>& emit) const {
    if (text.empty()) return;
    std::vector<std::unique_ptr<Matcher>> matchers;
    for (const auto& re : s_->stages) matchers.push_back(std::make_unique<Matcher>(*re));
    // Each piece is the whole subject of the next stage, so `(?!\S)` sees its end as
    // the end of text, exactly as when each piece is pre-tokenized on its own.
    std::function<void(size_t, std::string_view)> split_stage = [&](size_t stage, std::string_view piece) {
        if (stage == matchers.size()) {
            emit(piece);
            return;
        }
        Matcher& m = *matchers[stage];
        size_t pos = 0, begin = 0, end = 0;
        while (pos < piece.size() && m.next(piece, pos, begin, end)) {
            if (begin > pos) split_stage(stage + 1, piece.substr(pos, begin - pos));
            split_stage(stage + 1, piece.substr(begin, end - begin));
            pos = end;
        }
        if (pos < piece.size()) split_stage(stage + 1, piece.substr(pos));
    };
    split_stage(0, text);
}

#else  // !PKV_HAVE_PCRE2

struct PreTokenizer::State {};

PreTokenizer::PreTokenizer(const std::string&) {
    fail(ErrorCode::unsupported, "pkv was built without PCRE2: the tokenizer is unavailable");
}

PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::split(std::string_view, const std::function<void(std::string_view)>&) const {}

#endif  // PKV_HAVE_PCRE2

}  // namespace pkv
