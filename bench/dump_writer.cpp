// KV dump writer throughput: synthetic binary16 activations of real model shapes fed to
// KvDumpWriter as fast as it takes them, for several writer settings side by side. No
// model is needed: this is the writer's ceiling, which a GPU engine (issue 26: ~200k
// tokens/s at the 135M shape) must not be held below.
//
//   pkv_bench_dump_writer [--shape 135m|8b|all] [--tokens N] [--ctx N] [--chunk-tokens N]
//                         [--threads N] [--settings LIST] [--dir DIR] [--repeat N] [--levels]
//                         [--engine-tps N]
//
// LIST: comma-separated "sync:<level>" (the synchronous writer: HDF5's chunk cache and
// filters, the reference) and "pipe:<level>" (--threads writer threads: level 0 = no
// filters, the direct path writing each head in place; 1-9 the chunk pipeline's encoder
// threads). Each line gives MB/s of float16 handed in, tokens/s,
// the stored/raw ratio, where the writer's time went, and the speed against sync at the
// same level measured in the same run. Each setting runs --repeat times (default 3) and
// the fastest run is shown: on a shared machine the others measure the neighbours and
// the kernel's writeback of earlier files. --levels adds one-thread shuffle+deflate MB/s and
// ratio for every level on the same data.
//
// --engine-tps N puts a simulated engine in front of the writer: before each layer's
// rows the caller's thread spins for the time an engine producing N tokens/s would take
// (as a GPU engine's host thread waits on its device), so the line shows how much of the
// writer's time the setting hides behind the engine's; without it the caller only writes.
//
// Data: per (layer, head, dim) channel a log-normal scale times a normal value, rounded
// to binary16, which compresses about like real keys and values (real dumps: see
// docs/performance.md). Files go to DIR (default /tmp) and are removed after each run;
// times include finish() (the file closed), not the page cache reaching the disk.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "pkv/core/half.h"
#include "pkv/kvdump/chunk_writer.h"
#include "pkv/kvdump/kv_dump.h"

namespace {

struct Shape {
    const char* name;
    int n_layer, n_head, n_head_kv, head_dim;
    int64_t default_tokens;
};
const Shape kShapes[] = {{"135m", 30, 9, 3, 64, 16384}, {"8b", 32, 32, 8, 128, 2048}};

struct Setting {
    bool pipe;
    int level;
    std::string text;
};

struct Run {
    double seconds = 0;
    pkv::KvDumpWriterStats st;
};

/// [ctx, heads * D] binary16 rows for each of the four tensors, one pool reused with a
/// different starting row for every layer (chunks are compressed one by one, so reuse
/// does not help deflate).
struct Pool {
    int rows = 0;
    std::vector<uint16_t> kv, q;
};

Pool make_pool(const Shape& s, int rows) {
    std::mt19937_64 gen(1234);
    std::normal_distribution<float> n01(0.0f, 1.0f);
    auto fill = [&](int heads) {
        const int cols = heads * s.head_dim;
        std::vector<float> scale(cols);
        for (float& x : scale) x = std::exp(0.8f * n01(gen));
        std::vector<float> f(static_cast<size_t>(rows) * cols);
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < cols; ++c) f[static_cast<size_t>(r) * cols + c] = scale[c] * n01(gen);
        std::vector<uint16_t> h(f.size());
        pkv::float_to_half_n(f.data(), h.data(), f.size());
        return h;
    };
    Pool p;
    p.rows = rows;
    p.kv = fill(s.n_head_kv);
    p.q = fill(s.n_head);
    return p;
}

pkv::KvDumpHeader header_of(const Shape& s, int64_t T, int chunk_tokens) {
    pkv::KvDumpHeader h;
    h.n_layer_model = s.n_layer;
    for (int l = 0; l < s.n_layer; ++l) {
        h.layers.push_back(l);
        h.layer_info.push_back({l, 0, 10000.0, s.n_head_kv, s.head_dim});
    }
    h.n_head = s.n_head;
    h.n_head_kv = s.n_head_kv;
    h.head_dim = s.head_dim;
    h.n_tokens = T;
    h.chunk_tokens = chunk_tokens;
    h.model = {{"name", std::string("synthetic-") + s.name}};
    h.provenance = {{"tool", "pkv_bench_dump_writer"}};
    return h;
}

void spin(double seconds) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < until) {
    }
}

Run run_one(const Shape& s, const Pool& pool, int64_t T, int ctx, int chunk_tokens, const Setting& set, int threads,
            const std::string& path, double engine_tps) {
    pkv::KvDumpWriteOptions o;
    o.compress = set.level;
    o.threads = set.pipe ? threads : 0;
    const auto t0 = std::chrono::steady_clock::now();
    pkv::KvDumpWriter w(path, header_of(s, T, chunk_tokens), o);
    const size_t kvc = static_cast<size_t>(s.n_head_kv) * s.head_dim, qc = static_cast<size_t>(s.n_head) * s.head_dim;
    std::vector<int64_t> starts;
    std::vector<int32_t> lengths;
    for (int64_t t = 0; t < T; t += ctx) {
        const int n = static_cast<int>(std::min<int64_t>(ctx, T - t));
        for (int l = 0; l < s.n_layer; ++l) {
            // Rows r0.. of the pool (wrapping is avoided by the pool holding 2 ctx rows).
            const size_t r0 = static_cast<size_t>((l * 37 + t / ctx * 11) % ctx);
            const uint16_t* kv = pool.kv.data() + r0 * kvc;
            const uint16_t* q = pool.q.data() + r0 * qc;
            if (engine_tps > 0) spin(n / engine_tps / s.n_layer);
            w.write_layer16(l, t, n, kv, kv + kvc, kv + 2 * kvc, q);
        }
        std::vector<int32_t> id(n, 1), pos(n), seq(n, static_cast<int32_t>(starts.size()));
        std::vector<float> nll(n, 1.0f);
        for (int i = 0; i < n; ++i) pos[i] = i;
        w.write_tokens(t, id, pos, seq, nll);
        starts.push_back(t);
        lengths.push_back(n);
    }
    w.finish(starts, lengths, {{"n_tokens", T}});
    Run r;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.st = w.stats();
    return r;
}

void levels(const Shape& s, const Pool& pool, int chunk_tokens) {
    // One chunk's worth of rows of one head, as the writer stores it.
    const size_t n = static_cast<size_t>(chunk_tokens) * s.head_dim;
    std::vector<uint16_t> chunk(n);
    const size_t cols = static_cast<size_t>(s.n_head_kv) * s.head_dim;
    std::printf("\n%s: one-thread shuffle+deflate of [%d, %d] float16 chunks (the k/v pool)\n", s.name, chunk_tokens,
                s.head_dim);
    std::printf("%-6s %10s %8s\n", "level", "MB/s", "ratio");
    for (int level = 1; level <= 9; ++level) {
        std::vector<uint8_t> shuffled, out;
        uint64_t raw = 0, stored = 0;
        const auto t0 = std::chrono::steady_clock::now();
        double secs = 0;
        for (int rep = 0; secs < 1.0; ++rep) {
            for (int hh = 0; hh < s.n_head_kv; ++hh) {
                for (int t = 0; t < chunk_tokens; ++t)
                    std::memcpy(chunk.data() + static_cast<size_t>(t) * s.head_dim,
                                pool.kv.data() + ((static_cast<size_t>(t + rep) % pool.rows) * cols + hh * s.head_dim),
                                s.head_dim * 2);
                pkv::kvdump_detail::encode_chunk(chunk.data(), n, level, shuffled, out);
                raw += n * 2;
                stored += out.size();
            }
            secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
        std::printf("%-6d %10.1f %8.3f\n", level, raw / secs / 1e6, static_cast<double>(raw) / stored);
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::string shape = "all", dir = "/tmp", settings = "sync:0,pipe:0,sync:4,pipe:4,pipe:1,pipe:6";
    int64_t tokens = 0;
    int ctx = 2048, chunk_tokens = 512;
    int threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) - 1);
    bool want_levels = false;
    int repeat = 3;
    double engine_tps = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s: expected a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--shape") shape = next();
        else if (a == "--tokens") tokens = std::stoll(next());
        else if (a == "--ctx") ctx = std::stoi(next());
        else if (a == "--chunk-tokens") chunk_tokens = std::stoi(next());
        else if (a == "--threads") threads = std::stoi(next());
        else if (a == "--settings") settings = next();
        else if (a == "--dir") dir = next();
        else if (a == "--levels") want_levels = true;
        else if (a == "--engine-tps") engine_tps = std::stod(next());
        else if (a == "--repeat") repeat = std::max(1, std::stoi(next()));
        else {
            std::fprintf(stderr, "unknown argument '%s' (see the comment at the top of bench/dump_writer.cpp)\n",
                         a.c_str());
            return 2;
        }
    }
    std::vector<Setting> sets;
    for (size_t p = 0; p <= settings.size();) {
        size_t c = settings.find(',', p);
        if (c == std::string::npos) c = settings.size();
        const std::string item = settings.substr(p, c - p);
        const size_t colon = item.find(':');
        if (colon == std::string::npos || (item.substr(0, colon) != "sync" && item.substr(0, colon) != "pipe")) {
            std::fprintf(stderr, "--settings: expected sync:<level> or pipe:<level>, got '%s'\n", item.c_str());
            return 2;
        }
        sets.push_back({item[0] == 'p', std::stoi(item.substr(colon + 1)), item});
        p = c + 1;
    }
    const std::string path = dir + "/pkv_bench_dump_writer." + std::to_string(getpid()) + ".h5";
    std::printf(
        "KV dump writer, synthetic binary16, ctx %d, chunks of %d tokens, pipeline threads %d, %u cores, "
        "best of %d, files in %s",
        ctx, chunk_tokens, threads, std::thread::hardware_concurrency(), repeat, dir.c_str());
    if (engine_tps > 0) std::printf(", behind a simulated engine of %.0f tokens/s", engine_tps);
    std::printf("\n");
    try {
        for (const Shape& s : kShapes) {
            if (shape != "all" && shape != s.name) continue;
            const int64_t T = tokens > 0 ? tokens : s.default_tokens;
            const Pool pool = make_pool(s, 2 * ctx);
            const double bytes_per_token = 2.0 * s.n_layer * (3.0 * s.n_head_kv + s.n_head) * s.head_dim;
            std::printf("\n%s shape: %d layers, %d q heads, %d kv heads, head_dim %d: %.1f KB/token, %lld tokens\n",
                        s.name, s.n_layer, s.n_head, s.n_head_kv, s.head_dim, bytes_per_token / 1e3,
                        static_cast<long long>(T));
            std::printf("%-8s %8s %9s %11s %7s %8s %8s %8s %8s %9s\n", "setting", "seconds", "MB/s", "tokens/s",
                        "ratio", "copy s", "encode s", "write s", "wait s", "vs sync");
            std::map<int, double> sync_rate;
            for (const Setting& set : sets) {
                Run r;
                for (int k = 0; k < repeat; ++k) {
                    const Run one = run_one(s, pool, T, ctx, chunk_tokens, set, threads, path, engine_tps);
                    std::remove(path.c_str());
                    if (k == 0 || one.seconds < r.seconds) r = one;
                }
                const double rate = T / r.seconds;
                if (!set.pipe) sync_rate[set.level] = rate;
                const auto it = sync_rate.find(set.level);
                char vs[32] = "-";
                if (set.pipe && it != sync_rate.end()) std::snprintf(vs, sizeof vs, "%.2fx", rate / it->second);
                std::printf("%-8s %8.2f %9.1f %11.0f %7.3f %8.2f %8.2f %8.2f %8.2f %9s\n", set.text.c_str(), r.seconds,
                            T * bytes_per_token / r.seconds / 1e6, rate,
                            static_cast<double>(r.st.raw_bytes) / static_cast<double>(r.st.stored_bytes),
                            r.st.copy_seconds, r.st.encode_seconds, r.st.write_seconds, r.st.wait_seconds, vs);
                std::fflush(stdout);
            }
            if (want_levels) levels(s, pool, chunk_tokens);
        }
    } catch (const std::exception& e) {
        std::remove(path.c_str());
        std::fprintf(stderr, "pkv_bench_dump_writer: %s\n", e.what());
        return 1;
    }
    return 0;
}
