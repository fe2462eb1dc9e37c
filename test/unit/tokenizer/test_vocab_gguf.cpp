// vocab_from_gguf on small GGUF files written for the test: the keys it reads, its
// defaults, and what it rejects.
#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/gguf/gguf_writer.h"
#include "pkv/tokenizer/tokenizer.h"

namespace {

struct TempGguf {
    std::string path;
    explicit TempGguf(const std::string& name)
        : path((std::filesystem::temp_directory_path() /
                ("pkv_tok_" + std::to_string(::getpid()) + "_" + name + ".gguf"))
                   .string()) {}
    ~TempGguf() { std::filesystem::remove(path); }
};

pkv::GgufWriter vocab_writer() {
    pkv::GgufWriter w;
    w.set_string("general.architecture", "llama");
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_string("tokenizer.ggml.pre", "smollm");
    w.set_string_array("tokenizer.ggml.tokens", {"<s>", "a", "b", "ab"});
    w.set_i32_array("tokenizer.ggml.token_type", {3, 1, 1, 1});
    w.set_string_array("tokenizer.ggml.merges", {"a b"});
    return w;
}

pkv::VocabData read(const pkv::GgufWriter& w, const std::string& name) {
    TempGguf f(name);
    w.write(f.path, true);
    auto file = pkv::GgufFile::open(f.path);
    return pkv::vocab_from_gguf(*file);
}

}  // namespace

TEST_CASE("tokenizer: vocab_from_gguf") {
    SECTION("defaults when optional keys are absent") {
        pkv::VocabData v = read(vocab_writer(), "defaults");
        CHECK(v.model == "gpt2");
        CHECK(v.pre == "smollm");
        CHECK(v.tokens == std::vector<std::string>{"<s>", "a", "b", "ab"});
        CHECK(v.token_types == std::vector<int32_t>{3, 1, 1, 1});
        CHECK(v.merges == std::vector<std::string>{"a b"});
        CHECK(v.bos_id == -1);
        CHECK(v.eos_id == -1);
        CHECK(v.unk_id == -1);
        CHECK(v.pad_id == -1);
        CHECK_FALSE(v.add_bos);
        CHECK_FALSE(v.add_eos);
    }
    SECTION("ids and flags") {
        pkv::GgufWriter w = vocab_writer();
        w.set_u32("tokenizer.ggml.bos_token_id", 0);
        w.set_u32("tokenizer.ggml.eos_token_id", 3);
        w.set_u32("tokenizer.ggml.unknown_token_id", 1);
        w.set_u32("tokenizer.ggml.padding_token_id", 2);
        w.set_bool("tokenizer.ggml.add_bos_token", true);
        w.set_bool("tokenizer.ggml.add_eos_token", true);
        pkv::VocabData v = read(w, "ids");
        CHECK(v.bos_id == 0);
        CHECK(v.eos_id == 3);
        CHECK(v.unk_id == 1);
        CHECK(v.pad_id == 2);
        CHECK(v.add_bos);
        CHECK(v.add_eos);
    }
    SECTION("pre defaults to 'default'") {
        pkv::GgufWriter w;
        w.set_string("tokenizer.ggml.model", "gpt2");
        w.set_string_array("tokenizer.ggml.tokens", {"a"});
        w.set_string_array("tokenizer.ggml.merges", {});
        pkv::VocabData v = read(w, "nopre");
        CHECK(v.pre == "default");
        CHECK(v.token_types.empty());
    }
    SECTION("Llama 3 adds BOS unless the GGUF says otherwise") {
        pkv::GgufWriter w = vocab_writer();
        w.set_string("tokenizer.ggml.pre", "llama-bpe");
        w.set_u32("tokenizer.ggml.bos_token_id", 0);
        CHECK(read(w, "llama3").add_bos);
        w.set_bool("tokenizer.ggml.add_bos_token", false);
        CHECK_FALSE(read(w, "llama3_nobos").add_bos);
        w.set_string("tokenizer.ggml.pre", "qwen2");
        w.set_bool("tokenizer.ggml.add_bos_token", true);
        CHECK(read(w, "qwen2_bos").add_bos);
    }
    SECTION("rejects BOS to add without a BOS id") {
        pkv::GgufWriter w = vocab_writer();
        w.set_string("tokenizer.ggml.pre", "llama3");
        CHECK_THROWS_WITH(read(w, "llama3_noid"),
                          ContainsSubstring("tokenizer.ggml.bos_token_id: expected a BOS id (the vocabulary adds "
                                            "BOS), got none"));
    }
    SECTION("rejects an unknown pre-tokenizer in one line naming file, key, value and the supported ones") {
        pkv::GgufWriter w = vocab_writer();
        w.set_string("tokenizer.ggml.pre", "falcon");
        TempGguf f("unknown_pre");
        w.write(f.path, true);
        auto file = pkv::GgufFile::open(f.path);
        try {
            (void)pkv::vocab_from_gguf(*file);
            FAIL("no exception");
        } catch (const pkv::Error& e) {
            const std::string msg = e.what();
            CHECK(e.code() == pkv::ErrorCode::unsupported);
            CHECK(msg.find('\n') == std::string::npos);
            CHECK_THAT(msg, ContainsSubstring(f.path + ": tokenizer.ggml.pre: expected one of llama3, llama-v3, "
                                                       "llama-bpe, qwen2, deepseek-r1-qwen, smollm"));
            CHECK_THAT(msg, ContainsSubstring("got 'falcon'"));
        }
        // gguf_adds_bos needs the pre-tokenizer only when the key is absent.
        CHECK_THROWS_WITH(pkv::gguf_adds_bos(*file), ContainsSubstring("got 'falcon'"));
    }
    SECTION("end-of-generation and fill-in-the-middle texts become control tokens, as in llama.cpp") {
        pkv::GgufWriter w = vocab_writer();
        w.set_string_array("tokenizer.ggml.tokens", {"<s>", "a", "<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>"});
        w.set_i32_array("tokenizer.ggml.token_type", {3, 1, 1, 4, 4});
        CHECK(read(w, "eog").token_types == std::vector<int32_t>{3, 1, 3, 3, 3});
        // A GGUF that names the prefix marker's id keeps its types for that kind.
        w.set_u32("tokenizer.ggml.fim_pre_token_id", 3);
        CHECK(read(w, "fim").token_types == std::vector<int32_t>{3, 1, 3, 4, 3});
    }
    SECTION("rejects other tokenizer models in one line") {
        pkv::GgufWriter w = vocab_writer();
        w.set_string("tokenizer.ggml.model", "gemma4");
        CHECK_THROWS_WITH(read(w, "gemma4"), ContainsSubstring("tokenizer.ggml.model: expected 'gpt2' (byte-level BPE) "
                                                               "or 'llama' (SentencePiece), got 'gemma4'"));
    }
    SECTION("rejects Phi-3 by name") {
        pkv::GgufWriter w = vocab_writer();
        w.set_string("general.name", "Phi-3-mini-4k-instruct");
        CHECK_THROWS_WITH(read(w, "phi3"), ContainsSubstring("general.name 'phi-3-mini-4k-instruct': Phi-3 tokenizers "
                                                             "strip whitespace after special tokens"));
    }
    SECTION("rejects missing merges") {
        pkv::GgufWriter w;
        w.set_string("tokenizer.ggml.model", "gpt2");
        w.set_string_array("tokenizer.ggml.tokens", {"a"});
        CHECK_THROWS_WITH(read(w, "nomerges"), ContainsSubstring("tokenizer.ggml.merges"));
    }
    SECTION("rejects token types of the wrong length") {
        pkv::GgufWriter w = vocab_writer();
        w.set_i32_array("tokenizer.ggml.token_type", {3, 1});
        CHECK_THROWS_WITH(read(w, "types"), ContainsSubstring("expected 4 entries (one per token), got 2"));
    }
    SECTION("rejects an id outside the vocabulary") {
        pkv::GgufWriter w = vocab_writer();
        w.set_u32("tokenizer.ggml.eos_token_id", 4);
        CHECK_THROWS_WITH(read(w, "eos"),
                          ContainsSubstring("tokenizer.ggml.eos_token_id: expected a token id below 4, got 4"));
    }
}

namespace {

// A SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens, then "▁a".
pkv::GgufWriter spm_writer() {
    pkv::GgufWriter w;
    w.set_string("general.architecture", "llama");
    w.set_string("tokenizer.ggml.model", "llama");
    std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
    std::vector<int32_t> types = {2, 3, 3};
    for (int b = 0; b < 256; ++b) {
        tokens.push_back(fmt::format("<0x{:02X}>", b));
        types.push_back(6);
    }
    tokens.push_back(
        "\xE2\x96\x81"
        "a");
    types.push_back(1);
    w.set_string_array("tokenizer.ggml.tokens", tokens);
    w.set_i32_array("tokenizer.ggml.token_type", types);
    w.set_f32_array("tokenizer.ggml.scores", std::vector<float>(tokens.size(), -1.0f));
    return w;
}

}  // namespace

TEST_CASE("tokenizer: vocab_from_gguf, SentencePiece") {
    SECTION("llama.cpp's defaults when optional keys are absent") {
        pkv::VocabData v = read(spm_writer(), "spm_defaults");
        CHECK(v.model == "llama");
        CHECK(v.pre == "default");
        CHECK(v.tokens.size() == 260);
        CHECK(v.scores == std::vector<float>(260, -1.0f));
        CHECK(v.merges.empty());
        CHECK(v.bos_id == 1);
        CHECK(v.eos_id == 2);
        CHECK(v.unk_id == 0);
        CHECK(v.add_bos);
        CHECK_FALSE(v.add_eos);
        CHECK(v.add_space_prefix);
        TempGguf f("spm_bos");
        spm_writer().write(f.path, true);
        CHECK(pkv::gguf_adds_bos(*pkv::GgufFile::open(f.path)));
    }
    SECTION("keys override the defaults; the pre-tokenizer is not read") {
        pkv::GgufWriter w = spm_writer();
        w.set_string("tokenizer.ggml.pre", "falcon");
        w.set_bool("tokenizer.ggml.add_space_prefix", false);
        w.set_bool("tokenizer.ggml.add_bos_token", false);
        w.set_u32("tokenizer.ggml.bos_token_id", 2);
        w.set_u32("tokenizer.ggml.eos_token_id", 1);
        pkv::VocabData v = read(w, "spm_keys");
        CHECK(v.pre == "falcon");
        CHECK_FALSE(v.add_space_prefix);
        CHECK_FALSE(v.add_bos);
        CHECK(v.bos_id == 2);
        CHECK(v.eos_id == 1);
    }
    SECTION("integer scores are read as numbers") {
        pkv::GgufWriter w = spm_writer();
        w.set_i32_array("tokenizer.ggml.scores", std::vector<int32_t>(260, -7));
        CHECK(read(w, "spm_iscores").scores == std::vector<float>(260, -7.0f));
    }
    SECTION("rejects a vocabulary without scores, in one line") {
        pkv::GgufWriter w;
        w.set_string("tokenizer.ggml.model", "llama");
        w.set_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>"});
        TempGguf f("spm_noscores");
        w.write(f.path, true);
        auto file = pkv::GgufFile::open(f.path);
        try {
            (void)pkv::vocab_from_gguf(*file);
            FAIL("no exception");
        } catch (const pkv::Error& e) {
            const std::string msg = e.what();
            CHECK(msg.find('\n') == std::string::npos);
            CHECK_THAT(msg, ContainsSubstring(f.path + ": tokenizer.ggml.scores: a SentencePiece vocabulary "
                                                       "(tokenizer.ggml.model 'llama') needs token scores, got none"));
        }
    }
    SECTION("rejects scores of the wrong length or type") {
        pkv::GgufWriter w = spm_writer();
        w.set_f32_array("tokenizer.ggml.scores", {0.0f, 1.0f});
        CHECK_THROWS_WITH(read(w, "spm_nscores"),
                          ContainsSubstring("tokenizer.ggml.scores: expected 260 entries (one per token), got 2"));
        w.set_string_array("tokenizer.ggml.scores", {"x"});
        CHECK_THROWS_WITH(read(w, "spm_sscores"),
                          ContainsSubstring("tokenizer.ggml.scores: expected an array of f32 or i32"));
    }
}

#ifdef PKV_HAVE_PCRE2
TEST_CASE("tokenizer: SentencePiece built from a GGUF vocabulary") {
    pkv::GgufWriter w = spm_writer();
    pkv::Tokenizer tok(read(w, "spm_tok"));
    CHECK(tok.encode("a") == std::vector<int32_t>{1, 259});
    CHECK(tok.encode("b") == std::vector<int32_t>{1, 3 + 0xE2, 3 + 0x96, 3 + 0x81, 3 + 'b'});
    // A byte-fallback vocabulary missing byte tokens is refused, naming them.
    std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "<0x00>", "a"};
    w.set_string_array("tokenizer.ggml.tokens", tokens);
    w.set_i32_array("tokenizer.ggml.token_type", {2, 3, 3, 6, 1});
    w.set_f32_array("tokenizer.ggml.scores", std::vector<float>(tokens.size(), 0.0f));
    CHECK_THROWS_WITH(read(w, "spm_nobytes"),
                      ContainsSubstring("spm_nobytes.gguf: tokenizer.ggml.tokens: a SentencePiece vocabulary needs a "
                                        "byte-fallback token for each of the 256 bytes: 254 missing (<0x01> "
                                        "<0x02> <0x03> <0x04> ...)"));
}

TEST_CASE("tokenizer: built from a GGUF vocabulary") {
    pkv::Tokenizer tok(read(vocab_writer(), "tok"));
    CHECK(tok.encode("ab<s>a", true) == std::vector<int32_t>{3, 0, 1});
    CHECK(tok.encode("ab<s>a", false) == std::vector<int32_t>{3, 1});  // '<', 's', '>' have no token
    CHECK(tok.dropped_bytes() == 3);
}
#endif
