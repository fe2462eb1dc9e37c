#!/usr/bin/env bash
# `pkv check` on real reports of the default model: a report against itself passes
# (exit 0), one worsened value fails (exit 1) naming the metric, another method set
# is refused (exit 2) naming the difference; JUnit XML parses; --update replaces the
# baseline; analyze and eval outputs validate against schemas/baseline.schema.json.
source "$(dirname "$0")/common.bash"
need_data
SCHEMA="$PKV_SOURCE_DIR/schemas/baseline.schema.json"

"$PKV_BIN" dump --model "$MODEL" --text "$TEXT" --tokens 256 --ctx 256 --layers 0,1 --capture k_post,v,q \
  --out "$WORK/d.h5" >/dev/null 2>"$WORK/dump.err" || { echo "FAIL: dump: $(tail -3 "$WORK/dump.err")" >&2; exit 1; }
"$PKV_BIN" analyze --dump "$WORK/d.h5" --methods fp16,kivi --bits 2 --json "$WORK/r.json" >/dev/null \
  2>"$WORK/an.err" || { echo "FAIL: analyze: $(tail -3 "$WORK/an.err")" >&2; exit 1; }
"$PKV_BIN" analyze --dump "$WORK/d.h5" --methods fp16,q8_0 --bits 2 --json "$WORK/r_other.json" >/dev/null \
  2>>"$WORK/an.err" || { echo "FAIL: analyze q8_0: $(tail -3 "$WORK/an.err")" >&2; exit 1; }

out=$("$PKV_BIN" check --report "$WORK/r.json" --baseline "$WORK/r.json" --junit "$WORK/same.xml" 2>&1); rc=$?
if [ "$rc" -eq 0 ] && grep -q "No metric outside its tolerance" <<<"$out" &&
   grep -q "0 regression(s), 0 improvement(s)" <<<"$out"; then
  pass "report vs itself: $(tail -n 1 <<<"$out")"
else
  failed "report vs itself: rc $rc: $out"
fi

# Worsen kivi's K NMSE of layer 1, head 2 by 20 %.
cp "$WORK/r.json" "$WORK/base.json"
/usr/bin/python3 - "$WORK/r.json" "$WORK/worse.json" <<'PY' || { echo "FAIL: cannot edit the report" >&2; exit 1; }
import json, sys
r = json.load(open(sys.argv[1]))
hit = [x for x in r["results"] if x["layer"] == 1 and x["kv_head"] == 2 and x["method"] == "kivi"]
assert len(hit) == 1, hit
hit[0]["k"]["nmse"] *= 1.2
json.dump(r, open(sys.argv[2], "w"))
PY
out=$("$PKV_BIN" check --report "$WORK/worse.json" --baseline "$WORK/base.json" --junit "$WORK/worse.xml" 2>&1); rc=$?
if [ "$rc" -eq 1 ] && grep -q "^| regression | layer 1, kv_head 2, kivi:2 | k.nmse | .* | +20.00% | 5% |$" <<<"$out" &&
   grep -q "1 regression(s)" <<<"$out"; then
  pass "worsened k.nmse: exit 1: $(grep '^| regression' <<<"$out")"
else
  failed "worsened k.nmse: rc $rc: $out"
fi
# With a looser tolerance the same change passes.
"$PKV_BIN" check --report "$WORK/worse.json" --baseline "$WORK/base.json" --tolerance nmse=25% >/dev/null 2>&1 &&
  pass "worsened k.nmse within --tolerance nmse=25%" || failed "nmse=25% did not pass"

/usr/bin/python3 - "$WORK/same.xml" "$WORK/worse.xml" <<'PY' 2>&1 && pass "JUnit XML parses: testcases per group, one failure" || failed "JUnit XML"
import sys, xml.etree.ElementTree as ET
same, worse = (ET.parse(p).getroot() for p in sys.argv[1:3])
cases = worse.findall(".//testcase")
# 2 layers x 3 kv heads x 2 methods, plus 2 summary rows.
assert len(cases) == 14, len(cases)
assert same.get("failures") == "0" and not same.findall(".//failure")
fails = worse.findall(".//failure")
assert worse.get("failures") == "1" and len(fails) == 1, ET.tostring(worse)
owner = [c for c in cases if c.find("failure") is not None][0]
assert owner.get("name") == "layer 1, kv_head 2, kivi:2", owner.attrib
assert fails[0].get("message").startswith("k.nmse: regression"), fails[0].attrib
PY

expect_fail "another method set exits 2" \
  "r_other.json vs .*base.json: method sets differ: base has kivi:2, report has not; report has q8_0:8, base has not" \
  "$PKV_BIN" check --report "$WORK/r_other.json" --baseline "$WORK/base.json"
"$PKV_BIN" check --report "$WORK/r_other.json" --baseline "$WORK/base.json" >/dev/null 2>&1
[ $? -eq 2 ] && pass "method-set mismatch: exit status 2" || failed "method-set mismatch: exit status not 2"
"$PKV_BIN" check --report "$WORK/r.json" --baseline "$WORK/base.json" --tolerance nmse=5 >/dev/null 2>&1; rc=$?
"$PKV_BIN" check --report "$WORK/r.json" --baseline "$WORK/base.json" --tolerance nmse=x >/dev/null 2>&1
[ $? -eq 2 ] && [ "$rc" -eq 0 ] && pass "bad --tolerance exits 2" || failed "--tolerance nmse=x: exit status not 2"

# --update accepts the worse report as the new baseline.
out=$("$PKV_BIN" check --report "$WORK/worse.json" --baseline "$WORK/base.json" --update 2>&1); rc=$?
if [ "$rc" -eq 0 ] && grep -q "| regression |" <<<"$out" && cmp -s "$WORK/worse.json" "$WORK/base.json"; then
  pass "--update prints the comparison, replaces the baseline, exit 0"
else
  failed "--update: rc $rc: $out"
fi

# A small eval report: compares with itself; both report kinds validate against the schema.
if "$PKV_BIN" eval --model "$MODEL" --text "$TEXT" --tokens 128 --ctx 128 --kv kivi:2 --json "$WORK/e.json" \
     >/dev/null 2>"$WORK/eval.err"; then
  "$PKV_BIN" check --report "$WORK/e.json" --baseline "$WORK/e.json" >/dev/null 2>&1 &&
    pass "eval report vs itself: exit 0" || failed "eval report vs itself"
  expect_fail "eval vs analyze exits non-zero" "formats differ: base is pkv.analyze_report, report is pkv.eval_report" \
    "$PKV_BIN" check --report "$WORK/e.json" --baseline "$WORK/r.json"
else
  failed "eval: $(tail -3 "$WORK/eval.err")"
fi
/usr/bin/python3 - "$SCHEMA" "$WORK/r.json" "$WORK/e.json" <<'PY' 2>&1 && pass "analyze and eval reports validate against baseline.schema.json" || failed "schema validation"
import json, sys
from jsonschema import Draft202012Validator
v = Draft202012Validator(json.load(open(sys.argv[1])))
for p in sys.argv[2:]:
    v.validate(json.load(open(p)))
bad = json.load(open(sys.argv[2])); del bad["results"][0]["layer"]
assert list(v.iter_errors(bad)), "a result without 'layer' must not validate"
bad = json.load(open(sys.argv[3])); bad["methods"][0]["top1_agreement"] = "high"
assert list(v.iter_errors(bad)), "a string top1_agreement must not validate"
bad = json.load(open(sys.argv[3])); bad["methods"][0]["by_position"][0]["scored_all"] = 0
assert list(v.iter_errors(bad)), "an empty position bucket must not validate"
PY
finish
