// pkv command-line entry: parse, dispatch to one subcommand, map errors to exit codes.
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include "pkv/core/error.h"
#include "pkv/core/version.h"

int main(int argc, char** argv) {
    CLI::App app{"pkv: offline KV-cache quantization toolkit", "pkv"};
    app.set_version_flag("--version", std::string("pkv ") + PKV_VERSION + " (" + PKV_GIT_COMMIT + ")");
    CLI11_PARSE(app, argc, argv);
    return 0;
}
