#include "pkv/pipeline/dump.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/core/progress.h"
#include "pkv/core/sha256.h"
#include "pkv/core/version.h"
#include "pkv/distributed/comm.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/llama.h"
#include "pkv/pipeline/dump_internal.h"
#include "pkv/pipeline/provenance.h"
#include "pkv/pipeline/text_input.h"
#include "pkv/tokenizer/tokenizer.h"

namespace pkv {

uint64_t peak_rss_bytes() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind("VmHWM:", 0) == 0) {
            std::istringstream is(line.substr(6));
            uint64_t kb = 0;
            is >> kb;
            return kb * 1024;
        }
    }
    return 0;
}

namespace {

void check_config(const DumpConfig& c) {
    check_model_and_inputs(c.model_path, c.text_paths, c.token_ids_path);
    PKV_CHECK(c.n_tokens >= 1, invalid_argument, "--tokens: expected at least 1, got {}", c.n_tokens);
    PKV_CHECK(c.ctx >= 1, invalid_argument, "--ctx: expected at least 1, got {}", c.ctx);
    PKV_CHECK(c.chunk_tokens >= 1, invalid_argument, "--chunk-tokens: expected at least 1, got {}", c.chunk_tokens);
    PKV_CHECK(c.compress >= 0 && c.compress <= 9, invalid_argument, "--compress: expected 0 to 9, got {}", c.compress);
    PKV_CHECK(c.writer_threads >= -1 && c.writer_threads <= 1024, invalid_argument,
              "--writer-threads: expected 0 to 1024, got {}", c.writer_threads);
    PKV_CHECK(!c.out_path.empty(), invalid_argument, "--out is required");
}

}  // namespace

KvDumpWriteOptions dump_write_options(const DumpConfig& c, int workers) {
    KvDumpWriteOptions o;
    o.compress = c.compress;
    o.threads = c.writer_threads;
    o.start_writeback = c.fsync;
    if (o.threads < 0) {
        const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
        o.threads = std::max(1, (cores - 1) / std::max(1, workers));
        // Unfiltered, the writers only pwrite into one file and contend for it: on a 16-core
        // GPU host 4 of them wrote a 135M dump about twice as fast as 15 (docs/performance.md).
        if (o.compress == 0) o.threads = std::min(o.threads, kDirectWriterThreads);
    }
    // The queue bound is the process's: each of several files gets its share.
    o.queue_bytes = std::max<uint64_t>(uint64_t{16} << 20, o.queue_bytes / static_cast<uint64_t>(std::max(1, workers)));
    return o;
}

std::string describe_dump_time(const DumpSummary& s) {
    const KvDumpWriterStats& w = s.writer;
    const double mib = 1048576.0;
    std::string out = fmt::format(
        "time: forward {:.2f} s, sink {:.2f} s (convert/stage {:.2f} s, blocked on the queue {:.2f} s in {} waits); "
        "writer ({}, {}): encode {:.2f} s, write {:.2f} s, finish {:.2f} s; {:.1f} MiB of float16 stored as "
        "{:.1f} MiB (ratio {:.2f}), peak queue {:.1f} MiB",
        s.forward_seconds, s.sink_seconds, w.copy_seconds, w.wait_seconds, w.waits,
        w.threads == 0 ? std::string("synchronous")
                       : fmt::format("{}, {} thread{}", w.compress == 0 ? "direct" : "pipeline", w.threads,
                                     w.threads == 1 ? "" : "s"),
        w.compress == 0 ? std::string("no compression") : fmt::format("shuffle+deflate {}", w.compress),
        w.encode_seconds, w.write_seconds, w.finish_seconds, w.raw_bytes / mib, w.stored_bytes / mib,
        w.stored_bytes > 0 ? static_cast<double>(w.raw_bytes) / static_cast<double>(w.stored_bytes) : 0.0,
        w.peak_queue_bytes / mib);
    return out;
}

namespace dump_detail {

void add_writer_stats(KvDumpWriterStats& a, const KvDumpWriterStats& b) {
    a.compress = b.compress;
    a.threads = b.threads;
    a.raw_bytes += b.raw_bytes;
    a.stored_bytes += b.stored_bytes;
    a.chunks += b.chunks;
    a.copy_seconds += b.copy_seconds;
    a.encode_seconds += b.encode_seconds;
    a.write_seconds += b.write_seconds;
    a.wait_seconds += b.wait_seconds;
    a.waits += b.waits;
    a.finish_seconds += b.finish_seconds;
    a.peak_queue_bytes = std::max(a.peak_queue_bytes, b.peak_queue_bytes);
    a.peak_open_bytes = std::max(a.peak_open_bytes, b.peak_open_bytes);
}

DumpJob prepare_dump(const DumpConfig& c) {
    DumpJob job;
    job.t_start = std::chrono::steady_clock::now();
    job.file = GgufFile::open(c.model_path);
    job.model = std::make_unique<LlamaModel>(job.file);
    const LlamaHparams& hp = job.model->hparams();
    PKV_CHECK(static_cast<uint32_t>(c.ctx) <= hp.n_ctx_train, out_of_range,
              "--ctx {}: longer than the model's context length {} ({}: {}.context_length)", c.ctx, hp.n_ctx_train,
              c.model_path, hp.arch);
    job.layers = c.layers;
    for (int l : job.layers)
        PKV_CHECK(l >= 0 && l < static_cast<int>(hp.n_layer), out_of_range,
                  "--layers: layer {} is out of range: {} has layers 0-{}", l, c.model_path, hp.n_layer - 1);
    if (job.layers.empty())
        for (uint32_t l = 0; l < hp.n_layer; ++l) job.layers.push_back(static_cast<int>(l));
    return job;
}

KvDumpHeader dump_header(const DumpConfig& c, const DumpJob& job, const std::vector<TextSource>& sources,
                         const std::string& device) {
    const LlamaHparams& hp = job.model->hparams();
    KvDumpHeader header;
    header.n_layer_model = static_cast<int>(hp.n_layer);
    header.layers.assign(job.layers.begin(), job.layers.end());
    header.n_head = static_cast<int>(hp.n_head);
    header.n_head_kv = static_cast<int>(hp.n_head_kv);
    header.head_dim = static_cast<int>(hp.head_dim);
    header.n_tokens = c.n_tokens;
    header.capture = c.capture;
    header.hf_dim_order = c.hf_dim_order;
    header.native_half_split = hp.rope_layout == RopeLayout::half_split;
    header.chunk_tokens = c.chunk_tokens;
    header.layer_info = layer_info_of(hp, header.layers);
    header.model = model_json(hp, *job.file, c.model_path, job.model_sha);
    header.sources = sources;
    header.provenance = provenance_json("dump", c.argv);
    header.provenance.update({
        {"model", {{"file", c.model_path}, {"sha256", job.model_sha}, {"name", hp.name}}},
        {"texts", sources_json(sources)},
        {"device", device},
        {"settings",
         {{"tokens", c.n_tokens},
          {"ctx", c.ctx},
          {"capture", c.capture.to_string()},
          {"layers", job.layers},
          {"dim_order", header.hf_dim_order || header.native_half_split ? "hf_half_split" : "gguf_interleaved"},
          {"chunk_tokens", c.chunk_tokens},
          {"compress", c.compress},
          {"writer_threads", c.writer_threads},
          {"fsync", c.fsync},
          {"bos", gguf_adds_bos(*job.file)}}},
    });
    // Token ids are used as given: no BOS is added, whatever the tokenizer says.
    if (!c.token_ids_path.empty()) header.provenance["settings"]["bos"] = false;
    header.provenance["settings"]["input"] = c.token_ids_path.empty() ? "text" : "token_ids";
    return header;
}

std::vector<int64_t> sequence_lengths(int64_t T, int ctx) {
    std::vector<int64_t> out;
    for (int64_t t0 = 0; t0 < T; t0 += ctx) out.push_back(std::min<int64_t>(ctx, T - t0));
    return out;
}

std::vector<TextSource> sources_in(const std::vector<TextSource>& sources, int64_t t0, int64_t n) {
    std::vector<TextSource> out = sources;
    int64_t at = 0;
    for (TextSource& s : out) {
        const int64_t a = std::max(at, t0), b = std::min(at + s.tokens, t0 + n);
        at += s.tokens;
        s.tokens = std::max<int64_t>(0, b - a);
    }
    return out;
}

nlohmann::json summary_json(int64_t n_tokens, int64_t n_sequences, int64_t n_predicted, double nll_sum, double seconds,
                            const std::string& device) {
    const double nll_mean = nll_sum / static_cast<double>(n_predicted);
    nlohmann::json summary = {
        {"n_tokens", n_tokens},
        {"n_sequences", n_sequences},
        {"n_predicted", n_predicted},
        {"nll_mean", nll_mean},
        {"perplexity", std::exp(nll_mean)},
        {"seconds", seconds},
        {"tokens_per_s", static_cast<double>(n_tokens) / seconds},
        {"device", device},
        {"peak_rss_bytes", peak_rss_bytes()},
    };
    if (n_predicted == 0) summary["perplexity"] = nullptr, summary["nll_mean"] = nullptr;
    return summary;
}

PartResult write_part(const DumpConfig& c, const DumpJob& job, ForwardEngine& engine,
                      const std::vector<int32_t>& stream, const DumpPart& part, const KvDumpHeader& header,
                      const KvDumpWriteOptions& write_options, const std::string& path,
                      const std::function<void(uint64_t)>& advance) {
    using clock = std::chrono::steady_clock;
    const auto t_start = clock::now();
    const LlamaHparams& hp = job.model->hparams();
    const int64_t T0 = part.token_start, T1 = part.token_start + part.n_tokens;
    KvDumpWriter writer(path, header, write_options);
    std::vector<int> slot_of(hp.n_layer, -1);
    for (size_t s = 0; s < job.layers.size(); ++s) slot_of[job.layers[s]] = static_cast<int>(s);

    ForwardOptions opts;
    opts.capture = true;
    opts.layers.assign(hp.n_layer, false);
    for (int l : job.layers) opts.layers[l] = true;
    opts.tensors = {c.capture.k_pre, c.capture.k_post, c.capture.v, c.capture.q};
    opts.want_nll = true;

    PartResult res;
    res.device = engine.description();
    std::vector<int64_t> seq_start;  // in the part
    const int per_batch = std::max(1, engine.batch_sequences(c.ctx));
    const int64_t KD = int64_t{hp.n_head_kv} * hp.head_dim, QD = int64_t{hp.n_head} * hp.head_dim;
    std::vector<float> scratch[4];
    for (int64_t b0 = T0; b0 < T1; b0 += int64_t{per_batch} * c.ctx) {
        std::vector<std::vector<int32_t>> batch;
        std::vector<int64_t> starts;  // in the part
        for (int64_t t0 = b0; t0 < T1 && batch.size() < static_cast<size_t>(per_batch); t0 += c.ctx) {
            const int64_t n = std::min<int64_t>(c.ctx, T1 - t0);
            batch.emplace_back(stream.begin() + t0, stream.begin() + t0 + n);
            starts.push_back(t0 - T0);
        }
        const auto t_batch = clock::now();
        double sink = 0.0;
        const BatchResult results = engine.run_batch(batch, opts, [&](const EngineActivations& a) {
            check_interrupted();
            const auto t_sink = clock::now();
            const int slot = slot_of[a.f32.layer];
            const int64_t t0 = starts[a.sequence];
            const std::array<const uint16_t*, 4> h16 = {c.capture.k_pre ? a.k_pre16 : nullptr,
                                                        c.capture.k_post ? a.k_post16 : nullptr,
                                                        c.capture.v ? a.v16 : nullptr, c.capture.q ? a.q16 : nullptr};
            const std::array<bool, 4> on = {c.capture.k_pre, c.capture.k_post, c.capture.v, c.capture.q};
            bool all16 = true;
            for (int i = 0; i < 4; ++i) all16 = all16 && (!on[i] || h16[i] != nullptr);
            if (all16) {
                // The engine's binary16 bits go into the file as they are.
                writer.write_layer16(slot, t0, a.f32.n_tokens, h16[0], h16[1], h16[2], h16[3]);
            } else {
                const float* x[4];
                for (int i = 0; i < 4; ++i) x[i] = on[i] ? to_float(a, i, i == 3 ? QD : KD, scratch[i]) : nullptr;
                writer.write_layer(slot, t0, a.f32.n_tokens, x[0], x[1], x[2], x[3]);
            }
            sink += std::chrono::duration<double>(clock::now() - t_sink).count();
        });
        res.sink_seconds += sink;
        res.forward_seconds += std::chrono::duration<double>(clock::now() - t_batch).count() - sink;
        for (size_t s = 0; s < batch.size(); ++s) {
            const std::vector<int32_t>& ids = batch[s];
            const ForwardResult& r = results[s];
            const int n = static_cast<int>(ids.size());
            std::vector<int32_t> pos(n), seq(n, static_cast<int32_t>(seq_start.size()));
            std::vector<float> nll(n, std::nanf(""));
            for (int i = 0; i < n; ++i) pos[i] = i;
            for (int i = 1; i < n; ++i) {
                nll[i] = r.nll[i - 1];
                res.nll_sum += r.nll[i - 1];
                ++res.n_predicted;
            }
            writer.write_tokens(starts[s], ids, pos, seq, nll);
            res.id.insert(res.id.end(), ids.begin(), ids.end());
            res.pos.insert(res.pos.end(), pos.begin(), pos.end());
            res.seq.insert(res.seq.end(), seq.begin(), seq.end());
            res.nll.insert(res.nll.end(), nll.begin(), nll.end());
            seq_start.push_back(starts[s]);
            res.seq_length.push_back(n);
            advance(static_cast<uint64_t>(n));
        }
        check_interrupted();
    }
    res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    writer.finish(seq_start, res.seq_length,
                  summary_json(part.n_tokens, static_cast<int64_t>(seq_start.size()), res.n_predicted, res.nll_sum,
                               res.seconds, res.device));
    res.writer = writer.stats();
    return res;
}

}  // namespace dump_detail

using namespace dump_detail;

DumpSummary run_dump(const DumpConfig& c) {
    check_config(c);
    DumpJob job = prepare_dump(c);
    if (c.engines.size() > 1 || dist::Comm::world().size() > 1) return run_joined_dump(c, job);
    const LlamaHparams& hp = job.model->hparams();

    // The output is claimed before the long work so that a refusal comes at once.
    AtomicOutput out(c.out_path, c.force);
    const EngineFactory& factory = c.engines.empty() ? c.engine : c.engines.front();
    std::future<std::string> sha = sha256_file_async(c.model_path);  // while the engine loads the weights
    const std::unique_ptr<ForwardEngine> engine = factory ? factory(*job.model) : make_cpu_engine(*job.model);
    install_interrupt_handlers();

    std::vector<TextSource> sources;
    const std::vector<int32_t> stream = token_stream(*job.file, c.text_paths, c.token_ids_path, c.n_tokens, sources);
    job.model_sha = sha.get();
    const KvDumpHeader header = dump_header(c, job, sources, engine->description());

    DumpPart all;
    all.n_tokens = c.n_tokens;
    all.n_sequences = static_cast<int64_t>(sequence_lengths(c.n_tokens, c.ctx).size());
    PartResult r;
    try {
        Progress progress("dump", static_cast<uint64_t>(c.n_tokens), "tok");
        r = write_part(c, job, *engine, stream, all, header, dump_write_options(c, 1), out.temp_path(),
                       [&](uint64_t n) { progress.advance(n); });
        progress.finish();
        out.commit(c.fsync);
    } catch (const Error& e) {
        // Errors from the writer name the temporary file; the user knows the output name.
        std::string m = e.what();
        for (size_t p = m.find(out.temp_path()); p != std::string::npos; p = m.find(out.temp_path(), p))
            m.replace(p, out.temp_path().size(), c.out_path);
        throw Error(e.code(), m);
    }

    DumpSummary sum;
    sum.out_path = c.out_path;
    sum.model_name = hp.name;
    sum.device = r.device;
    sum.n_tokens = c.n_tokens;
    sum.n_sequences = all.n_sequences;
    sum.n_predicted = r.n_predicted;
    sum.nll_mean = r.n_predicted > 0 ? r.nll_sum / static_cast<double>(r.n_predicted) : std::nan("");
    sum.perplexity = std::exp(sum.nll_mean);
    sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - job.t_start).count();
    sum.tokens_per_s = static_cast<double>(c.n_tokens) / sum.seconds;
    sum.peak_rss_bytes = peak_rss_bytes();
    sum.model_bytes = job.file->file_size();
    sum.forward_seconds = r.forward_seconds;
    sum.sink_seconds = r.sink_seconds;
    sum.writer = r.writer;
    struct stat st {};
    if (stat(c.out_path.c_str(), &st) == 0) sum.file_bytes = static_cast<uint64_t>(st.st_size);
    return sum;
}

}  // namespace pkv
