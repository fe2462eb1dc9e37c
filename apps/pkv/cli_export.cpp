// `pkv export`: a pattern table as safetensors (re-ordered / F16), GGUF or JSON, or the
// table's fp16 skip list and KV precision plan for runtimes (vllm-skip, modelopt, kv-plan-json).
#include <cstdio>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "commands.h"
#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/int_list.h"
#include "pkv/pipeline/export.h"
#include "pkv/pipeline/export_lists.h"

namespace pkv::cli {

Command add_export(CLI::App& root) {
    struct Args {
        std::string table, out;
        ExportOptions options;
        KvPlanOptions plan;
        std::string keep_layers;
    };
    auto args = std::make_shared<Args>();
    auto* app = root.add_subcommand(
        "export", "write a pattern table as safetensors, GGUF or JSON, or its fp16 skip list and KV precision plan");
    app->add_option("--table", args->table, "pattern table (safetensors) from pkv calibrate")
        ->required()
        ->check(CLI::ExistingFile);
    app->add_option("--format", args->options.format,
                    "output format: safetensors, gguf or json (the table); vllm-skip, modelopt or kv-plan-json "
                    "(which layers keep an fp16 KV cache, for runtimes)")
        ->required();
    app->add_option("--out,-o", args->out, "output file")->required();
    auto* key_order = app->add_option("--key-order", args->options.key_order,
                                      "key head-dimension order of the output: gguf (interleaved pairs) or hf "
                                      "(half-split); default: the table's");
    auto* dtype = app->add_option("--dtype", args->options.dtype, "pattern dtype: f32 or f16")->capture_default_str();
    auto* report = app->add_option("--report", args->plan.report_path,
                                   "vllm-skip, modelopt, kv-plan-json: an analyze report (JSON) whose "
                                   "fragile.keep_fp16_layers stay fp16");
    auto* keep = app->add_option("--keep-fp16-layers", args->keep_layers,
                                 "vllm-skip, modelopt, kv-plan-json: layers that stay fp16, e.g. 0,5,7");
    auto* algo = app->add_option("--kv-cache-algo", args->plan.kv_cache_algo,
                                 "modelopt: kv_cache_quant_algo of the quantized layers: FP8 (default), INT8, NVFP4 "
                                 "or NVFP4_AFFINE");
    app->add_flag("--force,-f", args->options.force, "overwrite an existing output");
    for (auto* opt : app->get_options())
        if (opt->get_expected_max() == 1) opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

    return {app, [args, key_order, dtype, report, keep, algo]() {
                // Until the export has read its inputs and polls, a signal ends it at once (status 130).
                install_exit_on_interrupt();
                const std::string& format = args->options.format;
                if (is_kv_plan_format(format)) {
                    for (const CLI::Option* o : {key_order, dtype})
                        PKV_CHECK(o->count() == 0, invalid_argument,
                                  "{}: only with --format safetensors, gguf or json, "
                                  "got --format {}",
                                  o->get_name(), format);
                    KvPlanOptions p = args->plan;
                    if (!args->keep_layers.empty())
                        p.keep_fp16_layers = parse_int_list("--keep-fp16-layers", args->keep_layers);
                    p.format = format;
                    p.force = args->options.force;
                    p.argv = argv_strings();
                    const KvPlanSummary s = export_kv_plan(args->table, args->out, p);
                    const std::string fp16 =
                        s.fp16_layers.empty() ? std::string("none") : fmt::format("{}", fmt::join(s.fp16_layers, ","));
                    fmt::print("wrote {}: {}, {} layers: {} fp16 ({}), {} quantized with patternkv, {} bytes\n",
                               s.out_path, s.format, s.n_layer, s.fp16_layers.size(), fp16, s.quantized, s.bytes);
                    return 0;
                }
                for (const CLI::Option* o : {report, keep, algo})
                    PKV_CHECK(o->count() == 0, invalid_argument,
                              "{}: only with --format vllm-skip, modelopt or kv-plan-json, got --format {}",
                              o->get_name(), format);
                const ExportSummary s = export_pattern_table(args->table, args->out, args->options);
                std::printf("wrote %s: %s, %zu tensors, key order %s, patterns %s, %llu bytes\n", s.out_path.c_str(),
                            s.format.c_str(), s.tensors, s.key_dim_order.c_str(), s.dtype.c_str(),
                            static_cast<unsigned long long>(s.bytes));
                return 0;
            }};
}

}  // namespace pkv::cli
