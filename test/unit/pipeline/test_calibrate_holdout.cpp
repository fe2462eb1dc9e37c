// run_calibrate's held-out split on the dumps that once broke it.
#include "catch.h"
#include "pkv/pipeline/calibrate.h"
#include "unit/dump/dump_fixture.h"

using namespace pkv;
using namespace pkv::test;

TEST_CASE("a dump of one sequence holds out its tail and trains on the rest", "[pipeline][calibrate]") {
    // One sequence used to grow the split's vector while holding a reference into it
    // (a use-after-free): the train piece kept its full length, so train and held-out
    // tokens overlapped and their counts summed to more than the dump holds.
    TempDir dir;
    SynthSpec s;
    s.seq_lengths = {200};
    s.chunk_tokens = 64;
    const std::string dump = dir.path + "/one.h5";
    write_synth_dump(dump, s);
    CalibrateConfig c;
    c.dump_paths = {dump};
    c.out_path = dir.path + "/table.safetensors";
    c.k_patterns = 4;
    c.v_patterns = 4;
    c.group = 8;
    c.window = 16;
    c.max_iter = 5;
    c.holdout = 0.1;
    const PatternTable t = run_calibrate(c);
    const auto& tokens = t.calibration.at("tokens");
    CHECK(tokens.at("holdout").get<int64_t>() == 20);
    CHECK(tokens.at("train").get<int64_t>() == 180);
}

TEST_CASE("a one-sequence dump too short to split keeps every token for training", "[pipeline][calibrate]") {
    TempDir dir;
    SynthSpec s;
    s.seq_lengths = {1};
    const std::string dump = dir.path + "/tiny.h5";
    write_synth_dump(dump, s);
    CalibrateConfig c;
    c.dump_paths = {dump};
    c.out_path = dir.path + "/table.safetensors";
    c.k_patterns = 1;
    c.v_patterns = 1;
    c.group = 8;
    c.holdout = 0.5;
    const PatternTable t = run_calibrate(c);
    CHECK(t.calibration.at("tokens").at("train").get<int64_t>() == 1);
    CHECK(t.calibration.at("tokens").at("holdout").get<int64_t>() == 0);
}
