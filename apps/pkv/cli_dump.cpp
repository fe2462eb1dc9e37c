// `pkv dump`: run a GGUF model over text, write its KV activations to HDF5.
#include <cstdio>

#include <fmt/format.h>

#include "commands.h"
#include "device_select.h"
#include "pkv/core/error.h"
#include "pkv/core/int_list.h"
#include "pkv/distributed/comm.h"
#include "pkv/pipeline/dump.h"

namespace pkv::cli {

namespace {
struct DumpArgs {
    DumpConfig config;
    std::string capture = "k_pre,k_post,v,q";
    std::string layers;
    std::string dim_order = "gguf";
    std::string device = "auto";
    std::string devices;
    int workers = 1;
};
}  // namespace

Command add_dump(CLI::App& root) {
    auto args = std::make_shared<DumpArgs>();
    auto* app = root.add_subcommand("dump", "run a GGUF model over text and write its K/V/Q activations to HDF5");
    auto& c = args->config;
    app->add_option("--model,-m", c.model_path, "GGUF model (Llama family)")->required();
    auto* text = app->add_option("--text,-t", c.text_paths, "text file(s), tokenized separately and concatenated");
    app->add_option("--token-ids", c.token_ids_path,
                    "instead of --text: the model's token ids, little-endian int32, 4 bytes each, no header")
        ->excludes(text);
    app->add_option("--tokens,-n", c.n_tokens, "tokens to run and store")->capture_default_str();
    app->add_option("--ctx,-c", c.ctx, "tokens per sequence (independent prefill from position 0)")
        ->capture_default_str();
    app->add_option("--capture", args->capture, "activations to store: any of k_pre,k_post,v,q")->capture_default_str();
    app->add_option("--layers", args->layers, "model layers to store, e.g. 0,5,10-12 (default: all)");
    app->add_option("--dim-order", args->dim_order,
                    "key/query head-dimension order: gguf (as computed) or hf (Hugging Face half-split)")
        ->capture_default_str();
    app->add_option("--chunk-tokens", c.chunk_tokens, "HDF5 chunk length along tokens")->capture_default_str();
    app->add_option("--compress", c.compress, "0: activations unfiltered; 1-9: shuffle + deflate at that level")
        ->check(CLI::Range(0, 9))
        ->capture_default_str();
    app->add_option("--writer-threads", c.writer_threads,
                    fmt::format("threads writing the activations in place (--compress 0) or compressing chunks for "
                                "one more thread to write (-1: cores - 1, at most {} with --compress 0; 0: the "
                                "synchronous writer)",
                                kDirectWriterThreads))
        ->check(CLI::Range(-1, 1024))
        ->capture_default_str();
    app->add_flag("!--no-fsync", c.fsync,
                  "leave the output in the page cache instead of flushing it to disk before the rename (faster; "
                  "a power cut soon after may leave a file whose data never reached the disk)");
    app->add_option("--device", args->device,
                    "where the model runs: auto (a GPU when there is one), cpu, cuda or cuda:N")
        ->capture_default_str();
    app->add_option("--devices", args->devices,
                    "GPUs to split the sequences over, one worker (and shard) each: all or 0,1,...");
    app->add_option("--out,-o", c.out_path, "output HDF5 file")->required();
    app->add_flag("--force,-f", c.force, "overwrite an existing output (and its shards)");
    app->add_option("--workers", args->workers,
                    "workers of this process, each with its own engine writing one shard of --out; under mpirun, "
                    "per rank (docs/distributed.md)")
        ->check(CLI::Range(1, 64))
        ->capture_default_str();
    // A later occurrence of an option overrides an earlier one, as in most tools.
    for (auto* opt : app->get_options())
        if (opt->get_expected_max() == 1) opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

    return {app, [args]() {
                DumpConfig cfg = args->config;
                cfg.capture = CaptureSet::parse(args->capture);
                PKV_CHECK(args->dim_order == "gguf" || args->dim_order == "hf", invalid_argument,
                          "--dim-order: expected gguf or hf, got '{}'", args->dim_order);
                cfg.hf_dim_order = args->dim_order == "hf";
                if (!args->layers.empty()) cfg.layers = parse_int_list("--layers", args->layers);
                cfg.argv = argv_strings();
                const dist::Comm& comm = dist::Comm::world();
                PKV_CHECK(args->devices.empty() || args->workers == 1, invalid_argument,
                          "--devices {} with --workers {}: --devices makes one worker per GPU", args->devices,
                          args->workers);
                if (!args->devices.empty()) {
                    cfg.engines = select_engines(args->devices);
                } else {
                    // Under mpirun, rank r takes its host's GPU local_rank (modulo the GPUs there).
                    cfg.engine = select_engine(args->device, comm.local_rank());
                    if (args->workers > 1) cfg.engines.assign(static_cast<size_t>(args->workers), cfg.engine);
                }
                DumpSummary s;
                try {
                    s = run_dump(cfg);
                } catch (const std::exception& e) {
                    // Under MPI: end every rank now (naming this one), so none waits and nothing appears.
                    comm.abort(e.what(), exit_code(e));
                    throw;
                }
                if (comm.rank() != 0) return 0;
                std::printf("wrote %s: %lld tokens in %lld sequences, %.1f MiB\n", s.out_path.c_str(),
                            static_cast<long long>(s.n_tokens), static_cast<long long>(s.n_sequences),
                            s.file_bytes / 1048576.0);
                if (!s.shard_paths.empty())
                    std::printf("joins %zu shards in %s.shards/ (%.1f MiB), written by %d workers\n",
                                s.shard_paths.size(), s.out_path.c_str(), s.shard_bytes / 1048576.0, s.workers);
                if (s.n_predicted > 0)
                    std::printf("perplexity %.4f (mean NLL %.4f nats over %lld predicted tokens)\n", s.perplexity,
                                s.nll_mean, static_cast<long long>(s.n_predicted));
                std::printf("throughput %.1f tokens/s (%.1f s), peak memory %.1f MiB (model file %.1f MiB)\n",
                            s.tokens_per_s, s.seconds, s.peak_rss_bytes / 1048576.0, s.model_bytes / 1048576.0);
                std::fprintf(stderr, "%s\n", describe_dump_time(s).c_str());
                return 0;
            }};
}

}  // namespace pkv::cli
