#!/usr/bin/env bash
# `pkv validate` and `pkv info` on pattern tables: a clean table validates (exit 0), a
# table with degenerate content lists every finding (exit 1), damaged tables give one
# line naming file and object (exit 1). Tables come from the spec-conformant Python
# writer in test/python/test_export_table.py (skipped without the data/venv).
source "$(dirname "$0")/common.bash"
PY="$PKV_DATA_DIR/venv/bin/python"
WRITER="$PKV_SOURCE_DIR/test/python/test_export_table.py"
if ! "$PY" -c "import numpy, safetensors, gguf" 2>/dev/null; then
  echo "SKIPPED: $PY with numpy, safetensors and gguf not available (run scripts/fetch-data.sh)"; exit 77
fi
"$PY" "$WRITER" --write-table "$WORK/t.safetensors" || { echo "FAIL: cannot write the test table" >&2; exit 1; }
"$PY" "$WRITER" --write-table "$WORK/bad.safetensors" --degenerate || exit 1

out=$("$PKV_BIN" validate "$WORK/t.safetensors" 2>&1); rc=$?
[ "$rc" -eq 0 ] && [ "$out" = "$WORK/t.safetensors: valid" ] && pass "clean table: $out" || failed "clean table: rc $rc: $out"

out=$("$PKV_BIN" info "$WORK/t.safetensors" 2>&1); rc=$?
if [ "$rc" -eq 0 ] && grep -q "pkv.pattern_table 1.1" <<<"$out" && grep -q "layers: 3 of 6 calibrated: 1,3,4" <<<"$out" &&
   grep -q "layers: 2 local (window 512, RoPE base 10000), 1 global (RoPE base 1000000)" <<<"$out" &&
   grep -q "Mk 6 key, Mv 5 value per head (F32)" <<<"$out" && grep -q "tokens train 7372 holdout 820" <<<"$out" &&
   grep -q "held-out V (mean over 9 heads): nmse_fitted 0.11 nmse_minmax 0.2 nmse_patterns 0.12" <<<"$out"; then
  pass "info describes the table"
else
  failed "info: rc $rc: $out"
fi
"$PKV_BIN" info --json "$WORK/t.safetensors" >"$WORK/info.json" 2>&1
/usr/bin/python3 - "$PKV_SOURCE_DIR/schemas/pattern_table.schema.json" "$WORK/info.json" <<'PY' 2>&1 &&
import json, sys
from jsonschema import Draft202012Validator
doc = json.load(open(sys.argv[2]))
assert doc["kind"] == "pattern_table", doc["kind"]
Draft202012Validator(json.load(open(sys.argv[1]))).validate(doc["metadata"])
PY
  pass "info --json metadata validates against schemas/pattern_table.schema.json" || failed "info --json: $(cat "$WORK/info.json")"

"$PKV_BIN" validate "$WORK/bad.safetensors" >"$WORK/bad.txt" 2>"$WORK/bad.err"; rc=$?
if [ "$rc" -eq 1 ] && [ "$(grep -c '' "$WORK/bad.txt")" -eq 2 ] &&
   grep -q "^$WORK/bad.safetensors::layers.3.k_clip: head 1: expected a clip ratio in (0, 1\], got 0$" "$WORK/bad.txt" &&
   grep -q "^$WORK/bad.safetensors::layers.4.k_counts: head 2: 1 dead pattern(s) of 6 (count 0): 5$" "$WORK/bad.txt" &&
   grep -q "bad.safetensors: 2 problem(s) found" "$WORK/bad.err"; then
  pass "degenerate table: $(tr '\n' ';' <"$WORK/bad.txt")"
else
  failed "degenerate table: rc $rc: $(cat "$WORK/bad.txt" "$WORK/bad.err")"
fi

# Damaged tables: one problem line each, exit 1.
expect_validate_problem() {
  local name="$1" file="$2" pattern="$3" rc out
  out=$("$PKV_BIN" validate "$file" 2>/dev/null); rc=$?
  if [ "$rc" -eq 1 ] && [ "$(grep -c '' <<<"$out")" -eq 1 ] && grep -q -- "$pattern" <<<"$out"; then
    pass "$name: $out"
  else
    failed "$name: rc $rc, expected one line matching '$pattern': $out"
  fi
}
head -c -6 "$WORK/t.safetensors" >"$WORK/cut.safetensors"
expect_validate_problem "truncated table" "$WORK/cut.safetensors" "cut.safetensors: tensor '.*run past the data buffer"
"$PY" - "$WORK" <<'PY' || failed "cannot write damaged tables"
import sys
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
w = sys.argv[1]
t = load_file(w + "/t.safetensors")
with safe_open(w + "/t.safetensors", framework="numpy") as f:
    m = f.metadata()
save_file(t, w + "/v2.safetensors", metadata=dict(m, **{"pkv.format_version": "2.0"}))
save_file(t, w + "/basis.safetensors", metadata=dict(m, **{"pkv.key.basis": "rotated"}))
save_file({k: v for k, v in t.items() if k != "layers.3.v_clip"}, w + "/missing.safetensors", metadata=m)
save_file(dict(t, **{"layers.1.k_counts": t["layers.1.k_counts"].astype("float64")}), w + "/dtype.safetensors", metadata=m)
save_file(dict(t, **{"layers.4.k_patterns": t["layers.4.k_patterns"][:, :3]}), w + "/shape.safetensors", metadata=m)
save_file(t, w + "/other.safetensors", metadata={"format": "pt"})
save_file(t, w + "/nowindow.safetensors", metadata={k: v for k, v in m.items() if k != "pkv.layers.window"})
save_file(t, w + "/count.safetensors", metadata=dict(m, **{"pkv.layers.window": "512,0"}))
save_file(t, w + "/negative.safetensors", metadata=dict(m, **{"pkv.layers.window": "512,-1,512"}))
save_file(t, w + "/base.safetensors", metadata=dict(m, **{"pkv.layers.rope_base": "10000,inf,10000"}))
v10 = {k: v for k, v in m.items() if k not in ("pkv.layers.window", "pkv.layers.rope_base")}
save_file(t, w + "/v10.safetensors", metadata=dict(v10, **{"pkv.format_version": "1.0"}))
PY
expect_validate_problem "major version 2" "$WORK/v2.safetensors" 'v2.safetensors::pkv.format_version: expected major version 1 ("1.x"), got "2.0"'
expect_validate_problem "unknown basis" "$WORK/basis.safetensors" 'basis.safetensors::pkv.key.basis: expected "pre_rope" or "post_rope", got "rotated"'
expect_validate_problem "missing tensor" "$WORK/missing.safetensors" "missing.safetensors::layers.3.v_clip: expected a F32 tensor of shape \[3\], got none"
expect_validate_problem "wrong dtype" "$WORK/dtype.safetensors" "dtype.safetensors::layers.1.k_counts: expected dtype I64, got F64"
expect_validate_problem "wrong shape" "$WORK/shape.safetensors" "shape.safetensors::layers.4.k_patterns: expected shape \[3, 6, 16\], got \[3, 3, 16\]"
expect_validate_problem "not a pattern table" "$WORK/other.safetensors" 'other.safetensors::pkv.format: expected a metadata entry, got none'
expect_validate_problem "1.1 without window list" "$WORK/nowindow.safetensors" 'nowindow.safetensors::pkv.layers.window: expected a metadata entry, got none'
expect_validate_problem "window count" "$WORK/count.safetensors" 'count.safetensors::pkv.layers.window: expected 3 values, got 2 (one per entry of pkv.layers)'
expect_validate_problem "negative window" "$WORK/negative.safetensors" 'negative.safetensors::pkv.layers.window: expected a decimal integer in \[0, 2^30\] (0: global) for layer 3, got "-1"'
expect_validate_problem "infinite RoPE base" "$WORK/base.safetensors" 'base.safetensors::pkv.layers.rope_base: expected a finite number >= 0 for layer 3, got "inf"'
out=$("$PKV_BIN" validate "$WORK/v10.safetensors" 2>&1) && pass "a 1.0 table without layer geometry validates" ||
  failed "1.0 table: $out"
echo "plain text" >"$WORK/text.bin"
expect_fail "unrecognised file" "text.bin: not a GGUF model, a pkv KV dump or a pattern table" "$PKV_BIN" validate "$WORK/text.bin"
finish
