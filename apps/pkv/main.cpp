// pkv command-line entry: parse, dispatch to one subcommand, map errors to exit codes.
//
// Exit status: 0 success; 1 a command failed (bad input file, I/O, validation
// problems found); 2 invalid usage or arguments; 130 interrupted.
#include <cstdio>
#include <exception>
#include <new>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/core/version.h"

int main(int argc, char** argv) noexcept {
    pkv::cli::set_argv(argc, argv);
    CLI::App app{"pkv: offline KV-cache quantization toolkit (PatternKV calibration and analysis)", "pkv"};
    app.set_version_flag("--version", std::string("pkv ") + PKV_VERSION + " (" + PKV_GIT_COMMIT + ")");
    app.require_subcommand(1);
    std::string log_level = "info";
    app.add_option("--log-level", log_level, "stderr verbosity: debug|info|warn|error|quiet")->capture_default_str();

    std::vector<pkv::cli::Command> commands;
    try {
        commands = {pkv::cli::add_dump(app),      pkv::cli::add_info(app),    pkv::cli::add_validate(app),
                    pkv::cli::add_generate(app),  pkv::cli::add_devices(app), pkv::cli::add_analyze(app),
                    pkv::cli::add_calibrate(app), pkv::cli::add_export(app),  pkv::cli::add_eval(app),
                    pkv::cli::add_check(app),     pkv::cli::add_tokenize(app)};
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pkv: error: %s\n", e.what());
        return 2;
    }

    try {
        pkv::log::set_level(pkv::log::parse_level(log_level));
        for (auto& c : commands)
            if (c.app->parsed()) return c.run();
        return 2;
    } catch (const pkv::Error& e) {
        std::fprintf(stderr, "pkv: error: %s\n", e.what());
        return pkv::cli::exit_code(e);
    } catch (const std::bad_alloc&) {
        std::fprintf(stderr, "pkv: error: out of memory\n");
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pkv: error: %s\n", e.what());
        return 1;
    } catch (...) {
        std::fprintf(stderr, "pkv: error: unknown failure\n");
        return 1;
    }
}
