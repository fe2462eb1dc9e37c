#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/atomic_file.h"
#include "pkv/core/bulk_copy.h"
#include "pkv/core/error.h"
#include "pkv/core/fixed_point.h"
#include "pkv/core/sha256.h"

using namespace pkv;

namespace {
bool exists(const std::string& p) {
    struct stat st {};
    return stat(p.c_str(), &st) == 0;
}
std::string tmpdir() {
    char tmpl[] = "/tmp/pkv-core-XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    return tmpl;
}
}  // namespace

TEST_CASE("sha256 matches FIPS 180-4 test vectors", "[core][sha256]") {
    CHECK(sha256_hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const std::string two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    CHECK(sha256_hex(two.data(), two.size()) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    Sha256 h;  // a million 'a' in uneven pieces exercises the buffering
    std::string a(1000, 'a');
    for (int i = 0; i < 1000; ++i) h.update(a.data(), a.size());
    CHECK(h.hex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    Sha256 portable(false);
    for (int i = 0; i < 1000; ++i) portable.update(a.data(), a.size());
    CHECK(portable.hex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("sha256: the SHA-extension blocks equal the portable ones", "[core][sha256]") {
    if (!sha256_hardware()) WARN("this CPU has no SHA extensions: only the portable code ran");
    std::mt19937 rng(11);
    std::vector<uint8_t> data(5000);
    for (auto& b : data) b = static_cast<uint8_t>(rng());
    // Lengths around block and padding boundaries, fed whole and in uneven pieces.
    for (size_t n : {size_t{0}, size_t{55}, size_t{56}, size_t{63}, size_t{64}, size_t{65}, size_t{119}, size_t{128},
                     size_t{1000}, size_t{4096}, size_t{5000}}) {
        CAPTURE(n);
        Sha256 hw, sw(false), pieces;
        hw.update(data.data(), n);
        sw.update(data.data(), n);
        for (size_t i = 0; i < n;) {
            const size_t k = std::min<size_t>(n - i, 1 + rng() % 150);
            pieces.update(data.data() + i, k);
            i += k;
        }
        const std::string ref = sw.hex();
        CHECK(hw.hex() == ref);
        CHECK(pieces.hex() == ref);
    }
}

TEST_CASE("checked arithmetic names the quantity on overflow", "[core][error]") {
    CHECK(checked_mul(1u << 20, 1u << 20, "x") == (uint64_t(1) << 40));
    CHECK_THROWS_WITH(checked_mul(uint64_t(1) << 40, uint64_t(1) << 40, "model.gguf: tensor 'w'"),
                      ContainsSubstring("model.gguf: tensor 'w': size"));
    CHECK_THROWS_AS(checked_add(~uint64_t(0), 1, "y"), Error);
}

TEST_CASE("atomic output appears only on commit", "[core][atomic]") {
    const std::string dir = tmpdir();
    const std::string out = dir + "/out.bin";
    SECTION("commit renames") {
        AtomicOutput o(out, false);
        {
            std::ofstream f(o.temp_path());
            f << "data";
        }
        CHECK_FALSE(exists(out));
        o.commit();
        CHECK(exists(out));
        CHECK_FALSE(exists(o.temp_path()));
    }
    SECTION("abandoned output leaves nothing") {
        std::string temp;
        {
            AtomicOutput o(out, false);
            temp = o.temp_path();
            std::ofstream f(temp);
            f << "half";
        }
        CHECK_FALSE(exists(out));
        CHECK_FALSE(exists(temp));
    }
    SECTION("existing output needs force") {
        {
            std::ofstream f(out);
            f << "old";
        }
        CHECK_THROWS_WITH(AtomicOutput(out, false), ContainsSubstring("pass --force"));
        CHECK_NOTHROW(AtomicOutput(out, true));
    }
    SECTION("missing directory is named") {
        CHECK_THROWS_WITH(AtomicOutput(dir + "/nope/out.h5", false), ContainsSubstring("does not exist"));
    }
    std::remove(out.c_str());
    rmdir(dir.c_str());
}

TEST_CASE("atomic output removes temporaries of dead processes only", "[core][atomic]") {
    const std::string dir = tmpdir();
    const std::string out = dir + "/out.bin";
    // A pid that surely ended: a child that exits at once, already reaped.
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) _exit(0);
    REQUIRE(waitpid(child, nullptr, 0) == child);
    const std::string dead = std::to_string(child);
    auto touch = [&](const std::string& name) {
        std::ofstream f(dir + "/" + name);
        f << "stale";
        return dir + "/" + name;
    };
    const std::string stale = touch(".out.bin.pkv-tmp." + dead);
    const std::string live = touch(".out.bin.pkv-tmp.1");  // init never ends
    const std::string other_name = touch(".other.bin.pkv-tmp." + dead);
    const std::string not_a_pid = touch(".out.bin.pkv-tmp." + dead + "x");
    {
        AtomicOutput o(out, false);
        CHECK_FALSE(exists(stale));
        CHECK(exists(live));
        CHECK(exists(other_name));
        CHECK(exists(not_a_pid));
    }
    for (const std::string& p : {live, other_name, not_a_pid}) std::remove(p.c_str());
    rmdir(dir.c_str());
}

TEST_CASE("fixed_to_double_n: exact products of int64 values and a power of two", "[core]") {
    std::vector<int64_t> v;
    for (int64_t i = 0; i < 200001; ++i) v.push_back((i % 2 ? -1 : 1) * (i * i * 7919 + 3));
    v.push_back(INT64_MAX);
    v.push_back(INT64_MIN + 1);
    std::vector<double> out(v.size());
    const double unit = std::ldexp(1.0, -37);
    pkv::fixed_to_double_n(v.data(), unit, out.data(), v.size());
    size_t bad = 0;
    for (size_t i = 0; i < v.size(); ++i) bad += out[i] != static_cast<double>(v[i]) * unit;
    CHECK(bad == 0);
    CHECK(out[3] == -(9 * 7919 + 3) * unit);
}

TEST_CASE("copy_runs and fixed_to_double_runs: every run, below and above the threaded size", "[core]") {
    // 3 short runs stay under kBulkParallelBytes; 40 runs around the 1 MiB pieces go over.
    const size_t n_runs = GENERATE(size_t{3}, size_t{40});
    const bool big = n_runs == 40;
    std::vector<std::vector<int64_t>> src(n_runs);
    std::vector<std::vector<double>> dst(n_runs);
    std::vector<std::vector<int64_t>> copy(n_runs);
    std::vector<pkv::FixedRun> fr;
    std::vector<pkv::CopyRun> cr;
    size_t total = 0;
    for (size_t r = 0; r < n_runs; ++r) {
        // big: 1 MiB + r values, tiny, more than two pieces
        const size_t n = !big ? 1000 * (r + 1) + r : (r % 3 == 0) ? 131072 + r : (r % 3 == 1) ? 17 : 300001;
        for (size_t i = 0; i < n; ++i) src[r].push_back(static_cast<int64_t>((i * 2654435761u + r) % 1000003) - 500001);
        dst[r].assign(n, -1.0);
        copy[r].assign(n, 0);
        fr.push_back(pkv::FixedRun{src[r].data(), std::ldexp(1.0, -20), dst[r].data(), n});
        cr.push_back(pkv::CopyRun{src[r].data(), copy[r].data(), n * 8});
        total += n * 8;
    }
    CAPTURE(n_runs, total);
    CHECK((total >= pkv::kBulkParallelBytes) == big);
    pkv::fixed_to_double_runs(fr.data(), fr.size());
    pkv::copy_runs(cr.data(), cr.size());
    size_t bad = 0;
    for (size_t r = 0; r < n_runs; ++r)
        for (size_t i = 0; i < src[r].size(); ++i)
            bad += dst[r][i] != static_cast<double>(src[r][i]) * std::ldexp(1.0, -20) || copy[r][i] != src[r][i];
    CHECK(bad == 0);
    pkv::fixed_to_double_runs(nullptr, 0);  // no runs: nothing to do
    pkv::copy_runs(nullptr, 0);
}
