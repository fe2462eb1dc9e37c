// run_calibrate's held-out split on the dumps that once broke it.
#include "catch.h"
#include "pkv/pipeline/calibrate.h"
#include "unit/kvdump/dump_fixture.h"

using namespace pkv;
using namespace pkv::test;

namespace {

/// Calibrates a synthetic dump of one sequence of `length` tokens with `patterns`
/// patterns and the given hold-out fraction; returns the table's token counts.
nlohmann::json one_sequence_tokens(int length, int patterns, double holdout) {
    TempDir dir;
    SynthSpec s;
    s.seq_lengths = {length};
    s.chunk_tokens = 64;
    const std::string dump = dir.path + "/one.h5";
    write_synth_dump(dump, s);
    CalibrateConfig c;
    c.dump_paths = {dump};
    c.out_path = dir.path + "/table.safetensors";
    c.k_patterns = c.v_patterns = patterns;
    c.group = 8;
    c.window = 16;
    c.max_iter = 5;
    c.holdout = holdout;
    return run_calibrate(c).calibration.at("tokens");
}

}  // namespace

TEST_CASE("a dump of one sequence holds out its tail and trains on the rest", "[pipeline][calibrate]") {
    // One sequence used to grow the split's vector while holding a reference into it
    // (a use-after-free): the train piece kept its full length, so train and held-out
    // tokens overlapped and their counts summed to more than the dump holds.
    const nlohmann::json tokens = one_sequence_tokens(200, 4, 0.1);
    CHECK(tokens.at("holdout").get<int64_t>() == 20);
    CHECK(tokens.at("train").get<int64_t>() == 180);
}

TEST_CASE("a one-sequence dump too short to split keeps every token for training", "[pipeline][calibrate]") {
    const nlohmann::json tokens = one_sequence_tokens(1, 1, 0.5);
    CHECK(tokens.at("train").get<int64_t>() == 1);
    CHECK(tokens.at("holdout").get<int64_t>() == 0);
}
