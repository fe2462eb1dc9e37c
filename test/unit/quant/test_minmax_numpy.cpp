// Cross-check of the min-max quantizer against an independent numpy version
// (test/python/quant_reference.py), which must agree bit for bit.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/quant/minmax.h"
#include "quant_test_util.h"
#include "support/scratch_dir.h"

namespace {

template <typename T>
void write_raw(const std::string& path, const std::vector<T>& v) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
    REQUIRE(f.good());
}

bool python_has_numpy() {
    if (access("/usr/bin/python3", X_OK) != 0) return false;
    return std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

}  // namespace

TEST_CASE("min-max quantizer agrees bit for bit with an independent numpy version", "[quant][minmax][python]") {
    if (!python_has_numpy()) PKV_SKIP("/usr/bin/python3 with numpy not available: numpy cross-check not run");
    pkv_test::ScratchDir dir;
    std::ofstream manifest(dir.path("manifest.txt"));
    int n_case = 0;
    const auto add_case = [&](std::vector<float> x, int64_t T, int D, pkv::MinMaxSpec spec) {
        const std::string name = "case" + std::to_string(n_case++);
        std::vector<float> r(x.size());
        pkv::MinMaxCodes q;
        pkv::quantize_minmax(x.data(), T, D, spec, r.data(), &q);
        write_raw(dir.path(name + ".x.f32"), x);
        write_raw(dir.path(name + ".recon.f32"), r);
        write_raw(dir.path(name + ".codes.u8"), q.codes);
        write_raw(dir.path(name + ".scales.u16"), q.scales);
        write_raw(dir.path(name + ".zeros.u16"), q.zeros);
        manifest << name << ' ' << T << ' ' << D << ' ' << spec.bits << ' ' << spec.group << ' '
                 << pkv::quant_axis_name(spec.axis) << '\n';
    };
    uint32_t seed = 100;
    for (int bits : {2, 3, 4, 8}) {
        // Activations as stored in dumps (binary16 values).
        add_case(pkv_test::random_activations(256 * 64, seed++), 256, 64, {bits, 64, pkv::QuantAxis::token});
        add_case(pkv_test::random_activations(256 * 64, seed++), 256, 64, {bits, 16, pkv::QuantAxis::token});
        add_case(pkv_test::random_activations(300 * 64, seed++), 300, 64, {bits, 128, pkv::QuantAxis::channel});
        // Arbitrary fp32 values: zero points and scales that binary16 must round,
        // including tiny ranges with subnormal or vanishing scales.
        auto x = pkv_test::random_activations(77 * 32, seed++, 5.0f, false);
        for (int64_t t = 0; t < 77; ++t) {
            x[t * 32 + 3] = 0.1f;                                      // constant, not binary16
            x[t * 32 + 4] = 1.0f + 1e-3f * static_cast<float>(t % 5);  // tiny range
            x[t * 32 + 5] = 300.0f + 1e-5f * static_cast<float>(t);    // vanishing range
        }
        add_case(x, 77, 32, {bits, 32, pkv::QuantAxis::channel});
        add_case(x, 77, 32, {bits, 8, pkv::QuantAxis::token});
    }
    manifest.close();
    const std::string cmd = std::string("/usr/bin/python3 '") + PKV_TEST_SOURCE_DIR +
                            "/test/python/quant_reference.py' '" + dir.str() + "'";
    const int status = std::system(cmd.c_str());
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}
