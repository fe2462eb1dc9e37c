// `pkv dump`: run a GGUF model over text, write its KV activations to HDF5.
#include <cstdio>

#include "commands.h"
#include "device_select.h"
#include "pkv/core/error.h"
#include "pkv/core/int_list.h"
#include "pkv/pipeline/dump.h"

namespace pkv::cli {

namespace {
struct DumpArgs {
    DumpConfig config;
    std::string capture = "k_pre,k_post,v,q";
    std::string layers;
    std::string dim_order = "gguf";
    std::string device = "auto";
};
}  // namespace

Command add_dump(CLI::App& root) {
    auto args = std::make_shared<DumpArgs>();
    auto* app = root.add_subcommand("dump", "run a GGUF model over text and write its K/V/Q activations to HDF5");
    auto& c = args->config;
    app->add_option("--model,-m", c.model_path, "GGUF model (Llama family)")->required();
    app->add_option("--text,-t", c.text_paths, "text file(s), tokenized separately and concatenated")->required();
    app->add_option("--tokens,-n", c.n_tokens, "tokens to run and store")->capture_default_str();
    app->add_option("--ctx,-c", c.ctx, "tokens per sequence (independent prefill from position 0)")
        ->capture_default_str();
    app->add_option("--capture", args->capture, "activations to store: any of k_pre,k_post,v,q")->capture_default_str();
    app->add_option("--layers", args->layers, "model layers to store, e.g. 0,5,10-12 (default: all)");
    app->add_option("--dim-order", args->dim_order,
                    "key/query head-dimension order: gguf (as computed) or hf (Hugging Face half-split)")
        ->capture_default_str();
    app->add_option("--chunk-tokens", c.chunk_tokens, "HDF5 chunk length along tokens")->capture_default_str();
    app->add_option("--device", args->device,
                    "where the model runs: auto (a GPU when there is one), cpu, cuda or cuda:N")
        ->capture_default_str();
    app->add_option("--out,-o", c.out_path, "output HDF5 file")->required();
    app->add_flag("--force,-f", c.force, "overwrite an existing output");
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
                cfg.engine = select_engine(args->device);
                const DumpSummary s = run_dump(cfg);
                std::printf("wrote %s: %lld tokens in %lld sequences, %.1f MiB\n", s.out_path.c_str(),
                            static_cast<long long>(s.n_tokens), static_cast<long long>(s.n_sequences),
                            s.file_bytes / 1048576.0);
                if (s.n_predicted > 0)
                    std::printf("perplexity %.4f (mean NLL %.4f nats over %lld predicted tokens)\n", s.perplexity,
                                s.nll_mean, static_cast<long long>(s.n_predicted));
                std::printf("throughput %.1f tokens/s (%.1f s), peak memory %.1f MiB (model file %.1f MiB)\n",
                            s.tokens_per_s, s.seconds, s.peak_rss_bytes / 1048576.0, s.model_bytes / 1048576.0);
                return 0;
            }};
}

}  // namespace pkv::cli
