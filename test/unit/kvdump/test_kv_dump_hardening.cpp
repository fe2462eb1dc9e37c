// Corrupt and forged dumps: each case rebuilds an input that once crashed, hung or blew
// up memory in pkv's dump readers, and checks that it is now one clear error naming
// the file and object, quickly and without large allocations.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>

#include "catch.h"
#include "dump_fixture.h"
#include "pkv/core/memory_budget.h"
#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/h5_guard.h"

using namespace pkv;
using namespace pkv::test;

namespace {

std::vector<unsigned char> slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void spit(const std::string& path, const std::vector<unsigned char>& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

/// Offset of the first global heap collection ("GCOL", version 1) in the file.
size_t first_collection(const std::vector<unsigned char>& b) {
    for (size_t i = 0; i + 5 <= b.size(); ++i)
        if (b[i] == 'G' && b[i + 1] == 'C' && b[i + 2] == 'O' && b[i + 3] == 'L' && b[i + 4] == 1) return i;
    FAIL("no global heap collection in the file");
    return 0;
}

void put_u64(std::vector<unsigned char>& b, size_t at, uint64_t v) {
    for (int i = 0; i < 8; ++i) b[at + i] = static_cast<unsigned char>(v >> (8 * i));
}

std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error)";
}

struct EnvGuard {
    std::string name;
    explicit EnvGuard(std::string n, const std::string& v) : name(std::move(n)) { setenv(name.c_str(), v.c_str(), 1); }
    ~EnvGuard() { unsetenv(name.c_str()); }
};

}  // namespace

TEST_CASE("a corrupt global heap object is refused before HDF5 copies it", "[dump][hardening]") {
    TempDir dir;
    const std::string good = dir.path + "/good.h5", bad = dir.path + "/bad.h5";
    write_synth_dump(good, SynthSpec{});
    const std::vector<unsigned char> bytes = slurp(good);
    const size_t gcol = first_collection(bytes);
    // Object 1's size field sits after the 16-byte collection header and 8 bytes of
    // index, references and reserved space.
    SECTION("object size past the collection (once a memcpy overrun in H5HG_read)") {
        std::vector<unsigned char> b = bytes;
        put_u64(b, gcol + 16 + 8, uint64_t{1} << 40);
        spit(bad, b);
        const std::string e = error_of([&] { KvDumpReader r(bad); });
        CHECK_THAT(e, ContainsSubstring("bad.h5::/"));
        CHECK_THAT(e, ContainsSubstring("runs past the collection's end"));
        const auto problems = validate_kv_dump(bad);
        REQUIRE_FALSE(problems.empty());
        CHECK_THAT(problems.front(), ContainsSubstring("global heap collection at byte " + std::to_string(gcol)));
    }
    SECTION("a free-space object of size 0 (once an endless loop in HDF5's collection parser)") {
        std::vector<unsigned char> b = bytes;
        size_t p = gcol + 16;  // walk to the free-space object (index 0)
        while (b[p] != 0 || b[p + 1] != 0) {
            uint64_t size = 0;
            for (int i = 7; i >= 0; --i) size = (size << 8) | b[p + 8 + i];
            p += 16 + ((size + 7) & ~uint64_t{7});
        }
        put_u64(b, p + 8, 0);
        spit(bad, b);
        CHECK_THAT(error_of([&] { KvDumpReader r(bad); }), ContainsSubstring("free-space object of 0 bytes"));
        CHECK_FALSE(validate_kv_dump(bad).empty());
        CHECK_THROWS_WITH(describe_kv_dump(bad), ContainsSubstring("bad.h5"));
    }
}

TEST_CASE("check_global_heap accepts HDF5's own collections and refuses bad ones", "[dump][hardening]") {
    std::vector<unsigned char> c(4096, 0);
    std::memcpy(c.data(), "GCOL\x01", 5);
    put_u64(c, 8, 4096);
    // object 1 of 11 bytes, then the free-space object covering the rest
    c[16] = 1;
    put_u64(c, 24, 11);
    c[48] = 0;
    put_u64(c, 56, 4096 - 48);
    CHECK(h5::check_global_heap(c.data(), c.size(), 0, 8, 1 << 20).empty());
    CHECK(h5::check_global_heap(c.data(), 1024, 0, 8, 1 << 20).empty());  // a prefix read: nothing wrong yet
    auto bad = c;
    put_u64(bad, 8, 1 << 21);
    CHECK_THAT(h5::check_global_heap(bad.data(), bad.size(), 0, 8, 1 << 20), ContainsSubstring("outside the file"));
    bad = c;
    bad[48] = 1;  // the free-space object turned into a second object 1
    CHECK_THAT(h5::check_global_heap(bad.data(), bad.size(), 0, 8, 1 << 20),
               ContainsSubstring("object 1 appears twice"));
    bad = c;
    put_u64(bad, 24, UINT64_MAX - 3);  // wraps when padded to 8 bytes
    CHECK_THAT(h5::check_global_heap(bad.data(), bad.size(), 0, 8, 1 << 20), ContainsSubstring("runs past"));
    bad = c;
    put_u64(bad, 56, 0);  // a free-space object of 0 bytes: HDF5's parser would never advance
    CHECK_THAT(h5::check_global_heap(bad.data(), bad.size(), 0, 8, 1 << 20),
               ContainsSubstring("free-space object of 0 bytes"));
}

TEST_CASE("declared sizes are checked against what the file stores", "[dump][hardening]") {
    TempDir dir;
    const std::string path = dir.path + "/dump.h5";
    SynthSpec s;
    write_synth_dump(path, s);
    SECTION("n_tokens and every activation extent forged to 2^30 tokens (once a 64 GiB request)") {
        {
            h5::File f = h5::File::open_rw(path);
            h5::write_attr_int(f.id(), "x", "n_tokens", int64_t{1} << 30);
            h5::Id f16 = h5::make_f16_type();
            for (const char* name : kvdump::kActivations) {
                REQUIRE(H5Ldelete(f.id(), name, H5P_DEFAULT) >= 0);
                const int H = std::string(name) == kvdump::kQ ? s.n_head : s.n_head_kv;
                const hsize_t dims[4] = {2, static_cast<hsize_t>(H), hsize_t{1} << 30, 8}, chunk[4] = {1, 1, 16, 8};
                h5::Id space(H5Screate_simple(4, dims, nullptr));
                h5::Id dcpl(H5Pcreate(H5P_DATASET_CREATE));
                H5Pset_chunk(dcpl.get(), 4, chunk);
                h5::Id d(H5Dcreate2(f.id(), name, f16.get(), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
                REQUIRE(d);
            }
        }
        CHECK_THAT(error_of([&] { KvDumpReader r(path); }),
                   ContainsSubstring("dump.h5::/k_pre: shape [2, 2, 1073741824, 8] in chunks [1, 1, 16, 8] needs "
                                     "268435456 stored chunks, got 0"));
        const auto problems = validate_kv_dump(path);  // must not read 2^30 tokens of fill values
        CHECK(std::any_of(problems.begin(), problems.end(),
                          [](const std::string& p) { return p.find("stored chunks, got 0") != std::string::npos; }));
    }
    SECTION("/sequences/length claims 2147483647 tokens (once a 256 GiB buffer in analyze)") {
        {
            h5::File f = h5::File::open_rw(path);
            REQUIRE(H5Ldelete(f.id(), kvdump::kSeqLength, H5P_DEFAULT) >= 0);
            const std::vector<int32_t> len = {2147483647, 20, 10};
            h5::Id d = h5::create_1d(f, kvdump::kSeqLength, H5T_STD_I32LE, len.size());
            h5::write_1d(f, d.get(), kvdump::kSeqLength, H5T_NATIVE_INT32, 0, len.size(), len.data());
        }
        KvDumpReader r(path);
        CHECK_THROWS_WITH(r.sequences(), ContainsSubstring("dump.h5::/sequences/length: expected sequence 0 to hold 1 "
                                                           "to 50 tokens (the rest of n_tokens 50), got 2147483647"));
    }
    SECTION("a 1-D column larger than the memory budget") {
        EnvGuard budget("PKV_MEMORY_BUDGET", "1M");
        {
            h5::File f = h5::File::open_rw(path);
            REQUIRE(H5Ldelete(f.id(), "/sources/bytes", H5P_DEFAULT) >= 0);
            const std::vector<int64_t> v(300000, 7);
            h5::Id d = h5::create_1d(f, "/sources/bytes", H5T_STD_I64LE, v.size());
            h5::write_1d(f, d.get(), "/sources/bytes", H5T_NATIVE_INT64, 0, v.size(), v.data());
        }
        h5::File f = h5::File::open_read(path);
        CHECK_THROWS_WITH(h5::read_1d_i64(f, "/sources/bytes"),
                          ContainsSubstring("dump.h5::/sources/bytes: needs 2.3 MiB of memory, above the budget of "
                                            "1.0 MiB (PKV_MEMORY_BUDGET)"));
    }
}

TEST_CASE("a variable-length string longer than its file is refused before HDF5 allocates it", "[dump][hardening]") {
    // A forged 32-bit length in /sources/path once made HDF5 allocate up to 4 GiB.
    TempDir dir;
    const std::string path = dir.path + "/dump.h5";
    write_synth_dump(path, SynthSpec{});
    uint64_t at = 0;
    {
        h5::File f = h5::File::open_read(path);
        h5::Id d = h5::open_dataset(f, kvdump::kSourcePath);
        at = H5Dget_offset(d.get());
        REQUIRE(at != HADDR_UNDEF);
    }
    std::vector<unsigned char> b = slurp(path);
    for (int i = 0; i < 4; ++i) b[at + 16 + i] = 0xff;  // the second string's length: 4 GiB - 1
    spit(path, b);
    const auto problems = validate_kv_dump(path);
    CHECK(std::any_of(problems.begin(), problems.end(), [](const std::string& p) {
        return p.find(
                   "dump.h5::/sources/path: cannot read strings: string 1 declares 4294967295 bytes, its heap "
                   "object holds") != std::string::npos;
    }));
    CHECK_THROWS_WITH(describe_kv_dump(path), ContainsSubstring("string 1 declares 4294967295 bytes"));
}

TEST_CASE("attributes out of range or of the wrong JSON type name file and object", "[dump][hardening]") {
    TempDir dir;
    const std::string path = dir.path + "/dump.h5";
    write_synth_dump(path, SynthSpec{});
    auto set_string = [&](const char* name, const std::string& v) {
        h5::File f = h5::File::open_rw(path);
        h5::write_attr_string(f.id(), "x", name, v);
    };
    SECTION("an oversized format_version (once 'stoi')") {
        set_string("format_version", "99999999999999999999.0");
        CHECK_THAT(error_of([&] { KvDumpReader r(path); }),
                   ContainsSubstring("dump.h5::/: expected format_version 1.x, got '99999999999999999999.0'"));
        const auto problems = validate_kv_dump(path);
        REQUIRE(problems.size() == 1);
        CHECK_THAT(problems[0], ContainsSubstring("attribute 'format_version'"));
    }
    SECTION("model record [] and null (once a raw JSON type_error)") {
        set_string("model", "[]");
        CHECK_THAT(error_of([&] { KvDumpReader r(path); }),
                   ContainsSubstring("dump.h5::/: attribute 'model': expected a JSON object, got array"));
        set_string("model", "null");
        CHECK_THAT(error_of([&] { KvDumpReader r(path); }),
                   ContainsSubstring("attribute 'model': expected a JSON object, got null"));
    }
    SECTION("a model field of the wrong type") {
        set_string("model", R"({"name": 5, "n_layer": 3})");
        CHECK_THAT(error_of([&] { KvDumpReader r(path); }),
                   ContainsSubstring("attribute 'model': field 'name': expected a string, got 5"));
        set_string("model", R"({"n_layer": -4})");
        CHECK_THAT(error_of([&] { KvDumpReader r(path); }),
                   ContainsSubstring("field 'n_layer': expected an integer in [0, 2^31), got -4"));
    }
    SECTION("a head count beyond what any model has") {
        {
            h5::File f = h5::File::open_rw(path);
            h5::write_attr_int(f.id(), "x", "head_dim", int64_t{1} << 40);
        }
        CHECK_THAT(error_of([&] { KvDumpReader r(path); }),
                   ContainsSubstring("dump.h5::/: attribute 'head_dim': expected an integer in [1, 65536], got "
                                     "1099511627776"));
    }
}

TEST_CASE("PKV_MEMORY_BUDGET parses sizes and bounds what a file may ask for", "[core][hardening]") {
    CHECK(parse_memory_size("4096") == 4096);
    CHECK(parse_memory_size("512M") == (uint64_t{512} << 20));
    CHECK(parse_memory_size("8GB") == (uint64_t{8} << 30));
    CHECK_THROWS_WITH(parse_memory_size("8GiB"), ContainsSubstring("PKV_MEMORY_BUDGET '8GiB': expected a byte count"));
    CHECK_THROWS_WITH(parse_memory_size("lots"), ContainsSubstring("expected a byte count"));
    CHECK_THROWS_WITH(parse_memory_size("99999999999T"), ContainsSubstring("too large"));
    EnvGuard budget("PKV_MEMORY_BUDGET", "64M");
    CHECK(memory_budget_bytes() == (uint64_t{64} << 20));
    CHECK_NOTHROW(check_memory_budget(uint64_t{64} << 20, "x"));
    CHECK_THROWS_WITH(check_memory_budget((uint64_t{64} << 20) + 1, "f.h5::/v"),
                      ContainsSubstring("f.h5::/v: needs 64.0 MiB of memory, above the budget of 64.0 MiB"));
}

TEST_CASE("strings read from their heap honour a userblock before the superblock", "[dump][hardening]") {
    // Heap addresses count from the superblock, which a userblock moves to byte 512.
    TempDir dir;
    const std::string path = dir.path + "/userblock.h5";
    {
        h5::Id fcpl(H5Pcreate(H5P_FILE_CREATE));
        REQUIRE(H5Pset_userblock(fcpl.get(), 512) >= 0);
        h5::Id file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT));
        REQUIRE(file);
        h5::write_attr_string(file.get(), "x", "format", "pkv.kvdump");
        h5::write_attr_strings(file.get(), "x", "axes", {"layer", "", "token"});
    }
    h5::File f = h5::File::open_read(path);
    CHECK(h5::read_attr_string(f.id(), "x", "format") == "pkv.kvdump");
    CHECK(h5::read_attr_strings(f.id(), "x", "axes") == std::vector<std::string>{"layer", "", "token"});
}
