// KV dump writer/reader: round trips, float16 encoding, dim order, error messages.
#include <hdf5.h>
#include <sys/resource.h>

#include <csignal>

#include <cmath>
#include <cstring>
#include <fstream>

#include "catch.h"
#include "dump_fixture.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/kvdump/kv_dump_internal.h"

using namespace pkv;
using namespace pkv::test;

TEST_CASE("CaptureSet parses lists", "[dump]") {
    const CaptureSet all = CaptureSet::parse("k_pre,k_post,v,q");
    CHECK((all.k_pre && all.k_post && all.v && all.q));
    const CaptureSet some = CaptureSet::parse("v, k_post");
    CHECK((!some.k_pre && some.k_post && some.v && !some.q));
    CHECK(some.to_string() == "k_post,v");
    CHECK(all.to_string() == "k_pre,k_post,v,q");
    CHECK_THROWS_WITH(CaptureSet::parse("k_post,keys"), ContainsSubstring("unknown item 'keys'"));
    CHECK_THROWS_WITH(CaptureSet::parse(""), ContainsSubstring("expected at least one"));
}

TEST_CASE("a synthetic dump reads back exactly as float16 of what was written", "[dump]") {
    TempDir dir;
    const std::string path = dir.path + "/dump.h5";
    SynthSpec s;
    write_synth_dump(path, s);

    KvDumpReader r(path);
    CHECK(r.path() == path);
    CHECK(r.n_layers() == 2);
    CHECK(r.layers() == std::vector<int32_t>{0, 2});
    CHECK(r.n_head() == 4);
    CHECK(r.n_head_kv() == 2);
    CHECK(r.head_dim() == 8);
    CHECK(r.n_tokens() == 50);
    CHECK(r.dim_order() == "gguf_interleaved");
    CHECK(r.model().at("n_rot") == 8);
    CHECK(r.provenance().at("tool") == "pkv");
    CHECK(r.summary().at("perplexity").get<double>() == 2.5);
    for (const char* name : {"/k_pre", "k_post", "/v", "/q"}) CHECK(r.has(name));
    CHECK_FALSE(r.has("/k"));

    const auto pos = r.token_pos(), seq = r.token_seq(), ids = r.token_ids();
    REQUIRE(pos.size() == 50);
    CHECK(pos[19] == 19);
    CHECK(pos[20] == 0);
    CHECK(pos[45] == 5);
    CHECK(seq[45] == 2);
    CHECK(ids[3] == 21);

    int checked = 0;
    for (const char* name : kvdump::kActivations) {
        const int H = std::string(name) == kvdump::kQ ? 4 : 2;
        for (int slot = 0; slot < 2; ++slot)
            for (int h = 0; h < H; ++h) {
                const auto got = r.read_head(name, slot, h);
                REQUIRE(got.size() == 50u * 8);
                int64_t t0 = 0;
                for (int n : s.seq_lengths) {
                    const auto rows = synth_rows(s, name, slot, t0, n, t0);
                    for (int i = 0; i < n; ++i)
                        for (int d = 0; d < 8; ++d) {
                            const float want = half_to_float(float_to_half(rows[(i * H + h) * 8 + d]));
                            if (got[(t0 + i) * 8 + d] != want) {
                                FAIL_CHECK(name << " slot " << slot << " head " << h << " token " << t0 + i << " dim "
                                                << d << ": " << got[(t0 + i) * 8 + d] << " != " << want);
                            }
                            ++checked;
                        }
                    t0 += n;
                }
            }
    }
    CHECK(checked == 2 * (2 + 2 + 2 + 4) * 50 * 8);

    CHECK_THROWS_WITH(r.read_head("/v", 2, 0), ContainsSubstring("dump.h5::/v: layer slot 2 outside [0, 2)"));
    CHECK_THROWS_WITH(r.read_head("/q", 0, 4), ContainsSubstring("dump.h5::/q: head 4 outside [0, 4)"));
}

TEST_CASE("the file layout is what the spec says", "[dump]") {
    TempDir dir;
    const std::string path = dir.path + "/dump.h5";
    write_synth_dump(path, SynthSpec{});
    h5::File f = h5::File::open_read(path);
    h5::Id d = h5::open_dataset(f, kvdump::kKPost);
    CHECK(h5::shape_of(f, d.get(), "/k_post") == std::vector<uint64_t>{2, 2, 50, 8});
    CHECK(h5::chunks_of(d.get()) == std::vector<uint64_t>{1, 1, 16, 8});
    CHECK(h5::filters_of(d.get()) == std::vector<std::string>{"shuffle", "deflate(4)"});
    h5::Id t = h5::type_of(f, d.get(), "/k_post");
    CHECK(h5::is_f16_type(t.get()));
    CHECK(h5::type_name(t.get()) == "float16");
    CHECK(h5::read_attr_strings(d.get(), "x", "axes") == std::vector<std::string>{"layer", "kv_head", "token", "dim"});
    h5::Id q = h5::open_dataset(f, kvdump::kQ);
    CHECK(h5::read_attr_strings(q.get(), "x", "axes") == std::vector<std::string>{"layer", "head", "token", "dim"});
    CHECK(h5::read_attr_string(q.get(), "x", "dim_order") == "gguf_interleaved");
    h5::Id v = h5::open_dataset(f, kvdump::kV);
    CHECK_FALSE(h5::has_attr(v.get(), "dim_order"));
    CHECK(h5::read_attr_string(f.id(), "x", "format") == "pkv.kvdump");
    CHECK(h5::read_attr_string(f.id(), "x", "format_version") == "1.1");
    CHECK(h5::read_1d_i32(f, kvdump::kLayerWindow) == std::vector<int32_t>{0, 0});
    CHECK(h5::read_1d_f64(f, kvdump::kLayerRopeBase) == std::vector<double>{10000.0, 10000.0});
    CHECK(h5::read_1d_i32(f, kvdump::kLayerNHeadKv) == std::vector<int32_t>{2, 2});
    CHECK(h5::read_1d_i32(f, kvdump::kLayerHeadDim) == std::vector<int32_t>{8, 8});
    CHECK(h5::read_attr_int(f.id(), "x", "n_tokens") == 50);
    CHECK(h5::read_attr_int(f.id(), "x", "n_layer") == 3);
    CHECK(h5::read_attr_string(f.id(), "x", "capture") == "k_pre,k_post,v,q");
    CHECK(nlohmann::json::parse(h5::read_attr_string(f.id(), "x", "model")).at("n_vocab") == 100);
    CHECK(h5::read_1d_i64(f, kvdump::kSeqStart) == std::vector<int64_t>{0, 20, 40});
    CHECK(h5::read_1d_strings(f, kvdump::kSourcePath) == std::vector<std::string>{"a.txt", "b.txt"});
    CHECK(h5::read_1d_i64(f, kvdump::kSourceTokens) == std::vector<int64_t>{43, 7});
    const auto nll = h5::read_1d_f32(f, kvdump::kTokenNll);
    CHECK(std::isnan(nll[0]));
    CHECK(nll[1] == 0.51f);
}

TEST_CASE("float16 encoding is pkv's own, bit for bit, even after subnormals", "[dump]") {
    // HDF5 1.10's float->half conversion goes wrong for values like these once it has
    // converted a subnormal; pkv must store exactly float_to_half of each.
    TempDir dir;
    const std::string path = dir.path + "/special.h5";
    const std::vector<float> vals = {3.0e-6f,  255.98f,  4095.13f, -7.9992f, -2.0e-7f, 255.98f, 4095.13f,    -7.9992f,
                                     65519.0f, 65520.0f, -1.0e-9f, 6.1e-5f,  0.0f,     -0.0f,   1.0f / 3.0f, 2049.0f};
    SynthSpec s;
    s.layers = {1};
    s.n_head = s.n_head_kv = 1;
    s.head_dim = s.n_rot = 4;
    s.seq_lengths = {4};
    s.capture = CaptureSet::parse("v");
    KvDumpWriter w(path, synth_header(s));
    w.write_layer(0, 0, 4, nullptr, nullptr, vals.data(), nullptr);
    w.write_tokens(0, {1, 2, 3, 4}, {0, 1, 2, 3}, {0, 0, 0, 0}, {std::nanf(""), 1, 1, 1});
    w.finish({0}, {4}, nlohmann::json::object());

    KvDumpReader r(path);
    const auto got = r.read_head("/v", 0, 0);
    REQUIRE(got.size() == vals.size());
    for (size_t i = 0; i < vals.size(); ++i) {
        const uint16_t want = float_to_half(vals[i]);
        uint32_t gbits, wbits;
        const float wf = half_to_float(want);
        std::memcpy(&gbits, &got[i], 4);
        std::memcpy(&wbits, &wf, 4);
        INFO("value " << vals[i] << " index " << i);
        CHECK(gbits == wbits);
    }
    CHECK(got[1] == 256.0f);    // 255.98 rounds up to 256 in binary16
    CHECK(got[2] == 4096.0f);   // 4095.13 -> 4096 (spacing 2 above 2048: 4095.13 is nearer 4096 than 4094)
    CHECK(got[3] == -8.0f);     // -7.9992 -> -8 (spacing 2^-8 below 8: nearest is -8)
    CHECK(std::isinf(got[9]));  // 65520 overflows
    CHECK(got[8] == 65504.0f);  // 65519 stays the largest finite half
    CHECK(got[15] == 2048.0f);  // tie rounds to even

    // And the raw bytes on disk are those halves (read without any conversion).
    h5::File f = h5::File::open_read(path);
    h5::Id d = h5::open_dataset(f, "/v");
    h5::Id f16 = h5::make_f16_type();
    std::vector<uint16_t> raw(16);
    h5::read_block(f, d.get(), "/v", f16.get(), {0, 0, 0, 0}, {1, 1, 4, 4}, raw.data());
    for (size_t i = 0; i < vals.size(); ++i) CHECK(raw[i] == float_to_half(vals[i]));
}

TEST_CASE("hf dim order permutes keys and queries but not values", "[dump]") {
    TempDir dir;
    const std::string gpath = dir.path + "/gguf.h5", hpath = dir.path + "/hf.h5";
    SynthSpec s;
    write_synth_dump(gpath, s);
    s.hf = true;
    write_synth_dump(hpath, s);
    KvDumpReader g(gpath), hf(hpath);
    CHECK(hf.dim_order() == "hf_half_split");
    const int D = 8;
    for (const char* name : kvdump::kActivations) {
        const auto a = g.read_head(name, 1, 1), b = hf.read_head(name, 1, 1);
        const bool permuted = std::string(name) != kvdump::kV;
        for (int t = 0; t < 50; ++t)
            for (int i = 0; i < D / 2; ++i) {
                if (permuted) {
                    CHECK(b[t * D + i] == a[t * D + 2 * i]);
                    CHECK(b[t * D + i + D / 2] == a[t * D + 2 * i + 1]);
                } else {
                    CHECK(b[t * D + 2 * i] == a[t * D + 2 * i]);
                    CHECK(b[t * D + 2 * i + 1] == a[t * D + 2 * i + 1]);
                }
            }
    }
    const float src[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    float dst[8];
    kvdump_detail::gguf_to_hf_order(src, dst, 8);
    CHECK(std::vector<float>(dst, dst + 8) == std::vector<float>{0, 2, 4, 6, 1, 3, 5, 7});
}

TEST_CASE("a capture subset stores only those datasets", "[dump]") {
    TempDir dir;
    const std::string path = dir.path + "/sub.h5";
    SynthSpec s;
    s.capture = CaptureSet::parse("k_post,v");
    write_synth_dump(path, s);
    KvDumpReader r(path);
    CHECK(r.has("/k_post"));
    CHECK_FALSE(r.has("/q"));
    CHECK_THROWS_WITH(r.read_head("/q", 0, 0), ContainsSubstring("sub.h5::/q: missing dataset"));
    CHECK(validate_kv_dump(path).empty());
}

TEST_CASE("reader errors name file::object and expected vs actual", "[dump]") {
    TempDir dir;
    const std::string path = dir.path + "/dump.h5";
    write_synth_dump(path, SynthSpec{});

    SECTION("missing file") {
        try {
            KvDumpReader r(dir.path + "/nope.h5");
            FAIL("no error");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::not_found);
            CHECK_THAT(e.what(), ContainsSubstring("nope.h5: cannot open: No such file"));
        }
    }
    SECTION("not an HDF5 file") {
        { std::ofstream(dir.path + "/text.h5") << "hello"; }
        try {
            KvDumpReader r(dir.path + "/text.h5");
            FAIL("no error");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::data_loss);
            CHECK_THAT(e.what(), ContainsSubstring("text.h5: not a readable HDF5 file"));
            CHECK(std::string(e.what()).find('\n') == std::string::npos);
        }
        CHECK_FALSE(is_hdf5_file(dir.path + "/text.h5"));
        CHECK(is_hdf5_file(path));
    }
    SECTION("wrong rank") {
        {
            h5::File f = h5::File::open_rw(path);
            REQUIRE(H5Ldelete(f.id(), "/k_post", H5P_DEFAULT) >= 0);
            h5::Id t = h5::make_f16_type();
            const hsize_t dims[3] = {2, 2, 50};
            h5::Id sp(H5Screate_simple(3, dims, nullptr));
            h5::Id d(H5Dcreate2(f.id(), "/k_post", t.get(), sp.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
            REQUIRE(d);
        }
        CHECK_THROWS_WITH(KvDumpReader(path), ContainsSubstring("dump.h5::/k_post: expected rank 4, got 3"));
    }
    SECTION("wrong shape") {
        {
            h5::File f = h5::File::open_rw(path);
            REQUIRE(H5Ldelete(f.id(), "/v", H5P_DEFAULT) >= 0);
            h5::Id t = h5::make_f16_type();
            const hsize_t dims[4] = {2, 2, 49, 8};
            h5::Id sp(H5Screate_simple(4, dims, nullptr));
            h5::Id d(H5Dcreate2(f.id(), "/v", t.get(), sp.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
            REQUIRE(d);
        }
        CHECK_THROWS_WITH(KvDumpReader(path),
                          ContainsSubstring("dump.h5::/v: expected shape [L=2, H=2, T=50, D=8], got [2, 2, 49, 8]"));
    }
    SECTION("float32 activations") {
        {
            h5::File f = h5::File::open_rw(path);
            REQUIRE(H5Ldelete(f.id(), "/q", H5P_DEFAULT) >= 0);
            const hsize_t dims[4] = {2, 4, 50, 8};
            h5::Id sp(H5Screate_simple(4, dims, nullptr));
            h5::Id d(H5Dcreate2(f.id(), "/q", H5T_IEEE_F32LE, sp.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
            REQUIRE(d);
        }
        CHECK_THROWS_WITH(KvDumpReader(path), ContainsSubstring("dump.h5::/q: expected dtype float16, got float32"));
    }
    SECTION("newer major version") {
        {
            h5::File f = h5::File::open_rw(path);
            h5::write_attr_string(f.id(), "x", "format_version", "2.0");
        }
        try {
            KvDumpReader r(path);
            FAIL("no error");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::unsupported);
            CHECK_THAT(e.what(), ContainsSubstring("dump.h5::/: expected format_version 1.x, got '2.0'"));
        }
    }
    SECTION("newer minor version is accepted") {
        {
            h5::File f = h5::File::open_rw(path);
            h5::write_attr_string(f.id(), "x", "format_version", "1.3");
        }
        CHECK_NOTHROW(KvDumpReader(path));
    }
    SECTION("missing format attribute") {
        {
            h5::File f = h5::File::open_rw(path);
            REQUIRE(H5Adelete(f.id(), "format") >= 0);
        }
        CHECK_THROWS_WITH(KvDumpReader(path), ContainsSubstring("dump.h5::/: missing attribute 'format'"));
    }
    SECTION("token column of the wrong length") {
        {
            h5::File f = h5::File::open_rw(path);
            REQUIRE(H5Ldelete(f.id(), "/tokens/pos", H5P_DEFAULT) >= 0);
            h5::create_1d(f, "/tokens/pos", H5T_STD_I32LE, 10);
        }
        KvDumpReader r(path);
        CHECK_THROWS_WITH(r.token_pos(), ContainsSubstring("dump.h5::/tokens/pos: expected shape [T=50], got [10]"));
    }
}

TEST_CASE("writer failures are io errors naming the file", "[dump]") {
    SECTION("directory does not exist") {
        try {
            KvDumpWriter w("/nonexistent-dir/x.h5", synth_header(SynthSpec{}));
            FAIL("no error");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::io);
            CHECK_THAT(e.what(), ContainsSubstring("/nonexistent-dir/x.h5: cannot create HDF5 file: No such file"));
        }
    }
    SECTION("disk full") {
        // /dev/full accepts the open and fails every write with ENOSPC.
        if (access("/dev/full", W_OK) != 0) PKV_SKIP("/dev/full is not writable here");
        try {
            SynthSpec s;
            write_synth_dump("/dev/full", s);
            FAIL("no error");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::io);
            CHECK_THAT(e.what(), ContainsSubstring("/dev/full"));
            CHECK_THAT(e.what(), ContainsSubstring("No space left on device"));
        }
    }
    SECTION("file size limit reached in the middle of the dump") {
        // RLIMIT_FSIZE makes write(2) fail with EFBIG once the file passes the limit,
        // the closest in-process stand-in for a disk filling up mid-dump.
        TempDir dir;
        struct rlimit old {};
        REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
        const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
        struct rlimit lim = old;
        lim.rlim_cur = 64 * 1024;
        REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
        std::string msg;
        ErrorCode code = ErrorCode::internal;
        try {
            SynthSpec s;
            s.seq_lengths = {400, 400, 400, 400};
            s.chunk_tokens = 64;
            write_synth_dump(dir.path + "/big.h5", s);
        } catch (const Error& e) {
            msg = e.what();
            code = e.code();
        }
        setrlimit(RLIMIT_FSIZE, &old);
        std::signal(SIGXFSZ, old_handler);
        CHECK(code == ErrorCode::io);
        CHECK_THAT(msg, ContainsSubstring("big.h5"));
        CHECK_THAT(msg, ContainsSubstring("File too large"));
        CHECK(msg.find('\n') == std::string::npos);
    }
    SECTION("bad header") {
        KvDumpHeader h = synth_header(SynthSpec{});
        h.layers = {2, 1};
        CHECK_THROWS_WITH(KvDumpWriter("/tmp/unused.h5", h), ContainsSubstring("layers must be ascending"));
        h = synth_header(SynthSpec{});
        h.layers = {3};
        CHECK_THROWS_WITH(KvDumpWriter("/tmp/unused.h5", h), ContainsSubstring("layer 3 out of range [0, 3)"));
    }
}

TEST_CASE("a long provenance record does not overflow the object header", "[dump]") {
    TempDir dir;
    const std::string path = dir.path + "/big.h5";
    SynthSpec s;
    KvDumpHeader h = synth_header(s);
    for (int i = 0; i < 3000; ++i)
        h.provenance["texts"].push_back({{"path", "/some/long/path/text_" + std::to_string(i)}});
    write_synth_dump(path, s, &h);
    KvDumpReader r(path);
    CHECK(r.provenance().at("texts").size() == 3000);
    CHECK(r.summary().at("n_tokens") == r.n_tokens());
}
