// `pkv eval`: perplexity, KL and top-1 agreement with quantized KV caches against fp16.
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>

#include "commands.h"
#include "device_select.h"
#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/int_list.h"
#include "pkv/pipeline/analyze.h"
#include "pkv/pipeline/eval.h"
#include "pkv/report/report.h"

namespace pkv::cli {

namespace {
struct EvalArgs {
    EvalConfig config;
    std::string keep_layers;
    std::string position_buckets;
    std::string device = "cpu";
    std::string engine = "host";
    std::string json_path, md_path;
    bool force = false;
};

void write_text(AtomicOutput& out, const std::string& text) { out.write_and_commit(text.data(), text.size()); }
}  // namespace

Command add_eval(CLI::App& root) {
    auto args = std::make_shared<EvalArgs>();
    auto* app = root.add_subcommand(
        "eval", "perplexity, KL and top-1 agreement against fp16 with the KV cache held as each method holds it");
    auto& c = args->config;
    app->add_option("--model,-m", c.model_path, "GGUF model (llama, qwen2, qwen3 or gemma3 architecture)")->required();
    auto* text = app->add_option("--text,-t", c.text_paths, "text file(s), tokenized as pkv dump does");
    app->add_option("--token-ids", c.token_ids_path,
                    "instead of --text: the model's token ids, little-endian int32, 4 bytes each, no header")
        ->excludes(text);
    app->add_option("--tokens,-n", c.n_tokens, "tokens to evaluate")->capture_default_str();
    app->add_option("--ctx,-c", c.ctx, "tokens per sequence (<= the model's context length)")->capture_default_str();
    app->add_option("--kv", c.kv,
                    "method specs, e.g. fp16 kivi:2 kivi:4:g32 patternkv:2 q4_0 q8_0 fp8 q4_0:rot kivi:2:pre "
                    "(grammar: docs/eval.md)")
        ->required();
    app->add_option("--keep-fp16-layers", args->keep_layers,
                    "layers whose cache stays fp16 for every method, e.g. 0,1");
    app->add_option("--prefill", c.prefill,
                    "prompt tokens per sequence (default: half of it, rounded down to a multiple of 128)");
    auto* buckets =
        app->add_option("--position-buckets", args->position_buckets,
                        "edges of the position buckets the report breaks figures down by: ascending, the first 0 "
                        "(default 0,1024,4096)");
    app->add_option("--seed", c.seed, "patternkv k-means seed")->capture_default_str();
    app->add_flag("--bos-each-sequence", c.bos_each_sequence,
                  "write BOS over the first token of every sequence (llama-perplexity's protocol)");
    app->add_option("--device", args->device,
                    "where the forward passes run: cpu, cuda, cuda:N (bf16 weights) or auto (a GPU when there is "
                    "one); on a GPU every method's cache is simulated there too (patternkv's on the host with "
                    "PKV_CUDA_PATTERNKV=0; see --host-cache)")
        ->capture_default_str();
    app->add_option("--engine", args->engine,
                    "who computes each method's attention: host (the model over the simulated cache) or runtime "
                    "(the packed cache's decode attention, CPU only; fp16, kivi and post-RoPE patternkv-table)")
        ->check(CLI::IsMember({"host", "runtime"}))
        ->capture_default_str();
    app->add_flag("--host-cache", args->config.host_cache,
                  "simulate every method's cache on host threads through the engine's hook, even where the "
                  "device engine could keep it on the device (to compare the two)");
    app->add_option("--json", args->json_path, "write the JSON report here");
    app->add_option("--md", args->md_path, "write the Markdown table here");
    app->add_flag("--force,-f", args->force, "overwrite existing outputs");
    for (auto* opt : app->get_options())
        if (opt->get_expected_max() == 1) opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

    return {app, [args, buckets]() {
                EvalConfig cfg = args->config;
                if (!args->keep_layers.empty())
                    cfg.keep_fp16_layers = parse_int_list("--keep-fp16-layers", args->keep_layers);
                if (buckets->count() > 0) cfg.position_buckets = parse_position_buckets(args->position_buckets);
                cfg.argv = argv_strings();
                if (args->engine == "runtime") {
                    PKV_CHECK(args->device == "cpu", unsupported,
                              "--engine runtime with --device {}: the packed cache's decode attention runs on the CPU "
                              "only for now: expected --device cpu",
                              args->device);
                    cfg.attention = EvalAttention::runtime;
                }
                cfg.engine = select_engine(args->device);
                // Until run_eval switches to polling check_interrupted(), a signal ends the
                // run at once (status 130), also while the input is being opened.
                install_exit_on_interrupt();
                // Claim the outputs first so a long run cannot end on an existing file.
                std::optional<AtomicOutput> json_out, md_out;
                if (!args->json_path.empty()) json_out.emplace(args->json_path, args->force);
                if (!args->md_path.empty()) md_out.emplace(args->md_path, args->force);
                const nlohmann::json report = eval_report_json(run_eval(cfg));
                const std::string md = render_eval_markdown(report);
                if (json_out) write_text(*json_out, report.dump(1) + "\n");
                if (md_out) write_text(*md_out, md);
                std::fputs(md.c_str(), stdout);
                return 0;
            }};
}

}  // namespace pkv::cli
