#include <cmath>
#include <vector>

#include "catch.h"
#include "pkv/report/svg.h"

using namespace pkv::svg;

TEST_CASE("xml_escape replaces the five markup characters", "[report][svg]") {
    CHECK(xml_escape("a<b>&\"c'") == "a&lt;b&gt;&amp;&quot;c&#39;");
    CHECK(xml_escape("plain text") == "plain text");
    CHECK(xml_escape("") == "");
}

TEST_CASE("nice_ticks uses steps of 1, 2 or 5 times a power of ten", "[report][svg]") {
    std::vector<double> unit = nice_ticks(0, 1, 5);
    REQUIRE(unit.size() == 6);
    for (size_t i = 0; i < unit.size(); ++i) CHECK_THAT(unit[i], WithinAbs(0.2 * i, 1e-12));
    CHECK(nice_ticks(-6, 6, 5) == std::vector<double>{-5, 0, 5});
    std::vector<double> t = nice_ticks(-0.6, 0.6, 6);
    REQUIRE(t.size() == 7);
    CHECK_THAT(t.front(), WithinAbs(-0.6, 1e-12));
    CHECK(t[3] == 0);  // exactly zero, not rounding noise
    CHECK(nice_ticks(3, 3) == std::vector<double>{3});
    CHECK(nice_ticks(0, 12345, 4) == std::vector<double>{0, 5000, 10000});
    CHECK(nice_ticks(NAN, 1).empty());

    double lo = 0.3, hi = 9.1;
    nice_range(lo, hi, 5);
    CHECK(lo == 0);
    CHECK(hi == 10);
}

TEST_CASE("log ticks are decades, or 1-2-5 within one decade", "[report][svg]") {
    std::vector<double> t = log_ticks(1e-4, 1, 8);
    REQUIRE(t.size() == 5);
    CHECK_THAT(t.front(), WithinRel(1e-4, 1e-9));
    CHECK_THAT(t.back(), WithinRel(1.0, 1e-9));
    // Eleven decades thinned to at most six ticks.
    CHECK(log_ticks(1e-10, 10, 6).size() <= 6);
    std::vector<double> narrow = log_ticks(1.5, 9, 8);
    CHECK(narrow == std::vector<double>{2, 5});
    CHECK(log_ticks(0, 1).empty());

    double lo = 3e-5, hi = 0.2;
    log_range(lo, hi);
    CHECK_THAT(lo, WithinRel(1e-5, 1e-9));
    CHECK_THAT(hi, WithinRel(1.0, 1e-9));
}

TEST_CASE("scales map data to pixels", "[report][svg]") {
    LinearScale lin{0, 10, 100, 0};
    CHECK(lin.map(0) == 100);
    CHECK(lin.map(5) == 50);
    LogScale lg{1e-4, 1, 0, 400};
    CHECK_THAT(lg.map(1e-2), WithinAbs(200, 1e-9));
    CHECK(lg.map(0) == 0);  // clamped to the low end
}

TEST_CASE("format_tick is compact", "[report][svg]") {
    CHECK(format_tick(0) == "0");
    CHECK(format_tick(0.5) == "0.5");
    CHECK(format_tick(16) == "16");
    CHECK(format_tick(1e-4) == "1e-4");
    CHECK(format_tick(2.5e-7) == "2.5e-7");
    CHECK(format_tick(0.30000000000000004) == "0.3");
    CHECK(format_tick(NAN) == "?");
}

TEST_CASE("Doc writes escaped, closed elements and refuses non-finite coordinates", "[report][svg]") {
    Doc doc(100, 50, "a <plot>");
    doc.rect(0, 0, 10, 10, "#fff", "none", "tip & more");
    doc.text(5, 5, "x<y");
    doc.line(0, 0, 1, 1, "#000");
    std::string s = doc.str();
    CHECK(s.rfind("<svg", 0) == 0);
    CHECK(s.find("</svg>") == s.size() - 6);
    CHECK(s.find("a &lt;plot&gt;") != std::string::npos);
    CHECK(s.find("tip &amp; more") != std::string::npos);
    CHECK(s.find(">x&lt;y</text>") != std::string::npos);
    CHECK_THROWS_WITH(doc.line(0, NAN, 1, 1, "#000"), ContainsSubstring("internal error"));
}
