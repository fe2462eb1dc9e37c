// run_dump end to end on a tiny model the test writes: the file holds exactly what
// the forward pass computed, token bookkeeping is right, and failures leave nothing.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <fstream>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/gguf/gguf.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/model/llama.h"
#include "pkv/pipeline/dump.h"
#include "pkv/pipeline/inspect.h"
#include "pkv/pipeline/provenance.h"
#include "pkv/tokenizer/tokenizer.h"
#include "support/scratch_dir.h"
#include "support/tiny_model.h"

using namespace pkv;

namespace {
struct TempDir {
    pkv_test::ScratchDir dir;
    std::string path = dir.str();
};
bool exists(const std::string& p) {
    struct stat st {};
    return stat(p.c_str(), &st) == 0;
}
const char* kText =
    "the theory of the thing is in the other one. then there were three thin threads on the throne, "
    "and they went on and on into the night, over and over, 1234 times.\n";
}  // namespace

TEST_CASE("run_dump writes what the forward pass computes", "[pipeline][dump]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    TempDir dir;
    const std::string model_path = dir.path + "/tiny.gguf", text_path = dir.path + "/text.txt";
    test::write_tiny_model(model_path);
    {
        std::ofstream f(text_path);
        for (int i = 0; i < 4; ++i) f << kText;
    }
    DumpConfig c;
    c.model_path = model_path;
    c.text_paths = {text_path};
    c.n_tokens = 100;
    c.ctx = 32;
    c.chunk_tokens = 16;
    c.out_path = dir.path + "/dump.h5";
    c.argv = {"pkv", "dump", "(test)"};
    const DumpSummary s = run_dump(c);
    CHECK(s.n_tokens == 100);
    CHECK(s.n_sequences == 4);  // 32 + 32 + 32 + 4
    CHECK(s.n_predicted == 100 - 4);
    REQUIRE(exists(c.out_path));
    CHECK(validate_kv_dump(c.out_path).empty());

    auto file = GgufFile::open(model_path);
    LlamaModel model(file);
    Tokenizer tok(vocab_from_gguf(*file));
    std::string all;
    for (int i = 0; i < 4; ++i) all += kText;
    const auto ids = tok.encode(all);
    REQUIRE(ids.size() >= 100);

    KvDumpReader r(c.out_path);
    CHECK(r.n_tokens() == 100);
    CHECK(r.n_layers() == 2);
    const auto got_ids = r.token_ids();
    CHECK(std::vector<int32_t>(ids.begin(), ids.begin() + 100) == got_ids);
    const auto pos = r.token_pos();
    CHECK(pos[31] == 31);
    CHECK(pos[32] == 0);
    CHECK(pos[99] == 3);
    CHECK(r.token_seq()[99] == 3);

    // The second sequence, recomputed directly, equals the stored float16 values.
    std::vector<int32_t> seq(ids.begin() + 32, ids.begin() + 64);
    ForwardOptions o;
    o.capture = true;
    std::vector<float> k_post, v;
    const int layer = 1, head = 1, hd = 8, nkv = 2;
    const auto res = model.forward(seq, o, [&](const LayerActivations& a) {
        if (a.layer != layer) return;
        k_post.assign(a.k_post, a.k_post + a.n_tokens * nkv * hd);
        v.assign(a.v, a.v + a.n_tokens * nkv * hd);
    });
    const auto dk = r.read_head(kvdump::kKPost, layer, head);
    const auto dv = r.read_head(kvdump::kV, layer, head);
    REQUIRE(dk.size() == 100u * hd);
    for (int t = 0; t < 32; ++t)
        for (int d = 0; d < hd; ++d) {
            CHECK(dk[(32 + t) * hd + d] == half_to_float(float_to_half(k_post[t * nkv * hd + head * hd + d])));
            CHECK(dv[(32 + t) * hd + d] == half_to_float(float_to_half(v[t * nkv * hd + head * hd + d])));
        }
    double nll = 0;
    for (float x : res.nll) nll += x;
    CHECK(std::isfinite(s.perplexity));
    CHECK(s.perplexity > 1.0);
    CHECK(r.summary().at("perplexity").get<double>() == Approx(s.perplexity).epsilon(1e-9));
    CHECK(r.provenance().at("argv").size() == 3);
    CHECK(r.model().at("n_layer").get<int>() == 2);
    REQUIRE(r.layer_info().size() == 2);
    for (const auto& li : r.layer_info()) {
        CHECK(li.window == 0);
        CHECK(li.rope_base == 10000.0);
        CHECK(li.n_head_kv == 2);
        CHECK(li.head_dim == 8);
    }
    (void)nll;
}

TEST_CASE("layer_info_of gives local layers their window and RoPE base", "[pipeline][dump]") {
    LlamaHparams hp;
    hp.n_layer = 6;
    hp.n_head_kv = 1;
    hp.head_dim = 256;
    hp.sliding_window = 512;
    hp.swa_layer = {1, 1, 1, 1, 1, 0};
    hp.rope_freq_base = 1000000.0f;
    hp.rope_freq_base_swa = 10000.0f;
    const auto info = layer_info_of(hp, {0, 4, 5});
    REQUIRE(info.size() == 3);
    CHECK((info[0].layer == 0 && info[0].window == 512 && info[0].rope_base == 10000.0));
    CHECK((info[1].layer == 4 && info[1].window == 512 && info[1].rope_base == 10000.0));
    CHECK((info[2].layer == 5 && info[2].window == 0 && info[2].rope_base == 1000000.0));
    CHECK((info[2].n_head_kv == 1 && info[2].head_dim == 256));
    // A window without local layers (Mistral) caps sequences; every layer is global.
    hp.swa_layer.clear();
    for (const auto& li : layer_info_of(hp, {0, 5})) CHECK((li.window == 0 && li.rope_base == 1000000.0));
}

TEST_CASE("run_dump failures leave no output", "[pipeline][dump]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    TempDir dir;
    const std::string model_path = dir.path + "/tiny.gguf", text_path = dir.path + "/text.txt";
    test::write_tiny_model(model_path);
    {
        std::ofstream f(text_path);
        f << kText;
    }
    DumpConfig c;
    c.model_path = model_path;
    c.text_paths = {text_path};
    c.out_path = dir.path + "/dump.h5";
    c.ctx = 32;
    SECTION("more tokens than the text") {
        c.n_tokens = 100000;
        CHECK_THROWS_WITH(run_dump(c), ContainsSubstring("the text holds only"));
    }
    SECTION("context longer than the model's") {
        c.n_tokens = 10;
        c.ctx = 4096;
        CHECK_THROWS_WITH(run_dump(c), ContainsSubstring("longer than the model's context length 128"));
    }
    SECTION("unsupported architecture") {
        test::TinyModelSpec spec;
        spec.arch = "gpt2";
        test::write_tiny_model(model_path, spec);
        c.n_tokens = 10;
        CHECK_THROWS_WITH(run_dump(c), ContainsSubstring("gpt2"));
    }
    CHECK_FALSE(exists(c.out_path));
    const auto listing = std::string(dir.path);
    CHECK(std::system(("test -z \"$(ls -A '" + listing + "' | grep pkv-tmp)\"").c_str()) == 0);
}

TEST_CASE("run_dump stores the same values for every writer setting and records them", "[pipeline][dump]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    TempDir dir;
    const std::string model_path = dir.path + "/tiny.gguf", text_path = dir.path + "/text.txt";
    test::write_tiny_model(model_path);
    {
        std::ofstream f(text_path);
        for (int i = 0; i < 4; ++i) f << kText;
    }
    DumpConfig c;
    c.model_path = model_path;
    c.text_paths = {text_path};
    c.n_tokens = 100;
    c.ctx = 32;
    c.chunk_tokens = 16;
    c.argv = {"pkv", "dump", "(test)"};
    auto dump = [&](int threads, int compress) {
        DumpConfig d = c;
        d.writer_threads = threads;
        d.compress = compress;
        d.fsync = compress > 0;  // either way the file appears whole under its name
        d.out_path = dir.path + "/w" + std::to_string(threads) + "c" + std::to_string(compress) + ".h5";
        const DumpSummary s = run_dump(d);
        CHECK(s.writer.threads == threads);
        CHECK(s.writer.compress == compress);
        // 2 layers x (3 x 2 kv heads + 4 q heads) x head_dim 8 x 2 bytes per token; the
        // threaded writers count the tail chunk whole (100 tokens in chunks of 16: 112).
        CHECK(s.writer.raw_bytes == (threads == 0 ? 100ull : 112ull) * 2 * 10 * 8 * 2);
        CHECK(s.writer.stored_bytes > 0);
        CHECK(s.forward_seconds > 0);
        CHECK_THAT(describe_dump_time(s), ContainsSubstring("time: forward"));
        KvDumpReader r(d.out_path);
        CHECK(r.provenance()["settings"]["compress"] == compress);
        CHECK(r.provenance()["settings"]["writer_threads"] == threads);
        CHECK(r.provenance()["settings"]["fsync"] == d.fsync);
        std::vector<float> all;
        for (const char* name : kvdump::kActivations) {
            const int H = std::string(name) == kvdump::kQ ? r.n_head() : r.n_head_kv();
            for (int slot = 0; slot < r.n_layers(); ++slot)
                for (int h = 0; h < H; ++h) {
                    const auto x = r.read_head(name, slot, h);
                    all.insert(all.end(), x.begin(), x.end());
                }
        }
        return all;
    };
    const std::vector<float> ref = dump(0, 0);
    CHECK(dump(2, 6) == ref);
    CHECK(dump(1, 0) == ref);
    CHECK(dump(0, 4) == ref);

    c.out_path = dir.path + "/bad.h5";
    c.compress = 10;
    CHECK_THROWS_WITH(run_dump(c), ContainsSubstring("--compress: expected 0 to 9, got 10"));
    CHECK_FALSE(exists(c.out_path));
}
