#include "pkv/pipeline/dump.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/core/progress.h"
#include "pkv/core/sha256.h"
#include "pkv/core/version.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/llama.h"
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
    check_model_and_texts(c.model_path, c.text_paths);
    PKV_CHECK(c.n_tokens >= 1, invalid_argument, "--tokens: expected at least 1, got {}", c.n_tokens);
    PKV_CHECK(c.ctx >= 1, invalid_argument, "--ctx: expected at least 1, got {}", c.ctx);
    PKV_CHECK(c.chunk_tokens >= 1, invalid_argument, "--chunk-tokens: expected at least 1, got {}", c.chunk_tokens);
    PKV_CHECK(!c.out_path.empty(), invalid_argument, "--out is required");
}

DumpSummary write_dump(const DumpConfig& c, const KvDumpHeader& header, const LlamaHparams& hp, ForwardEngine& engine,
                       const std::vector<int32_t>& stream, const std::vector<int>& layers, AtomicOutput& out,
                       uint64_t model_bytes, std::chrono::steady_clock::time_point t_start);

}  // namespace

DumpSummary run_dump(const DumpConfig& c) {
    check_config(c);
    const auto t_start = std::chrono::steady_clock::now();

    auto file = GgufFile::open(c.model_path);
    LlamaModel model(file);
    const LlamaHparams& hp = model.hparams();
    PKV_CHECK(static_cast<uint32_t>(c.ctx) <= hp.n_ctx_train, out_of_range,
              "--ctx {}: longer than the model's context length {} ({}: {}.context_length)", c.ctx, hp.n_ctx_train,
              c.model_path, hp.arch);
    std::vector<int> layers = c.layers;
    for (int l : layers)
        PKV_CHECK(l >= 0 && l < static_cast<int>(hp.n_layer), out_of_range,
                  "--layers: layer {} is out of range: {} has layers 0-{}", l, c.model_path, hp.n_layer - 1);
    if (layers.empty())
        for (uint32_t l = 0; l < hp.n_layer; ++l) layers.push_back(static_cast<int>(l));

    // The output is claimed before the long work so that a refusal comes at once.
    AtomicOutput out(c.out_path, c.force);
    const std::unique_ptr<ForwardEngine> engine = c.engine ? c.engine(model) : make_cpu_engine(model);
    install_interrupt_handlers();

    std::vector<TextSource> sources;
    const std::vector<int32_t> stream = token_stream(*file, c.text_paths, c.n_tokens, sources);

    const int64_t T = c.n_tokens;
    KvDumpHeader header;
    header.n_layer_model = static_cast<int>(hp.n_layer);
    header.layers.assign(layers.begin(), layers.end());
    header.n_head = static_cast<int>(hp.n_head);
    header.n_head_kv = static_cast<int>(hp.n_head_kv);
    header.head_dim = static_cast<int>(hp.head_dim);
    header.n_tokens = T;
    header.capture = c.capture;
    header.hf_dim_order = c.hf_dim_order;
    header.native_half_split = hp.rope_layout == RopeLayout::half_split;
    header.chunk_tokens = c.chunk_tokens;
    header.layer_info = layer_info_of(hp, header.layers);
    const std::string model_sha = sha256_file(c.model_path);
    header.model = model_json(hp, *file, c.model_path, model_sha);
    header.sources = sources;
    header.provenance = provenance_json("dump", c.argv);
    header.provenance.update({
        {"model", {{"file", c.model_path}, {"sha256", model_sha}, {"name", hp.name}}},
        {"texts", sources_json(sources)},
        {"device", engine->description()},
        {"settings",
         {{"tokens", T},
          {"ctx", c.ctx},
          {"capture", c.capture.to_string()},
          {"layers", layers},
          {"dim_order", header.hf_dim_order || header.native_half_split ? "hf_half_split" : "gguf_interleaved"},
          {"bos", gguf_adds_bos(*file)}}},
    });

    try {
        return write_dump(c, header, hp, *engine, stream, layers, out, file->file_size(), t_start);
    } catch (const Error& e) {
        // Errors from the writer name the temporary file; the user knows the output name.
        std::string m = e.what();
        for (size_t p = m.find(out.temp_path()); p != std::string::npos; p = m.find(out.temp_path(), p))
            m.replace(p, out.temp_path().size(), c.out_path);
        throw Error(e.code(), m);
    }
}

namespace {

DumpSummary write_dump(const DumpConfig& c, const KvDumpHeader& header, const LlamaHparams& hp, ForwardEngine& engine,
                       const std::vector<int32_t>& stream, const std::vector<int>& layers, AtomicOutput& out,
                       uint64_t model_bytes, std::chrono::steady_clock::time_point t_start) {
    const int64_t T = c.n_tokens;
    KvDumpWriter writer(out.temp_path(), header);
    std::vector<int> slot_of(hp.n_layer, -1);
    for (size_t s = 0; s < layers.size(); ++s) slot_of[layers[s]] = static_cast<int>(s);

    ForwardOptions opts;
    opts.capture = true;
    opts.layers.assign(hp.n_layer, false);
    for (int l : layers) opts.layers[l] = true;
    opts.want_nll = true;

    std::vector<int64_t> seq_start;
    std::vector<int32_t> seq_length;
    double nll_sum = 0.0;
    int64_t n_pred = 0;
    Progress progress("dump", static_cast<uint64_t>(T), "tok");
    const int per_batch = std::max(1, engine.batch_sequences(c.ctx));
    const int64_t KD = int64_t{hp.n_head_kv} * hp.head_dim, QD = int64_t{hp.n_head} * hp.head_dim;
    std::vector<float> scratch[4];
    for (int64_t b0 = 0; b0 < T; b0 += int64_t{per_batch} * c.ctx) {
        std::vector<std::vector<int32_t>> batch;
        std::vector<int64_t> starts;
        for (int64_t t0 = b0; t0 < T && batch.size() < static_cast<size_t>(per_batch); t0 += c.ctx) {
            const int64_t n = std::min<int64_t>(c.ctx, T - t0);
            batch.emplace_back(stream.begin() + t0, stream.begin() + t0 + n);
            starts.push_back(t0);
        }
        const BatchResult results = engine.run_batch(batch, opts, [&](const EngineActivations& a) {
            check_interrupted();
            const float* x[4];
            for (int i = 0; i < 4; ++i) x[i] = to_float(a, i, i == 3 ? QD : KD, scratch[i]);
            writer.write_layer(slot_of[a.f32.layer], starts[a.sequence], a.f32.n_tokens,
                               c.capture.k_pre ? x[0] : nullptr, c.capture.k_post ? x[1] : nullptr,
                               c.capture.v ? x[2] : nullptr, c.capture.q ? x[3] : nullptr);
        });
        for (size_t s = 0; s < batch.size(); ++s) {
            const std::vector<int32_t>& ids = batch[s];
            const ForwardResult& r = results[s];
            const int n = static_cast<int>(ids.size());
            std::vector<int32_t> pos(n), seq(n, static_cast<int32_t>(seq_start.size()));
            std::vector<float> nll(n, std::nanf(""));
            for (int i = 0; i < n; ++i) pos[i] = i;
            for (int i = 1; i < n; ++i) {
                nll[i] = r.nll[i - 1];
                nll_sum += r.nll[i - 1];
                ++n_pred;
            }
            writer.write_tokens(starts[s], ids, pos, seq, nll);
            seq_start.push_back(starts[s]);
            seq_length.push_back(n);
            progress.advance(static_cast<uint64_t>(n));
        }
        check_interrupted();
    }
    progress.finish();

    DumpSummary sum;
    sum.out_path = c.out_path;
    sum.model_name = hp.name;
    sum.device = engine.description();
    sum.n_tokens = T;
    sum.n_sequences = static_cast<int64_t>(seq_start.size());
    sum.n_predicted = n_pred;
    sum.nll_mean = n_pred > 0 ? nll_sum / static_cast<double>(n_pred) : std::nan("");
    sum.perplexity = std::exp(sum.nll_mean);
    sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    sum.tokens_per_s = static_cast<double>(T) / sum.seconds;
    sum.peak_rss_bytes = peak_rss_bytes();
    sum.model_bytes = model_bytes;

    nlohmann::json summary = {
        {"n_tokens", T},
        {"n_sequences", sum.n_sequences},
        {"n_predicted", n_pred},
        {"nll_mean", sum.nll_mean},
        {"perplexity", sum.perplexity},
        {"seconds", sum.seconds},
        {"tokens_per_s", sum.tokens_per_s},
        {"device", sum.device},
        {"peak_rss_bytes", sum.peak_rss_bytes},
    };
    if (n_pred == 0) summary["perplexity"] = nullptr, summary["nll_mean"] = nullptr;
    writer.finish(seq_start, seq_length, summary);
    out.commit();
    struct stat st {};
    if (stat(c.out_path.c_str(), &st) == 0) sum.file_bytes = static_cast<uint64_t>(st.st_size);
    return sum;
}

}  // namespace

}  // namespace pkv
