// Tokenizer tests on small hand-made vocabularies: the byte table, BPE merge order,
// special-token splitting, dropped bytes, the pre-tokenizers and decoding.
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/tokenizer/tokenizer.h"

using pkv::TokenType;
using pkv::VocabData;

namespace {

// Token text of a byte string (each byte through the byte table).
std::string tt(const std::string& bytes) {
    std::string out;
    for (unsigned char b : bytes) out += pkv::byte_to_token_text(b);
    return out;
}

struct TinyVocab {
    VocabData v;
    int32_t add(const std::string& text, TokenType type = TokenType::normal) {
        v.tokens.push_back(text);
        v.token_types.push_back(static_cast<int32_t>(type));
        return static_cast<int32_t>(v.tokens.size()) - 1;
    }
    int32_t id(const std::string& text) const {
        for (size_t i = 0; i < v.tokens.size(); ++i)
            if (v.tokens[i] == text) return static_cast<int32_t>(i);
        FAIL("no token " << text);
        return -1;
    }
    int32_t byte(unsigned char b) const { return id(pkv::byte_to_token_text(b)); }
};

// Specials first, then every byte except 0x04 and 0xFF, then merged tokens; merges
// are added by the tests.
TinyVocab base_vocab(const std::string& pre = "smollm") {
    TinyVocab t;
    t.v.pre = pre;
    t.add("<|x|>", TokenType::control);
    t.add("<|x|>!", TokenType::control);
    t.add("@@", TokenType::user_defined);
    for (int b = 0; b < 256; ++b)
        if (b != 0x04 && b != 0xFF) t.add(pkv::byte_to_token_text(static_cast<uint8_t>(b)), TokenType::normal);
    return t;
}

}  // namespace

#ifndef PKV_HAVE_PCRE2

TEST_CASE("tokenizer: unavailable without PCRE2") {
    CHECK_FALSE(pkv::tokenizer_available());
    CHECK_THROWS_WITH(pkv::Tokenizer(base_vocab().v), ContainsSubstring("built without PCRE2"));
}

#else

TEST_CASE("tokenizer: byte table") {
    CHECK(pkv::tokenizer_available());
    std::set<std::string> seen;
    for (int b = 0; b < 256; ++b) {
        std::string text = pkv::byte_to_token_text(static_cast<uint8_t>(b));
        seen.insert(text);
        CHECK(pkv::token_text_to_bytes(text) == std::string(1, static_cast<char>(b)));
    }
    CHECK(seen.size() == 256);
    CHECK(pkv::byte_to_token_text(' ') == "\xC4\xA0");   // U+0120
    CHECK(pkv::byte_to_token_text('\n') == "\xC4\x8A");  // U+010A
    CHECK(pkv::byte_to_token_text(0x00) == "\xC4\x80");  // U+0100, first moved byte
    CHECK(pkv::byte_to_token_text(0xAD) == "\xC5\x83");  // U+0143, last moved byte
    CHECK(pkv::byte_to_token_text('a') == "a");
    CHECK(pkv::byte_to_token_text(0xE9) == "\xC3\xA9");  // printable Latin-1 stays
    CHECK(pkv::token_text_to_bytes("Hello\xC4\xA0world\xC4\x8A") == "Hello world\n");
    // Characters outside the table pass through.
    CHECK(pkv::token_text_to_bytes("\xE4\xB8\xAD") == "\xE4\xB8\xAD");
}

TEST_CASE("tokenizer: merges apply by rank") {
    TinyVocab t = base_vocab();
    int32_t ab = t.add("ab"), bc = t.add("bc"), abc = t.add("abc");
    SECTION("b c first") {
        t.v.merges = {"b c", "a b", "a bc"};
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("abc") == std::vector<int32_t>{abc});
        t.v.merges = {"b c", "a b"};
        pkv::Tokenizer tok2(t.v);
        CHECK(tok2.encode("abc") == std::vector<int32_t>{t.byte('a'), bc});
    }
    SECTION("a b first") {
        t.v.merges = {"a b", "b c", "ab c"};
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("abc") == std::vector<int32_t>{abc});
        t.v.merges = {"a b", "b c"};
        pkv::Tokenizer tok2(t.v);
        CHECK(tok2.encode("abc") == std::vector<int32_t>{ab, t.byte('c')});
    }
    SECTION("ties go to the leftmost pair") {
        int32_t aa = t.add("aa");
        t.v.merges = {"a a"};
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("aaa") == std::vector<int32_t>{aa, t.byte('a')});
        CHECK(tok.encode("aaaa") == std::vector<int32_t>{aa, aa});
    }
    SECTION("a merged symbol missing from the vocabulary") {
        // "xy" is built but has no token: alone it falls back to its bytes, and it can
        // still take part in a later merge.
        int32_t xyz = t.add("xyz");
        t.v.merges = {"x y", "xy z"};
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("xyz") == std::vector<int32_t>{xyz});
        CHECK(tok.encode("xy") == std::vector<int32_t>{t.byte('x'), t.byte('y')});
        CHECK(tok.dropped_bytes() == 0);
    }
    SECTION("merges use the byte-table alphabet") {
        std::string sp = pkv::byte_to_token_text(' ');
        int32_t sp_a = t.add(sp + "a");
        t.v.merges = {sp + " a"};
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("a a") == std::vector<int32_t>{t.byte('a'), sp_a});
        CHECK(tok.decode({sp_a}) == " a");
    }
    SECTION("malformed merge") {
        t.v.merges = {"ab"};
        CHECK_THROWS_WITH(pkv::Tokenizer(t.v), ContainsSubstring("expected 'left right'"));
    }
}

TEST_CASE("tokenizer: special tokens") {
    TinyVocab t = base_vocab();
    pkv::Tokenizer tok(t.v);
    auto bytes = [&](const std::string& s) {
        std::vector<int32_t> ids;
        for (unsigned char c : s) ids.push_back(t.byte(c));
        return ids;
    };
    SECTION("parse_special on: longest match") {
        std::vector<int32_t> expect = bytes("a");
        expect.push_back(1);  // "<|x|>!" beats "<|x|>"
        expect.push_back(0);
        for (int32_t id : bytes("b")) expect.push_back(id);
        CHECK(tok.encode("a<|x|>!<|x|>b", true) == expect);
        CHECK(tok.encode("<|x|><|x|>", true) == std::vector<int32_t>{0, 0});
        CHECK(tok.encode("<|x|", true) == bytes("<|x|"));
    }
    SECTION("parse_special off: control strings are text") { CHECK(tok.encode("a<|x|>b", false) == bytes("a<|x|>b")); }
    SECTION("user-defined tokens are always matched") {
        std::vector<int32_t> expect = bytes("a");
        expect.push_back(2);
        for (int32_t id : bytes("b")) expect.push_back(id);
        CHECK(tok.encode("a@@b", false) == expect);
        CHECK(tok.encode("a@@b", true) == expect);
    }
    SECTION("decode writes special strings literally") { CHECK(tok.decode({0, t.byte(' '), 2}) == "<|x|> @@"); }
    SECTION("text on each side is pre-tokenized on its own") {
        // Without the split, "  " before "1" would be broken as " " + " 1".
        std::string sp = pkv::byte_to_token_text(' ');
        TinyVocab t2 = base_vocab("gpt-2");
        int32_t sp1 = t2.add(sp + "1"), spsp = t2.add(sp + sp);
        t2.v.merges = {sp + " 1", sp + " " + sp};
        pkv::Tokenizer tok2(t2.v);
        CHECK(tok2.encode("  1") == std::vector<int32_t>{t2.byte(' '), sp1});
        CHECK(tok2.encode("  <|x|>1", true) == std::vector<int32_t>{spsp, 0, t2.byte('1')});
    }
    SECTION("the longest special string takes its occurrences first") {
        // As in llama.cpp: "yzw" is cut out before "xy" is looked for, so "xyzw" is
        // x + yzw, where a leftmost scan would give xy + z + w.
        TinyVocab t2 = base_vocab();
        int32_t xy = t2.add("xy", TokenType::user_defined), yzw = t2.add("yzw", TokenType::user_defined);
        pkv::Tokenizer tok2(t2.v);
        CHECK(tok2.encode("xyzw") == std::vector<int32_t>{t2.byte('x'), yzw});
        CHECK(tok2.encode("xyxyzw") == std::vector<int32_t>{xy, t2.byte('x'), yzw});
        CHECK(tok2.encode("yzwxy") == std::vector<int32_t>{yzw, xy});
    }
    SECTION("unknown-type tokens are special only on request") {
        TinyVocab t2 = base_vocab();
        int32_t unk = t2.add("<unk>", TokenType::unknown);
        pkv::Tokenizer tok2(t2.v);
        CHECK(tok2.encode("<unk>", true) == std::vector<int32_t>{unk});
        CHECK(tok2.encode("<unk>", false).size() == 5);
    }
}

TEST_CASE("tokenizer: bos and eos") {
    TinyVocab t = base_vocab();
    t.v.bos_id = 0;
    t.v.eos_id = 2;
    t.v.add_bos = true;
    t.v.add_eos = true;
    pkv::Tokenizer tok(t.v);
    CHECK(tok.encode("a") == std::vector<int32_t>{0, t.byte('a'), 2});
    CHECK(tok.encode("a", false, false) == std::vector<int32_t>{t.byte('a')});
    CHECK(tok.encode("") == std::vector<int32_t>{0, 2});
}

TEST_CASE("tokenizer: BOS or EOS to add needs an id") {
    TinyVocab t = base_vocab();
    t.v.add_bos = true;
    CHECK_THROWS_WITH(pkv::Tokenizer(t.v), ContainsSubstring("expected a BOS id"));
    t.v.add_bos = false;
    t.v.add_eos = true;
    CHECK_THROWS_WITH(pkv::Tokenizer(t.v), ContainsSubstring("expected an EOS id"));
}

TEST_CASE("tokenizer: a merged symbol without a token keeps what llama.cpp keeps") {
    // " x" merges into "Ġx", which has no token: llama.cpp looks each byte of "Ġx" up as
    // a one-byte token, finds "x" but nothing for the two bytes of "Ġ": the space goes.
    TinyVocab t = base_vocab("gpt-2");
    std::string sp = pkv::byte_to_token_text(' ');
    t.v.merges = {sp + " x"};
    pkv::Tokenizer tok(t.v);
    CHECK(tok.encode(" x") == std::vector<int32_t>{t.byte('x')});
    CHECK(tok.dropped_bytes() == 1);
    CHECK(tok.encode(" y") == std::vector<int32_t>{t.byte(' '), t.byte('y')});
    CHECK(tok.dropped_bytes() == 1);
}

TEST_CASE("tokenizer: bytes without a token are dropped") {
    TinyVocab t = base_vocab();
    pkv::Tokenizer tok(t.v);
    CHECK(tok.dropped_bytes() == 0);
    CHECK(tok.encode("a\x04"
                     "b\xFF") == std::vector<int32_t>{t.byte('a'), t.byte('b')});
    CHECK(tok.dropped_bytes() == 2);
    // The second time the pieces come from the cache: still counted.
    CHECK(tok.encode("a\x04"
                     "b\xFF")
              .size() == 2);
    CHECK(tok.dropped_bytes() == 4);
}

TEST_CASE("tokenizer: pre-tokenizers") {
    std::string sp = pkv::byte_to_token_text(' '), nl = pkv::byte_to_token_text('\n');
    auto make = [&](const std::string& pre) {
        TinyVocab t = base_vocab(pre);
        t.add(sp + "1");
        t.add(sp + sp);
        t.add("12");
        t.add(sp + "x");
        t.add(nl + nl);
        t.v.merges = {sp + " 1", sp + " " + sp, "1 2", sp + " x", nl + " " + nl};
        return t;
    };
    SECTION("smollm isolates digits") {
        TinyVocab t = make("smollm");
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode(" 1") == std::vector<int32_t>{t.byte(' '), t.byte('1')});
        CHECK(tok.encode("12") == std::vector<int32_t>{t.byte('1'), t.byte('2')});
        CHECK(tok.encode("a  1") == std::vector<int32_t>{t.byte('a'), t.id(sp + sp), t.byte('1')});
        CHECK(tok.encode("\n\n2") == std::vector<int32_t>{t.id(nl + nl), t.byte('2')});
    }
    SECTION("gpt-2 keeps digit runs and their leading space") {
        for (const char* pre : {"gpt-2", "mpt"}) {
            TinyVocab t = make(pre);
            pkv::Tokenizer tok(t.v);
            CHECK(tok.encode(" 1") == std::vector<int32_t>{t.id(sp + "1")});
            CHECK(tok.encode("12") == std::vector<int32_t>{t.id("12")});
            CHECK(tok.encode("a  1") == std::vector<int32_t>{t.byte('a'), t.byte(' '), t.id(sp + "1")});
        }
    }
    SECTION("default: punctuation runs, then GPT-2, then digit runs cut in threes") {
        TinyVocab t = make("default");
        t.add(sp + ".");
        t.v.merges.push_back(sp + " .");
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode(" 1") == std::vector<int32_t>{t.byte(' '), t.byte('1')});
        CHECK(tok.encode("12") == std::vector<int32_t>{t.id("12")});
        CHECK(tok.encode("1212") == std::vector<int32_t>{t.id("12"), t.byte('1'), t.byte('2')});
        CHECK(tok.encode(" x") == std::vector<int32_t>{t.id(sp + "x")});
        CHECK(tok.encode(" .") == std::vector<int32_t>{t.byte(' '), t.byte('.')});
        TinyVocab g = make("gpt-2");
        g.add(sp + ".");
        g.v.merges.push_back(sp + " .");
        CHECK(pkv::Tokenizer(g.v).encode(" .") == std::vector<int32_t>{g.id(sp + ".")});
    }
    SECTION("whitespace before a word keeps one space for the word") {
        TinyVocab t = make("smollm");
        pkv::Tokenizer tok(t.v);
        CHECK(tok.encode("   x") == std::vector<int32_t>{t.id(sp + sp), t.id(sp + "x")});
        CHECK(tok.encode("x  ") == std::vector<int32_t>{t.byte('x'), t.id(sp + sp)});
    }
    SECTION("unsupported pre-tokenizer") {
        TinyVocab t = make("falcon");
        CHECK_THROWS_WITH(pkv::Tokenizer(t.v), ContainsSubstring("tokenizer.ggml.pre 'falcon': expected one of llama3, "
                                                                 "llama-v3, llama-bpe, qwen2"));
        t.v.pre = "gpt2";  // not a value llama.cpp knows either (it writes "gpt-2")
        CHECK_THROWS_WITH(pkv::Tokenizer(t.v), ContainsSubstring("'gpt2'"));
        try {
            pkv::Tokenizer tok(t.v);
        } catch (const pkv::Error& e) {
            CHECK(e.code() == pkv::ErrorCode::unsupported);
        }
    }
    SECTION("unsupported model") {
        TinyVocab t = make("smollm");
        t.v.model = "bert";
        CHECK_THROWS_WITH(pkv::Tokenizer(t.v), ContainsSubstring("tokenizer model 'bert': expected 'gpt2' (byte-level "
                                                                 "BPE) or 'llama' (SentencePiece)"));
    }
}

TEST_CASE("tokenizer: Llama 3 and Qwen2 pre-tokenizers") {
    const std::string sp = pkv::byte_to_token_text(' '), nl = pkv::byte_to_token_text('\n'),
                      tab = pkv::byte_to_token_text('\t');
    const std::string long_s = "\xC5\xBF";  // U+017F, which folds to 's'
    const std::string long_s_text = tt(long_s);
    auto make = [&](const std::string& pre) {
        TinyVocab t = base_vocab(pre);
        for (const char* s : {"12", "123", "45", "ab", "abc", "SX"}) t.add(s);
        for (const std::string& s : {nl + nl, sp + "y", tab + "y", "!!" + nl, long_s_text, long_s_text + "x"}) t.add(s);
        t.v.merges = {"1 2",
                      "12 3",
                      "4 5",
                      "a b",
                      "S X",
                      nl + " " + nl,
                      sp + " y",
                      tab + " y",
                      "! !",
                      "!! " + nl,
                      tt("\xC5") + " " + tt("\xBF"),
                      long_s_text + " x"};
        return t;
    };
    auto bytes = [](const TinyVocab& t, const std::string& s) {
        std::vector<int32_t> ids;
        for (unsigned char c : s) ids.push_back(t.byte(c));
        return ids;
    };
    for (const char* pre : {"llama-bpe", "llama3", "llama-v3", "qwen2", "deepseek-r1-qwen"}) {
        INFO(pre);
        const TinyVocab t = make(pre);
        const bool llama3 = std::string(pre).rfind("llama", 0) == 0;
        pkv::Tokenizer tok(t.v);
        // Digits: runs of up to three (Llama 3) or one each (Qwen2).
        CHECK(tok.encode("12345") == (llama3 ? std::vector<int32_t>{t.id("123"), t.id("45")} : bytes(t, "12345")));
        // A piece that is a token is that token in Llama 3, even with no merge to it.
        CHECK(tok.encode("abc") ==
              (llama3 ? std::vector<int32_t>{t.id("abc")} : std::vector<int32_t>{t.id("ab"), t.byte('c')}));
        // Contractions in any case end the piece ("'S" then "X"), 'ſ does not fold.
        CHECK(tok.encode("'SX") == bytes(t, "'SX"));
        CHECK(tok.encode("'s") == bytes(t, "'s"));
        CHECK(tok.encode("'" + long_s + "x") == std::vector<int32_t>{t.byte('\''), t.id(long_s_text + "x")});
        // A letter run takes one character before it unless that is CR/LF or a digit.
        CHECK(tok.encode("\ty") == std::vector<int32_t>{t.id(tab + "y")});
        CHECK(tok.encode("\n\n  y") == std::vector<int32_t>{t.id(nl + nl), t.byte(' '), t.id(sp + "y")});
        // Punctuation keeps the newlines after it.
        CHECK(tok.encode("!!\nx") == std::vector<int32_t>{t.id("!!" + nl), t.byte('x')});
        CHECK(tok.encode("\r\n \t\n x") == bytes(t, "\r\n \t\n x"));
    }
    // GPT-2's contraction is case-sensitive and its digits are one run: the contrast.
    const TinyVocab g = make("gpt-2");
    pkv::Tokenizer gpt2(g.v);
    CHECK(gpt2.encode("'SX") == std::vector<int32_t>{g.byte('\''), g.id("SX")});
    CHECK(gpt2.encode("12345") == std::vector<int32_t>{g.id("123"), g.id("45")});
}

TEST_CASE("tokenizer: decode inverts encode") {
    TinyVocab t = base_vocab();
    std::string sp = pkv::byte_to_token_text(' ');
    t.add(sp + "t");
    t.add("he");
    t.add(sp + "the");
    t.v.merges = {sp + " t", "h e", sp + "t he"};
    pkv::Tokenizer tok(t.v);
    const std::vector<std::string> texts = {
        "",
        "the cat and the hat",
        "  multiple   spaces\t\ttabs\n\n\nlines ",
        "Caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\xA6\x99 3.14159",
        "<|x|> is text here",
        std::string("nul\0byte", 8),
        "\xC3(invalid utf-8\xE2\x82",
    };
    for (const std::string& s : texts) {
        CAPTURE(s);
        CHECK(tok.decode(tok.encode(s)) == s);
    }
    CHECK(tok.dropped_bytes() == 0);
    CHECK(tok.token_bytes(t.id(sp + "the")) == " the");
    CHECK_THROWS_WITH(tok.decode({static_cast<int32_t>(tok.n_vocab())}), ContainsSubstring("expected 0 <= id"));
    CHECK_THROWS_WITH(tok.token_bytes(-1), ContainsSubstring("token id -1"));
}

TEST_CASE("tokenizer: long runs and concurrent use") {
    TinyVocab t = base_vocab();
    std::string sp = pkv::byte_to_token_text(' ');
    int32_t spsp = t.add(sp + sp);
    t.v.merges = {sp + " " + sp};
    pkv::Tokenizer tok(t.v);
    // One piece of 200k spaces: the merge loop must not be quadratic.
    std::vector<int32_t> ids = tok.encode(std::string(200000, ' '));
    REQUIRE(ids.size() == 100000);
    CHECK(ids.front() == spsp);
    CHECK(tok.encode(std::string(100000, 'q')).size() == 100000);

    std::string text;
    for (int i = 0; i < 2000; ++i) text += "word" + std::to_string(i % 97) + (i % 5 ? " " : "  \n");
    std::vector<int32_t> serial = tok.encode(text);
    std::vector<std::vector<int32_t> > results(4);
    std::vector<std::thread> threads;
    for (auto& r : results) threads.emplace_back([&] { r = tok.encode(text); });
    for (auto& th : threads) th.join();
    for (const auto& r : results) CHECK(r == serial);
}

#endif  // PKV_HAVE_PCRE2
