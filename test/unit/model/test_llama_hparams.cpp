// Hyperparameters from metadata, and the errors for files the forward pass cannot run.
#include <functional>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/gguf/gguf_writer.h"
#include "pkv/model/arch.h"
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
    SECTION("unsupported architecture, naming the supported ones") {
        s.arch = "gemma";
        write_tiny_llama(path, s);
        const Error e = model_error(path);
        CHECK(e.code() == ErrorCode::unsupported);
        CHECK(std::string(e.what()) ==
              path + ": general.architecture: 'gemma' is not supported (supported: llama, qwen2, qwen3, gemma3)");
    }
    SECTION("a metadata key that would change the math") {
        s.extra_f32["llama.attn_logit_softcapping"] = 30.0f;
        write_tiny_llama(path, s);
        const Error e = model_error(path);
        CHECK(e.code() == ErrorCode::unsupported);
        CHECK(std::string(e.what()) == path +
                                           ": metadata 'llama.attn_logit_softcapping' = 30: not applied by pkv's llama "
                                           "forward pass (it may change the math), refused");
    }
    SECTION("a tensor the forward pass would not read") {
        s.extra_tensor = "blk.0.ffn_gate.bias";
        write_tiny_llama(path, s);
        const Error e = model_error(path);
        CHECK(e.code() == ErrorCode::unsupported);
        CHECK(std::string(e.what()) ==
              path + ": tensor 'blk.0.ffn_gate.bias' [4]: not used by pkv's llama forward pass, refused");
    }
    SECTION("rope_freqs of the wrong length") {
        s.rope_freqs = {1.0f, 2.0f, 4.0f};
        write_tiny_llama(path, s);
        const Error e = model_error(path);
        CHECK(e.code() == ErrorCode::data_loss);
        CHECK(std::string(e.what()) ==
              path + ": tensor 'rope_freqs.weight': expected shape [4] (rope.dimension_count / 2), got 3 values");
    }
    SECTION("rope_freqs in an architecture without them") {
        s.arch = "qwen2";
        s.rope_freqs = {1.0f, 2.0f, 4.0f, 8.0f};
        write_tiny_llama(path, s);
        CHECK_THAT(std::string(model_error(path).what()),
                   ContainsSubstring("'rope_freqs.weight' [4]: not used by pkv's qwen2 forward pass"));
    }
    SECTION("qwen3 without its Q/K norms") {
        s.arch = "qwen3";
        s.qk_norm = true;
        s.omit = "blk.1.attn_k_norm.weight";
        write_tiny_llama(path, s);
        const Error e = model_error(path);
        CHECK(e.code() == ErrorCode::not_found);
        CHECK(std::string(e.what()) == path + ": tensor 'blk.1.attn_k_norm.weight' is missing");
    }
    SECTION("a bias in one layer only") {
        s.qkv_bias = true;
        s.omit = "blk.1.attn_v.bias";
        write_tiny_llama(path, s);
        CHECK(std::string(model_error(path).what()) == path + ": tensor 'blk.1.attn_v.bias' is missing");
    }
    SECTION("a sliding window longer than the context") {
        s.arch = "gemma3";
        s.qk_norm = true;
        s.window = 2048;  // n_ctx 1024
        write_tiny_llama(path, s);
        const Error e = model_error(path);
        CHECK(e.code() == ErrorCode::out_of_range);
        CHECK(std::string(e.what()) ==
              path + ": metadata 'gemma3.attention.sliding_window': expected at most context_length 1024, got 2048");
    }
    SECTION("mixture of experts") {
        s.extra_u32["llama.expert_count"] = 8;
        write_tiny_llama(path, s);
        CHECK_THAT(std::string(model_error(path).what()), ContainsSubstring("mixture-of-experts"));
    }
    SECTION("several problems: the first, and how many more") {
        s.extra_f32["llama.final_logit_softcapping"] = 30.0f;
        s.extra_tensor = "blk.0.ffn_gate.bias";
        write_tiny_llama(path, s);
        const std::string what = model_error(path).what();
        CHECK_THAT(what, ContainsSubstring("final_logit_softcapping"));
        CHECK_THAT(what, ContainsSubstring("(and 1 more: `pkv validate " + path + "` lists them)"));
        const auto findings = model_findings(*GgufFile::open(path));
        REQUIRE(findings.size() == 2);
        CHECK_THAT(findings[1].message, ContainsSubstring("ffn_gate.bias"));
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

TEST_CASE("hparams: a block count no model could have is refused before anything is sized by it", "[model][hparams]") {
    ScratchDir dir;
    // A llama header with one tensor: what a corrupt or hostile file may claim.
    auto write = [&](const std::string& name, uint32_t blocks) {
        GgufWriter g;
        g.set_string("general.architecture", "llama");
        g.set_u32("llama.context_length", 1024);
        g.set_u32("llama.embedding_length", 32);
        g.set_u32("llama.block_count", blocks);
        g.set_u32("llama.feed_forward_length", 48);
        g.set_u32("llama.attention.head_count", 4);
        g.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
        g.add_tensor_f32("token_embd.weight", {32, 2}, std::vector<float>(64, 0.5f));
        const std::string path = dir.path(name);
        g.write(path, true);
        return path;
    };
    const std::string huge = write("huge.gguf", 100000);
    CHECK_THROWS_WITH(llama_hparams_from_gguf(*GgufFile::open(huge)),
                      ContainsSubstring("metadata 'llama.block_count' = 100000: expected at most 65536"));
    const std::string many = write("many.gguf", 1000);
    const std::vector<ModelFinding> f = model_findings(*GgufFile::open(many));
    REQUIRE(f.size() == 1);
    CHECK(f[0].code == ErrorCode::data_loss);
    CHECK_THAT(f[0].message, ContainsSubstring("'llama.block_count' = 1000: the file holds 1 tensors"));
    CHECK_THAT(std::string(model_error(many).what()), ContainsSubstring("fewer than one per layer"));
}
