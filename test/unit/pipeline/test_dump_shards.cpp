// A dump written by several workers (threads here; MPI ranks in
// test/integration/dump_mpi.sh): the plan that splits the sequences, the joined dump read
// back equal to a one-worker dump of the same tokens, shards that are dumps of their own,
// a missing shard named clearly, and outputs that appear whole or not at all.
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/pipeline/dump.h"
#include "pkv/tokenizer/tokenizer.h"
#include "support/scratch_dir.h"
#include "support/tiny_model.h"

using namespace pkv;

namespace {

bool exists(const std::string& p) {
    struct stat st {};
    return stat(p.c_str(), &st) == 0;
}

/// The plan's invariants: parts in order, contiguous, non-empty, covering every sequence.
void check_covers(const std::vector<int64_t>& len, const std::vector<DumpPart>& parts) {
    int64_t s = 0, t = 0;
    for (const DumpPart& p : parts) {
        CHECK(p.first_sequence == s);
        CHECK(p.token_start == t);
        CHECK(p.n_sequences >= 1);
        int64_t n = 0;
        for (int64_t i = 0; i < p.n_sequences; ++i) n += len[static_cast<size_t>(p.first_sequence + i)];
        CHECK(p.n_tokens == n);
        s += p.n_sequences;
        t += p.n_tokens;
    }
    CHECK(s == static_cast<int64_t>(len.size()));
    CHECK(t == std::accumulate(len.begin(), len.end(), int64_t{0}));
}

}  // namespace

TEST_CASE("plan_dump_parts: contiguous blocks of whole sequences balanced by tokens", "[pipeline][dump][shards]") {
    SECTION("equal sequences: every part within one sequence of T / W") {
        for (int S : {1, 2, 3, 7, 10, 64})
            for (int W : {1, 2, 3, 4, 8}) {
                std::vector<int64_t> len(static_cast<size_t>(S), 32);
                len.back() = 5;  // the last sequence is shorter, as in a dump
                const auto parts = plan_dump_parts(len, W);
                CAPTURE(S, W);
                CHECK(parts.size() == static_cast<size_t>(std::min(S, W)));
                check_covers(len, parts);
                const double T = std::accumulate(len.begin(), len.end(), 0.0);
                if (S >= W)
                    for (const DumpPart& p : parts) CHECK(std::abs(p.n_tokens - T / W) <= 32.0);
            }
    }
    SECTION("fewer sequences than workers: one part per sequence") {
        const std::vector<int64_t> len = {10, 3};
        const auto parts = plan_dump_parts(len, 5);
        REQUIRE(parts.size() == 2);
        CHECK((parts[0].token_start == 0 && parts[0].n_tokens == 10));
        CHECK((parts[1].token_start == 10 && parts[1].n_tokens == 3));
    }
    SECTION("uneven lengths follow the tokens, not the count") {
        const std::vector<int64_t> len = {100, 1, 1, 1, 1, 96};
        const auto parts = plan_dump_parts(len, 2);
        REQUIRE(parts.size() == 2);
        check_covers(len, parts);
        CHECK((parts[0].n_sequences == 1 && parts[0].n_tokens == 100));
        CHECK((parts[1].n_sequences == 5 && parts[1].n_tokens == 100));
    }
    SECTION("one worker: everything") {
        const std::vector<int64_t> len = {4, 4, 2};
        const auto parts = plan_dump_parts(len, 1);
        REQUIRE(parts.size() == 1);
        CHECK((parts[0].n_sequences == 3 && parts[0].n_tokens == 10));
    }
    SECTION("edge cases") {
        CHECK(plan_dump_parts({}, 3).empty());
        CHECK_THROWS_WITH(plan_dump_parts({4}, 0), ContainsSubstring("expected at least 1 worker"));
        CHECK_THROWS_WITH(plan_dump_parts({4, 0}, 2), ContainsSubstring("sequence 1 has length 0"));
    }
    CHECK(dump_shard_name("/a/b/dump.h5", 1, 2) == "dump.h5.shards/part-1-of-2.h5");
    CHECK(dump_shard_name("dump.h5", 0, 3) == "dump.h5.shards/part-0-of-3.h5");
}

namespace {

const char* kText =
    "the theory of the thing is in the other one. then there were three thin threads on the throne, "
    "and they went on and on into the night, over and over, 1234 times.\n";

struct Fixture {
    pkv_test::ScratchDir dir;
    std::string model_path = dir.path("tiny.gguf"), text_path = dir.path("text.txt");
    Fixture() {
        test::write_tiny_model(model_path);
        std::ofstream f(text_path);
        for (int i = 0; i < 4; ++i) f << kText;
    }
    DumpConfig config(const std::string& out, int workers) const {
        DumpConfig c;
        c.model_path = model_path;
        c.text_paths = {text_path, text_path};
        c.n_tokens = 150;  // 4 sequences of 40 tokens, the last 30
        c.ctx = 40;
        c.chunk_tokens = 16;
        c.out_path = dir.path(out);
        c.argv = {"pkv", "dump", "(test)"};
        if (workers > 1) c.engines.assign(static_cast<size_t>(workers), EngineFactory());
        return c;
    }
};

std::vector<float> nll_column(const std::string& path) {
    h5::File f = h5::File::open_read(path);
    return h5::read_1d_f32(f, kvdump::kTokenNll);
}

/// Everything a reader sees of two dumps is the same (float16 values bit for bit).
void check_same_dump(const std::string& a_path, const std::string& b_path) {
    KvDumpReader a(a_path), b(b_path);
    REQUIRE(a.n_tokens() == b.n_tokens());
    REQUIRE(a.layers() == b.layers());
    CHECK(a.token_ids() == b.token_ids());
    CHECK(a.token_pos() == b.token_pos());
    CHECK(a.token_seq() == b.token_seq());
    CHECK(a.sequences().start == b.sequences().start);
    CHECK(a.sequences().length == b.sequences().length);
    const auto na = nll_column(a_path), nb = nll_column(b_path);
    REQUIRE(na.size() == nb.size());
    for (size_t t = 0; t < na.size(); ++t) CHECK((na[t] == nb[t] || (std::isnan(na[t]) && std::isnan(nb[t]))));
    CHECK(a.summary().at("perplexity").get<double>() == b.summary().at("perplexity").get<double>());
    CHECK(a.summary().at("n_predicted") == b.summary().at("n_predicted"));
    CHECK(a.dim_order() == b.dim_order());
    for (const char* name : kvdump::kActivations) {
        REQUIRE(a.has(name) == b.has(name));
        if (!a.has(name)) continue;
        const int H = std::string(name) == kvdump::kQ ? a.n_head() : a.n_head_kv();
        for (int l = 0; l < a.n_layers(); ++l)
            for (int h = 0; h < H; ++h) {
                CAPTURE(name, l, h);
                CHECK(a.read_head(name, l, h) == b.read_head(name, l, h));
                // A range across the shard boundary, read in one call.
                CHECK(a.read_head(name, l, h, 70, 20) == b.read_head(name, l, h, 70, 20));
            }
    }
}

}  // namespace

TEST_CASE("a dump of two workers reads back as the one-worker dump", "[pipeline][dump][shards]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    Fixture fx;
    const DumpConfig one = fx.config("one.h5", 1), two = fx.config("two.h5", 2);
    const DumpSummary s1 = run_dump(one), s2 = run_dump(two);
    CHECK(s1.shard_paths.empty());
    REQUIRE(s2.shard_paths.size() == 2);
    CHECK(s2.shard_paths[0] == fx.dir.path("two.h5.shards/part-0-of-2.h5"));
    CHECK(s2.workers == 2);
    CHECK(s2.n_tokens == 150);
    CHECK(s2.n_sequences == 4);
    CHECK(s2.perplexity == s1.perplexity);

    CHECK(validate_kv_dump(one.out_path).empty());
    const auto problems = validate_kv_dump(two.out_path);
    CHECK(problems.empty());
    for (const auto& p : problems) WARN(p);
    check_same_dump(one.out_path, two.out_path);
    {
        h5::File f = h5::File::open_read(two.out_path);
        CHECK(h5::read_attr_string(f.id(), "x", kvdump::kAttrFormatVersion) == kvdump::kFormatVersionJoined);
        h5::Id d = h5::open_dataset(f, kvdump::kKPost);
        CHECK(h5::is_virtual(d.get()));
    }
    // Each shard is a dump of its own tokens: sequences 0-1 (80 tokens) and 2-3 (70).
    for (int p = 0; p < 2; ++p) {
        const std::string& sp = s2.shard_paths[static_cast<size_t>(p)];
        CHECK(validate_kv_dump(sp).empty());
        KvDumpReader r(sp);
        CHECK(r.n_tokens() == (p == 0 ? 80 : 70));
        CHECK(r.token_seq().front() == 0);
        KvDumpReader whole(one.out_path);
        CHECK(r.read_head(kvdump::kV, 1, 1) == whole.read_head(kvdump::kV, 1, 1, p == 0 ? 0 : 80, r.n_tokens()));
    }
    const std::string info = describe_kv_dump(two.out_path);
    CHECK_THAT(info, ContainsSubstring("shards:      2"));
    CHECK_THAT(info, ContainsSubstring("two.h5.shards/part-1-of-2.h5 (tokens 80-149)"));
    CHECK(kv_dump_metadata_json(two.out_path)["datasets"]["/k_post"]["shards"].size() == 2);

    SECTION("the folder moves with its shards") {
        const std::string moved = fx.dir.path("moved");
        std::filesystem::create_directories(moved);
        std::filesystem::rename(two.out_path, moved + "/two.h5");
        std::filesystem::rename(two.out_path + ".shards", moved + "/two.h5.shards");
        check_same_dump(one.out_path, moved + "/two.h5");
    }
    SECTION("a missing shard is named, never read as fill values") {
        std::remove(s2.shard_paths[1].c_str());
        const std::string want = "two.h5::/k_pre: missing shard " + s2.shard_paths[1] + " (tokens 80-149 of 150)";
        CHECK_THROWS_WITH(KvDumpReader(two.out_path), ContainsSubstring(want));
        const auto p = validate_kv_dump(two.out_path);
        REQUIRE(!p.empty());
        CHECK_THAT(p[0], ContainsSubstring(want));
        CHECK_THROWS_WITH(describe_kv_dump(two.out_path), ContainsSubstring("missing shard"));
    }
    SECTION("a shard of another dump is refused") {
        // Same shape and tokens, another job: a later run's shard copied in by hand.
        DumpConfig other = fx.config("other.h5", 2);
        run_dump(other);
        std::filesystem::copy_file(fx.dir.path("other.h5.shards/part-1-of-2.h5"), s2.shard_paths[1],
                                   std::filesystem::copy_options::overwrite_existing);
        CHECK_THROWS_WITH(KvDumpReader(two.out_path), ContainsSubstring("attribute 'shard': expected job"));
    }
}

TEST_CASE("a joined dump refuses old shards without --force and replaces them with it", "[pipeline][dump][shards]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    Fixture fx;
    DumpConfig c3 = fx.config("d.h5", 3);
    run_dump(c3);
    CHECK(exists(fx.dir.path("d.h5.shards/part-2-of-3.h5")));
    std::remove(c3.out_path.c_str());  // the shards alone still block a new dump
    DumpConfig c2 = fx.config("d.h5", 2);
    CHECK_THROWS_WITH(run_dump(c2), ContainsSubstring("holds shards already (part-0-of-3.h5); pass --force"));
    c2.force = true;
    const DumpSummary s = run_dump(c2);
    CHECK(s.shard_paths.size() == 2);
    for (int p = 0; p < 3; ++p) CHECK_FALSE(exists(fx.dir.path("d.h5.shards/part-" + std::to_string(p) + "-of-3.h5")));
    CHECK(validate_kv_dump(c2.out_path).empty());
}

TEST_CASE("a failing worker leaves no dump and no shards", "[pipeline][dump][shards]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    Fixture fx;
    DumpConfig c = fx.config("d.h5", 2);
    c.engines[1] = [](const LlamaModel&) -> std::unique_ptr<ForwardEngine> {
        fail(ErrorCode::unsupported, "worker 1: no such device");
    };
    CHECK_THROWS_WITH(run_dump(c), ContainsSubstring("worker 1: no such device"));
    CHECK_FALSE(exists(c.out_path));
    CHECK_FALSE(exists(c.out_path + ".shards"));
    CHECK(std::system(("test -z \"$(ls -A '" + fx.dir.str() + "' | grep pkv-tmp)\"").c_str()) == 0);
}
