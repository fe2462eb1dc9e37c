// `pkv info` and `pkv validate`: summaries and spec checks of models, dumps and pattern tables.
#include <cstdio>

#include "commands.h"
#include "pkv/core/error.h"
#include "pkv/pipeline/inspect.h"

namespace pkv::cli {

namespace {
std::vector<std::string> g_argv;
}

const std::vector<std::string>& argv_strings() { return g_argv; }
void set_argv(int argc, char** argv) { g_argv.assign(argv, argv + argc); }

int exit_code(const std::exception& e) {
    const auto* pe = dynamic_cast<const Error*>(&e);
    if (!pe) return 1;
    switch (pe->code()) {
        case ErrorCode::invalid_argument: return 2;
        case ErrorCode::interrupted: return 130;
        default: return 1;
    }
}

Command add_info(CLI::App& root) {
    struct Args {
        std::string path;
        bool tensors = false, json = false;
    };
    auto args = std::make_shared<Args>();
    auto* app = root.add_subcommand("info", "print a readable summary of a GGUF model, a KV dump or a pattern table");
    app->add_option("file", args->path, "GGUF model, HDF5 KV dump or pattern table")
        ->required()
        ->check(CLI::ExistingFile);
    app->add_flag("--tensors", args->tensors, "list every tensor of a GGUF model");
    app->add_flag("--json", args->json, "print machine-readable JSON instead");
    return {app, [args]() {
                if (args->json)
                    // Names and strings from a file need not be UTF-8: replace bad bytes, never fail.
                    std::printf("%s\n", describe_file_json(args->path)
                                            .dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
                                            .c_str());
                else std::fputs(describe_file(args->path, args->tensors).c_str(), stdout);
                return 0;
            }};
}

Command add_validate(CLI::App& root) {
    auto path = std::make_shared<std::string>();
    auto* app = root.add_subcommand("validate",
                                    "check a KV dump, a pattern table (or a GGUF model) and list every problem found");
    app->add_option("file", *path, "HDF5 KV dump, pattern table or GGUF model")->required()->check(CLI::ExistingFile);
    return {app, [path]() {
                const auto problems = validate_file(*path);
                for (const auto& p : problems) std::printf("%s\n", p.c_str());
                if (problems.empty()) {
                    std::printf("%s: valid\n", path->c_str());
                    return 0;
                }
                std::fprintf(stderr, "pkv: error: %s: %zu problem(s) found\n", path->c_str(), problems.size());
                return 1;
            }};
}

}  // namespace pkv::cli
