// The CPU engine runs a batch as LlamaModel::forward runs each sequence, and to_float
// reads either form of an engine's activations.
#include <functional>
#include <random>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/engine.h"
#include "tiny_llama.h"

using namespace pkv;
using namespace pkv_test;

namespace {

Error error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e;
    }
    return Error(ErrorCode::internal, "");
}

}  // namespace

TEST_CASE("cpu engine: a batch equals one forward per sequence, sink per (sequence, layer)", "[model][engine]") {
    ScratchDir dir;
    TinySpec s;
    s.n_layer = 3;
    const std::string path = dir.path("tiny.gguf");
    write_tiny_llama(path, s);
    LlamaModel model(GgufFile::open(path));
    const auto engine = make_cpu_engine(model);
    CHECK(engine->batch_sequences(1024) == 1);
    CHECK(engine->description().rfind("cpu", 0) == 0);

    const std::vector<std::vector<int32_t>> batch = {random_tokens(17, s.n_vocab, 1), random_tokens(5, s.n_vocab, 2)};
    ForwardOptions o;
    o.capture = true;
    o.layers = {true, false, true};
    std::vector<std::pair<int, int>> seen;
    std::vector<float> v_last;
    const BatchResult r = engine->run_batch(batch, o, [&](const EngineActivations& a) {
        seen.emplace_back(a.sequence, a.f32.layer);
        CHECK(a.f32.n_tokens == static_cast<int>(batch[static_cast<size_t>(a.sequence)].size()));
        std::vector<float> scratch;
        const int64_t kd = int64_t{s.n_head_kv} * s.head_dim;
        const float* v = to_float(a, 2, kd, scratch);
        REQUIRE(v == a.f32.v);  // float activations pass through without a copy
        if (a.sequence == 1 && a.f32.layer == 2) v_last.assign(v, v + kd * a.f32.n_tokens);
    });
    CHECK(seen == std::vector<std::pair<int, int>>{{0, 0}, {0, 2}, {1, 0}, {1, 2}});
    REQUIRE(r.size() == 2);
    for (size_t i = 0; i < batch.size(); ++i) {
        std::vector<float> v_one;
        const ForwardResult one = model.forward(batch[i], o, [&](const LayerActivations& a) {
            if (a.layer == 2) v_one.assign(a.v, a.v + int64_t{s.n_head_kv} * s.head_dim * a.n_tokens);
        });
        CHECK(one.nll == r[i].nll);
        CHECK(one.argmax == r[i].argmax);
        if (i == 1) CHECK(v_one == v_last);
    }

    ForwardOptions hooked = o;
    hooked.kv_cache = [](const KvHookInput&, KvHookOutput&) {};
    CHECK(error_of([&] { engine->run_batch(batch, hooked, [](const EngineActivations&) {}); }).code() ==
          ErrorCode::invalid_argument);
}

TEST_CASE("to_float: binary16 activations are widened, missing ones are null", "[model][engine]") {
    const std::vector<float> x = {1.0f, -2.5f, 0.0999f, 65504.0f, 3.0f, -0.0f};
    std::vector<uint16_t> h(x.size());
    float_to_half_n(x.data(), h.data(), x.size());
    EngineActivations a;
    a.f32.n_tokens = 2;
    a.q16 = h.data();
    std::vector<float> scratch;
    const float* q = to_float(a, 3, 3, scratch);
    REQUIRE(q == scratch.data());
    for (size_t i = 0; i < x.size(); ++i) CHECK(q[i] == half_to_float(h[i]));
    CHECK(q[2] != x[2]);  // rounded to binary16
    CHECK(to_float(a, 0, 3, scratch) == nullptr);
    CHECK(error_of([&] { to_float(a, 4, 3, scratch); }).code() == ErrorCode::invalid_argument);
}
