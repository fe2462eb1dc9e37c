// `pkv analyze`: simulate KV-cache quantization methods on a dump and report errors.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>

#include "commands.h"
#include "device_select.h"
#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/int_list.h"
#include "pkv/core/log.h"
#include "pkv/pipeline/analyze.h"
#include "pkv/report/report.h"
#include "stream_options.h"

namespace pkv::cli {

namespace {
struct AnalyzeArgs {
    AnalyzeConfig config;
    std::string methods = "fp16,kivi,patternkv,q4_0,q8_0,fp8";
    std::string bits = "2,4";
    std::string layers, heads;
    std::string keys = "post";
    std::string assign = "minmax";
    std::string json_path, html_path;
    bool force = false;
    StreamArgs stream;
    std::string device;  // empty: the model (--model) on auto, the metrics on the CPU
};

void write_text(AtomicOutput& out, const std::string& text) { out.write_and_commit(text.data(), text.size()); }
}  // namespace

Command add_analyze(CLI::App& root) {
    auto args = std::make_shared<AnalyzeArgs>();
    auto* app = root.add_subcommand("analyze", "simulate KV-cache quantization methods on a KV dump and report errors");
    auto& c = args->config;
    app->add_option("--dump,-d", c.dump_path, "KV dump (HDF5) written by pkv dump (or --model)");
    add_stream_options(app, c.stream, args->stream);
    app->add_option("--block-tokens", c.block_tokens,
                    "with --model: tokens run and held at a time (whole sequences; 0: all at once)")
        ->capture_default_str();
    app->add_option("--device", args->device,
                    "where the cache simulation and attention metrics (and with --model the model) run: cpu, cuda, "
                    "cuda:N or auto (a GPU when there is one); default: the metrics on the CPU, the model on auto");
    app->add_option("--methods", args->methods, "comma list of fp16, kivi, patternkv, q4_0, q8_0, fp8, patternkv-table")
        ->capture_default_str();
    app->add_option("--bits", args->bits, "code widths for kivi and patternkv (each 2, 3, 4 or 8)")
        ->capture_default_str();
    app->add_option("--group", c.group,
                    "quantization group: K tokens per channel group; V channels (capped at head_dim)")
        ->capture_default_str();
    app->add_option("--window", c.window, "fp16 window / flush block length R (tokens)")->capture_default_str();
    app->add_option("--prefill", c.prefill,
                    "prompt tokens per sequence (default: half of it, rounded down to a multiple of --window)");
    app->add_option("--patterns", c.patterns, "patternkv: k-means patterns mined from the prefill")
        ->capture_default_str();
    app->add_option("--pattern-cap", c.pattern_cap, "patternkv: bank size limit (0: unbounded)")->capture_default_str();
    app->add_option("--keys", args->keys, "pre or post: keys before or after RoPE")->capture_default_str();
    app->add_option("--assign", args->assign, "patternkv decode assignment: minmax or l2")->capture_default_str();
    app->add_flag("--rotate", c.rotate, "also run every method on Hadamard-rotated heads");
    app->add_option("--layers", args->layers, "model layers, e.g. 0,5,10-12 (default: all stored)");
    app->add_option("--heads", args->heads, "KV heads, e.g. 0,2 (default: all)");
    app->add_option("--attn-stride", c.attn_stride, "score every S-th query position")->capture_default_str();
    app->add_option("--seed", c.seed, "k-means seed")->capture_default_str();
    app->add_option("--table", c.table_path,
                    "pattern table (pkv calibrate) for the patternkv-table method; adds it to --methods");
    app->add_option("--json", args->json_path, "write the JSON report here");
    app->add_option("--html", args->html_path, "write an HTML report here");
    app->add_flag("--force,-f", args->force, "overwrite existing outputs");
    for (auto* opt : app->get_options())
        if (opt->get_expected_max() == 1) opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

    return {app, [args]() {
                AnalyzeConfig cfg = args->config;
                cfg.methods = parse_method_list(args->methods);
                if (!cfg.table_path.empty() &&
                    std::find(cfg.methods.begin(), cfg.methods.end(), KvMethod::patternkv_table) == cfg.methods.end())
                    cfg.methods.push_back(KvMethod::patternkv_table);
                cfg.bits = parse_int_list("--bits", args->bits);
                if (!args->layers.empty()) cfg.layers = parse_int_list("--layers", args->layers);
                if (!args->heads.empty()) cfg.heads = parse_int_list("--heads", args->heads);
                PKV_CHECK(args->keys == "pre" || args->keys == "post", invalid_argument,
                          "--keys: expected pre or post, got '{}'", args->keys);
                cfg.keys_pre = args->keys == "pre";
                PKV_CHECK(args->assign == "minmax" || args->assign == "l2", invalid_argument,
                          "--assign: expected minmax or l2, got '{}'", args->assign);
                cfg.assign_l2 = args->assign == "l2";
                resolve_stream(cfg.stream, args->stream);
                PKV_CHECK(!cfg.stream.model_path.empty() != !cfg.dump_path.empty(), invalid_argument,
                          cfg.dump_path.empty()
                              ? "--dump or --model: expected a KV dump or a model to stream from, got neither"
                              : "--model and --dump: expected one source of activations, got both");
                if (!cfg.stream.model_path.empty())
                    cfg.stream.engine = select_engine(args->device.empty() ? "auto" : args->device);
                if (!args->device.empty()) select_analyze_device(args->device, cfg.attention, cfg.simulator);
                cfg.argv = argv_strings();
                // Until run_analyze switches to polling check_interrupted(), a signal ends the
                // run at once (status 130), also while the input is being opened.
                install_exit_on_interrupt();
                // Claim the outputs first so a long run cannot end on an existing file.
                std::optional<AtomicOutput> json_out, html_out;
                if (!args->json_path.empty()) json_out.emplace(args->json_path, args->force);
                if (!args->html_path.empty()) html_out.emplace(args->html_path, args->force);
                const AnalyzeResult result = run_analyze(cfg);
                const AnalyzeTimes& t = result.times;
                log::info(
                    "time: reading (waits) {:.2f} s, cache simulation {:.2f} s ({}), errors and flatness {:.2f} s, "
                    "attention {:.2f} s ({})",
                    t.read_wait, t.simulate, result.sim_device, t.measure, t.attention, result.device);
                const nlohmann::json report = analyze_report_json(result);
                if (json_out) write_text(*json_out, report.dump(1) + "\n");
                if (html_out) write_text(*html_out, render_html(report));
                std::fputs(render_markdown(report).c_str(), stdout);
                return 0;
            }};
}

}  // namespace pkv::cli
