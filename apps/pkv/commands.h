// apps/pkv/commands.h — one small file per subcommand. Each `add_*` registers its
// options on the root app and returns a runner that validates what CLI11 cannot
// and makes one library call; it returns the process exit status.
#pragma once

#include <exception>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace pkv::cli {

struct Command {
    CLI::App* app = nullptr;
    std::function<int()> run;
};

/// argv as given, recorded in outputs for provenance.
const std::vector<std::string>& argv_strings();
void set_argv(int argc, char** argv);

/// The exit status of a failed command: 2 for invalid arguments, 130 when
/// interrupted, 1 otherwise.
int exit_code(const std::exception& e);

Command add_dump(CLI::App& root);
Command add_info(CLI::App& root);
Command add_validate(CLI::App& root);
Command add_generate(CLI::App& root);
Command add_devices(CLI::App& root);
Command add_analyze(CLI::App& root);
Command add_calibrate(CLI::App& root);
Command add_export(CLI::App& root);
Command add_eval(CLI::App& root);
Command add_check(CLI::App& root);
Command add_tokenize(CLI::App& root);

}  // namespace pkv::cli
