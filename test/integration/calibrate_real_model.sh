#!/usr/bin/env bash
# `pkv calibrate` on the default model: a table mined from prose, measured on held-out
# prose and, through `pkv analyze --table`, on C code; plus the bad inputs of the issue.
source "$(dirname "$0")/common.bash"
need_data
PROSE="$WORK/prose.h5"
CODE="$WORK/code.h5"
TABLE="$WORK/table.safetensors"
cat /usr/include/stdio.h /usr/include/stdlib.h /usr/include/string.h >"$WORK/code.txt"

"$PKV_BIN" --log-level warn dump --model "$MODEL" --text "$TEXT" --tokens 2048 --ctx 512 --capture k_post,v \
  --out "$PROSE" >/dev/null 2>"$WORK/dump.err" || { failed "dump: $(tail -3 "$WORK/dump.err")"; finish; exit 1; }
"$PKV_BIN" --log-level warn dump --model "$MODEL" --text "$WORK/code.txt" --tokens 1024 --ctx 512 \
  --out "$CODE" >/dev/null 2>"$WORK/dump2.err" || { failed "dump code: $(tail -3 "$WORK/dump2.err")"; finish; exit 1; }

if "$PKV_BIN" calibrate --dump "$PROSE" --out "$TABLE" --k-patterns 16 --v-patterns 16 --holdout 0.25 \
     --device auto >"$WORK/cal.md" 2>"$WORK/cal.err"; then
  pass "calibrate exits 0"
else
  failed "calibrate: $(tail -3 "$WORK/cal.err")"; finish; exit 1
fi
cat "$WORK/cal.md"
grep -q "^| k | " "$WORK/cal.md" && pass "summary table on stdout" || failed "no summary table"
grep -q "device auto" "$WORK/cal.err" && pass "--device auto says where it runs: $(grep 'device auto' "$WORK/cal.err")" ||
  failed "--device auto did not say where it runs"
"$PKV_BIN" validate "$TABLE" >"$WORK/val.out" 2>&1 && pass "pkv validate: table is clean" ||
  failed "pkv validate: $(cat "$WORK/val.out")"

"$PKV_DATA_DIR/venv/bin/python" - "$TABLE" <<'PY' && pass "table read back with the safetensors package" ||
import json, sys
import numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open
t = load_file(sys.argv[1])
with safe_open(sys.argv[1], "np") as f:
    meta = f.metadata()
cal = json.loads(meta["pkv.calibration"])
train, hold = cal["tokens"]["train"], cal["tokens"]["holdout"]
assert train + hold == 2048 and hold >= 512, (train, hold)
assert hold % 512 == 0, hold  # whole sequences of 512 tokens are held out
for l in range(30):
    kp, vp = t[f"layers.{l}.k_patterns"], t[f"layers.{l}.v_patterns"]
    assert kp.shape == (3, 16, 64) and vp.shape == (3, 16, 64) and kp.dtype == np.float32
    assert np.isfinite(kp).all() and np.isfinite(vp).all()
    for c in ("k_counts", "v_counts"):
        assert (t[f"layers.{l}.{c}"].sum(axis=1) == train).all(), c
    assert ((t[f"layers.{l}.k_clip"] > 0) & (t[f"layers.{l}.k_clip"] <= 1)).all()
heads = cal["heads"]
assert len(heads) == 90
mean = lambda key, f: np.mean([h[key]["heldout"][f] for h in heads])
for key in ("k", "v"):
    mm, mc = mean(key, "nmse_minmax"), mean(key, "nmse_minmax_clipped")
    pt, ft = mean(key, "nmse_patterns"), mean(key, "nmse_fitted")
    print(f"{key}: held-out NMSE min-max {mm:.4e}, min-max clipped {mc:.4e}, patterns {pt:.4e}, fitted {ft:.4e}")
    assert pt < mm, f"{key}: patterns do not beat plain min-max on held-out tokens"
    assert ft < pt, f"{key}: the fitted parameters do not lower the held-out error"
    assert mc < mm, f"{key}: a fitted clip does not help plain min-max"
    assert ft < mc, f"{key}: patterns add nothing once both are clipped"
PY
  failed "table content check"

# The table evaluated on another text (C headers) next to the online method.
if "$PKV_BIN" analyze --dump "$CODE" --methods kivi,patternkv --bits 2 --table "$TABLE" --attn-stride 8 \
     --json "$WORK/code.json" >"$WORK/code.md" 2>"$WORK/code.err"; then
  pass "analyze --table on another text exits 0"
  cat "$WORK/code.md"
else
  failed "analyze --table: $(tail -3 "$WORK/code.err")"
fi
/usr/bin/python3 - "$PKV_SOURCE_DIR/schemas/report.schema.json" "$WORK/code.json" <<'PY' &&
import json, sys, jsonschema
schema, doc = (json.load(open(p)) for p in sys.argv[1:3])
jsonschema.validate(doc, schema)
rows = {r["method"]: r for r in doc["summary"]}
t, k = rows["patternkv-table"], rows["kivi"]
print(f"code text, 2 bits: K NMSE table {t['k_nmse']:.4e} kivi {k['k_nmse']:.4e}; "
      f"V NMSE table {t['v_nmse']:.4e} kivi {k['v_nmse']:.4e}")
assert doc["settings"]["table"]["bits"] == 2
assert t["v_nmse"] < k["v_nmse"]
PY
  pass "patternkv-table row in a schema-valid report, V error below kivi's" || failed "patternkv-table report check"

# The table in the model's own cache: pkv eval on the code text.
if "$PKV_BIN" --log-level warn eval --model "$MODEL" --text "$WORK/code.txt" --tokens 512 --ctx 512 \
     --kv fp16 kivi:2 patternkv:2 "patternkv-table:2:$TABLE" --json "$WORK/eval.json" >"$WORK/eval.md" 2>"$WORK/eval.err"; then
  cat "$WORK/eval.md"
  /usr/bin/python3 - "$WORK/eval.json" <<'PY' && pass "eval runs patternkv-table: lower perplexity than kivi:2 at fewer bits than patternkv:2" ||
import json, sys
rows = {m["label"]: m for m in json.load(open(sys.argv[1]))["methods"]}
t = next(v for k, v in rows.items() if k.startswith("patternkv-table"))
k, p = rows["kivi:2"], rows["patternkv:2"]
print(f"eval on code: PPL table {t['ppl']:.3f}, kivi:2 {k['ppl']:.3f}, patternkv:2 {p['ppl']:.3f}; "
      f"mean KL table {t['kl_mean']:.4e}, kivi:2 {k['kl_mean']:.4e}; bits table {t['bits_per_element']:.2f}, "
      f"patternkv:2 {p['bits_per_element']:.2f}")
sys.exit(0 if t["ppl"] < k["ppl"] and t["bits_per_element"] < p["bits_per_element"] else 1)
PY
    failed "patternkv-table eval check"
else
  failed "eval with the table: $(tail -3 "$WORK/eval.err")"
fi
"$PKV_BIN" export --table "$TABLE" --format safetensors --key-order hf --out "$WORK/hf.safetensors" >/dev/null 2>&1
expect_fail "eval: table in another key layout" "key dim order hf_half_split" \
  "$PKV_BIN" eval --model "$MODEL" --text "$TEXT" --tokens 64 --ctx 64 --kv "patternkv-table:2:$WORK/hf.safetensors"
expect_fail "eval: table for other bits" "fitted for 2-bit residuals, not 4" \
  "$PKV_BIN" eval --model "$MODEL" --text "$TEXT" --tokens 64 --ctx 64 --kv "patternkv-table:4:$TABLE"
expect_fail "analyze: table in another key layout" "key dim order is hf_half_split" \
  "$PKV_BIN" analyze --dump "$PROSE" --methods kivi --table "$WORK/hf.safetensors" --layers 0

# Bad input.
"$PKV_BIN" --log-level warn dump --model "$MODEL" --text "$TEXT" --tokens 64 --ctx 64 --layers 0 --capture k_post \
  --out "$WORK/nov.h5" >/dev/null 2>&1
expect_fail "dump without values" "nov.h5::/v: dataset missing" \
  "$PKV_BIN" calibrate --dump "$WORK/nov.h5" --out "$WORK/x.safetensors"
expect_fail "keys pre not captured" "prose.h5::/k_pre: dataset missing" \
  "$PKV_BIN" calibrate --dump "$PROSE" --keys pre --out "$WORK/x.safetensors"
expect_fail "k above the tokens" "\-\-k-patterns 4000 exceeds the 1536 training tokens" \
  "$PKV_BIN" calibrate --dump "$PROSE" --k-patterns 4000 --holdout 0.25 --out "$WORK/x.safetensors"
expect_fail "existing output" "table.safetensors: exists" "$PKV_BIN" calibrate --dump "$PROSE" --out "$TABLE"
if ! "$PKV_BIN" devices 2>/dev/null | grep -q '^cuda:'; then
  expect_fail "--device cuda without a GPU" "\-\-device cuda:" \
    "$PKV_BIN" calibrate --dump "$PROSE" --device cuda --out "$WORK/x.safetensors"
fi
/usr/bin/python3 - "$PROSE" "$WORK/nan.h5" <<'PY'
import shutil, sys, h5py, numpy as np
shutil.copy(sys.argv[1], sys.argv[2])
with h5py.File(sys.argv[2], "r+") as f:
    v = f["v"]
    row = v[2, 1, 517, :]
    row[12] = np.nan
    v[2, 1, 517, :] = row
PY
expect_fail "NaN in values" "nan.h5::/v: layer 2, head 1, token 517, dim 12 is nan" \
  "$PKV_BIN" calibrate --dump "$WORK/nan.h5" --out "$WORK/x.safetensors"
"$PKV_DATA_DIR/venv/bin/python" - "$TABLE" "$WORK/other.safetensors" <<'PY'
import sys
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
with safe_open(sys.argv[1], "np") as f:
    meta = dict(f.metadata())
meta["pkv.model.sha256"] = "0" * 64
save_file(load_file(sys.argv[1]), sys.argv[2], metadata=meta)
PY
expect_fail "table of another model" "calibrated on model sha256 0000000000000000" \
  "$PKV_BIN" analyze --dump "$PROSE" --methods kivi --table "$WORK/other.safetensors" --layers 0
expect_fail "eval: table of another model" "calibrated on model sha256 0000000000000000" \
  "$PKV_BIN" eval --model "$MODEL" --text "$TEXT" --tokens 64 --ctx 64 --kv "patternkv-table:2:$WORK/other.safetensors"
[ ! -e "$WORK/x.safetensors" ] && pass "no partial table left behind" || failed "a failed run left x.safetensors"
finish
