// `pkv calibrate`: mine K/V patterns from KV dumps and write a pattern table.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "commands.h"
#include "device_select.h"
#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/int_list.h"
#include "pkv/distributed/comm.h"
#include "pkv/pipeline/analyze.h"
#include "pkv/pipeline/calibrate.h"
#include "stream_options.h"

namespace pkv::cli {

namespace {
struct CalibrateArgs {
    CalibrateConfig config;
    std::string keys = "post";
    std::string assign = "minmax";
    std::string init = "kmeanspp";
    std::string layers;
    std::string device = "auto";
    std::string devices;
    std::string reduce = "auto";
    std::string fit = "mse";
    std::string objective = "kv";
    std::string bits_measure = "attention";
    std::string restart_pick = "inertia";
    StreamArgs stream;
};

void print_summary(const PatternTable& t) {
    const nlohmann::json m = calibration_means(t);
    const nlohmann::json& c = t.calibration;
    std::printf("pattern table: %zu layers x %d KV heads, Mk = %d, Mv = %d, head_dim %d, %d-bit residuals (G = %d)\n",
                t.layers.size(), t.model.n_head_kv, t.k_patterns, t.v_patterns, t.model.head_dim, t.bits, t.group);
    std::printf("objective %s; tokens: %lld train, %lld held out; device %s; %.1f s (k-means %.1f s)\n\n",
                c.value("objective", std::string("kv")).c_str(),
                static_cast<long long>(c["tokens"]["train"].get<int64_t>()),
                static_cast<long long>(c["tokens"]["holdout"].get<int64_t>()), c["device"].get<std::string>().c_str(),
                c["seconds"].get<double>(), c["kmeans"]["seconds"].get<double>());
    if (t.has_allocation()) {
        const nlohmann::json& a = c["allocation"];
        const nlohmann::json& n = a["heads_per_width"];
        std::printf(
            "widths under --bits-budget %g: %.4f bits per element; K/V heads at 2/3/4/8/16 bits: %d/%d/%d/%d/%d\n\n",
            t.alloc_budget, t.alloc_bits, n["2"].get<int>(), n["3"].get<int>(), n["4"].get<int>(), n["8"].get<int>(),
            n["16"].get<int>());
    }
    std::printf(
        "| tensor | var. explained | dead patterns | clip | gate z | held-out NMSE: min-max | min-max "
        "clipped | patterns | patterns fitted |\n");
    std::printf("|---|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    auto num = [](const nlohmann::json& j, const char* k, const char* f) {
        static thread_local char buf[32];
        if (!j.contains(k)) return "-";
        std::snprintf(buf, sizeof buf, f, j[k].get<double>());
        return static_cast<const char*>(buf);
    };
    for (const char* tensor : {"k", "v"}) {
        const nlohmann::json& s = m[tensor];
        std::printf("| %s | %s", tensor, num(s, "variance_explained", "%.3f"));
        std::printf(" | %s", num(s, "dead_patterns", "%.2f"));
        std::printf(" | %s", num(s, "clip", "%.3f"));
        std::printf(" | %s", num(s, "gate_z", "%.2f"));
        std::printf(" | %s", num(s, "heldout_nmse_minmax", "%.4e"));
        std::printf(" | %s", num(s, "heldout_nmse_minmax_clipped", "%.4e"));
        std::printf(" | %s", num(s, "heldout_nmse_patterns", "%.4e"));
        std::printf(" | %s |\n", num(s, "heldout_nmse_fitted", "%.4e"));
    }
    std::printf(
        "\n(means over %zu heads; held-out NMSE: plain min-max, min-max with its own fitted clip ratio,\n"
        " patterns with default parameters, patterns with the fitted clip ratios and gate)\n",
        c["heads"].size());
}

// What is mined and what the table records: inputs, output, pattern counts, basis and
// the residual quantizer the fit targets.
void add_table_options(CLI::App* app, CalibrateArgs& args) {
    auto& c = args.config;
    app->add_option("--dump,-d", c.dump_paths, "KV dumps (HDF5) written by pkv dump, one model (or --model)");
    add_stream_options(app, c.stream, args.stream);
    app->add_option("--sample-tokens", c.stream.sample_tokens,
                    "with --model: tokens mined, a seeded sample of whole sequences (0: every token)")
        ->capture_default_str()
        ->needs(args.stream.model);
    app->add_option("--out,-o", c.out_path, "pattern table to write (.safetensors)")->required();
    app->add_option("--k-patterns", c.k_patterns, "key patterns per (layer, KV head)")->capture_default_str();
    app->add_option("--v-patterns", c.v_patterns, "value patterns per (layer, KV head)")->capture_default_str();
    app->add_option("--keys", args.keys, "pre or post: mine keys before or after RoPE")->capture_default_str();
    app->add_option("--assign", args.assign, "how runtimes pick a pattern: minmax or l2")->capture_default_str();
    app->add_option("--bits", c.bits, "residual code width the fit targets (2, 3, 4 or 8)")->capture_default_str();
    auto* budget =
        app->add_option("--bits-budget", c.bits_budget,
                        "mean bits per cached K/V element, all in (codes, scales, zeros, indices, gates): choose each "
                        "(layer, KV head, K/V)'s width among 2, 3, 4, 8 and 16 (fp16) by its measured error; --bits "
                        "stays the width of the statistics (0: none)")
            ->capture_default_str();
    app->add_option("--bits-floor", c.bits_floor,
                    "the narrowest width --bits-budget may give a head (2, 3, 4 or 8); the budget is spent from "
                    "every head at this width")
        ->capture_default_str()
        ->needs(budget);
    app->add_option("--budget-ctx", c.budget_ctx,
                    "sequence length --bits-budget is counted for (a sliding-window layer holds fewer of its "
                    "tokens; eval's --ctx)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    app->add_option("--bits-measure", args.bits_measure,
                    "what --bits-budget compares heads by: attention (the error of each K/V head's query heads' "
                    "attention output at each width; needs /q) or kv (each K/V head's NMSE at each width)")
        ->capture_default_str()
        ->needs(budget);
    app->add_option("--group", c.group, "quantization group: K tokens per channel group; V channels")
        ->capture_default_str();
    app->add_option("--outliers", c.outliers,
                    "elements of each quantizer group the runtime keeps exact (eval's outN): fit the clip ratios "
                    "with them held out and record the count in the table (0..8)")
        ->capture_default_str();
    app->add_option("--window", c.window, "fp16 window / flush block length recorded for runtimes")
        ->capture_default_str();
    app->add_flag("--rotate", c.rotate, "mine in the Hadamard-rotated basis");
}

// Where and how the mining runs: devices, ranks, the held-out split, k-means and the fit.
void add_run_options(CLI::App* app, CalibrateArgs& args) {
    auto& c = args.config;
    app->add_option("--device", args.device,
                    "cuda, cuda:N, cpu or auto: where k-means runs and, with --model, the model (under mpirun, "
                    "cuda and auto take the rank's GPU on its host)")
        ->capture_default_str();
    app->add_option("--devices", args.devices,
                    "all or GPU indices (0,1,...): spread the (layer, head) problems over these GPUs");
    app->add_option("--shard-above", c.shard_above,
                    "heads with more training tokens run data parallel over all devices and MPI ranks (0: when "
                    "they exceed one device's memory)")
        ->capture_default_str();
    app->add_option("--reduce", args.reduce,
                    "where data-parallel heads add their shards' sums each iteration: nccl (on the GPUs; needs "
                    "distinct GPUs), host, or auto (nccl when possible)")
        ->capture_default_str();
    app->add_option("--holdout", c.holdout, "fraction of tokens held out (whole sequences) to measure the table")
        ->capture_default_str();
    app->add_option("--seed", c.seed, "seed of the split and of k-means")->capture_default_str();
    app->add_option("--layers", args.layers, "model layers, e.g. 0,5,10-12 (default: all stored)");
    app->add_option("--iterations", c.max_iter, "k-means Lloyd iterations")->capture_default_str();
    app->add_option("--init", args.init, "k-means initialisation: kmeanspp or random")->capture_default_str();
    app->add_option("--restarts", c.restarts, "k-means runs per K/V head (--restart-pick chooses one)")
        ->capture_default_str();
    app->add_option("--restart-pick", args.restart_pick,
                    "which of the --restarts runs each K/V head keeps: inertia (the lowest training objective) or "
                    "attention (the lowest held-out attention-output error of its fitted table; needs /q, and "
                    "/k_post with --keys pre)")
        ->capture_default_str();
    app->add_option("--max-points-per-centroid", c.max_points_per_centroid,
                    "k-means training subsample per centroid (0: all tokens)")
        ->capture_default_str();
    app->add_option("--fit-tokens", c.fit_tokens, "training tokens per head used to fit clip ratios and gate")
        ->capture_default_str();
    app->add_option("--fit", args.fit,
                    "residual parameters: mse (fit clip ratios and gate z on the training tokens) or none (clip 1, "
                    "the paper's z)")
        ->capture_default_str();
    app->add_option(
           "--objective", args.objective,
           "what the key fit minimises: kv (raw K/V error), qk (key error weighted by the queries' "
           "second moments; needs /q), qk-mine (qk, and key k-means in that metric) or qk-full (the full query "
           "second-moment matrix, in the fit and the key k-means)")
        ->capture_default_str();
    app->add_flag("--force,-f", c.force, "overwrite an existing table");
}

// The config run_calibrate takes: the string options checked and turned into its fields,
// and an existing output refused unless --force (before any work is done).
CalibrateConfig resolve_config(const CalibrateArgs& args) {
    CalibrateConfig cfg = args.config;
    PKV_CHECK(args.keys == "pre" || args.keys == "post", invalid_argument, "--keys: expected pre or post, got '{}'",
              args.keys);
    cfg.keys_pre = args.keys == "pre";
    PKV_CHECK(args.assign == "minmax" || args.assign == "l2", invalid_argument,
              "--assign: expected minmax or l2, got '{}'", args.assign);
    cfg.assign_l2 = args.assign == "l2";
    PKV_CHECK(args.init == "kmeanspp" || args.init == "random", invalid_argument,
              "--init: expected kmeanspp or random, got '{}'", args.init);
    cfg.init = args.init == "random" ? KMeansInit::random : KMeansInit::kmeanspp;
    PKV_CHECK(args.reduce == "auto" || args.reduce == "nccl" || args.reduce == "host", invalid_argument,
              "--reduce: expected auto, nccl or host, got '{}'", args.reduce);
    PKV_CHECK(args.fit == "mse" || args.fit == "none", invalid_argument, "--fit: expected mse or none, got '{}'",
              args.fit);
    cfg.fit = args.fit == "mse";
    cfg.objective = parse_calib_objective(args.objective);
    PKV_CHECK(args.bits_measure == "kv" || args.bits_measure == "attention", invalid_argument,
              "--bits-measure: expected kv or attention, got '{}'", args.bits_measure);
    cfg.bits_measure_attention = args.bits_measure == "attention";
    cfg.restart_pick = parse_restart_pick(args.restart_pick);
    if (!args.layers.empty()) cfg.layers = parse_int_list("--layers", args.layers);
    resolve_stream(cfg.stream, args.stream);
    PKV_CHECK(!cfg.stream.model_path.empty() != !cfg.dump_paths.empty(), invalid_argument,
              cfg.dump_paths.empty() ? "--dump or --model: expected a KV dump or a model to stream from, got neither"
                                     : "--model and --dump: expected one source of activations, got both");
    PKV_CHECK(cfg.force || !std::filesystem::exists(cfg.out_path), failed_precondition,
              "{}: exists (use --force to overwrite)", cfg.out_path);
    return cfg;
}

// Picks the devices (--devices, or --device joined with the other ranks'), runs the
// calibration and, on any error, ends every MPI rank so that none waits.
PatternTable calibrate_on_devices(CalibrateConfig& cfg, const CalibrateArgs& args, const dist::Comm& comm) {
    try {
        // Rank 0 writes the table: find out now, not after the k-means, that its
        // directory is missing or read-only (nothing is created yet).
        if (comm.rank() == 0) AtomicOutput probe(cfg.out_path, cfg.force);
        std::vector<SelectedDevice> devs;
        if (!args.devices.empty()) {
            devs = select_devices(args.devices, args.reduce);
        } else {
            devs.push_back(select_device(args.device, comm.local_rank()));
            join_rank_group(devs.front(), comm, args.reduce);
        }
        if (!cfg.stream.model_path.empty()) cfg.stream.engine = select_engine(args.device, comm.local_rank());
        std::vector<KMeansAssigner*> assigners;
        cfg.device.clear();
        for (const SelectedDevice& d : devs) {
            assigners.push_back(d.assigner.get());
            cfg.device += (cfg.device.empty() ? "" : ", ") + d.description;
        }
        return run_calibrate(cfg, assigners, &comm);
    } catch (const std::exception& e) {
        // Under MPI: end every rank now (naming this one), so none waits and no table is written.
        comm.abort(e.what(), exit_code(e));
        throw;
    }
}

int run_calibrate_command(const CalibrateArgs& args) {
    // run_calibrate does not poll check_interrupted(): end at once on the
    // first signal, removing the table's temporary if it is being written.
    install_exit_on_interrupt();
    CalibrateConfig cfg = resolve_config(args);
    const dist::Comm& comm = dist::Comm::world();
    cfg.argv = argv_strings();
    const PatternTable t = calibrate_on_devices(cfg, args, comm);
    if (comm.rank() != 0) return 0;
    print_summary(t);
    std::printf("\nwrote %s\n", cfg.out_path.c_str());
    return 0;
}

}  // namespace

Command add_calibrate(CLI::App& root) {
    auto args = std::make_shared<CalibrateArgs>();
    auto* app = root.add_subcommand(
        "calibrate", "mine K/V patterns from KV dumps (or a model run over text) and write a pattern table");
    add_table_options(app, *args);
    add_run_options(app, *args);
    for (auto* opt : app->get_options())
        if (opt->get_expected_max() == 1) opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    return {app, [args]() { return run_calibrate_command(*args); }};
}

}  // namespace pkv::cli
