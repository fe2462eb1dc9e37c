// A dump written by several workers: threads of this process (DumpConfig::engines) and
// MPI ranks, each writing one shard; rank 0 joins them (docs/distributed.md, "Dumps").
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/core/progress.h"
#include "pkv/core/sha256.h"
#include "pkv/distributed/comm.h"
#include "pkv/pipeline/dump_internal.h"
#include "pkv/pipeline/text_input.h"

namespace pkv {

std::vector<DumpPart> plan_dump_parts(const std::vector<int64_t>& seq_lengths, int workers) {
    PKV_CHECK(workers >= 1, invalid_argument, "plan_dump_parts: expected at least 1 worker, got {}", workers);
    const int64_t S = static_cast<int64_t>(seq_lengths.size());
    std::vector<int64_t> cum(static_cast<size_t>(S) + 1, 0);  // cum[s]: tokens before sequence s
    for (int64_t s = 0; s < S; ++s) {
        PKV_CHECK(seq_lengths[s] >= 1, invalid_argument, "plan_dump_parts: sequence {} has length {}", s,
                  seq_lengths[s]);
        cum[s + 1] = cum[s] + seq_lengths[s];
    }
    const int64_t W = std::min<int64_t>(workers, S), T = cum[S];
    std::vector<DumpPart> parts;
    int64_t b = 0;  // first sequence of the next part
    for (int64_t w = 0; w < W; ++w) {
        int64_t e = S;  // one past the last sequence of part w
        if (w + 1 < W) {
            // The boundary nearest to the target, leaving each later part a sequence.
            const double target = static_cast<double>(T) * static_cast<double>(w + 1) / static_cast<double>(W);
            const int64_t lo = b + 1, hi = S - (W - w - 1);
            e = std::lower_bound(cum.begin() + lo, cum.begin() + hi + 1, target) - cum.begin();
            if (e > hi) e = hi;
            if (e > lo && target - static_cast<double>(cum[e - 1]) <= static_cast<double>(cum[e]) - target) --e;
        }
        DumpPart p;
        p.first_sequence = b;
        p.n_sequences = e - b;
        p.token_start = cum[b];
        p.n_tokens = cum[e] - cum[b];
        parts.push_back(p);
        b = e;
    }
    return parts;
}

std::string dump_shard_name(const std::string& out_path, int index, int count) {
    const size_t slash = out_path.find_last_of('/');
    const std::string base = slash == std::string::npos ? out_path : out_path.substr(slash + 1);
    return base + ".shards/part-" + std::to_string(index) + "-of-" + std::to_string(count) + ".h5";
}

namespace dump_detail {

namespace {

std::string folder_of(const std::string& path) {
    const size_t slash = path.find_last_of('/');
    return slash == std::string::npos ? std::string() : path.substr(0, slash + 1);
}

/// True for "part-<i>-of-<n>.h5", a name pkv gives shards.
bool is_shard_name(const std::string& name) {
    unsigned i = 0, n = 0;
    char tail[4] = {0};
    return std::sscanf(name.c_str(), "part-%u-of-%u.%3s", &i, &n, tail) == 3 && std::string(tail) == "h5" &&
           name == "part-" + std::to_string(i) + "-of-" + std::to_string(n) + ".h5";
}

std::vector<std::string> shard_names_in(const std::string& dir) {
    std::vector<std::string> out;
    DIR* d = opendir(dir.c_str());
    if (!d) return out;
    while (const dirent* e = readdir(d))
        if (is_shard_name(e->d_name)) out.emplace_back(e->d_name);
    closedir(d);
    std::sort(out.begin(), out.end());
    return out;
}

/// A new job id: 16 random hex digits (shards are matched to their joined dump by it).
std::string new_job_id() {
    std::random_device rd;
    const uint64_t x = (uint64_t{rd()} << 32) ^ rd() ^ static_cast<uint64_t>(time(nullptr));
    return fmt::format("{:016x}", x);
}

// --- the results of a rank's workers, as bytes for Comm::gather -------------------------

template <typename T>
void put(std::string& b, const T& v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof v);
}
template <typename T>
void put_vec(std::string& b, const std::vector<T>& v) {
    put(b, static_cast<uint64_t>(v.size()));
    b.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}
template <typename T>
T get(const std::string& b, size_t& at) {
    T v;
    PKV_CHECK(at + sizeof v <= b.size(), internal, "dump: a rank's results are truncated");
    std::memcpy(&v, b.data() + at, sizeof v);
    at += sizeof v;
    return v;
}
template <typename T>
std::vector<T> get_vec(const std::string& b, size_t& at) {
    const uint64_t n = get<uint64_t>(b, at);
    PKV_CHECK(n <= (b.size() - at) / sizeof(T), internal, "dump: a rank's results are truncated");
    std::vector<T> v(n);
    std::memcpy(v.data(), b.data() + at, n * sizeof(T));
    at += n * sizeof(T);
    return v;
}

std::string encode(const std::map<int, PartResult>& parts) {
    std::string b;
    put(b, static_cast<uint64_t>(parts.size()));
    for (const auto& [index, r] : parts) {
        put(b, static_cast<int64_t>(index));
        put_vec(b, r.id), put_vec(b, r.pos), put_vec(b, r.seq), put_vec(b, r.nll), put_vec(b, r.seq_length);
        put(b, r.nll_sum), put(b, r.n_predicted), put(b, r.seconds);
        put_vec(b, std::vector<char>(r.device.begin(), r.device.end()));
    }
    return b;
}

void decode(const std::string& b, std::map<int, PartResult>& out) {
    size_t at = 0;
    const uint64_t n = get<uint64_t>(b, at);
    for (uint64_t i = 0; i < n; ++i) {
        const int index = static_cast<int>(get<int64_t>(b, at));
        PartResult& r = out[index];
        r.id = get_vec<int32_t>(b, at), r.pos = get_vec<int32_t>(b, at), r.seq = get_vec<int32_t>(b, at);
        r.nll = get_vec<float>(b, at), r.seq_length = get_vec<int32_t>(b, at);
        r.nll_sum = get<double>(b, at), r.n_predicted = get<int64_t>(b, at), r.seconds = get<double>(b, at);
        const std::vector<char> d = get_vec<char>(b, at);
        r.device.assign(d.begin(), d.end());
    }
}

/// "cpu (8 threads) x 2, cuda:1 ..." — each distinct description once, with its count.
std::string devices_text(const std::map<int, PartResult>& parts) {
    std::vector<std::pair<std::string, int>> seen;
    for (const auto& [i, r] : parts) {
        auto it = std::find_if(seen.begin(), seen.end(), [&](const auto& s) { return s.first == r.device; });
        if (it == seen.end()) seen.emplace_back(r.device, 1);
        else ++it->second;
    }
    std::string out;
    for (const auto& [d, n] : seen) out += (out.empty() ? "" : ", ") + d + (n > 1 ? " x " + std::to_string(n) : "");
    return out;
}

/// The shards folder this rank created (rank 0), removed again when the dump fails and
/// it is empty.
struct CreatedDir {
    std::string path;
    bool keep = false;
    ~CreatedDir() {
        if (!path.empty() && !keep) rmdir(path.c_str());
    }
};

/// Rank 0, before any work: claims the joined dump's name (out_path) and the shards
/// folder, refusing shards already there unless `force`.
void claim_shards_folder(const DumpConfig& c, const std::string& dir, CreatedDir& created) {
    struct stat st {};
    if (stat(dir.c_str(), &st) == 0) {
        PKV_CHECK(S_ISDIR(st.st_mode), failed_precondition, "{}: the shards folder '{}' exists and is not a folder",
                  c.out_path, dir);
        const std::vector<std::string> old = shard_names_in(dir);
        PKV_CHECK(old.empty() || c.force, failed_precondition,
                  "{}: '{}' holds shards already ({}); pass --force to replace them", c.out_path, dir, old.front());
        return;
    }
    PKV_CHECK(mkdir(dir.c_str(), 0777) == 0 || errno == EEXIST, io, "{}: cannot create the shards folder '{}': {}",
              c.out_path, dir, std::strerror(errno));
    created.path = dir;
}

}  // namespace

DumpSummary run_joined_dump(const DumpConfig& c, DumpJob& job) {
    const dist::Comm& comm = dist::Comm::world();
    const int rank = comm.rank(), R = comm.size();
    const int local = std::max<int>(1, static_cast<int>(c.engines.size()));
    const int W = R * local;
    const LlamaHparams& hp = job.model->hparams();
    const std::vector<int64_t> lengths = sequence_lengths(c.n_tokens, c.ctx);
    const std::vector<DumpPart> parts = plan_dump_parts(lengths, W);
    const int P = static_cast<int>(parts.size());
    const std::string dir = c.out_path + ".shards", folder = folder_of(c.out_path);

    // Outputs are claimed before the long work: rank 0 the joined dump and the folder
    // (the others wait for it in the broadcast), then every rank its shards.
    std::optional<AtomicOutput> main_out;
    CreatedDir created;
    std::string job_id;
    if (rank == 0) {
        main_out.emplace(c.out_path, c.force);
        claim_shards_folder(c, dir, created);
        job_id = new_job_id();
    }
    comm.broadcast(job_id);
    // Under MPI a failing rank ends the job (Comm::abort): the first SIGTERM must remove
    // this rank's temporaries at once, as the ranks wait in collectives and never poll.
    if (R > 1) install_exit_on_interrupt();
    else install_interrupt_handlers();

    std::vector<int> mine;  // part indices this rank's workers write, one per worker
    for (int i = 0; i < local; ++i)
        if (rank * local + i < P) mine.push_back(rank * local + i);
    std::vector<std::unique_ptr<AtomicOutput>> shard_out;
    for (int p : mine)
        shard_out.push_back(std::make_unique<AtomicOutput>(folder + dump_shard_name(c.out_path, p, P), c.force));

    std::vector<TextSource> sources;
    const std::vector<int32_t> stream = token_stream(*job.file, c.text_paths, c.token_ids_path, c.n_tokens, sources);
    job.model_sha = sha256_file(c.model_path);
    // Made once here (provenance reads the clock with gmtime, which threads must not share).
    const KvDumpHeader base = dump_header(c, job, sources, "");

    // The workers: one thread each, each with its own engine and shard.
    std::mutex progress_mutex;
    uint64_t my_tokens = 0;
    for (int p : mine) my_tokens += static_cast<uint64_t>(parts[p].n_tokens);
    std::optional<Progress> progress;
    if (rank == 0) progress.emplace("dump", my_tokens, "tok");
    std::vector<PartResult> results(mine.size());
    std::vector<std::exception_ptr> errors(mine.size());
    // Each worker keeps the process's OpenMP thread count: the CPU engine's float results
    // depend on it, and equal counts make the dump equal to a one-worker dump.
    auto work = [&](size_t i) {
        try {
            const int p = mine[i];
            const EngineFactory& f = c.engines.empty() ? c.engine : c.engines[i];
            const std::unique_ptr<ForwardEngine> engine = f ? f(*job.model) : make_cpu_engine(*job.model);
            KvDumpHeader h = base;
            h.provenance["device"] = engine->description();
            h.sources = sources_in(sources, parts[p].token_start, parts[p].n_tokens);
            h.n_tokens = parts[p].n_tokens;
            h.shard = {{"job", job_id},
                       {"index", p},
                       {"count", P},
                       {"token_start", parts[p].token_start},
                       {"sequence_start", parts[p].first_sequence},
                       {"main", c.out_path.substr(folder.size())}};
            results[i] =
                write_part(c, job, *engine, stream, parts[p], h, dump_write_options(c, static_cast<int>(mine.size())),
                           shard_out[i]->temp_path(), [&](uint64_t n) {
                               if (!progress) return;
                               std::lock_guard<std::mutex> lock(progress_mutex);
                               progress->advance(n);
                           });
        } catch (...) {
            errors[i] = std::current_exception();
        }
    };
    if (mine.size() == 1) {
        work(0);
    } else {
        std::vector<std::thread> threads;
        for (size_t i = 0; i < mine.size(); ++i) threads.emplace_back(work, i);
        for (auto& t : threads) t.join();
    }
    for (size_t i = 0; i < mine.size(); ++i)
        if (errors[i]) {
            try {
                std::rethrow_exception(errors[i]);
            } catch (const Error& e) {
                // Name the shard as it will be called, not its temporary.
                std::string m = e.what();
                const std::string& tmp = shard_out[i]->temp_path();
                for (size_t at = m.find(tmp); at != std::string::npos; at = m.find(tmp, at))
                    m.replace(at, tmp.size(), shard_out[i]->path());
                throw Error(e.code(), m);
            }
        }
    if (progress) progress->finish();

    // Rank 0 joins: every worker's tokens, then the joined dump over the shards.
    DumpSummary sum;
    for (const PartResult& r : results) {
        sum.forward_seconds += r.forward_seconds;
        sum.sink_seconds += r.sink_seconds;
        add_writer_stats(sum.writer, r.writer);
    }
    std::map<int, PartResult> mine_by_index;
    for (size_t i = 0; i < mine.size(); ++i) mine_by_index.emplace(mine[i], std::move(results[i]));
    const std::vector<std::string> gathered = comm.gather(encode(mine_by_index));
    sum.model_name = hp.name;
    sum.model_bytes = job.file->file_size();
    sum.workers = W;
    std::map<int, PartResult> all;
    if (rank == 0) {
        for (const std::string& b : gathered) decode(b, all);
        PKV_CHECK(static_cast<int>(all.size()) == P, internal, "dump: expected {} shards' results, got {}", P,
                  all.size());
        std::vector<int32_t> id, pos, seq, seq_length;
        std::vector<float> nll;
        std::vector<int64_t> seq_start;
        double nll_sum = 0.0;
        int64_t n_pred = 0;
        KvDumpHeader h = base;
        const std::string devices = devices_text(all);
        h.provenance["device"] = devices;
        for (const auto& [p, r] : all) {
            PKV_CHECK(static_cast<int64_t>(r.id.size()) == parts[p].n_tokens, internal,
                      "dump: shard {} returned {} tokens, expected {}", p, r.id.size(), parts[p].n_tokens);
            id.insert(id.end(), r.id.begin(), r.id.end());
            pos.insert(pos.end(), r.pos.begin(), r.pos.end());
            for (int32_t s : r.seq) seq.push_back(s + static_cast<int32_t>(parts[p].first_sequence));
            for (int32_t l : r.seq_length) {
                seq_start.push_back(seq_start.empty() ? 0 : seq_start.back() + seq_length.back());
                seq_length.push_back(l);
            }
            nll.insert(nll.end(), r.nll.begin(), r.nll.end());
            h.shards.push_back({dump_shard_name(c.out_path, p, P), parts[p].token_start, parts[p].n_tokens});
        }
        // Added in token order, as one worker adds them: the same perplexity bit for bit.
        for (size_t t = 0; t < nll.size(); ++t)
            if (pos[t] > 0) nll_sum += nll[t], ++n_pred;
        h.job = job_id;
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - job.t_start).count();
        nlohmann::json summary =
            summary_json(c.n_tokens, static_cast<int64_t>(seq_start.size()), n_pred, nll_sum, seconds, devices);
        summary["shards"] = P;
        summary["workers"] = W;
        summary["processes"] = comm.description();
        try {
            KvDumpWriter writer(main_out->temp_path(), h);
            writer.write_tokens(0, id, pos, seq, nll);
            writer.finish(seq_start, seq_length, summary);
        } catch (const Error& e) {
            std::string m = e.what();
            const std::string& tmp = main_out->temp_path();
            for (size_t at = m.find(tmp); at != std::string::npos; at = m.find(tmp, at))
                m.replace(at, tmp.size(), c.out_path);
            throw Error(e.code(), m);
        }
        sum.out_path = c.out_path;
        sum.device = devices;
        sum.n_tokens = c.n_tokens;
        sum.n_sequences = static_cast<int64_t>(seq_start.size());
        sum.n_predicted = n_pred;
        sum.nll_mean = n_pred > 0 ? nll_sum / static_cast<double>(n_pred) : std::nan("");
        sum.perplexity = std::exp(sum.nll_mean);
    }

    // Everything is written: the shards appear, then the joined dump over them.
    comm.barrier();
    for (auto& o : shard_out) o->commit(c.fsync);
    comm.barrier();
    if (rank == 0) {
        main_out->commit(c.fsync);
        created.keep = true;
        // With --force: shards of an earlier dump that this one does not use.
        for (const std::string& name : shard_names_in(dir)) {
            unsigned i = 0, n = 0;
            const bool used =
                std::sscanf(name.c_str(), "part-%u-of-%u.h5", &i, &n) == 2 && n == static_cast<unsigned>(P) && i < n;
            if (!used && unlink((dir + "/" + name).c_str()) == 0)
                log::info("{}: removed '{}/{}', a shard of the dump it replaces", c.out_path, dir, name);
        }
        struct stat st {};
        if (stat(c.out_path.c_str(), &st) == 0) sum.file_bytes = static_cast<uint64_t>(st.st_size);
        for (int p = 0; p < P; ++p) {
            const std::string path = folder + dump_shard_name(c.out_path, p, P);
            sum.shard_paths.push_back(path);
            if (stat(path.c_str(), &st) == 0) sum.shard_bytes += static_cast<uint64_t>(st.st_size);
        }
    } else {
        for (int p : mine) sum.shard_paths.push_back(folder + dump_shard_name(c.out_path, p, P));
    }
    sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - job.t_start).count();
    sum.tokens_per_s = static_cast<double>(c.n_tokens) / sum.seconds;
    sum.peak_rss_bytes = peak_rss_bytes();
    return sum;
}

}  // namespace dump_detail

}  // namespace pkv
