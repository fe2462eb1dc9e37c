// KV dump writer settings: the chunk pipeline (threads, compression, queue bound, errors)
// stores the same binary16 bits as the synchronous writer.
#include <sys/resource.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <thread>

#include "catch.h"
#include "dump_fixture.h"
#include "pkv/core/error.h"
#include "pkv/kvdump/chunk_writer.h"
#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump.h"

using namespace pkv;
using namespace pkv::test;

namespace {

/// Every activation of every stored layer and head, as the reader gives it back.
std::vector<std::vector<float>> read_all(const std::string& path) {
    KvDumpReader r(path);
    std::vector<std::vector<float>> out;
    for (const char* name : kvdump::kActivations) {
        if (!r.has(name)) continue;
        const int H = std::string(name) == kvdump::kQ ? r.n_head() : r.n_head_kv();
        for (int slot = 0; slot < r.n_layers(); ++slot)
            for (int h = 0; h < H; ++h) out.push_back(r.read_head(name, slot, h));
    }
    return out;
}

std::vector<std::string> filters(const std::string& path, const char* name) {
    h5::File f = h5::File::open_read(path);
    h5::Id d = h5::open_dataset(f, name);
    return h5::filters_of(d.get());
}

/// Bits of a float vector (so that a NaN compares equal to itself and -0 differs from 0).
std::vector<uint32_t> bits(const std::vector<float>& x) {
    std::vector<uint32_t> b(x.size());
    std::memcpy(b.data(), x.data(), x.size() * 4);
    return b;
}

SynthWrite how(int compress, int threads, bool binary16 = false, bool reverse = false) {
    SynthWrite w;
    w.options.compress = compress;
    w.options.threads = threads;
    w.binary16 = binary16;
    w.reverse = reverse;
    return w;
}

}  // namespace

TEST_CASE("every writer setting stores the same binary16 bits", "[dump][pipeline]") {
    TempDir dir;
    SynthSpec s;
    s.seq_lengths = {37, 64, 5, 50};  // chunks of 16 straddle sequences; the tail chunk is short
    s.hf = GENERATE(false, true);
    const std::string ref = dir.path + "/ref.h5";
    write_synth_dump(ref, s, nullptr, how(0, 0));
    CHECK(filters(ref, kvdump::kKPost).empty());
    const auto want = read_all(ref);
    REQUIRE(want.size() == 2 * (3 * 2 + 4));

    struct Case {
        int compress, threads;
        bool binary16, reverse;
    };
    for (const Case c :
         {Case{0, 1, false, false}, Case{0, 3, true, false}, Case{6, 0, false, false}, Case{6, 1, false, false},
          Case{6, 4, true, true}, Case{1, 2, false, true}, Case{9, 2, true, false}, Case{4, 0, true, true}}) {
        CAPTURE(c.compress, c.threads, c.binary16, c.reverse);
        const std::string path = dir.path + "/w.h5";
        write_synth_dump(path, s, nullptr, how(c.compress, c.threads, c.binary16, c.reverse));
        const auto got = read_all(path);
        REQUIRE(got.size() == want.size());
        for (size_t i = 0; i < got.size(); ++i) CHECK(bits(got[i]) == bits(want[i]));
        if (c.compress == 0) CHECK(filters(path, kvdump::kV).empty());
        else
            CHECK(filters(path, kvdump::kV) ==
                  std::vector<std::string>{"shuffle", "deflate(" + std::to_string(c.compress) + ")"});
        CHECK(validate_kv_dump(path).empty());
        std::remove(path.c_str());
    }
}

TEST_CASE("encode_chunk stores what HDF5's shuffle and deflate filters would", "[dump][pipeline]") {
    std::vector<uint16_t> x(4096);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<uint16_t>(0x3c00 + (i * 2654435761u >> 22) % 512);
    std::vector<uint8_t> shuffled, out;
    kvdump_detail::encode_chunk(x.data(), x.size(), 6, shuffled, out);
    CHECK(out.size() < x.size() * 2);
    // Inflate, then unshuffle: the input again.
    std::vector<uint8_t> back(x.size() * 2);
    uLongf n = static_cast<uLongf>(back.size());
    REQUIRE(uncompress(back.data(), &n, out.data(), out.size()) == Z_OK);
    REQUIRE(n == back.size());
    for (size_t i = 0; i < x.size(); ++i) {
        const uint16_t v = static_cast<uint16_t>(back[i] | back[x.size() + i] << 8);
        REQUIRE(v == x[i]);
    }
    // Incompressible data still make one valid stream (never stored raw under a filter).
    std::vector<uint16_t> noise(4096);
    uint64_t st = 88172645463325252ull;
    for (auto& v : noise) {
        st ^= st << 13, st ^= st >> 7, st ^= st << 17;
        v = static_cast<uint16_t>(st);
    }
    kvdump_detail::encode_chunk(noise.data(), noise.size(), 9, shuffled, out);
    n = static_cast<uLongf>(back.size());
    CHECK(uncompress(back.data(), &n, out.data(), out.size()) == Z_OK);
    CHECK(n == back.size());
}

TEST_CASE("a failure on an encoder thread surfaces as one Error on the caller's thread", "[dump][pipeline]") {
    TempDir dir;
    SynthSpec s;
    s.seq_lengths = {64, 64, 64};
    SynthWrite w = how(5, 2);
    SECTION("a pkv error keeps its code and message") {
        w.options.before_encode = [](uint64_t job) {
            if (job == 3) fail(ErrorCode::io, "injected encoder failure at job {}", job);
        };
        try {
            write_synth_dump(dir.path + "/e.h5", s, nullptr, w);
            FAIL("no error");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::io);
            CHECK_THAT(e.what(), ContainsSubstring("injected encoder failure at job 3"));
        }
    }
    SECTION("another exception becomes an internal Error naming the file") {
        w.options.before_encode = [](uint64_t job) {
            if (job == 0) throw std::runtime_error("boom");
        };
        try {
            write_synth_dump(dir.path + "/e.h5", s, nullptr, w);
            FAIL("no error");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::internal);
            CHECK_THAT(e.what(), ContainsSubstring("e.h5: chunk writer failed: boom"));
        }
    }
}

TEST_CASE("a write failure on the writer thread is an io error naming the file", "[dump][pipeline]") {
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
        write_synth_dump(dir.path + "/big.h5", s, nullptr, how(0, 2));
    } catch (const Error& e) {
        msg = e.what();
        code = e.code();
    }
    setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
    CHECK(code == ErrorCode::io);
    CHECK_THAT(msg, ContainsSubstring("big.h5"));
    CHECK_THAT(msg, ContainsSubstring("File too large"));
}

TEST_CASE("the queue bound holds: memory does not grow with tokens", "[dump][pipeline]") {
    TempDir dir;
    // Slow encoders: the caller outruns them and must wait at the bound.
    auto run = [&](int n_seq) {
        SynthSpec s;
        s.seq_lengths.assign(static_cast<size_t>(n_seq), 32);
        s.chunk_tokens = 32;  // one chunk row per (dataset, layer, sequence): 2*8*32*2 = 1 KiB for k/v, 2 KiB for q
        SynthWrite w = how(3, 1);
        w.options.queue_bytes = 8 * 1024;
        w.options.before_encode = [](uint64_t) { std::this_thread::sleep_for(std::chrono::microseconds(300)); };
        KvDumpWriter wr(dir.path + "/q.h5", synth_header(s), w.options);
        int64_t t0 = 0;
        std::vector<int64_t> starts;
        std::vector<int32_t> lengths;
        for (int n : s.seq_lengths) {
            for (size_t slot = 0; slot < s.layers.size(); ++slot) {
                const int sl = static_cast<int>(slot);
                auto kp = synth_rows(s, kvdump::kKPre, sl, t0, n, t0);
                auto ko = synth_rows(s, kvdump::kKPost, sl, t0, n, t0);
                auto v = synth_rows(s, kvdump::kV, sl, t0, n, t0);
                auto q = synth_rows(s, kvdump::kQ, sl, t0, n, t0);
                wr.write_layer(sl, t0, n, kp.data(), ko.data(), v.data(), q.data());
            }
            std::vector<int32_t> id(n, 1), pos(n, 0), seq(n, 0);
            std::vector<float> nll(n, 0.0f);
            wr.write_tokens(t0, id, pos, seq, nll);
            starts.push_back(t0);
            lengths.push_back(n);
            t0 += n;
        }
        wr.finish(starts, lengths, {{"n_tokens", t0}});
        const KvDumpWriterStats st = wr.stats();
        CHECK(st.raw_bytes == static_cast<uint64_t>(t0) * 2 * (3 * 2 + 4) * 8 * 2);
        return st;
    };
    const KvDumpWriterStats a = run(8), b = run(64);
    CHECK(b.waits > 0);
    CHECK(b.wait_seconds > 0);
    CHECK(a.peak_queue_bytes <= 8 * 1024);
    CHECK(b.peak_queue_bytes <= 8 * 1024);
    // Chunk rows being filled: at most one per (dataset, layer) here, whatever the length.
    CHECK(b.peak_open_bytes == a.peak_open_bytes);
    CHECK(b.peak_open_bytes <= 2 * (3 * 2 + 4) * 32 * 8 * 2);
}

TEST_CASE("the threaded writers refuse to finish with tokens missing", "[dump][pipeline]") {
    TempDir dir;
    SynthSpec s;
    s.seq_lengths = {20, 20};
    KvDumpWriteOptions o;
    o.compress = GENERATE(4, 0);  // the chunk pipeline, the direct path
    o.threads = 3;
    CAPTURE(o.compress);
    KvDumpWriter w(dir.path + "/m.h5", synth_header(s), o);
    auto kp = synth_rows(s, kvdump::kKPre, 0, 0, 20, 0);
    auto ko = synth_rows(s, kvdump::kKPost, 0, 0, 20, 0);
    auto v = synth_rows(s, kvdump::kV, 0, 0, 20, 0);
    auto q = synth_rows(s, kvdump::kQ, 0, 0, 20, 0);
    w.write_layer(0, 0, 20, kp.data(), ko.data(), v.data(), q.data());
    if (o.compress == 0) {
        CHECK_THROWS_WITH(w.write_layer(0, 10, 10, kp.data(), ko.data(), v.data(), q.data()),
                          ContainsSubstring("layer slot 0: token 10 written twice"));
        CHECK_THROWS_WITH(w.finish({0, 20}, {20, 20}, {{"n_tokens", 40}}),
                          ContainsSubstring("layer slot 0: token 20 was not written"));
    } else {
        CHECK_THROWS_WITH(w.finish({0, 20}, {20, 20}, {{"n_tokens", 40}}),
                          ContainsSubstring("layer slot 0: tokens 16-31 were not all written"));
    }
    CHECK(w.stats().threads == 3);
}

TEST_CASE("h5py reads what the pipeline writes, compressed or not", "[dump][pipeline]") {
    if (!python_has("h5py, numpy")) PKV_SKIP("/usr/bin/python3 with h5py and numpy not available: checker not run");
    TempDir dir;
    SynthSpec s;
    s.seq_lengths = {37, 64, 5};
    for (int compress : {0, 6}) {
        const std::string path = dir.path + "/p" + std::to_string(compress) + ".h5";
        write_synth_dump(path, s, nullptr, how(compress, 2, true));
        const std::string cmd = std::string("/usr/bin/python3 '") + PKV_TEST_SOURCE_DIR +
                                "/test/python/check_dump_h5py.py' '" + path + "' >/dev/null 2>&1";
        CHECK(exit_status(std::system(cmd.c_str())) == 0);
        // And the values h5py decodes are the ones pkv reads.
        const std::string cmp = std::string("/usr/bin/python3 -c \"import h5py, numpy, sys; ") +
                                "f = h5py.File(sys.argv[1], 'r'); a = f['k_post'][1, 1, :, :]; " +
                                "numpy.save(sys.argv[2], a.astype(numpy.float32))\" '" + path + "' '" + dir.path +
                                "/a.npy'";
        REQUIRE(exit_status(std::system(cmp.c_str())) == 0);
        std::ifstream in(dir.path + "/a.npy", std::ios::binary);
        std::string npy((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const std::vector<float> want = KvDumpReader(path).read_head(kvdump::kKPost, 1, 1);
        REQUIRE(npy.size() >= want.size() * 4);
        std::vector<float> got(want.size());
        std::memcpy(got.data(), npy.data() + npy.size() - want.size() * 4, want.size() * 4);
        CHECK(bits(got) == bits(want));
    }
}

TEST_CASE("the direct path stores chunks back to back in the implicit index, padding zeroed", "[dump][pipeline]") {
    TempDir dir;
    SynthSpec s;
    s.seq_lengths = {37, 64, 5, 50};
    const std::string ref = dir.path + "/ref.h5", direct = dir.path + "/direct.h5";
    write_synth_dump(ref, s, nullptr, how(0, 0));
    for (int threads : {1, 5}) {
        CAPTURE(threads);
        write_synth_dump(direct, s, nullptr, how(0, threads, threads == 5, threads == 5));
        CHECK(read_all(direct) == read_all(ref));
        h5::File f = h5::File::open_read(direct);
        for (const char* name : kvdump::kActivations) {
            CAPTURE(name);
            h5::Id d = h5::open_dataset(f, name);
            CHECK(h5::chunks_of(d.get()) == std::vector<uint64_t>{1, 1, 16, 8});
            H5D_chunk_index_t index{};
            REQUIRE(H5Dget_chunk_index_type(d.get(), &index) >= 0);
            CHECK(index == H5D_CHUNK_IDX_NONE);
            // 156 tokens in chunks of 16: 10 chunks per (layer, head), the tail one padded.
            const uint64_t heads = std::string(name) == kvdump::kQ ? 4 : 2;
            CHECK(h5::storage_bytes(d.get()) == 2 * heads * 160 * 8 * 2);
            hsize_t at[4] = {1, heads - 1, 144, 0};
            std::vector<uint16_t> tail(16 * 8, 0xffff);
            uint32_t filters = 1;
            REQUIRE(H5Dread_chunk(d.get(), H5P_DEFAULT, at, &filters, tail.data()) >= 0);
            CHECK(filters == 0);
            CHECK(std::all_of(tail.begin() + 12 * 8, tail.end(), [](uint16_t x) { return x == 0; }));
        }
        CHECK(validate_kv_dump(direct).empty());
        std::remove(direct.c_str());
    }
}
