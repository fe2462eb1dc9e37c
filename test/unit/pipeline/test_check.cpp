// `pkv check` on synthetic analyze and eval reports: verdicts, directions, non-finite
// values, mismatch messages, tolerance grammar, JUnit output and --update.
#include <cmath>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/pipeline/check.h"
#include "support/scratch_dir.h"

using namespace pkv;
using nlohmann::json;

namespace {

// A pkv.analyze_report with 2 layers x 2 heads x {fp16:16, kivi:2}.
json analyze_report() {
    json results = json::array(), summary = json::array();
    for (const char* m : {"fp16", "kivi"}) {
        const bool q = std::string(m) == "kivi";
        for (int l = 0; l < 2; ++l)
            for (int h = 0; h < 2; ++h) {
                const double k = q ? 0.01 * (1 + l + h) : 0.0, v = q ? 0.02 * (1 + l) : 0.0;
                results.push_back({{"layer", l},
                                   {"kv_head", h},
                                   {"method", m},
                                   {"bits", q ? 2 : 16},
                                   {"rotate", false},
                                   {"k", {{"nmse", k}, {"snr_db", 20.0}, {"eff_bits", q ? 3.0 : 16.0}}},
                                   {"v", {{"nmse", v}, {"snr_db", 17.0}, {"eff_bits", q ? 3.0 : 16.0}}},
                                   {"eff_bits", q ? 3.0 : 16.0},
                                   {"attn", {{"kl", q ? 1e-3 : 0.0}, {"out_rel_err", q ? 0.05 : 0.0}}}});
            }
        summary.push_back({{"method", m},
                           {"bits", q ? 2 : 16},
                           {"rotate", false},
                           {"k_nmse", q ? 0.02 : 0.0},
                           {"v_nmse", q ? 0.03 : 0.0},
                           {"attn_kl", q ? 1e-3 : 0.0},
                           {"attn_out_rel_err", q ? 0.05 : 0.0},
                           {"eff_bits", q ? 3.0 : 16.0}});
    }
    return {{"format", "pkv.analyze_report"},
            {"format_version", "1.0"},
            {"provenance", {{"tool", "pkv"}, {"dump", {{"path", "d.h5"}, {"model", {{"sha256", "abc123"}}}}}}},
            {"model", {{"name", "tiny"}, {"n_layer", 2}, {"n_head", 4}, {"n_head_kv", 2}, {"head_dim", 8}}},
            {"results", results},
            {"summary", summary}};
}

json eval_report() {
    auto fig = [](double ppl, double kl, double top1, double bits) {
        return json{{"ppl", ppl},
                    {"ppl_all", ppl * 1.1},
                    {"kl_mean", kl},
                    {"top1_agreement", top1},
                    {"bits_per_element", bits}};
    };
    json ref = fig(10.0, 0.0, 1.0, 16.0);
    ref["label"] = "fp16 (reference)";
    json a = fig(10.5, 0.02, 0.95, 3.0), b = fig(11.0, 0.04, 0.90, 4.5);
    a["label"] = "kivi:2";
    b["label"] = "q4_0";
    return {{"format", "pkv.eval_report"},
            {"version", "1.0"},
            {"model", {{"name", "tiny"}, {"sha256", "abc123"}}},
            {"reference", ref},
            {"methods", {a, b}}};
}

struct Files {
    pkv_test::ScratchDir dir;
    std::string write(const std::string& name, const json& j) {
        std::ofstream(dir.path(name)) << j.dump(1);
        return dir.path(name);
    }
    CheckResult check(const json& rep, const json& base, const std::string& tol = "") {
        CheckConfig c;
        c.report_path = write("report.json", rep);
        c.baseline_path = write("base.json", base);
        if (!tol.empty()) c.tolerances = parse_tolerances(tol);
        return run_check(c);
    }
    std::string error(const json& rep, const json& base) {
        try {
            check(rep, base);
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::invalid_argument);
            return e.what();
        }
        FAIL("expected an invalid_argument error");
        return "";
    }
};

const MetricComparison* find(const CheckResult& r, const std::string& group, const std::string& metric) {
    for (const auto& m : r.metrics)
        if (m.group == group && m.metric == metric) return &m;
    return nullptr;
}

std::string tol_error(const std::string& text) {
    try {
        parse_tolerances(text);
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::invalid_argument);
        return e.what();
    }
    FAIL("expected an error for " << text);
    return "";
}

std::string slurp(const std::string& p) {
    std::ifstream f(p);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("check: identical analyze reports pass with every metric compared") {
    Files f;
    const CheckResult r = f.check(analyze_report(), analyze_report());
    CHECK(r.exit_code() == 0);
    CHECK(r.regressions == 0);
    CHECK(r.improvements == 0);
    // 8 results x 5 metrics + 2 summary rows x 5 metrics.
    CHECK(r.metrics.size() == 50);
    CHECK(r.unchanged == 50);
    CHECK(r.groups == 10);
    CHECK(r.markdown.find("No metric outside its tolerance.") != std::string::npos);
    CHECK(r.markdown.find("50 metrics in 10 groups: 0 regression(s), 0 improvement(s), 50 unchanged") !=
          std::string::npos);
}

TEST_CASE("check: a 1.1 analyze report compares with a 1.0 baseline") {
    Files f;
    json rep = analyze_report();
    rep["format_version"] = "1.1";
    for (auto& r : rep["results"]) r["window"] = r["layer"] == 0 ? 512 : 0;
    rep["layer_kinds"] = {{"local", {{"window", 512}, {"layers", {0}}, {"summary", json::array()}}},
                          {"global", {{"layers", {1}}, {"summary", json::array()}}}};
    const std::vector<std::pair<json, json>> pairs = {{rep, analyze_report()}, {analyze_report(), rep}};
    for (const auto& [report, base] : pairs) {
        const CheckResult r = f.check(report, base);
        CHECK(r.exit_code() == 0);
        CHECK(r.metrics.size() == 50);
        CHECK(r.unchanged == 50);
    }
}

TEST_CASE("check: one head's k nmse 20% worse is a regression naming layer, head, method and metric") {
    Files f;
    json rep = analyze_report();
    for (auto& r : rep["results"])
        if (r["layer"] == 1 && r["kv_head"] == 0 && r["method"] == "kivi")
            r["k"]["nmse"] = r["k"]["nmse"].get<double>() * 1.2;
    const CheckResult r = f.check(rep, analyze_report());
    CHECK(r.exit_code() == 1);
    CHECK(r.regressions == 1);
    const MetricComparison* m = find(r, "layer 1, kv_head 0, kivi:2", "k.nmse");
    REQUIRE(m);
    CHECK(m->verdict == Verdict::regression);
    CHECK(r.markdown.find("| regression | layer 1, kv_head 0, kivi:2 | k.nmse | 0.02 | 0.024 | +20.00% | 5% |") !=
          std::string::npos);
    // Within a looser tolerance it passes.
    CHECK(f.check(rep, analyze_report(), "nmse=25%").exit_code() == 0);
    // 4% worse is inside the default 5%.
    json small = analyze_report();
    small["results"][4]["k"]["nmse"] = small["results"][4]["k"]["nmse"].get<double>() * 1.04;
    CHECK(f.check(small, analyze_report()).regressions == 0);
}

TEST_CASE("check: an improvement is reported and passes") {
    Files f;
    json rep = analyze_report();
    rep["summary"][1]["attn_kl"] = 5e-4;
    const CheckResult r = f.check(rep, analyze_report());
    CHECK(r.exit_code() == 0);
    CHECK(r.improvements == 1);
    CHECK(r.markdown.find("| improvement | summary kivi:2 | attn_kl | 0.001 | 0.0005 | -50.00% | 10% |") !=
          std::string::npos);
}

TEST_CASE("check: eval top1 is higher-is-better, the others lower-is-better") {
    Files f;
    json rep = eval_report();
    rep["methods"][0]["top1_agreement"] = 0.93;    // 2 points down: regression at 0.5 pt
    rep["methods"][1]["top1_agreement"] = 0.92;    // 2 points up: improvement
    rep["methods"][1]["ppl"] = 10.9;               // lower ppl: improvement
    rep["methods"][0]["bits_per_element"] = 3.01;  // any extra bit fails at bits=0
    CheckResult r = f.check(rep, eval_report());
    CHECK(r.exit_code() == 1);
    CHECK(find(r, "method kivi:2", "top1_agreement")->verdict == Verdict::regression);
    CHECK(find(r, "method q4_0", "top1_agreement")->verdict == Verdict::improvement);
    CHECK(find(r, "method q4_0", "ppl")->verdict == Verdict::improvement);
    CHECK(find(r, "method kivi:2", "bits_per_element")->verdict == Verdict::regression);
    CHECK(find(r, "method fp16 (reference)", "ppl")->verdict == Verdict::unchanged);
    CHECK(r.regressions == 2);
    CHECK(r.improvements == 2);
    // top1 absolute tolerance is in percentage points: 3 points allows the drop.
    r = f.check(rep, eval_report(), "top1=3,bits=0.1");
    CHECK(r.regressions == 0);
    // 0.4 points down stays inside the default half point.
    json near = eval_report();
    near["methods"][0]["top1_agreement"] = 0.946;
    CHECK(f.check(near, eval_report()).exit_code() == 0);
}

TEST_CASE("check: non-finite (null) values") {
    Files f;
    json rep = analyze_report(), base = analyze_report();
    rep["results"][5]["attn"]["kl"] = nullptr;  // finite -> null: regression
    base["results"][6]["v"]["nmse"] = nullptr;  // null -> finite: improvement
    rep["results"][7]["k"]["nmse"] = nullptr;   // null in both: unchanged
    base["results"][7]["k"]["nmse"] = nullptr;
    const CheckResult r = f.check(rep, base);
    CHECK(r.exit_code() == 1);
    CHECK(r.regressions == 1);
    CHECK(r.improvements == 1);
    const auto* m = find(r, "layer 0, kv_head 1, kivi:2", "attn.kl");
    REQUIRE(m);
    CHECK(m->verdict == Verdict::regression);
    CHECK(std::isnan(m->value));
    CHECK(r.markdown.find("| regression | layer 0, kv_head 1, kivi:2 | attn.kl | 0.001 | null | n/a | 10% |") !=
          std::string::npos);
}

TEST_CASE("check: mismatched inputs name the difference") {
    Files f;
    json rep = analyze_report();
    rep["model"]["name"] = "other";
    CHECK_THAT(f.error(rep, analyze_report()), ContainsSubstring("models differ: base tiny, report other"));

    rep = analyze_report();
    rep["provenance"]["dump"]["model"]["sha256"] = "def456";
    CHECK_THAT(f.error(rep, analyze_report()), ContainsSubstring("model sha256 differs: base abc123, report def456"));

    rep = analyze_report();
    rep["format_version"] = "2.0";
    CHECK_THAT(f.error(rep, analyze_report()), ContainsSubstring("format version 2.0 is not supported"));

    CHECK_THAT(f.error(eval_report(), analyze_report()),
               ContainsSubstring("formats differ: base is pkv.analyze_report, report is pkv.eval_report"));

    json ev = eval_report();
    ev["methods"].erase(1);
    const std::string e = f.error(ev, eval_report());
    CHECK_THAT(e, ContainsSubstring("report.json vs "));
    CHECK_THAT(e, ContainsSubstring("base.json: method sets differ: base has q4_0, report has not"));

    rep = analyze_report();
    for (auto& r : rep["results"]) r["method"] = r["method"] == "kivi" ? json("patternkv") : r["method"];
    rep["summary"][1]["method"] = "patternkv";
    CHECK_THAT(
        f.error(rep, analyze_report()),
        ContainsSubstring("method sets differ: base has kivi:2, report has not; report has patternkv:2, base has not"));

    rep = analyze_report();
    for (auto& r : rep["results"])
        if (r["layer"] == 1 && r["kv_head"] == 1) r["kv_head"] = 2;
    CHECK_THAT(f.error(rep, analyze_report()),
               ContainsSubstring("(layer, kv_head) sets differ: base has (1, 1), report has not; report has (1, 2)"));

    rep = analyze_report();
    rep["results"].push_back(rep["results"][0]);
    CHECK_THAT(f.error(rep, analyze_report()), ContainsSubstring("layer 0, kv_head 0, fp16:16 appears twice"));

    rep = analyze_report();
    rep["format"] = "pkv.kv_dump";
    CHECK_THAT(f.error(rep, analyze_report()),
               ContainsSubstring("format 'pkv.kv_dump' is not a report pkv check compares"));

    rep = analyze_report();
    rep["results"][0]["k"]["nmse"] = "x";
    CHECK_THAT(f.error(rep, analyze_report()), ContainsSubstring("'k.nmse' must be a number or null"));

    CheckConfig c;
    c.report_path = f.write("bad.json", json());
    std::ofstream(c.report_path) << "{ not json";
    c.baseline_path = f.write("base.json", analyze_report());
    CHECK_THROWS_WITH(run_check(c), ContainsSubstring("bad.json: not valid JSON"));
}

TEST_CASE("check: tolerance grammar") {
    const Tolerances t = parse_tolerances("nmse=5%,kl=10%,ppl=0.5%,top1=0.5,bits=0");
    CHECK(t.nmse.relative);
    CHECK(t.nmse.value == Approx(0.05));
    CHECK(t.ppl.value == Approx(0.005));
    CHECK_FALSE(t.top1.relative);
    CHECK(t.top1.value == 0.5);
    CHECK(t.bits.value == 0.0);
    const Tolerances u = parse_tolerances("kl=0.01");
    CHECK_FALSE(u.kl.relative);
    CHECK(u.kl.value == 0.01);
    CHECK(u.nmse.relative);  // default kept
    CHECK(u.nmse.value == Approx(0.05));
    CHECK_THAT(tol_error("foo=1"), ContainsSubstring("unknown key 'foo'"));
    CHECK_THAT(tol_error("nmse"), ContainsSubstring("expected key=value, got 'nmse'"));
    CHECK_THAT(tol_error("nmse=abc"), ContainsSubstring("nmse: expected a finite non-negative number"));
    CHECK_THAT(tol_error("nmse=-1%"), ContainsSubstring("got '-1%'"));
    CHECK_THAT(tol_error("nmse=5%%"), ContainsSubstring("got '5%%'"));
    CHECK_THAT(tol_error("nmse=%"), ContainsSubstring("got '%'"));
    CHECK_THAT(tol_error("nmse=inf"), ContainsSubstring("finite"));
    CHECK_THAT(tol_error("nmse=1,nmse=2"), ContainsSubstring("'nmse' given twice"));
    CHECK_THAT(tol_error("nmse=1,,kl=2"), ContainsSubstring("empty item"));
    CHECK_THAT(tol_error("nmse=1,"), ContainsSubstring("empty item"));
    CHECK_THAT(tol_error(""), ContainsSubstring("empty"));
    CHECK_THAT(tol_error("nmse=5 %"), ContainsSubstring("got '5 %'"));
}

TEST_CASE("check: JUnit XML has one testcase per group and failures for regressions") {
    Files f;
    json rep = analyze_report();
    rep["results"][4]["k"]["nmse"] = 1.0;
    rep["summary"][1]["v_nmse"] = 0.001;
    CheckConfig c;
    c.report_path = f.write("report.json", rep);
    c.baseline_path = f.write("base.json", analyze_report());
    c.junit_path = f.dir.path("out.xml");
    std::string printed;
    c.print = [&](const std::string& s) { printed = s; };
    const CheckResult r = run_check(c);
    CHECK(printed == r.markdown);
    const std::string x = slurp(c.junit_path);
    CHECK(x.rfind(
              "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"pkv check\" tests=\"10\" failures=\"1\"",
              0) == 0);
    size_t cases = 0;
    for (size_t p = x.find("<testcase "); p != std::string::npos; p = x.find("<testcase ", p + 1)) ++cases;
    CHECK(cases == 10);
    CHECK(x.find("<testcase classname=\"pkv.check.results\" name=\"layer 0, kv_head 0, kivi:2\" assertions=\"5\">\n"
                 "      <failure type=\"regression\" message=\"k.nmse: regression 0.01 -&gt; 1 (+9900.00%, "
                 "tolerance 5%)\">") != std::string::npos);
    CHECK(x.find("<system-out>v_nmse: improvement 0.03 -&gt; 0.001") != std::string::npos);
    CHECK(x.substr(x.size() - 29) == "  </testsuite>\n</testsuites>\n");
}

TEST_CASE("check: --update replaces or creates the baseline after comparing") {
    Files f;
    json rep = analyze_report();
    rep["results"][4]["k"]["nmse"] = 1.0;
    CheckConfig c;
    c.report_path = f.write("report.json", rep);
    c.baseline_path = f.write("base.json", analyze_report());
    c.update = true;
    const std::string before = slurp(c.report_path);
    CheckResult r = run_check(c);
    CHECK(r.regressions == 1);
    CHECK(r.baseline_updated);
    CHECK(r.exit_code() == 0);
    CHECK(slurp(c.baseline_path) == before);
    c.update = false;
    CHECK(run_check(c).exit_code() == 0);  // now compared against itself

    c.baseline_path = f.dir.path("new-base.json");
    try {
        run_check(c);
        FAIL("expected a missing-baseline error");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::invalid_argument);
        CHECK_THAT(std::string(e.what()), ContainsSubstring("new-base.json: cannot open the baseline"));
    }
    c.update = true;
    r = run_check(c);
    CHECK(r.baseline_created);
    CHECK(slurp(c.baseline_path) == before);
}
