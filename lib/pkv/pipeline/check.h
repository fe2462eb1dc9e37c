// pkv/pipeline/check.h — a regression gate for quantization-error reports.
//
// `run_check` compares a new report (NEW) against a baseline (BASE) of the same
// kind: two `pkv analyze --json` reports (format "pkv.analyze_report") or two
// `pkv eval --json` reports (format "pkv.eval_report"). Layout of a baseline:
// schemas/baseline.schema.json; usage: docs/check.md.
//
// Compared metrics, by tolerance class (the key of --tolerance):
//   analyze, per result (layer, kv_head, method, bits, rotate) and per summary row
//   (method, bits, rotate):
//     nmse  k.nmse, v.nmse (summary: k_nmse, v_nmse)             lower is better
//     kl    attn.kl (summary: attn_kl)                             lower is better
//     rel   attn.out_rel_err (summary: attn_out_rel_err)           lower is better
//     bits  eff_bits                                               lower is better
//   eval, per method label (and the fp16 reference row):
//     ppl   ppl, ppl_all                                           lower is better
//     kl    kl_mean                                                lower is better
//     top1  top1_agreement (a fraction in [0, 1])                  HIGHER is better
//     bits  bits_per_element                                       lower is better
// A metric is compared when both files hold the group; absent (JSON null) values
// are non-finite: pkv writes NaN and infinities as null.
//
// Tolerances: "key=value[,key=value...]"; "5%" is relative to |base|, a bare number
// is absolute in the metric's unit, except top1, whose absolute tolerance is in
// percentage points (0.5 = half a point of agreement, as eval's table prints it).
// Defaults: nmse=5%,kl=10%,rel=5%,ppl=0.5%,top1=0.5,bits=0.
//
// Classification, with worse = new - base for lower-is-better metrics and
// base - new for top1, and allowed = the tolerance (relative: tol * |base|):
//   regression   worse > allowed, or new non-finite where base is finite
//   improvement  -worse > allowed, or new finite where base is non-finite
//   unchanged    otherwise (both non-finite counts as unchanged)
// With a relative tolerance and base 0, any change is outside the tolerance.
//
// Input problems throw pkv::Error(invalid_argument) (the CLI exits 2), naming the
// files and what differs: unreadable JSON, an unknown format, different format or
// format version, different model (name, or sha256 where either file records one),
// different method sets, different (layer, kv_head) sets, a malformed tolerance.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace pkv {

/// One tolerance: `value` is a fraction of |base| when `relative`, else absolute.
struct Tolerance {
    double value = 0.0;
    bool relative = false;
};

/// Per-class tolerances (see the header comment for classes and defaults).
struct Tolerances {
    Tolerance nmse{0.05, true};
    Tolerance kl{0.10, true};
    Tolerance rel{0.05, true};
    Tolerance ppl{0.005, true};
    Tolerance top1{0.5, false};  ///< absolute values in percentage points
    Tolerance bits{0.0, false};
};

/// Parses "nmse=5%,kl=10%,ppl=0.5%,top1=0.5,bits=0" over the defaults: keys not
/// named keep their default. Throws invalid_argument on an unknown or repeated key,
/// a missing '=', a value that is not a finite non-negative number, or an empty item.
Tolerances parse_tolerances(const std::string& text);

struct CheckConfig {
    std::string report_path;    ///< NEW
    std::string baseline_path;  ///< BASE; with `update` it may not exist yet
    Tolerances tolerances;
    std::string junit_path;  ///< empty: no JUnit XML
    bool update = false;     ///< write NEW over BASE after the comparison
    /// Receives the Markdown comparison before the baseline is replaced (so an
    /// --update failure never hides it); null: the text is only returned.
    std::function<void(const std::string&)> print;
};

enum class Verdict { regression, improvement, unchanged };

/// One compared metric.
struct MetricComparison {
    std::string group;               ///< "layer 0, kv_head 1, kivi:2", "summary kivi:2", "method q4_0"
    std::string metric;              ///< "k.nmse", "attn_kl", "top1_agreement", ...
    double base = 0.0, value = 0.0;  ///< NaN where the file holds null
    std::string tolerance;           ///< as written: "5%", "0.5 pt", "0"
    Verdict verdict = Verdict::unchanged;
};

struct CheckResult {
    std::string format;                     ///< "pkv.analyze_report" or "pkv.eval_report"
    std::vector<MetricComparison> metrics;  ///< every compared metric, in file order
    int groups = 0;                         ///< compared metric groups (JUnit testcases)
    int regressions = 0, improvements = 0, unchanged = 0;
    bool baseline_created = false;  ///< update with no previous baseline: nothing compared
    bool baseline_updated = false;
    std::string markdown;  ///< what `print` received
    /// 0 within tolerance or after --update, 1 on a regression.
    int exit_code() const { return (regressions > 0 && !baseline_updated && !baseline_created) ? 1 : 0; }
};

/// Reads both reports, compares them, writes the JUnit XML (atomically) when asked,
/// hands the Markdown to `print`, then replaces the baseline when `update` is set.
CheckResult run_check(const CheckConfig& config);

}  // namespace pkv
