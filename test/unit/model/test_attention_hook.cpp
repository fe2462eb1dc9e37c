// ForwardOptions::attention: the hook sees each layer once with every row ready and the
// model uses what it writes; plain attention written by the hook reproduces the default
// forward; a hook together with a KV cache hook, and any hook in an engine batch, is refused.
#include <functional>
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/engine.h"
#include "pkv/model/ops.h"
#include "tiny_llama.h"

using namespace pkv;
using namespace pkv_test;

TEST_CASE("attention hook: called once per layer, its output is the layer's attention", "[model][attention_hook]") {
    ScratchDir dir;
    TinySpec s;
    s.n_layer = 3;
    const std::string path = dir.path("tiny.gguf");
    write_tiny_llama(path, s);
    LlamaModel model(GgufFile::open(path));
    // 64 tokens: the forward splits rows over threads (>= 32), so the hook must see them all.
    const std::vector<int32_t> tokens = random_tokens(64, s.n_vocab, 5);
    ForwardOptions plain;
    const ForwardResult ref = model.forward(tokens, plain);

    std::vector<int> layers;
    ForwardOptions hooked;
    hooked.attention = [&](const AttentionHookInput& in) {
        layers.push_back(in.layer);
        REQUIRE(in.n_tokens == 64);
        REQUIRE(in.n_head == s.n_head);
        REQUIRE(in.n_head_kv == s.n_head_kv);
        REQUIRE(in.head_dim == s.head_dim);
        REQUIRE(in.window == 0);
        ops::RowMatrix scratch;
        ops::causal_attention_rows(in.q, in.k, in.v, in.n_head, in.n_head_kv, in.head_dim, in.out, 0, in.n_tokens,
                                   scratch, 256, in.kq_scale, in.window);
    };
    const ForwardResult same = model.forward(tokens, hooked);
    CHECK(layers == std::vector<int>{0, 1, 2});
    REQUIRE(same.nll.size() == ref.nll.size());
    // The same attention over all rows at once: rows are independent, only the products'
    // blocking may differ from the threads' slices.
    double worst = 0.0;
    for (size_t i = 0; i < ref.nll.size(); ++i) worst = std::max(worst, std::fabs(double(ref.nll[i]) - same.nll[i]));
    CHECK(worst <= 1e-4);
    CHECK(same.argmax == ref.argmax);

    // Whatever the hook writes is used: attention zeroed in layer 1 changes the output.
    ForwardOptions zeroed = hooked;
    zeroed.attention = [&](const AttentionHookInput& in) {
        hooked.attention(in);
        if (in.layer == 1) std::fill(in.out, in.out + int64_t{in.n_tokens} * in.n_head * in.head_dim, 0.0f);
    };
    const ForwardResult changed = model.forward(tokens, zeroed);
    double moved = 0.0;
    for (size_t i = 0; i < ref.nll.size(); ++i) moved = std::max(moved, std::fabs(double(ref.nll[i]) - changed.nll[i]));
    CHECK(moved > 1e-2);

    // An exception in the hook leaves forward() as itself.
    ForwardOptions throwing;
    throwing.attention = [](const AttentionHookInput& in) {
        if (in.layer == 2) fail(ErrorCode::invalid_argument, "hook refuses layer {}", in.layer);
    };
    CHECK_THROWS_WITH(model.forward(tokens, throwing), "hook refuses layer 2");

    // One attention source at a time, and not through an engine batch.
    ForwardOptions both = hooked;
    both.kv_cache = [](const KvHookInput&, KvHookOutput&) {};
    CHECK(code_of([&] { model.forward(tokens, both); }) == ErrorCode::invalid_argument);
    const auto engine = make_cpu_engine(model);
    CHECK(code_of([&] { engine->run_batch({tokens}, hooked, nullptr); }) == ErrorCode::unsupported);
}
