// pkv/tokenizer/pretokenize.cpp — the PCRE2 pre-tokenizer (see pretokenize.h).
#include "pkv/tokenizer/pretokenize.h"

#include "pkv/core/error.h"

#ifdef PKV_HAVE_PCRE2
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#endif

namespace pkv {

#ifdef PKV_HAVE_PCRE2

namespace {

// The GPT-2 pattern with \s spelled out as Unicode White_Space (the meaning both
// llama.cpp and HF tokenizers give it): PCRE2's own \s also takes U+180E, which has
// been a format character, not a space, since Unicode 6.3.
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\t-\r\x{85}\p{Z}\p{L}\p{N}]+)"
                                     R"(|[\t-\r\x{85}\p{Z}]+(?![^\t-\r\x{85}\p{Z}])|[\t-\r\x{85}\p{Z}]+)";
constexpr const char* kDigitPattern = R"(\p{N})";

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

}  // namespace

struct PreTokenizer::State {
    bool isolate_digits = false;
    Regex gpt2{kGpt2Pattern};
    Regex digit{kDigitPattern};
};

PreTokenizer::PreTokenizer(const std::string& pre) {
    bool smollm = pre == "smollm";
    PKV_CHECK(smollm || pre == "gpt2" || pre == "default", unsupported,
              "tokenizer.ggml.pre '{}': expected one of smollm, gpt2, default", pre);
    s_ = std::make_unique<State>();
    s_->isolate_digits = smollm;
}

PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::split(std::string_view text, const std::function<void(std::string_view)>& emit) const {
    if (text.empty()) return;
    Matcher words(s_->gpt2);
    // The stretch is the whole subject, so `(?!\S)` sees its end as the end of text,
    // exactly as when each stretch is pre-tokenized on its own.
    auto split_words = [&](std::string_view stretch) {
        size_t pos = 0, begin = 0, end = 0;
        while (pos < stretch.size() && words.next(stretch, pos, begin, end)) {
            if (begin > pos) emit(stretch.substr(pos, begin - pos));
            emit(stretch.substr(begin, end - begin));
            pos = end;
        }
        if (pos < stretch.size()) emit(stretch.substr(pos));
    };
    if (!s_->isolate_digits) {
        split_words(text);
        return;
    }
    Matcher digits(s_->digit);
    size_t pos = 0, begin = 0, end = 0;
    while (pos < text.size() && digits.next(text, pos, begin, end)) {
        if (begin > pos) split_words(text.substr(pos, begin - pos));
        emit(text.substr(begin, end - begin));
        pos = end;
    }
    if (pos < text.size()) split_words(text.substr(pos));
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
