// `pkv export`: a pattern table as safetensors (re-ordered / F16), GGUF or JSON.
#include <cstdio>

#include "commands.h"
#include "pkv/core/atomic_file.h"
#include "pkv/pipeline/export.h"

namespace pkv::cli {

Command add_export(CLI::App& root) {
    struct Args {
        std::string table, out;
        ExportOptions options;
    };
    auto args = std::make_shared<Args>();
    auto* app = root.add_subcommand("export", "write a pattern table as safetensors, GGUF or JSON");
    app->add_option("--table", args->table, "pattern table (safetensors) from pkv calibrate")
        ->required()
        ->check(CLI::ExistingFile);
    app->add_option("--format", args->options.format, "output format: safetensors, gguf or json")->required();
    app->add_option("--out,-o", args->out, "output file")->required();
    app->add_option("--key-order", args->options.key_order,
                    "key head-dimension order of the output: gguf (interleaved pairs) or hf (half-split); "
                    "default: the table's");
    app->add_option("--dtype", args->options.dtype, "pattern dtype: f32 or f16")->capture_default_str();
    app->add_flag("--force,-f", args->options.force, "overwrite an existing output");
    for (auto* opt : app->get_options())
        if (opt->get_expected_max() == 1) opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

    return {app, [args]() {
                // Until export_pattern_table has read the table and polls, a signal ends
                // the export at once (status 130).
                install_exit_on_interrupt();
                const ExportSummary s = export_pattern_table(args->table, args->out, args->options);
                std::printf("wrote %s: %s, %zu tensors, key order %s, patterns %s, %llu bytes\n", s.out_path.c_str(),
                            s.format.c_str(), s.tensors, s.key_dim_order.c_str(), s.dtype.c_str(),
                            static_cast<unsigned long long>(s.bytes));
                return 0;
            }};
}

}  // namespace pkv::cli
