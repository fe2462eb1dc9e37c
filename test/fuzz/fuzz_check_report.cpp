// libFuzzer target: the report reader of `pkv check` on arbitrary bytes. run_check takes
// two files, so the input is split at NUL bytes, which JSON text never contains:
//   NEW '\0' BASE ['\0' TOLERANCES]
// without a NUL the input is compared with itself. NEW and BASE are `pkv analyze --json`
// or `pkv eval --json` reports (make_seeds.cpp writes pairs trimmed from
// test/baselines/); TOLERANCES is a --tolerance string. The comparison also writes the
// JUnit XML, so the escaping of names taken from the reports runs too. docs/fuzzing.md
// lists what counts as a finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_common.h"
#include "pkv/pipeline/check.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    pkv_fuzz::init();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view in(reinterpret_cast<const char*>(data), size);
    const size_t a = in.find('\0');
    const std::string_view report = in.substr(0, a);
    std::string_view baseline = report, tolerances;
    if (a != std::string_view::npos) {
        const size_t b = in.find('\0', a + 1);
        baseline = in.substr(a + 1, b == std::string_view::npos ? std::string_view::npos : b - a - 1);
        if (b != std::string_view::npos) tolerances = in.substr(b + 1);
    }

    pkv::CheckConfig config;
    config.report_path = pkv_fuzz::write_input("report.json", report.data(), report.size());
    config.baseline_path = pkv_fuzz::write_input("baseline.json", baseline.data(), baseline.size());
    config.junit_path = pkv_fuzz::path_of("junit.xml");
    if (!tolerances.empty())
        pkv_fuzz::guarded([&] { config.tolerances = pkv::parse_tolerances(std::string(tolerances)); });
    pkv_fuzz::guarded([&] { (void)pkv::run_check(config); });
    return 0;
}
