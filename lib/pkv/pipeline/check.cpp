// Regression gate over pkv.analyze_report / pkv.eval_report documents: extract
// comparable metric groups from both files, refuse mismatched inputs, classify
// every metric against its tolerance, then render Markdown and JUnit XML.
#include "pkv/pipeline/check.h"

#include <cmath>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/memory_budget.h"

namespace pkv {

namespace {

using nlohmann::json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr const char* kAnalyze = "pkv.analyze_report";
constexpr const char* kEval = "pkv.eval_report";

enum class Cls { nmse, kl, rel, ppl, top1, bits };

struct Metric {
    std::string name;
    Cls cls;
    double value;
};

struct Group {
    std::string id;       // unique within a report
    std::string section;  // "results", "summary", "methods"
    std::string display;
    std::vector<Metric> metrics;
};

// What a report contributes to a comparison.
struct Extract {
    std::string path, format, version, model_name, model_sha;
    std::set<std::string> methods;
    std::set<std::pair<int, int>> heads;  // analyze only
    std::vector<Group> groups;
};

std::string read_text(const std::string& path, const char* role) {
    std::ifstream f(path, std::ios::binary);
    PKV_CHECK(f.good(), invalid_argument, "{}: cannot open the {}", path, role);
    check_file_fits_budget(path);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

json parse_json(const std::string& text, const std::string& path) {
    try {
        return json::parse(text);
    } catch (const json::exception& e) {
        fail(ErrorCode::invalid_argument, "{}: not valid JSON: {}", path, e.what());
    }
}

const json& need(const json& o, const char* key, const std::string& path, const std::string& where) {
    PKV_CHECK(o.is_object() && o.contains(key), invalid_argument, "{}: {}: missing '{}'", path, where, key);
    return o.at(key);
}

std::string need_string(const json& o, const char* key, const std::string& path, const std::string& where) {
    const json& v = need(o, key, path, where);
    PKV_CHECK(v.is_string(), invalid_argument, "{}: {}: '{}' must be a string", path, where, key);
    return v.get<std::string>();
}

int need_int(const json& o, const char* key, const std::string& path, const std::string& where) {
    const json& v = need(o, key, path, where);
    PKV_CHECK(v.is_number_integer(), invalid_argument, "{}: {}: '{}' must be an integer", path, where, key);
    return v.get<int>();
}

// Adds o[key] when present: a number, or null (a non-finite value pkv wrote as null).
void add_metric(Group& g, const json& o, const char* key, const char* name, Cls cls, const std::string& path) {
    if (!o.is_object() || !o.contains(key)) return;
    const json& v = o.at(key);
    PKV_CHECK(v.is_number() || v.is_null(), invalid_argument, "{}: {}: '{}' must be a number or null", path, g.display,
              name);
    g.metrics.push_back({name, cls, v.is_number() ? v.get<double>() : kNaN});
}

// Metrics whose name in the report is also their name in the comparison.
struct MetricSpec {
    const char* key;
    Cls cls;
};
void add_metrics(Group& g, const json& o, std::initializer_list<MetricSpec> specs, const std::string& path) {
    for (const MetricSpec& m : specs) add_metric(g, o, m.key, m.key, m.cls, path);
}

std::string analyze_method_key(const json& r, const std::string& path, const std::string& where) {
    std::string k = need_string(r, "method", path, where) + ":" + std::to_string(need_int(r, "bits", path, where));
    const json& rot = need(r, "rotate", path, where);
    PKV_CHECK(rot.is_boolean(), invalid_argument, "{}: {}: 'rotate' must be a boolean", path, where);
    if (rot.get<bool>()) k += ":rot";
    return k;
}

void extract_analyze(const json& j, Extract& x) {
    x.version = need_string(j, "format_version", x.path, "top level");
    const json& model = need(j, "model", x.path, "top level");
    x.model_name = need_string(model, "name", x.path, "model");
    const json* dm = nullptr;
    if (j.contains("provenance") && j["provenance"].is_object() && j["provenance"].contains("dump") &&
        j["provenance"]["dump"].is_object() && j["provenance"]["dump"].contains("model"))
        dm = &j["provenance"]["dump"]["model"];
    if (dm && dm->is_object() && dm->contains("sha256") && (*dm)["sha256"].is_string())
        x.model_sha = (*dm)["sha256"].get<std::string>();

    const json& results = need(j, "results", x.path, "top level");
    PKV_CHECK(results.is_array(), invalid_argument, "{}: 'results' must be an array", x.path);
    for (size_t i = 0; i < results.size(); ++i) {
        const json& r = results[i];
        const std::string where = fmt::format("results[{}]", i);
        const int layer = need_int(r, "layer", x.path, where), head = need_int(r, "kv_head", x.path, where);
        const std::string mk = analyze_method_key(r, x.path, where);
        x.methods.insert(mk);
        x.heads.insert({layer, head});
        Group g{fmt::format("r|{}|{}|{}", layer, head, mk),
                "results",
                fmt::format("layer {}, kv_head {}, {}", layer, head, mk),
                {}};
        if (r.contains("k") && r["k"].is_object()) add_metric(g, r["k"], "nmse", "k.nmse", Cls::nmse, x.path);
        if (r.contains("v") && r["v"].is_object()) add_metric(g, r["v"], "nmse", "v.nmse", Cls::nmse, x.path);
        if (r.contains("attn") && r["attn"].is_object()) {
            add_metric(g, r["attn"], "kl", "attn.kl", Cls::kl, x.path);
            add_metric(g, r["attn"], "out_rel_err", "attn.out_rel_err", Cls::rel, x.path);
        }
        add_metric(g, r, "eff_bits", "eff_bits", Cls::bits, x.path);
        x.groups.push_back(std::move(g));
    }
    const json& summary = need(j, "summary", x.path, "top level");
    PKV_CHECK(summary.is_array(), invalid_argument, "{}: 'summary' must be an array", x.path);
    for (size_t i = 0; i < summary.size(); ++i) {
        const json& s = summary[i];
        const std::string mk = analyze_method_key(s, x.path, fmt::format("summary[{}]", i));
        x.methods.insert(mk);
        Group g{"s|" + mk, "summary", "summary " + mk, {}};
        add_metrics(g, s,
                    {{"k_nmse", Cls::nmse},
                     {"v_nmse", Cls::nmse},
                     {"attn_kl", Cls::kl},
                     {"attn_out_rel_err", Cls::rel},
                     {"eff_bits", Cls::bits}},
                    x.path);
        x.groups.push_back(std::move(g));
    }
}

void add_eval_group(const json& m, const std::string& label, Extract& x) {
    Group g{"m|" + label, "methods", "method " + label, {}};
    add_metrics(g, m,
                {{"ppl", Cls::ppl},
                 {"ppl_all", Cls::ppl},
                 {"kl_mean", Cls::kl},
                 {"top1_agreement", Cls::top1},
                 {"bits_per_element", Cls::bits}},
                x.path);
    x.groups.push_back(std::move(g));
}

void extract_eval(const json& j, Extract& x) {
    x.version = need_string(j, "version", x.path, "top level");
    const json& model = need(j, "model", x.path, "top level");
    x.model_name = need_string(model, "name", x.path, "model");
    x.model_sha = need_string(model, "sha256", x.path, "model");
    if (j.contains("reference"))
        add_eval_group(j["reference"], need_string(j["reference"], "label", x.path, "reference"), x);
    const json& methods = need(j, "methods", x.path, "top level");
    PKV_CHECK(methods.is_array(), invalid_argument, "{}: 'methods' must be an array", x.path);
    for (size_t i = 0; i < methods.size(); ++i) {
        const std::string label = need_string(methods[i], "label", x.path, fmt::format("methods[{}]", i));
        x.methods.insert(label);
        add_eval_group(methods[i], label, x);
    }
}

Extract extract(const json& j, const std::string& path) {
    Extract x;
    x.path = path;
    PKV_CHECK(j.is_object(), invalid_argument, "{}: expected a JSON object at the top level", path);
    x.format = need_string(j, "format", path, "top level");
    if (x.format == kAnalyze) extract_analyze(j, x);
    else if (x.format == kEval) extract_eval(j, x);
    else
        fail(ErrorCode::invalid_argument, "{}: format '{}' is not a report pkv check compares (expected {} or {})",
             path, x.format, kAnalyze, kEval);
    PKV_CHECK(x.version.rfind("1.", 0) == 0, invalid_argument,
              "{}: format version {} is not supported (pkv check reads 1.x)", path, x.version);
    std::set<std::string> seen;
    for (const Group& g : x.groups)
        PKV_CHECK(seen.insert(g.id).second, invalid_argument, "{}: {} appears twice", path, g.display);
    return x;
}

template <typename T, typename F>
std::string set_difference_text(const std::set<T>& base, const std::set<T>& rep, F show) {
    std::vector<std::string> only_base, only_rep;
    for (const T& v : base)
        if (!rep.count(v)) only_base.push_back(show(v));
    for (const T& v : rep)
        if (!base.count(v)) only_rep.push_back(show(v));
    std::string s;
    if (!only_base.empty()) s += fmt::format("base has {}, report has not", fmt::join(only_base, ", "));
    if (!only_rep.empty())
        s += fmt::format("{}report has {}, base has not", s.empty() ? "" : "; ", fmt::join(only_rep, ", "));
    return s;
}

// Refuses a comparison of unlike reports, naming the first difference.
void require_comparable(const Extract& b, const Extract& n) {
    const std::string pre = fmt::format("{} vs {}", n.path, b.path);
    PKV_CHECK(b.format == n.format, invalid_argument, "{}: formats differ: base is {}, report is {}", pre, b.format,
              n.format);
    // Versions need not match: both are 1.x (extract), and a minor version only adds
    // fields, so a 1.1 report compares with a 1.0 baseline on the metrics both hold.
    PKV_CHECK(b.model_name == n.model_name, invalid_argument, "{}: models differ: base {}, report {}", pre,
              b.model_name, n.model_name);
    PKV_CHECK(b.model_sha == n.model_sha, invalid_argument, "{}: model sha256 differs: base {}, report {}", pre,
              b.model_sha.empty() ? "(none)" : b.model_sha.substr(0, 16),
              n.model_sha.empty() ? "(none)" : n.model_sha.substr(0, 16));
    const std::string dm = set_difference_text(b.methods, n.methods, [](const std::string& s) { return s; });
    PKV_CHECK(dm.empty(), invalid_argument, "{}: method sets differ: {}", pre, dm);
    const std::string dh = set_difference_text(
        b.heads, n.heads, [](const std::pair<int, int>& p) { return fmt::format("({}, {})", p.first, p.second); });
    PKV_CHECK(dh.empty(), invalid_argument, "{}: (layer, kv_head) sets differ: {}", pre, dh);
    std::set<std::string> bid, nid;
    std::map<std::string, std::string> shown;
    for (const Group& g : b.groups) bid.insert(g.id), shown[g.id] = g.display;
    for (const Group& g : n.groups) nid.insert(g.id), shown[g.id] = g.display;
    const std::string dg = set_difference_text(bid, nid, [&](const std::string& id) { return shown[id]; });
    PKV_CHECK(dg.empty(), invalid_argument, "{}: compared groups differ: {}", pre, dg);
}

const Tolerance& tol_of(const Tolerances& t, Cls c) {
    switch (c) {
        case Cls::nmse: return t.nmse;
        case Cls::kl: return t.kl;
        case Cls::rel: return t.rel;
        case Cls::ppl: return t.ppl;
        case Cls::top1: return t.top1;
        case Cls::bits: return t.bits;
    }
    return t.bits;
}

std::string tol_text(const Tolerance& t, Cls c) {
    if (t.relative) return fmt::format("{:g}%", t.value * 100.0);
    return c == Cls::top1 ? fmt::format("{:g} pt", t.value) : fmt::format("{:g}", t.value);
}

Verdict classify(double base, double value, const Tolerance& t, Cls c) {
    const bool fb = std::isfinite(base), fv = std::isfinite(value);
    if (!fb && !fv) return Verdict::unchanged;
    if (fb && !fv) return Verdict::regression;
    if (!fb) return Verdict::improvement;
    const double worse = c == Cls::top1 ? base - value : value - base;
    const double allowed = t.relative ? t.value * std::fabs(base) : t.value * (c == Cls::top1 ? 0.01 : 1.0);
    if (worse > allowed) return Verdict::regression;
    if (-worse > allowed) return Verdict::improvement;
    return Verdict::unchanged;
}

std::string num_text(double v) { return std::isfinite(v) ? fmt::format("{:.4g}", v) : std::string("null"); }

std::string change_text(double b, double v) {
    if (!std::isfinite(b) || !std::isfinite(v)) return "n/a";
    if (b != 0.0) return fmt::format("{:+.2f}%", 100.0 * (v - b) / std::fabs(b));
    return fmt::format("{:+.4g}", v - b);
}

const char* verdict_name(Verdict v) {
    return v == Verdict::regression ? "regression" : v == Verdict::improvement ? "improvement" : "unchanged";
}

std::string render_markdown(const CheckResult& r, const std::string& rep, const std::string& base) {
    std::string out = fmt::format("## pkv check: {} vs baseline {} ({})\n\n", rep, base, r.format);
    if (r.regressions + r.improvements == 0) {
        out += "No metric outside its tolerance.\n\n";
    } else {
        out += "| verdict | group | metric | base | new | change | tolerance |\n";
        out += "|---|---|---|---:|---:|---:|---:|\n";
        for (Verdict want : {Verdict::regression, Verdict::improvement})
            for (const MetricComparison& m : r.metrics)
                if (m.verdict == want)
                    out += fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", verdict_name(m.verdict), m.group,
                                       m.metric, num_text(m.base), num_text(m.value), change_text(m.base, m.value),
                                       m.tolerance);
        out += "\n";
    }
    out += fmt::format("{} metrics in {} groups: {} regression(s), {} improvement(s), {} unchanged within tolerance.\n",
                       r.metrics.size(), r.groups, r.regressions, r.improvements, r.unchanged);
    return out;
}

std::string xml_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        switch (c) {
            case '&': o += "&amp;"; break;
            case '<': o += "&lt;"; break;
            case '>': o += "&gt;"; break;
            case '"': o += "&quot;"; break;
            case '\'': o += "&apos;"; break;
            case '\n': o += "&#10;"; break;
            default:
                // Control characters are not allowed in XML 1.0.
                if (static_cast<unsigned char>(c) < 0x20 && c != '\t') o += ' ';
                else o += c;
        }
    }
    return o;
}

std::string line_of(const MetricComparison& m) {
    return fmt::format("{}: {} {} -> {} ({}, tolerance {})", m.metric, verdict_name(m.verdict), num_text(m.base),
                       num_text(m.value), change_text(m.base, m.value), m.tolerance);
}

void write_junit(const std::string& path, const CheckResult& r, const std::vector<std::string>& sections,
                 const std::string& rep, const std::string& base) {
    // Metrics are stored group by group, so consecutive runs of one group form a testcase.
    std::ostringstream cases;
    int failed = 0;
    for (size_t i = 0; i < r.metrics.size();) {
        size_t e = i;
        std::vector<std::string> regress, improve;
        while (e < r.metrics.size() && r.metrics[e].group == r.metrics[i].group) {
            if (r.metrics[e].verdict == Verdict::regression) regress.push_back(line_of(r.metrics[e]));
            if (r.metrics[e].verdict == Verdict::improvement) improve.push_back(line_of(r.metrics[e]));
            ++e;
        }
        cases << fmt::format("    <testcase classname=\"pkv.check.{}\" name=\"{}\" assertions=\"{}\">\n",
                             xml_escape(sections[i]), xml_escape(r.metrics[i].group), e - i);
        if (!regress.empty()) {
            ++failed;
            cases << fmt::format(
                "      <failure type=\"regression\" message=\"{}\">{}</failure>\n",
                xml_escape(regress.size() == 1 ? regress[0] : fmt::format("{} regressions", regress.size())),
                xml_escape(fmt::format("{}", fmt::join(regress, "\n"))));
        }
        if (!improve.empty())
            cases << fmt::format("      <system-out>{}</system-out>\n",
                                 xml_escape(fmt::format("{}", fmt::join(improve, "\n"))));
        cases << "    </testcase>\n";
        i = e;
    }
    AtomicOutput out(path, true);
    {
        std::ofstream f(out.temp_path(), std::ios::binary);
        PKV_CHECK(f.good(), io, "{}: cannot write", out.temp_path());
        const std::string suite = xml_escape(fmt::format("pkv check {} vs {}", rep, base));
        f << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
        f << fmt::format("<testsuites name=\"pkv check\" tests=\"{}\" failures=\"{}\" errors=\"0\">\n", r.groups,
                         failed);
        f << fmt::format("  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\">\n", suite,
                         r.groups, failed);
        f << cases.str();
        f << "  </testsuite>\n</testsuites>\n";
        f.flush();
        PKV_CHECK(f.good(), io, "{}: write failed", out.temp_path());
    }
    out.commit();
}

void write_bytes(const std::string& path, const std::string& bytes) {
    AtomicOutput out(path, true);
    {
        std::ofstream f(out.temp_path(), std::ios::binary);
        PKV_CHECK(f.good(), io, "{}: cannot write", out.temp_path());
        f << bytes;
        f.flush();
        PKV_CHECK(f.good(), io, "{}: write failed", out.temp_path());
    }
    out.commit();
}

}  // namespace

Tolerances parse_tolerances(const std::string& text) {
    Tolerances t;
    std::set<std::string> seen;
    size_t pos = 0;
    PKV_CHECK(!text.empty(), invalid_argument, "--tolerance: empty (expected key=value[,key=value...])");
    while (pos <= text.size()) {
        const size_t comma = text.find(',', pos);
        const std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        pos = comma == std::string::npos ? text.size() + 1 : comma + 1;
        PKV_CHECK(!item.empty(), invalid_argument, "--tolerance '{}': empty item", text);
        const size_t eq = item.find('=');
        PKV_CHECK(eq != std::string::npos, invalid_argument, "--tolerance '{}': expected key=value, got '{}'", text,
                  item);
        const std::string key = item.substr(0, eq);
        std::string val = item.substr(eq + 1);
        Tolerance* dst = key == "nmse"   ? &t.nmse
                         : key == "kl"   ? &t.kl
                         : key == "rel"  ? &t.rel
                         : key == "ppl"  ? &t.ppl
                         : key == "top1" ? &t.top1
                         : key == "bits" ? &t.bits
                                         : nullptr;
        PKV_CHECK(dst, invalid_argument, "--tolerance '{}': unknown key '{}' (expected nmse, kl, rel, ppl, top1, bits)",
                  text, key);
        PKV_CHECK(seen.insert(key).second, invalid_argument, "--tolerance '{}': '{}' given twice", text, key);
        const bool rel = !val.empty() && val.back() == '%';
        if (rel) val.pop_back();
        double v = kNaN;
        size_t used = 0;
        try {
            v = std::stod(val, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        PKV_CHECK(!val.empty() && used == val.size() && std::isfinite(v) && v >= 0, invalid_argument,
                  "--tolerance '{}': {}: expected a finite non-negative number or percentage, got '{}'", text, key,
                  item.substr(eq + 1));
        *dst = {rel ? v / 100.0 : v, rel};
    }
    return t;
}

CheckResult run_check(const CheckConfig& c) {
    CheckResult r;
    const std::string rep_text = read_text(c.report_path, "report");
    const Extract n = extract(parse_json(rep_text, c.report_path), c.report_path);
    r.format = n.format;

    std::ifstream probe(c.baseline_path);
    if (!probe.good() && c.update) {
        r.markdown = fmt::format("## pkv check: {}\n\nNo baseline at {}: created it from this report.\n", c.report_path,
                                 c.baseline_path);
        if (c.print) c.print(r.markdown);
        write_bytes(c.baseline_path, rep_text);
        r.baseline_created = true;
        return r;
    }
    PKV_CHECK(probe.good(), invalid_argument, "{}: cannot open the baseline (--update creates it)", c.baseline_path);
    probe.close();
    const Extract b = extract(parse_json(read_text(c.baseline_path, "baseline"), c.baseline_path), c.baseline_path);
    require_comparable(b, n);

    std::map<std::string, const Group*> by_id;
    for (const Group& g : n.groups) by_id[g.id] = &g;
    std::vector<std::string> sections;
    for (const Group& bg : b.groups) {
        const Group& ng = *by_id.at(bg.id);
        bool any = false;
        for (const Metric& bm : bg.metrics) {
            for (const Metric& nm : ng.metrics) {
                if (nm.name != bm.name) continue;
                const Tolerance& t = tol_of(c.tolerances, bm.cls);
                MetricComparison m{bg.display,
                                   bm.name,
                                   bm.value,
                                   nm.value,
                                   tol_text(t, bm.cls),
                                   classify(bm.value, nm.value, t, bm.cls)};
                (m.verdict == Verdict::regression    ? r.regressions
                 : m.verdict == Verdict::improvement ? r.improvements
                                                     : r.unchanged)++;
                r.metrics.push_back(std::move(m));
                sections.push_back(bg.section);
                any = true;
            }
        }
        r.groups += any;
    }
    r.markdown = render_markdown(r, c.report_path, c.baseline_path);
    if (!c.junit_path.empty()) write_junit(c.junit_path, r, sections, c.report_path, c.baseline_path);
    if (c.print) c.print(r.markdown);
    if (c.update) {
        write_bytes(c.baseline_path, rep_text);
        r.baseline_updated = true;
    }
    return r;
}

}  // namespace pkv
