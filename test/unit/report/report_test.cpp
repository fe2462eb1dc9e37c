#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <unistd.h>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/report/report.h"
#include "sample_report.h"
#include "sample_result.h"

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

json small_report() { return pkv::test::make_sample_report(3, 2, {2, 4}, false, false); }

size_t count(const std::string& hay, const std::string& needle) {
    size_t n = 0;
    for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
    return n;
}

// Checks that the page nests like XML: every element is closed in order, apart
// from the DOCTYPE and comments. Returns the first problem, or "" when well-formed.
std::string nesting_problem(const std::string& page) {
    std::vector<std::string> stack;
    size_t i = 0;
    while ((i = page.find('<', i)) != std::string::npos) {
        if (page.compare(i, 4, "<!--") == 0) {
            i = page.find("-->", i);
            if (i == std::string::npos) return "unclosed comment";
            continue;
        }
        size_t end = page.find('>', i);
        if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
        std::string tag = page.substr(i + 1, end - i - 1);
        i = end + 1;
        if (tag.empty() || tag[0] == '!') continue;
        if (tag[0] == '/') {
            std::string name = tag.substr(1);
            if (stack.empty() || stack.back() != name)
                return "</" + name + "> closes <" + (stack.empty() ? std::string("nothing") : stack.back()) + ">";
            stack.pop_back();
            continue;
        }
        if (tag.back() == '/') continue;  // <meta .../>, <rect .../>
        stack.push_back(tag.substr(0, tag.find_first_of(" \t\n")));
    }
    return stack.empty() ? "" : "<" + stack.back() + "> never closed";
}

bool has_non_number_word(const std::string& text) {
    static const std::regex bad("\\b(nan|-?inf|infinity)\\b", std::regex::icase);
    return std::regex_search(text, bad);
}

std::string temp_path(const std::string& name) {
    return (fs::temp_directory_path() / fmt::format("pkv-report-test-{}-{}", ::getpid(), name)).string();
}

bool have_jsonschema() {
    return std::system("/usr/bin/python3 -c 'import jsonschema; jsonschema.Draft202012Validator' >/dev/null 2>&1") == 0;
}

// Validates `doc` against schemas/report.schema.json with Python's jsonschema, both
// as draft 2020-12 and as draft-07; returns the validator's messages (empty: valid).
std::string schema_errors(const json& doc) {
    std::string doc_path = temp_path("doc.json"), script_path = temp_path("check.py"), out_path = temp_path("out.txt");
    std::ofstream(doc_path) << doc.dump(1);
    std::ofstream(script_path) << R"(import json, sys
from jsonschema import Draft202012Validator, Draft7Validator
schema = json.load(open(sys.argv[1]))
doc = json.load(open(sys.argv[2]))
Draft202012Validator.check_schema(schema)
problems = []
for cls in (Draft202012Validator, Draft7Validator):
    for e in cls(schema).iter_errors(doc):
        problems.append(cls.__name__ + ": " + "/".join(str(p) for p in e.absolute_path) + ": " + e.message[:300])
print("\n".join(problems))
)";
    std::string cmd = fmt::format("/usr/bin/python3 '{}' '{}/schemas/report.schema.json' '{}' >'{}' 2>&1", script_path,
                                  PKV_TEST_SOURCE_DIR, doc_path, out_path);
    int rc = std::system(cmd.c_str());
    std::stringstream ss;
    ss << std::ifstream(out_path).rdbuf();
    std::string out = ss.str();
    fs::remove(doc_path);
    fs::remove(script_path);
    fs::remove(out_path);
    if (rc != 0 && out.empty()) out = fmt::format("python exited with status {}", rc);
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
}

}  // namespace

TEST_CASE("markdown summary lists every summary row with its values", "[report][markdown]") {
    json report = small_report();
    std::string md = pkv::render_markdown(report);
    INFO(md);
    CHECK(md.find("pkv 0.1.0 (commit 0123456789ab), created 2025-01-02T03:04:05Z") != std::string::npos);
    CHECK(md.find("SmolLM2 135M Instruct (3 layers, 6 heads, 2 KV heads, head_dim 64), 4096 tokens") !=
          std::string::npos);
    CHECK(md.find("| method | bits | eff bits | K NMSE | V NMSE | attn KL | attn out rel err |") != std::string::npos);
    REQUIRE(report["summary"].size() == 5);  // fp16, kivi 2/4, patternkv 2/4
    for (const json& row : report["summary"]) {
        std::string line = fmt::format(
            "| {} | {} | {:.2f} | {:.3e} | {:.3e} | {:.3e} | {:.3e} |", row["method"].get<std::string>(),
            row["bits"].get<int>(), row["eff_bits"].get<double>(), row["k_nmse"].get<double>(),
            row["v_nmse"].get<double>(), row["attn_kl"].get<double>(), row["attn_out_rel_err"].get<double>());
        CHECK(md.find(line) != std::string::npos);
    }
    CHECK(md.find("| 0 | 1 | kivi | 2 |") != std::string::npos);  // a fragile head
    CHECK(md.find("Suggested fp16 layers: 0\n") != std::string::npos);
    CHECK(md.find("- layer 1 KV head 0: no queries") != std::string::npos);
    CHECK_FALSE(has_non_number_word(md));
}

TEST_CASE("null and non-finite metrics render as n/a", "[report][markdown][html]") {
    json report = small_report();
    report["summary"][1]["attn_kl"] = nullptr;
    report["summary"][1]["k_nmse"] = std::nan("");  // not valid JSON, but must not leak
    report["summary"][2]["v_nmse"] = HUGE_VAL;
    report["results"][3]["k"]["nmse"] = -HUGE_VAL;
    report["histograms"][0]["lo"] = std::nan("");
    std::string md = pkv::render_markdown(report);
    std::string html = pkv::render_html(report);
    CHECK(md.find("| kivi | 2 | 2.50 | n/a |") != std::string::npos);
    CHECK_FALSE(has_non_number_word(md));
    CHECK_FALSE(has_non_number_word(html));
    CHECK(nesting_problem(html) == "");
    CHECK(html.find("1 histogram(s) left out") != std::string::npos);
}

TEST_CASE("html page is self-contained and well-formed", "[report][html]") {
    json report = small_report();
    std::string html = pkv::render_html(report);
    CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
    CHECK(nesting_problem(html) == "");
    CHECK(count(html, "<svg") == count(html, "</svg>"));
    CHECK(count(html, "<table") == count(html, "</table>"));
    // error-vs-bits (2 panels) + color legend + 4 heatmaps (kivi/patternkv x 2/4; fp16 left out) + 3 histograms
    CHECK(count(html, "<svg") == 2 + 1 + 4 + 3);
    CHECK(count(html, "<table") == 2);  // summary, fragile
    CHECK_FALSE(has_non_number_word(html));
    // No scripts and nothing fetched from elsewhere.
    CHECK(html.find("<script") == std::string::npos);
    CHECK(html.find("src=") == std::string::npos);
    CHECK(html.find("href=") == std::string::npos);
    CHECK(html.find("url(") == std::string::npos);
    for (const char* id : {"summary", "error-vs-bits", "heatmaps", "histograms", "fragile", "warnings"})
        CHECK(html.find(fmt::format("<section id=\"{}\">", id)) != std::string::npos);
    CHECK(html.find("effective bits per element (log scale)") != std::string::npos);
    CHECK(html.find("NMSE (log scale)") != std::string::npos);
    CHECK(html.find("kivi, 2 bits") != std::string::npos);
    CHECK(html.find("layer 0, KV head 0, K") != std::string::npos);
}

TEST_CASE("every string from the report is escaped", "[report][html][markdown]") {
    json report = small_report();
    const std::string evil = "x<&>y";
    for (json& row : report["summary"]) row["method"] = evil;
    for (json& r : report["results"]) r["method"] = evil;
    report["fragile"]["heads"][0]["method"] = evil;
    report["model"]["name"] = "</title><script>alert(1)</script>";
    report["warnings"].push_back("<b>bold</b> & \"quoted\"");
    report["settings"]["note"] = "<i>";
    std::string html = pkv::render_html(report);
    CHECK(html.find(evil) == std::string::npos);
    CHECK(html.find("x&lt;&amp;&gt;y") != std::string::npos);
    CHECK(html.find("<script") == std::string::npos);
    CHECK(html.find("&lt;/title&gt;&lt;script&gt;") != std::string::npos);
    CHECK(html.find("&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;") != std::string::npos);
    CHECK(html.find("<i>") == std::string::npos);
    CHECK(nesting_problem(html) == "");

    // Markdown keeps the text readable but cannot let a '|' split a table cell.
    report["summary"][0]["method"] = "a|b";
    CHECK(pkv::render_markdown(report).find("| a\\|b |") != std::string::npos);
}

TEST_CASE("renderers accept sparse reports and refuse non-objects", "[report][html][markdown]") {
    json empty = json::object();
    std::string html = pkv::render_html(empty);
    CHECK(nesting_problem(html) == "");
    CHECK(html.find("No summary rows") != std::string::npos);
    CHECK(pkv::render_markdown(empty).find("No summary rows") != std::string::npos);

    json no_attn = small_report();
    for (json& row : no_attn["summary"]) row["attn_kl"] = row["attn_out_rel_err"] = nullptr;
    for (json& r : no_attn["results"]) r["attn"] = nullptr;
    CHECK(nesting_problem(pkv::render_html(no_attn)) == "");

    CHECK_THROWS_WITH(pkv::render_html(json::array()), ContainsSubstring("report: expected a JSON object, got array"));
    CHECK_THROWS_WITH(pkv::render_markdown(json("text")), ContainsSubstring("got string"));
}

TEST_CASE("sample reports conform to schemas/report.schema.json", "[report][schema]") {
    if (!have_jsonschema())
        PKV_SKIP("/usr/bin/python3 has no jsonschema with Draft202012Validator (python3-jsonschema)");
    json small = small_report();
    CHECK(schema_errors(small) == "");
    CHECK(schema_errors(pkv::test::make_sample_report(30, 3, {2, 3, 4}, true, true)) == "");

    // The validator is not vacuous: each of these breaks one rule.
    json bad = small;
    bad.erase("format");
    CHECK_THAT(schema_errors(bad), ContainsSubstring("'format' is a required property"));
    bad = small;
    bad["results"][0]["method"] = "x<&>y";
    CHECK_THAT(schema_errors(bad), ContainsSubstring("results/0/method"));
    bad = small;
    bad["results"][0]["k"]["nmse"] = "0.1";
    CHECK_THAT(schema_errors(bad), ContainsSubstring("results/0/k"));
    bad = small;
    bad["results"][0]["extra"] = 1;
    CHECK_THAT(schema_errors(bad), ContainsSubstring("Additional properties"));
    bad = small;
    bad["histograms"][0]["tensor"] = "q";
    CHECK_THAT(schema_errors(bad), ContainsSubstring("histograms/0/tensor"));
    bad = small;
    bad["provenance"]["created_utc"] = "yesterday";
    CHECK_THAT(schema_errors(bad), ContainsSubstring("provenance/created_utc"));
    // NaN has no JSON form: nlohmann writes null, which the schema accepts as "undefined".
    json nan_doc = small;
    nan_doc["summary"][0]["k_nmse"] = std::nan("");
    CHECK(schema_errors(nan_doc) == "");
}

namespace {

// A 1.1 report of 6 layers (global: 2 and 5, sliding window 512 elsewhere) x 2 KV heads,
// with one fragile global head (layer 5, head 1: kivi K NMSE far above the other globals).
json local_global_report() {
    pkv::AnalyzeResult res = pkv::test::make_sample_result({512, 512, 0, 512, 512, 0}, 2);
    for (auto& p : res.pairs) {
        pkv::test::SampleMetrics m;
        m.k_nmse = (p.window > 0 ? 0.04 : 0.08) + 0.001 * p.layer + (p.layer == 5 && p.head == 1 ? 0.05 : 0.0);
        m.eff_bits = 2.5;
        pkv::test::set_metrics(p, 1, m, false);
    }
    return pkv::analyze_report_json(res);
}

// The same report as pkv 1.0 wrote it: no layer kinds, no windows.
json as_version_1_0(json report) {
    report["format_version"] = "1.0";
    report.erase("layer_kinds");
    for (json& r : report["results"]) r.erase("window");
    for (json& h : report["fragile"]["heads"]) h.erase("window");
    return report;
}

}  // namespace

TEST_CASE("local and global layers get their own section, only when the report has local layers",
          "[report][markdown][html]") {
    json rep = local_global_report();
    REQUIRE(rep["layer_kinds"].is_object());
    REQUIRE(rep["fragile"]["heads"].size() == 1);
    std::string md = pkv::render_markdown(rep);
    INFO(md);
    CHECK(md.find("## Local and global layers") != std::string::npos);
    CHECK(md.find("### Local layers (sliding window 512): 0-1, 3-4\n") != std::string::npos);
    CHECK(md.find("### Global layers: 2, 5\n") != std::string::npos);
    CHECK(md.find("| method | bits | eff bits | K NMSE | V NMSE | attn KL | K range/std | V range/std | K kurtosis | V "
                  "kurtosis |") != std::string::npos);
    const json& lk = rep["layer_kinds"]["local"]["summary"][1];
    REQUIRE(lk["method"] == "kivi");
    CHECK(md.find(fmt::format("| kivi | 2 | 2.50 | {:.3e} |", lk["k_nmse"].get<double>())) != std::string::npos);
    CHECK(md.find("| patternkv | 2 | 2.75 |") != std::string::npos);
    CHECK(md.find("| 8.00 → n/a | 8.00 → n/a | 2.00 → n/a | 2.00 → n/a |") != std::string::npos);  // kivi
    CHECK(md.find("| 8.00 → 4.00 | 8.00 → 4.00 | 2.00 → 0.50 | 2.00 → 0.50 |") != std::string::npos);
    CHECK(md.find("| 5 (global) | 1 | kivi | 2 |") != std::string::npos);
    CHECK(md.find("## Local and global layers") < md.find("## Fragile heads"));
    CHECK_FALSE(has_non_number_word(md));

    std::string html = pkv::render_html(rep);
    CHECK(nesting_problem(html) == "");
    CHECK(html.find("<section id=\"layer-kinds\"><h2>Local and global layers</h2>") != std::string::npos);
    CHECK(html.find("<h3>Local layers (sliding window 512): 0-1, 3-4</h3>") != std::string::npos);
    CHECK(html.find("<h3>Global layers: 2, 5</h3>") != std::string::npos);
    CHECK(count(html, "<table") == 4);  // summary, local, global, fragile
    CHECK(html.find("<td class=\"num\">5 (global)</td>") != std::string::npos);
    CHECK_FALSE(has_non_number_word(html));

    // A kind without layers, and local layers with several windows.
    json odd = rep;
    odd["layer_kinds"]["global"] = {{"layers", json::array()}, {"summary", json::array()}};
    odd["layer_kinds"]["local"]["window"] = nullptr;
    md = pkv::render_markdown(odd);
    CHECK(md.find("### Local layers (sliding windows of several sizes): 0-1, 3-4") != std::string::npos);
    CHECK(md.find("### Global layers: none\n\nNo analysed layers of this kind.") != std::string::npos);
    CHECK(nesting_problem(pkv::render_html(odd)) == "");

    // A fragile head without "window" takes its kind from layer_kinds.local.layers.
    odd = rep;
    odd["fragile"]["heads"][0].erase("window");
    CHECK(pkv::render_markdown(odd).find("| 5 (global) | 1 |") != std::string::npos);
    odd["fragile"]["heads"][0]["layer"] = 3;
    CHECK(pkv::render_markdown(odd).find("| 3 (local) | 1 |") != std::string::npos);

    // The Gemma-3-like sample: every sixth layer global.
    md = pkv::render_markdown(pkv::test::make_sample_report(26, 1, {2, 4}, false, false, 512));
    CHECK(md.find("### Local layers (sliding window 512): 0-4, 6-10, 12-16, 18-22, 24-25\n") != std::string::npos);
    CHECK(md.find("### Global layers: 5, 11, 17, 23\n") != std::string::npos);
    CHECK(md.find("| 0 (local) | 0 | kivi | 2 |") != std::string::npos);
}

TEST_CASE("reports without local layers render as 1.0 reports did", "[report][markdown][html]") {
    const json rep = pkv::analyze_report_json(pkv::test::make_sample_result({0, 0, 0}, 2));
    REQUIRE(rep["format_version"] == "1.4");
    REQUIRE(rep["layer_kinds"].is_null());
    const json old = as_version_1_0(rep);
    CHECK(pkv::render_markdown(rep) == pkv::render_markdown(old));
    CHECK(pkv::render_html(rep) == pkv::render_html(old));
    CHECK(pkv::render_markdown(rep).find("Local and global") == std::string::npos);
    CHECK(pkv::render_html(rep).find("layer-kinds") == std::string::npos);

    // A 1.0 report of a model with local layers (written before windows were reported)
    // renders without the section and with plain layer numbers.
    const json old_local = as_version_1_0(local_global_report());
    const std::string md = pkv::render_markdown(old_local);
    CHECK(md.find("Local and global") == std::string::npos);
    CHECK(md.find("| 5 | 1 | kivi | 2 |") != std::string::npos);
    CHECK(nesting_problem(pkv::render_html(old_local)) == "");
    CHECK(pkv::render_markdown(small_report()).find("Local and global") == std::string::npos);
}

TEST_CASE("1.1 reports with and without local layers conform to the schema", "[report][schema]") {
    if (!have_jsonschema())
        PKV_SKIP("/usr/bin/python3 has no jsonschema with Draft202012Validator (python3-jsonschema)");
    const json global = pkv::analyze_report_json(pkv::test::make_sample_result({0, 0, 0}, 2));
    const json local = local_global_report();
    CHECK(schema_errors(global) == "");
    CHECK(schema_errors(local) == "");
    CHECK(schema_errors(pkv::analyze_report_json(pkv::test::make_sample_result({512, 1024}, 1))) == "");
    CHECK(schema_errors(as_version_1_0(local)) == "");
    const json gemma = pkv::test::make_sample_report(26, 1, {2, 4}, true, true, 512);
    CHECK(schema_errors(gemma) == "");

    // From 1.1 on, windows and layer_kinds are required; the per-kind rows are checked.
    json bad = local;
    bad.erase("layer_kinds");
    CHECK_THAT(schema_errors(bad), ContainsSubstring("'layer_kinds' is a required property"));
    bad = local;
    bad["results"][0].erase("window");
    CHECK_THAT(schema_errors(bad), ContainsSubstring("'window' is a required property"));
    bad = local;
    bad["results"][0]["window"] = -1;
    CHECK_THAT(schema_errors(bad), ContainsSubstring("results/0/window"));
    bad = local;
    bad["fragile"]["heads"][0].erase("window");
    CHECK_THAT(schema_errors(bad), ContainsSubstring("'window' is a required property"));
    bad = local;
    bad["layer_kinds"]["local"]["summary"][0].erase("flatness");
    CHECK_THAT(schema_errors(bad), ContainsSubstring("layer_kinds/local/summary/0"));
    bad = local;
    bad["layer_kinds"]["global"]["window"] = 0;
    CHECK_THAT(schema_errors(bad), ContainsSubstring("layer_kinds/global"));
    bad = local;
    bad["layer_kinds"]["local"]["summary"][2]["flatness"]["k"]["var_explained"] = 2;
    CHECK_THAT(schema_errors(bad), ContainsSubstring("layer_kinds/local/summary/2/flatness/k"));
}

// Hidden: writes a full-size sample page for test/integration/report_html_chromium.sh.
TEST_CASE("write the sample html page to $PKV_REPORT_SAMPLE_HTML", "[.sample]") {
    const char* path = std::getenv("PKV_REPORT_SAMPLE_HTML");
    if (!path || !*path) PKV_SKIP("PKV_REPORT_SAMPLE_HTML is not set");
    json report = pkv::test::make_sample_report(30, 3, {2, 3, 4}, true, true);
    std::ofstream(path) << pkv::render_html(report);
    std::ofstream(std::string(path) + ".json") << report.dump(1);
    std::ofstream(std::string(path) + ".md") << pkv::render_markdown(report);
    REQUIRE(fs::file_size(path) > 1000);
    // The same for a model with local sliding-window layers (Gemma 3 1B: 26 layers, 1 KV head).
    const std::string local_path = std::string(path) + ".local.html";
    report = pkv::test::make_sample_report(26, 1, {2, 3, 4}, true, true, 512);
    std::ofstream(local_path) << pkv::render_html(report);
    std::ofstream(local_path + ".json") << report.dump(1);
    std::ofstream(local_path + ".md") << pkv::render_markdown(report);
    REQUIRE(fs::file_size(local_path) > 1000);
}
