// pkv's ids against llama.cpp's own tokenizer test files: vocabulary-only GGUFs with
// texts (.inp) and the ids llama.cpp gives them (.out), fetched with llama.cpp's sources
// by scripts/llama-cpp.sh into $PKV_DATA_DIR/llama.cpp/src/models/ (byte-level BPE
// vocabularies and llama-spm, a SentencePiece one). Each case is
// encoded as llama.cpp's test-tokenizer-0 does: no BOS/EOS, special strings not parsed.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/tokenizer/tokenizer.h"

namespace {

const std::string kModels = PKV_TEST_DATA_DIR "/llama.cpp/src/models/";

struct Case {
    std::string text;
    std::vector<int32_t> ids;
};

std::string read_all(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// .inp: texts separated by "\n__ggml_vocab_test__\n" (the last one followed by it too);
// .out: one line of space-separated ids per text.
std::vector<Case> read_cases(const std::string& base) {
    const std::string inp = read_all(base + ".inp");
    const std::string sep = "\n__ggml_vocab_test__\n";
    std::vector<Case> cases;
    for (size_t pos = 0; pos < inp.size();) {
        size_t next = inp.find(sep, pos);
        if (next == std::string::npos) next = inp.size();
        cases.push_back({inp.substr(pos, next - pos), {}});
        pos = next == inp.size() ? next : next + sep.size();
    }
    std::istringstream out(read_all(base + ".out"));
    std::string line;
    size_t i = 0;
    for (; std::getline(out, line); ++i) {
        REQUIRE(i < cases.size());
        std::istringstream ids(line);
        for (int32_t id = 0; ids >> id;) cases[i].ids.push_back(id);
    }
    REQUIRE(i == cases.size());
    return cases;
}

void check_vocab(const std::string& name, const std::string& expected_pre) {
    const std::string base = kModels + "ggml-vocab-" + name + ".gguf";
    if (!std::ifstream(base).good() || !std::ifstream(base + ".inp").good())
        PKV_SKIP("no " << base << "(.inp/.out): run scripts/llama-cpp.sh");
    if (!pkv::tokenizer_available()) PKV_SKIP("pkv built without PCRE2: no tokenizer");
    auto file = pkv::GgufFile::open(base);
    pkv::Tokenizer tok(pkv::vocab_from_gguf(*file));
    CHECK(tok.vocab().pre == expected_pre);
    const std::vector<Case> cases = read_cases(base);
    REQUIRE(cases.size() >= 40);
    size_t same = 0;
    for (const Case& c : cases) {
        INFO(name << " text: '" << c.text << "'");
        const std::vector<int32_t> ids = tok.encode(c.text, /*parse_special=*/false, /*add_specials=*/false);
        CHECK(ids == c.ids);
        same += ids == c.ids;
    }
    CHECK(same == cases.size());
}

}  // namespace

TEST_CASE("tokenizer: llama.cpp test vocab llama-bpe (Llama 3)") { check_vocab("llama-bpe", "llama-bpe"); }
TEST_CASE("tokenizer: llama.cpp test vocab qwen2") { check_vocab("qwen2", "qwen2"); }
TEST_CASE("tokenizer: llama.cpp test vocab gpt-2") { check_vocab("gpt-2", "gpt-2"); }
TEST_CASE("tokenizer: llama.cpp test vocab starcoder") { check_vocab("starcoder", "starcoder"); }
TEST_CASE("tokenizer: llama.cpp test vocab refact") { check_vocab("refact", "refact"); }
TEST_CASE("tokenizer: llama.cpp test vocab command-r") { check_vocab("command-r", "command-r"); }
TEST_CASE("tokenizer: llama.cpp test vocab mpt") { check_vocab("mpt", "mpt"); }
TEST_CASE("tokenizer: llama.cpp test vocab llama-spm (SentencePiece)") { check_vocab("llama-spm", "default"); }

TEST_CASE("tokenizer: llama.cpp test vocabs pkv does not support are refused") {
    // Their pre-tokenizers split differently and are not implemented: a clear
    // refusal, never approximate ids.
    for (const char* name : {"deepseek-llm", "deepseek-coder", "falcon", "qwen35"}) {
        const std::string path = kModels + "ggml-vocab-" + name + ".gguf";
        if (!std::ifstream(path).good()) PKV_SKIP("no " << path << ": run scripts/llama-cpp.sh");
        auto file = pkv::GgufFile::open(path);
        INFO(path);
        CHECK_THROWS_WITH(pkv::vocab_from_gguf(*file),
                          ContainsSubstring(path + ": tokenizer.ggml.pre: expected one of") &&
                              ContainsSubstring("llama-bpe") && ContainsSubstring("qwen2"));
    }
    // Gemma 4 is not SentencePiece: BPE merges over '▁'-escaped text, a model of its own.
    const std::string path = kModels + "ggml-vocab-gemma-4.gguf";
    if (!std::ifstream(path).good()) PKV_SKIP("no " << path << ": run scripts/llama-cpp.sh");
    auto file = pkv::GgufFile::open(path);
    CHECK_THROWS_WITH(pkv::vocab_from_gguf(*file),
                      ContainsSubstring(path + ": tokenizer.ggml.model: expected 'gpt2' (byte-level BPE) or 'llama' "
                                               "(SentencePiece), got 'gemma4'"));
}
