// check_table_for_eval and per-layer geometry: a table recording each calibrated layer's
// sliding window (format 1.1) is refused for a model whose layer has another window; a
// table without geometry (1.0) is not checked for it.
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/kvcache/kv_spec.h"
#include "pkv/model/llama.h"
#include "pkv/pipeline/eval_cache.h"
#include "unit/table/table_fixture.h"

using namespace pkv;

namespace {

// The fixture's model (4 layers, 3 KV heads, head_dim 8) with layers 0, 1 and 3 local
// (window 512) and layer 2 global, as Gemma 3 interleaves them.
LlamaHparams local_model() {
    LlamaHparams hp;
    hp.n_layer = 4;
    hp.n_head = 6;
    hp.n_head_kv = 3;
    hp.head_dim = 8;
    hp.n_rot = 8;
    hp.sliding_window = 512;
    hp.swa_layer = {1, 1, 0, 1};
    return hp;
}

// "" when the table passes, else the error (invalid_argument expected).
std::string check_error(const PatternTable& t, const LlamaHparams& hp) {
    const KvSpec spec = parse_kv_spec("patternkv-table:2:t.safetensors");
    try {
        check_table_for_eval(spec, t, hp, t.model.sha256, std::vector<bool>(hp.n_layer, false));
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::invalid_argument);
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("eval refuses a table whose layer windows differ from the model's", "[eval][table]") {
    const LlamaHparams hp = local_model();
    PatternTable t = pkv_test::make_table({0, 1, 2, 3});
    for (size_t i : {0, 1, 3}) t.layers[i].window = 512;
    CHECK(check_error(t, hp).empty());

    PatternTable global_as_local = t;
    global_as_local.layers[2].window = 512;
    CHECK(check_error(global_as_local, hp) ==
          "--kv 'patternkv-table:2:t.safetensors': t.safetensors: layer 2 was calibrated with sliding window 512, but "
          "the model's layer 2 is global");
    PatternTable local_as_global = t;
    local_as_global.layers[1].window = 0;
    CHECK(check_error(local_as_global, hp) ==
          "--kv 'patternkv-table:2:t.safetensors': t.safetensors: layer 1 was calibrated as a global layer, but the "
          "model's layer 1 has sliding window 512");
    PatternTable other_window = t;
    other_window.layers[0].window = 4096;
    CHECK_THAT(check_error(other_window, hp),
               ContainsSubstring("layer 0 was calibrated with sliding window 4096, but the model's layer 0 has "
                                 "sliding window 512"));

    // A model without local layers: a table of all-global layers passes, a local one does not.
    LlamaHparams global = hp;
    global.swa_layer.clear();
    CHECK(check_error(pkv_test::make_table({0, 1, 2, 3}), global).empty());
    CHECK_THAT(check_error(t, global), ContainsSubstring("layer 0 was calibrated with sliding window 512"));

    // A 1.0 table (no geometry recorded; every window reads 0) is not checked for it.
    PatternTable old = pkv_test::make_table({0, 1, 2, 3});
    old.layer_geometry = false;
    CHECK(check_error(old, hp).empty());
}
