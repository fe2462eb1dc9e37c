// SentencePiece-style vocabularies (model "llama") on small hand-made vocabularies:
// merge order by score, byte fallback, the space marker and add_space_prefix around
// special tokens, decoding, and what the constructor refuses.
#include <cmath>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/tokenizer/tokenizer.h"

using pkv::TokenType;
using pkv::VocabData;

namespace {

const std::string kSp = "\xE2\x96\x81";  // U+2581, the space marker

std::string hex(int b) {
    static const char* digits = "0123456789ABCDEF";
    return std::string("<0x") + digits[b >> 4] + digits[b & 15] + ">";
}

struct SpmVocab {
    VocabData v;
    SpmVocab() {
        v.model = "llama";
        add("<unk>", 0, TokenType::unknown);
        add("<s>", 0, TokenType::control);
        add("</s>", 0, TokenType::control);
        for (int b = 0; b < 256; ++b) add(hex(b), 0, TokenType::byte);
        v.bos_id = 1;
        v.eos_id = 2;
        v.unk_id = 0;
        v.add_space_prefix = true;
        v.add_bos = true;
    }
    int32_t add(const std::string& text, float score, TokenType type = TokenType::normal) {
        v.tokens.push_back(text);
        v.scores.push_back(score);
        v.token_types.push_back(static_cast<int32_t>(type));
        return static_cast<int32_t>(v.tokens.size()) - 1;
    }
    static int32_t byte(unsigned char b) { return 3 + b; }
};

}  // namespace

#ifdef PKV_HAVE_PCRE2

TEST_CASE("tokenizer spm: merges by score, highest first") {
    SpmVocab t;
    t.v.add_space_prefix = false;
    t.v.add_bos = false;
    const int32_t a = t.add("a", -10), b = t.add("b", -10), c = t.add("c", -10);
    const int32_t ab = t.add("ab", -2), bc = t.add("bc", -1);
    SECTION("the better pair wins even on the right") {
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("abc") == std::vector<int32_t>{a, bc});
        CHECK(tok.encode("ab") == std::vector<int32_t>{ab});
    }
    SECTION("a merged symbol merges again") {
        const int32_t abc = t.add("abc", -5);
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("abc") == std::vector<int32_t>{abc});
        CHECK(tok.encode("abcc") == std::vector<int32_t>{abc, c});
    }
    SECTION("equal scores: leftmost first") {
        const int32_t aa = t.add("aa", -1);
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("aaa") == std::vector<int32_t>{aa, a});
        CHECK(tok.encode("aaaa") == std::vector<int32_t>{aa, aa});
    }
    SECTION("there is no pre-tokenization: merges cross newlines") {
        const int32_t nl = t.add("\n", -3), bnl = t.add("b\n", 0), nla = t.add("\na", -1);
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("b\na") == std::vector<int32_t>{bnl, a});
        CHECK(tok.encode("\na") == std::vector<int32_t>{nla});
        CHECK(tok.encode("\n\n") == std::vector<int32_t>{nl, nl});
    }
    (void)b;
}

TEST_CASE("tokenizer spm: characters without a token become byte tokens") {
    SpmVocab t;
    t.v.add_space_prefix = false;
    t.v.add_bos = false;
    const int32_t e = t.add("\xC3\xA9", -1);  // é
    pkv::Tokenizer tok(t.v);
    CHECK(tok.encode("\xC3\xA9") == std::vector<int32_t>{e});
    // è is not a token: its two bytes.
    CHECK(tok.encode("\xC3\xA8") == std::vector<int32_t>{SpmVocab::byte(0xC3), SpmVocab::byte(0xA8)});
    // Invalid UTF-8 is cut by the lead byte as llama.cpp cuts it: 0xC3 takes 'x' along.
    CHECK(tok.encode("\xC3x") == std::vector<int32_t>{SpmVocab::byte(0xC3), SpmVocab::byte('x')});
    CHECK(tok.dropped_bytes() == 0);
}

TEST_CASE("tokenizer spm: the one-byte token stands in for a missing <0xXX>") {
    SpmVocab t;
    t.v.add_space_prefix = false;
    t.v.add_bos = false;
    t.v.tokens[SpmVocab::byte('q')] = "<0xq>";  // no longer a byte-fallback text
    t.v.token_types[SpmVocab::byte('q')] = static_cast<int32_t>(TokenType::normal);
    const int32_t q = t.add("q", -1);
    pkv::Tokenizer tok(t.v);
    CHECK(tok.encode("q") == std::vector<int32_t>{q});
    CHECK(tok.encode("\xC3q") == std::vector<int32_t>{SpmVocab::byte(0xC3), q});
}

TEST_CASE("tokenizer spm: spaces, add_space_prefix and special tokens") {
    SpmVocab t;
    const int32_t sp = t.add(kSp, -1), a = t.add("a", -2), spa = t.add(kSp + "a", -1);
    const int32_t spsp = t.add(kSp + kSp, -3);
    SECTION("a space before the text and after each special token") {
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("a", false, false) == std::vector<int32_t>{spa});
        CHECK(tok.encode("a") == std::vector<int32_t>{1, spa});
        CHECK(tok.encode(" a", false, false) == std::vector<int32_t>{sp, spa});
        CHECK(tok.encode("a <s>a", true, false) == std::vector<int32_t>{spa, sp, 1, spa});
        // "▁a" (-1) beats "▁▁" (-3) on both sides.
        CHECK(tok.encode("a  a", false, false) == std::vector<int32_t>{spa, sp, spa});
        CHECK(tok.encode("  ", false, false) == std::vector<int32_t>{spsp, sp});
    }
    SECTION("no text between two special tokens: no space either") {
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("<s></s>a", true, false) == std::vector<int32_t>{1, 2, spa});
        CHECK(tok.encode("a<s></s>", true, false) == std::vector<int32_t>{spa, 1, 2});
        CHECK(tok.encode("", true, true) == std::vector<int32_t>{1});
    }
    SECTION("without add_space_prefix (Gemma)") {
        t.v.add_space_prefix = false;
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("a <s>a", true, false) == std::vector<int32_t>{a, sp, 1, a});
        CHECK(tok.encode(" a", false, false) == std::vector<int32_t>{spa});
    }
    SECTION("user-defined tokens are always matched, and count as special for the space") {
        const int32_t nl2 = t.add("\n\n", 0, TokenType::user_defined);
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("a\n\na", false, false) == std::vector<int32_t>{spa, nl2, spa});
    }
    SECTION("control strings are text unless asked") {
        pkv::Tokenizer tok(t.v);
        const std::vector<int32_t> ids = tok.encode("<s>", false, false);
        CHECK(ids.size() == 4);  // ▁ then the bytes of '<', 's', '>'
        CHECK(ids[0] == sp);
    }
}

TEST_CASE("tokenizer spm: decode") {
    SpmVocab t;
    const int32_t sp = t.add(kSp, -1), spa = t.add(kSp + "a", -1);
    const int32_t unused = t.add("<unused0>", 0, TokenType::unused);
    const int32_t user = t.add("<b>", 0, TokenType::user_defined);
    pkv::Tokenizer tok(t.v);
    CHECK(tok.decode({1, spa, SpmVocab::byte('A'), SpmVocab::byte(0xC3), SpmVocab::byte(0xA9), user, unused, 2}) ==
          "<s> aA\xC3\xA9<b></s>");
    const std::string text = "x y\tz \xE2\x82\xAC!";
    const std::vector<int32_t> ids = tok.encode(text, false, false);
    CHECK(ids[0] == sp);
    CHECK(tok.decode(ids) == " " + text);
    // A '▁' that is no token comes back as its bytes, not as a space.
    t.v.tokens[sp] = "x";
    CHECK(pkv::Tokenizer(t.v).decode(pkv::Tokenizer(t.v).encode("a b", false, false)) == " a" + kSp + "b");
}

TEST_CASE("tokenizer spm: refused vocabularies") {
    SECTION("no scores") {
        SpmVocab t;
        t.v.scores.clear();
        CHECK_THROWS_WITH(pkv::Tokenizer(t.v),
                          ContainsSubstring("tokenizer: tokenizer.ggml.scores: a SentencePiece vocabulary needs one "
                                            "score per token: expected 259, got 0"));
    }
    SECTION("a NaN score") {
        SpmVocab t;
        t.add("a", std::nanf(""));
        CHECK_THROWS_WITH(pkv::Tokenizer(t.v),
                          ContainsSubstring("tokenizer.ggml.scores[259] (token 'a'): expected a number, got NaN"));
    }
    SECTION("bytes without a fallback token") {
        SpmVocab t;
        t.v.tokens[SpmVocab::byte(0x80)] = "x80";
        t.v.tokens[SpmVocab::byte(0x81)] = "x81";
        t.v.token_types[SpmVocab::byte(0x80)] = t.v.token_types[SpmVocab::byte(0x81)] = 1;
        try {
            pkv::Tokenizer tok(t.v);
            FAIL("no exception");
        } catch (const pkv::Error& e) {
            const std::string msg = e.what();
            CHECK(msg.find('\n') == std::string::npos);
            CHECK_THAT(msg, ContainsSubstring("needs a byte-fallback token for each of the 256 bytes: 2 missing "
                                              "(<0x80> <0x81>)"));
        }
    }
    SECTION("a byte token not written <0xXX>") {
        SpmVocab t;
        t.add("<0x4G>", 0, TokenType::byte);
        CHECK_THROWS_WITH(
            pkv::Tokenizer(t.v),
            ContainsSubstring("tokenizer.ggml.tokens[259]: a byte-type token must read <0xXX>, got '<0x4G>'"));
    }
}

#endif
