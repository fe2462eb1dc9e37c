// test/unit/runtime/packed_check.cc — proves lib/pkv/runtime/packed_cache.{h,cpp} and
// packed_attention.cpp stand alone (with pattern_table_reader.h beside them): test/CMakeLists.txt
// compiles them with this file, no include directories and no library, warnings as errors, and
// runs it as the test "runtime: packed cache builds alone". It also checks one attention by hand.
// (The .cc suffix keeps it out of the pkv_runtime_tests glob, which takes *.cpp.)
#include <cmath>
#include <cstdio>
#include <vector>

#include "../../../lib/pkv/runtime/packed_cache.h"

int main() {
    pkv_rt::CacheConfig c;
    c.method = pkv_rt::CacheMethod::fp16;
    c.n_layer = 1, c.n_head = 2, c.n_head_kv = 1, c.head_dim = 4, c.max_tokens = 2;
    pkv_rt::PackedCache cache(c);
    // Two tokens; the query scores them 0 and 2 (q·k / sqrt(4)), so the weights are
    // 1 / (1 + e^2) and e^2 / (1 + e^2).
    const std::vector<float> k = {0, 0, 0, 0, 4, 0, 0, 0}, v = {1, 2, 3, 4, -1, 0, 1, 0};
    cache.append(0, 0, k.data(), v.data(), 2);
    cache.end_prefill(0);
    alignas(16) float q[8] = {1, 0, 0, 0, 1, 0, 0, 0}, out[8] = {};
    cache.decode_attention_ref(0, q, 1, out);
    const double e2 = std::exp(2.0), a0 = 1.0 / (1.0 + e2), a1 = e2 / (1.0 + e2);
    int failures = 0;
    for (int h = 0; h < 2; ++h)
        for (int d = 0; d < 4; ++d) {
            const double want = a0 * static_cast<double>(v[static_cast<size_t>(d)]) +
                                a1 * static_cast<double>(v[static_cast<size_t>(4 + d)]);
            if (std::fabs(static_cast<double>(out[h * 4 + d]) - want) > 1e-6) {
                std::printf("head %d channel %d: %.9f, expected %.9f\n", h, d, static_cast<double>(out[h * 4 + d]),
                            want);
                ++failures;
            }
        }
    try {
        cache.append(0, 0, k.data(), v.data(), 1);
        std::printf("an append past max_tokens was accepted\n");
        ++failures;
    } catch (const pkv_rt::CacheError&) {
    }
    return failures == 0 ? 0 : 1;
}
