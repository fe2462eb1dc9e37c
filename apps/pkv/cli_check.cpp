// `pkv check`: compare a report against a baseline; exit 1 on a regression.
#include <cstdio>

#include "commands.h"
#include "pkv/pipeline/check.h"

namespace pkv::cli {

Command add_check(CLI::App& root) {
    struct Args {
        CheckConfig config;
        std::string tolerance;
    };
    auto args = std::make_shared<Args>();
    auto* app = root.add_subcommand(
        "check", "compare an analyze or eval JSON report against a baseline (exit 1 on a regression)");
    app->add_option("--report", args->config.report_path, "new report (pkv analyze --json or pkv eval --json)")
        ->required()
        ->check(CLI::ExistingFile);
    app->add_option("--baseline", args->config.baseline_path, "baseline report of the same kind")->required();
    app->add_option("--tolerance", args->tolerance,
                    "per-metric tolerances over the defaults nmse=5%,kl=10%,rel=5%,ppl=0.5%,top1=0.5,bits=0 "
                    "(N% relative, N absolute; top1 absolute in percentage points)");
    app->add_option("--junit", args->config.junit_path, "also write a JUnit XML file (one testcase per group)");
    app->add_flag("--update", args->config.update,
                  "after the comparison, replace (or create) the baseline with the report; exit 0");
    for (auto* opt : app->get_options())
        if (opt->get_expected_max() == 1) opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

    return {app, [args]() {
                CheckConfig c = args->config;
                if (!args->tolerance.empty()) c.tolerances = parse_tolerances(args->tolerance);
                c.print = [](const std::string& md) {
                    std::fputs(md.c_str(), stdout);
                    std::fflush(stdout);
                };
                return run_check(c).exit_code();
            }};
}

}  // namespace pkv::cli
