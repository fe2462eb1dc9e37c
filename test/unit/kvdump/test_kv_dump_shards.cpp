// Joined dumps (format 1.2): activations as virtual datasets over shard files, read by
// pkv through the shards themselves; mappings pkv does not write, shards of another job
// or of the wrong shape, and paths outside the dump's folder are refused by name.
#include <filesystem>

#include "catch.h"
#include "dump_fixture.h"
#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump.h"

using namespace pkv;
using namespace pkv::test;

namespace {

/// Writes `dir`/main.h5 joining `shards` (as mapped) and the tokens of `s`.
void write_joined(const std::string& dir, const SynthSpec& s, const std::vector<KvDumpShardRef>& shards) {
    KvDumpHeader h = synth_header(s);
    h.shards = shards;
    h.job = "job1";
    KvDumpWriter w(dir + "/main.h5", h);
    std::vector<int64_t> starts;
    std::vector<int32_t> lengths;
    int64_t t0 = 0;
    for (size_t si = 0; si < s.seq_lengths.size(); ++si) {
        const int n = s.seq_lengths[si];
        std::vector<int32_t> id(n, 3), pos(n), seq(n, static_cast<int32_t>(si));
        std::vector<float> nll(n, 0.5f);
        for (int i = 0; i < n; ++i) pos[i] = i;
        nll[0] = std::nanf("");
        w.write_tokens(t0, id, pos, seq, nll);
        starts.push_back(t0);
        lengths.push_back(n);
        t0 += n;
    }
    w.finish(starts, lengths, {{"n_tokens", t0}});
}

/// A shard of job1 at token 0 holding the whole synthetic dump of `s`.
void write_shard(const std::string& path, const SynthSpec& s, const std::string& job = "job1") {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    KvDumpHeader h = synth_header(s);
    h.shard = {{"job", job},       {"index", 0},          {"count", 1},
               {"token_start", 0}, {"sequence_start", 0}, {"main", "main.h5"}};
    write_synth_dump(path, s, &h);
}

std::string open_error(const std::string& path) {
    try {
        KvDumpReader r(path);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("a joined dump reads its activations from the shards", "[dump][shards]") {
    TempDir dir;
    SynthSpec s;
    const int64_t T = synth_tokens(s);
    write_shard(dir.path + "/main.h5.shards/part-0-of-1.h5", s);
    write_joined(dir.path, s, {{"main.h5.shards/part-0-of-1.h5", 0, T}});
    const std::string main = dir.path + "/main.h5";
    CHECK(validate_kv_dump(main).empty());
    KvDumpReader joined(main), shard(dir.path + "/main.h5.shards/part-0-of-1.h5");
    for (const char* name : kvdump::kActivations)
        for (int l = 0; l < joined.n_layers(); ++l) CHECK(joined.read_head(name, l, 1) == shard.read_head(name, l, 1));
    // HDF5 is never asked to read through the mapping.
    h5::File f = h5::File::open_read(main);
    h5::Id d = h5::open_dataset(f, kvdump::kV);
    std::vector<uint16_t> buf(8);
    CHECK_THROWS_WITH(h5::read_block(f, d.get(), kvdump::kV, H5T_NATIVE_UINT16, {0, 0, 0, 0}, {1, 1, 1, 8}, buf.data()),
                      ContainsSubstring("a virtual dataset is read through its sources"));
    CHECK_THROWS_WITH(h5::check_stored(f, d.get(), kvdump::kV), ContainsSubstring("(virtual)"));
}

TEST_CASE("a joined dump's shards must be what pkv writes", "[dump][shards]") {
    TempDir dir;
    SynthSpec s;
    const int64_t T = synth_tokens(s);
    const std::string main = dir.path + "/main.h5";
    SECTION("outside the dump's folder") {
        write_shard(dir.path + "/p.h5", s);
        std::filesystem::create_directories(dir.path + "/sub");
        const std::string sub = dir.path + "/sub";
        write_joined(sub, s, {{"../p.h5", 0, T}});
        CHECK_THAT(open_error(sub + "/main.h5"), ContainsSubstring("without '..', got '../p.h5'"));
        write_joined(dir.path, s, {{dir.path + "/p.h5", 0, T}});
        CHECK_THAT(open_error(main), ContainsSubstring("expected a shard path relative to the dump's folder"));
    }
    SECTION("a shard of another job") {
        write_shard(dir.path + "/p.h5", s, "job2");
        write_joined(dir.path, s, {{"p.h5", 0, T}});
        CHECK_THAT(open_error(main), ContainsSubstring("p.h5::/: attribute 'shard': expected job job1 at token 0"));
        CHECK_FALSE(validate_kv_dump(main).empty());
    }
    SECTION("a shard of another length") {
        write_shard(dir.path + "/p.h5", s);
        SynthSpec longer = s;
        longer.seq_lengths.push_back(5);
        write_joined(dir.path, longer, {{"p.h5", 0, synth_tokens(longer)}});
        CHECK_THAT(open_error(main), ContainsSubstring("p.h5::/k_pre: expected shape [2, 2, 55, 8]"));
    }
    SECTION("a missing shard") {
        write_joined(dir.path, s, {{"p.h5", 0, 20}, {"q.h5", 20, T - 20}});
        CHECK_THAT(open_error(main),
                   ContainsSubstring("main.h5::/k_pre: missing shard " + dir.path + "/p.h5 (tokens 0-19 of 50)"));
        const auto p = validate_kv_dump(main);
        REQUIRE_FALSE(p.empty());
        CHECK_THAT(p[0], ContainsSubstring("missing shard"));
    }
}
