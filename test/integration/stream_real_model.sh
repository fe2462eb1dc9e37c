#!/usr/bin/env bash
# `pkv calibrate --model` and `pkv analyze --model` on the default model: streamed from the
# model, with no dump, they give the table and report of `pkv dump` + `--dump` on the same
# tokens (everything but the provenance equal); plus their bad inputs.
source "$(dirname "$0")/common.bash"
need_data
DUMP="$WORK/d.h5"
SRC=(--text "$TEXT" --tokens 1024 --ctx 256)
LAYERS=0,14,29
CAL=(--k-patterns 16 --v-patterns 16 --holdout 0.25 --layers "$LAYERS" --device cpu)
ANA=(--methods fp16,kivi,patternkv,q4_0 --bits 2 --layers "$LAYERS")

"$PKV_BIN" --log-level warn dump --model "$MODEL" "${SRC[@]}" --layers "$LAYERS" --device cpu --out "$DUMP" \
  >/dev/null 2>"$WORK/dump.err" || { failed "dump: $(tail -3 "$WORK/dump.err")"; finish; exit 1; }
"$PKV_BIN" --log-level warn calibrate --dump "$DUMP" "${CAL[@]}" --out "$WORK/dump.safetensors" \
  >/dev/null 2>"$WORK/cal1.err" || { failed "calibrate --dump: $(tail -3 "$WORK/cal1.err")"; finish; exit 1; }
if "$PKV_BIN" calibrate --model "$MODEL" "${SRC[@]}" "${CAL[@]}" --out "$WORK/model.safetensors" \
     >"$WORK/cal2.md" 2>"$WORK/cal2.err"; then
  pass "calibrate --model exits 0"
else
  failed "calibrate --model: $(tail -3 "$WORK/cal2.err")"; finish; exit 1
fi
grep -q "calibrate: forward" "$WORK/cal2.err" && pass "calibrate --model reports the forward pass on stderr" ||
  failed "no forward progress on stderr"
"$PKV_BIN" validate "$WORK/model.safetensors" >"$WORK/val.out" 2>&1 && pass "pkv validate: streamed table is clean" ||
  failed "pkv validate: $(cat "$WORK/val.out")"

"$PKV_DATA_DIR/venv/bin/python" - "$WORK/dump.safetensors" "$WORK/model.safetensors" "$MODEL" <<'PY' &&
import json, sys
import numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
assert sorted(a) == sorted(b), (sorted(a), sorted(b))
for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
meta = []
for p in sys.argv[1:3]:
    with safe_open(p, "np") as f:
        meta.append(f.metadata())
assert set(meta[0]) == set(meta[1])
for k in meta[0]:
    if k != "pkv.calibration":
        assert meta[0][k] == meta[1][k], k
ca, cb = (json.loads(m["pkv.calibration"]) for m in meta)
assert ca["heads"] == cb["heads"] and ca["tokens"] == cb["tokens"], "per-head statistics differ"
d = cb["dumps"][0]
assert d["source"] == "model" and d["path"] == sys.argv[3], d
assert d["settings"]["tokens"] == 1024 and d["settings"]["ctx"] == 256, d["settings"]
assert d["stream"]["sampled_tokens"] == 1024 and d["stream"]["sample_tokens"] == 65536, d["stream"]
print(f"{len(a)} tensors equal; calibration metadata equal but for the provenance")
PY
  pass "calibrate --model: the table of dump + calibrate --dump" || failed "streamed table differs from the dump's"

"$PKV_BIN" --log-level warn analyze --dump "$DUMP" "${ANA[@]}" --json "$WORK/dump.json" >/dev/null 2>"$WORK/an1.err" ||
  { failed "analyze --dump: $(tail -3 "$WORK/an1.err")"; finish; exit 1; }
if "$PKV_BIN" --log-level warn analyze --model "$MODEL" "${SRC[@]}" "${ANA[@]}" --block-tokens 512 --device cpu \
     --json "$WORK/model.json" >"$WORK/an2.md" 2>"$WORK/an2.err"; then
  pass "analyze --model exits 0"
else
  failed "analyze --model: $(tail -3 "$WORK/an2.err")"; finish; exit 1
fi
"$PKV_DATA_DIR/venv/bin/python" - "$WORK/dump.json" "$WORK/model.json" <<'PY' &&
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for k in a:
    if k != "provenance":
        assert a[k] == b[k], k
assert b["format_version"] == "1.4" and b["provenance"]["dump"]["source"] == "model"
assert a["provenance"]["dump"]["source"] == "dump"
assert b["provenance"]["dump"]["model"] == a["provenance"]["dump"]["model"]
print(f"{len(a['results'])} results equal")
PY
  pass "analyze --model: the report of dump + analyze --dump" || failed "streamed report differs from the dump's"

expect_fail "calibrate: --model and --dump" "\-\-model and \-\-dump: expected one source" \
  "$PKV_BIN" calibrate --model "$MODEL" "${SRC[@]}" --dump "$DUMP" --out "$WORK/x.safetensors"
expect_fail "calibrate: neither" "\-\-dump or \-\-model: expected" "$PKV_BIN" calibrate --out "$WORK/x.safetensors"
expect_fail "calibrate: --model without --text" "needs \-\-text" \
  "$PKV_BIN" calibrate --model "$MODEL" --out "$WORK/x.safetensors"
expect_fail "analyze: --text without --model" "\-\-text: needs \-\-model" \
  "$PKV_BIN" analyze --dump "$DUMP" --text "$TEXT"
expect_fail "analyze: --model and --dump" "\-\-model and \-\-dump: expected one source" \
  "$PKV_BIN" analyze --model "$MODEL" "${SRC[@]}" --dump "$DUMP"
expect_fail "analyze: a model the engine refuses" "$TEXT" \
  "$PKV_BIN" analyze --model "$TEXT" --text "$TEXT" --device cpu
expect_fail "calibrate: --ctx beyond the model" "\-\-ctx 100000: longer than the model's context length" \
  "$PKV_BIN" calibrate --model "$MODEL" --text "$TEXT" --ctx 100000 --out "$WORK/x.safetensors"
[ ! -e "$WORK/x.safetensors" ] && pass "no table after the refusals" || failed "a refused run left a table"
finish
