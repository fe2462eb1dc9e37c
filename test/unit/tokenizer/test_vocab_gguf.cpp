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
    SECTION("rejects a SentencePiece vocabulary") {
        pkv::GgufWriter w = vocab_writer();
        w.set_string("tokenizer.ggml.model", "llama");
        CHECK_THROWS_WITH(read(w, "spm"), ContainsSubstring("expected 'gpt2', got 'llama'"));
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

#ifdef PKV_HAVE_PCRE2
TEST_CASE("tokenizer: built from a GGUF vocabulary") {
    pkv::Tokenizer tok(read(vocab_writer(), "tok"));
    CHECK(tok.encode("ab<s>a", true) == std::vector<int32_t>{3, 0, 1});
    CHECK(tok.encode("ab<s>a", false) == std::vector<int32_t>{3, 1});  // '<', 's', '>' have no token
    CHECK(tok.dropped_bytes() == 3);
}
#endif
