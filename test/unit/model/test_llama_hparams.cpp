// Hyperparameters from metadata, and the errors for files the forward pass cannot run.
#include <functional>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/llama.h"
#include "tiny_llama.h"

using namespace pkv;
using namespace pkv_test;

namespace {

Error model_error(const std::string& path) {
    try {
        LlamaModel m(GgufFile::open(path));
    } catch (const Error& e) {
        return e;
    }
    return Error(ErrorCode::internal, "");
}

}  // namespace

TEST_CASE("hparams: values and defaults from metadata", "[model][hparams]") {
    ScratchDir dir;
    TinySpec s;
    const std::string path = dir.path("tiny.gguf");
    SECTION("every key written") {
        s.n_rot = 6;
        write_tiny_llama(path, s);
        const LlamaHparams hp = llama_hparams_from_gguf(*GgufFile::open(path));
        CHECK(hp.arch == "llama");
        CHECK(hp.name == "tiny llama");
        CHECK(hp.n_vocab == 64);
        CHECK(hp.n_ctx_train == 1024);
        CHECK(hp.n_embd == 32);
        CHECK(hp.n_layer == 2);
        CHECK(hp.n_ff == 48);
        CHECK(hp.n_head == 4);
        CHECK(hp.n_head_kv == 2);
        CHECK(hp.head_dim == 8);
        CHECK(hp.n_rot == 6);
        CHECK(hp.rope_freq_base == 10000.0f);
        CHECK(hp.rope_freq_scale == 1.0f);
        CHECK(hp.rope_scaling == "none");
        CHECK(hp.rms_eps == 1e-5f);
        CHECK(hp.tied_output);
    }
    SECTION("optional keys absent") {
        s.write_base = false;
        s.write_head_count_kv = false;
        s.rope_base = 1.0f;
        write_tiny_llama(path, s);
        const LlamaHparams hp = llama_hparams_from_gguf(*GgufFile::open(path));
        CHECK(hp.n_head_kv == hp.n_head);
        CHECK(hp.head_dim == 8);
        CHECK(hp.n_rot == 8);
        CHECK(hp.rope_freq_base == 10000.0f);
    }
    SECTION("linear scaling") {
        s.rope_scaling = "linear";
        s.rope_factor = 4.0f;
        s.tied = false;
        write_tiny_llama(path, s);
        const LlamaHparams hp = llama_hparams_from_gguf(*GgufFile::open(path));
        CHECK(hp.rope_scaling == "linear");
        CHECK(hp.rope_freq_scale == 0.25f);
        CHECK_FALSE(hp.tied_output);
    }
}

TEST_CASE("model errors name the file, the field and what was expected", "[model][errors]") {
    ScratchDir dir;
    TinySpec s;
    const std::string path = dir.path("bad.gguf");
    SECTION("unsupported architecture") {
        s.arch = "gemma";
        write_tiny_llama(path, s);
        const Error e = model_error(path);
        CHECK(e.code() == ErrorCode::unsupported);
        CHECK_THAT(std::string(e.what()), ContainsSubstring(path));
        CHECK_THAT(std::string(e.what()), ContainsSubstring("'gemma'"));
        CHECK_THAT(std::string(e.what()), ContainsSubstring("general.architecture"));
    }
    SECTION("missing tensor") {
        s.omit = "blk.1.ffn_up.weight";
        write_tiny_llama(path, s);
        const Error e = model_error(path);
        CHECK(e.code() == ErrorCode::not_found);
        CHECK(std::string(e.what()) == path + ": tensor 'blk.1.ffn_up.weight' is missing");
    }
    SECTION("wrong shape") {
        s.shrink = "blk.0.attn_k.weight";
        write_tiny_llama(path, s);
        const Error e = model_error(path);
        CHECK(e.code() == ErrorCode::data_loss);
        CHECK(std::string(e.what()) == path + ": tensor 'blk.0.attn_k.weight': expected shape [32, 16], got [32, 12]");
    }
    SECTION("wrong output shape") {
        s.tied = false;
        s.shrink = "output.weight";
        write_tiny_llama(path, s);
        CHECK_THAT(std::string(model_error(path).what()),
                   ContainsSubstring("'output.weight': expected shape [32, 64]"));
    }
    SECTION("unsupported rope scaling") {
        s.rope_scaling = "yarn";
        s.rope_factor = 2.0f;
        write_tiny_llama(path, s);
        const Error e = model_error(path);
        CHECK(e.code() == ErrorCode::unsupported);
        CHECK_THAT(std::string(e.what()), ContainsSubstring(path));
        CHECK_THAT(std::string(e.what()), ContainsSubstring("rope.scaling.type"));
        CHECK_THAT(std::string(e.what()), ContainsSubstring("'yarn'"));
    }
    SECTION("key and value lengths differ") {
        s.value_length = 4;
        write_tiny_llama(path, s);
        const Error e = model_error(path);
        CHECK(e.code() == ErrorCode::unsupported);
        CHECK_THAT(std::string(e.what()), ContainsSubstring("value_length"));
    }
    SECTION("kv heads do not divide heads") {
        s.n_head_kv = 3;
        s.omit = "blk.0.attn_k.weight";  // never reached: metadata is checked first
        write_tiny_llama(path, s);
        const Error e = model_error(path);
        CHECK(e.code() == ErrorCode::unsupported);
        CHECK_THAT(std::string(e.what()), ContainsSubstring("head_count_kv"));
    }
}
