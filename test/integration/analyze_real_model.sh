#!/usr/bin/env bash
# `pkv analyze` on a dump of the default model: report validity, an independent
# numpy cross-check of kivi's NMSE, and PatternKV vs KIVI at 2 bits.
source "$(dirname "$0")/common.bash"
need_data
DUMP="$WORK/dump.h5"

"$PKV_BIN" --log-level warn dump --model "$MODEL" --text "$TEXT" --tokens 4096 --ctx 1024 --out "$DUMP" \
  >/dev/null 2>"$WORK/dump.err" || { failed "dump: $(tail -3 "$WORK/dump.err")"; finish; exit 1; }

if "$PKV_BIN" analyze --dump "$DUMP" --methods fp16,kivi,patternkv --bits 2,4 --attn-stride 4 --json "$WORK/report.json" \
     --html "$WORK/report.html" >"$WORK/analyze.md" 2>"$WORK/analyze.err"; then
  pass "analyze exits 0"
else
  failed "analyze: $(tail -3 "$WORK/analyze.err")"; finish; exit 1
fi
cat "$WORK/analyze.md"
grep -q "^| kivi | 2 |" "$WORK/analyze.md" && pass "markdown summary on stdout" || failed "markdown summary missing"
grep -q "<svg" "$WORK/report.html" && pass "html report written" || failed "html report has no plots"

/usr/bin/python3 - "$PKV_SOURCE_DIR/schemas/report.schema.json" "$WORK/report.json" <<'PY' &&
import json, sys, jsonschema
schema, doc = (json.load(open(p)) for p in sys.argv[1:3])
jsonschema.validate(doc, schema)
assert doc["n_tokens"] == 4096 and len(doc["results"]) == 30 * 3 * 5, len(doc["results"])
assert doc["warnings"] == [], doc["warnings"]
PY
  pass "report validates against schemas/report.schema.json" || failed "report does not validate"

# Independent recomputation of kivi's final-state NMSE (both sides use fp16 scales).
/usr/bin/python3 "$PKV_SOURCE_DIR/test/python/kivi_numpy.py" "$DUMP" "$WORK/report.json" \
  --pairs 0:0,7:2,15:1,29:2 --tol 1e-6 >"$WORK/numpy.out" 2>&1 &&
  pass "kivi NMSE matches numpy: $(tail -1 "$WORK/numpy.out")" || failed "kivi numpy cross-check: $(cat "$WORK/numpy.out")"

/usr/bin/python3 - "$WORK/report.json" <<'PY' && pass "patternkv 2-bit K NMSE below kivi's" ||
import json, sys
rows = {(r["method"], r["bits"]): r for r in json.load(open(sys.argv[1]))["summary"] if not r["rotate"]}
p, k = rows[("patternkv", 2)]["k_nmse"], rows[("kivi", 2)]["k_nmse"]
print(f"mean K NMSE at 2 bits: patternkv {p:.4e}, kivi {k:.4e}")
sys.exit(0 if p < k else 1)
PY
  failed "patternkv 2-bit K NMSE is not below kivi's"

# A dump without queries: attention skipped with one warning.
"$PKV_BIN" --log-level warn dump --model "$MODEL" --text "$TEXT" --tokens 256 --ctx 256 --layers 0 \
  --capture k_post,v --out "$WORK/noq.h5" >/dev/null 2>&1
"$PKV_BIN" analyze --dump "$WORK/noq.h5" --methods kivi --bits 2 --json "$WORK/noq.json" >/dev/null 2>"$WORK/noq.err" &&
  [ "$(grep -c 'attention metrics skipped' "$WORK/noq.err")" -eq 1 ] &&
  pass "no queries: one warning" || failed "no queries: $(cat "$WORK/noq.err")"
expect_fail "unknown method" "unknown method 'kivvi'" "$PKV_BIN" analyze --dump "$WORK/noq.h5" --methods kivvi
expect_fail "bits 5" "\-\-bits 5: expected 2, 3, 4 or 8" "$PKV_BIN" analyze --dump "$WORK/noq.h5" --bits 5
expect_fail "group 48" "\-\-group 48 does not divide head_dim 64" "$PKV_BIN" analyze --dump "$WORK/noq.h5" --group 48
finish
