// test/catch.h — lets the tests compile against Catch2 v2 (Debian 12) and v3 (Ubuntu 24.04).
//
// Use: TEST_CASE/SECTION/CHECK/REQUIRE/GENERATE as usual, `Approx`, the matchers
// ContainsSubstring/WithinRel/WithinAbs, and PKV_SKIP("why") to skip a test loudly.
#pragma once

#if PKV_CATCH2_MAJOR >= 3
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/generators/catch_generators_range.hpp>
#include <catch2/matchers/catch_matchers_floating_point.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
using Catch::Approx;
using Catch::Matchers::ContainsSubstring;
#define PKV_SKIP(msg) SKIP(msg)
#else
#include <catch2/catch.hpp>
inline Catch::Matchers::StdString::ContainsMatcher ContainsSubstring(const std::string& s) {
    return Catch::Matchers::Contains(s);
}
// Catch2 v2 cannot mark a test skipped: say so loudly and leave the test.
#define PKV_SKIP(msg)             \
    do {                          \
        WARN("SKIPPED: " << msg); \
        return;                   \
    } while (0)
#endif
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;
