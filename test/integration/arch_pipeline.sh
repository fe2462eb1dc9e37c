#!/usr/bin/env bash
# Every supported architecture through the whole pipeline, on the tiny converted models of
# test/fixtures/arch/ (llama 3 with rope_freqs, Mistral-style head_dim, qwen2 with biases and
# NEOX RoPE, qwen3 with Q/K norms): validate, dump (the model record carries the RoPE
# description; NEOX dumps are in HF order), calibrate (post- and pre-RoPE keys; the table
# records the architecture and RoPE), analyze (pre-RoPE keys scored through the dump's RoPE),
# eval (fp16, KIVI and the table, pre-RoPE table too), export, check; a table of one model is
# refused for another. gemma3 (local sliding-window layers with their own RoPE base) is
# dumped too: /layer_info tells each layer's window and base, and RoPE of k_pre with them
# gives k_post.
source "$(dirname "$0")/common.bash"
: "${PKV_SOURCE_DIR:?PKV_SOURCE_DIR must point to the source tree}"
FIX="$PKV_SOURCE_DIR/test/fixtures/arch"
TXT="$PKV_SOURCE_DIR/test/integration/data/tokenizer_mixed.txt"
[ -f "$TEXT" ] && TXT="$TEXT"
PY=/usr/bin/python3
q() { "$PKV_BIN" --log-level warn "$@"; }

# expect_attr NAME H5 PYEXPR: PYEXPR (over m = the model record, d = the dump's dim_order) holds.
check_dump() {
  local arch="$1" h5="$2" want_rope="$3" want_order="$4" want_factors="$5"
  "$PY" - "$h5" "$want_rope" "$want_order" "$want_factors" <<'PY'
import json, sys, h5py
path, rope, order, nf = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
f = h5py.File(path, "r")
m = json.loads(f.attrs["model"])
got_f = 0 if m.get("rope_freq_factors") is None else len(m["rope_freq_factors"])
assert m["rope_type"] == rope, m["rope_type"]
assert f.attrs["dim_order"] == order, f.attrs["dim_order"]
assert got_f == nf, got_f
# /layer_info agrees with the record: local layers (swa_layers) have its window and base.
import numpy as np
layers, window, base = f["layers"][:], f["layer_info/window"][:], f["layer_info/rope_base"][:]
local = np.isin(layers, m["swa_layers"])
assert np.array_equal(window, np.where(local, m["sliding_window"], 0)), window
assert np.allclose(base, np.where(local, m["rope_freq_base_swa"] or 0, m["rope_freq_base"])), base
# The dump is all a reader needs: RoPE of k_pre with each layer's base gives k_post.
kpre, kpost = f["k_pre"][:].astype(np.float64), f["k_post"][:].astype(np.float64)  # [layer, head, T, D]
D, nrot = kpre.shape[-1], m["n_rot"]
ff = np.ones(nrot // 2) if m.get("rope_freq_factors") is None else np.array(m["rope_freq_factors"])
half = f.attrs["dim_order"] == "hf_half_split"
a = np.arange(nrot // 2) if half else 2 * np.arange(nrot // 2)
b = a + nrot // 2 if half else a + 1
out = kpre.copy()
for l in range(len(layers)):
    inv = base[l] ** (-2.0 * np.arange(nrot // 2) / nrot) / ff
    scale = 1.0 if window[l] > 0 else m["rope_freq_scale"]  # local layers are not scaled
    th = f["tokens/pos"][:].astype(np.float64)[:, None] * scale * inv[None, :]
    out[l][..., a] = kpre[l][..., a] * np.cos(th) - kpre[l][..., b] * np.sin(th)
    out[l][..., b] = kpre[l][..., a] * np.sin(th) + kpre[l][..., b] * np.cos(th)
err = np.max(np.abs(out - kpost)) / np.max(np.abs(kpost))
assert err < 2e-3, err  # fp16 storage
print(f"{m['arch']}: rope {m['rope_type']}, dim_order {f.attrs['dim_order']}, {got_f} frequency factors, "
      f"qkv_bias {m['qkv_bias']}, qk_norm {m['qk_norm']}, {int(local.sum())} local layers; "
      f"RoPE(k_pre) = k_post within {err:.1e}")
PY
}

# schema_ok SCHEMA FILE DRAFT: `pkv info --json FILE` (its metadata for a table) fits SCHEMA.
schema_ok() {
  "$PKV_BIN" info --json "$2" >"$WORK/info.json" || return 1
  "$PY" - "$1" "$WORK/info.json" "$3" <<'PY'
import json, sys
from jsonschema import Draft7Validator, Draft202012Validator
doc = json.load(open(sys.argv[2]))
doc = doc["metadata"] if doc.get("kind") == "pattern_table" else doc
(Draft7Validator if sys.argv[3] == "7" else Draft202012Validator)(json.load(open(sys.argv[1]))).validate(doc)
PY
}

for spec in "llama3 llama norm gguf_interleaved 8" "mistral llama norm gguf_interleaved 0" \
            "qwen2 qwen2 neox hf_half_split 0" "qwen3 qwen3 neox hf_half_split 0"; do
  read -r name arch rope order factors <<<"$spec"
  G="$FIX/$name.gguf"
  D="$WORK/$name"
  mkdir -p "$D"
  step() { pass "$name: $*"; }
  q validate "$G" >/dev/null || { failed "$name: validate"; continue; }
  q dump --model "$G" --text "$TXT" --tokens 384 --ctx 128 --out "$D/d.h5" >/dev/null || { failed "$name: dump"; continue; }
  check_dump "$arch" "$D/d.h5" "$rope" "$order" "$factors" && step "dump records its RoPE (applying it to k_pre gives k_post)" || failed "$name: dump record"
  q validate "$D/d.h5" >/dev/null && step "dump valid" || failed "$name: dump invalid"
  schema_ok "$PKV_SOURCE_DIR/schemas/kv_dump.schema.json" "$D/d.h5" 7 && step "dump metadata fits schemas/kv_dump.schema.json" ||
    failed "$name: dump metadata against its schema"
  for keys in post pre; do
    q calibrate --dump "$D/d.h5" --keys "$keys" --k-patterns 4 --v-patterns 4 --holdout 0.25 --device cpu \
      --out "$D/t_$keys.safetensors" >/dev/null || { failed "$name: calibrate --keys $keys"; continue; }
    "$PY" - "$D/t_$keys.safetensors" "$arch" "$rope" <<'PY' && step "table ($keys-RoPE keys) records $arch, $rope" || failed "$name: table metadata"
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
meta = json.loads(b[8:8 + n])["__metadata__"]
assert meta["pkv.model.arch"] == sys.argv[2], meta["pkv.model.arch"]
assert json.loads(meta["pkv.model.rope"])["type"] == sys.argv[3]
PY
  done
  schema_ok "$PKV_SOURCE_DIR/schemas/pattern_table.schema.json" "$D/t_post.safetensors" 2020 &&
    step "table metadata fits schemas/pattern_table.schema.json" || failed "$name: table metadata against its schema"
  q analyze --dump "$D/d.h5" --methods fp16,kivi,patternkv,patternkv-table --bits 2 --table "$D/t_post.safetensors" \
    --json "$D/a.json" >/dev/null 2>"$D/a.err" && step "analyze" || failed "$name: analyze: $(cat "$D/a.err")"
  q analyze --dump "$D/d.h5" --keys pre --methods fp16,kivi --bits 2 --json "$D/ap.json" >/dev/null 2>"$D/ap.err" ||
    failed "$name: analyze --keys pre: $(cat "$D/ap.err")"
  if grep -q "attention metrics skipped" "$D/ap.err"; then failed "$name: analyze --keys pre skipped attention"
  else step "analyze --keys pre scores attention through the dump's RoPE"; fi
  q eval --model "$G" --text "$TXT" --tokens 256 --ctx 128 \
    --kv fp16 kivi:2 "patternkv-table:2:$D/t_post.safetensors" "patternkv-table:2:pre:$D/t_pre.safetensors" \
    --json "$D/e.json" >/dev/null 2>"$D/e.err" && step "eval" || failed "$name: eval: $(cat "$D/e.err")"
  q export --table "$D/t_post.safetensors" --format gguf --out "$D/t.gguf" >/dev/null && step "export" ||
    failed "$name: export"
  q check --report "$D/e.json" --baseline "$D/e.json" >/dev/null && step "check" || failed "$name: check"
done
# gemma3: layers 0-4 and 6-7 local (window 8, base 10000), layer 5 global (base 1e6).
D="$WORK/gemma3"
mkdir -p "$D"
if q dump --model "$FIX/gemma3.gguf" --text "$TXT" --tokens 256 --ctx 128 --out "$D/d.h5" >/dev/null; then
  check_dump gemma3 "$D/d.h5" neox hf_half_split 0 && pass "gemma3: /layer_info gives each layer's window and RoPE base" ||
    failed "gemma3: dump layer geometry"
  q validate "$D/d.h5" >/dev/null && pass "gemma3: dump valid" || failed "gemma3: dump invalid"
  schema_ok "$PKV_SOURCE_DIR/schemas/kv_dump.schema.json" "$D/d.h5" 7 &&
    pass "gemma3: dump metadata fits schemas/kv_dump.schema.json" || failed "gemma3: dump metadata against its schema"
  want="geometry:    7 local (window 8, RoPE base 10000), 1 global (RoPE base 1000000)"
  q info "$D/d.h5" | grep -qF "$want" && pass "gemma3: info prints the layer geometry" ||
    failed "gemma3: info: $(q info "$D/d.h5" | grep geometry)"
  # The ring of a local layer holds 8 tokens: windows and groups of 4 fit in it.
  R="--window 4 --group 4"
  # shellcheck disable=SC2086
  q calibrate --dump "$D/d.h5" --k-patterns 4 --v-patterns 4 --holdout 0.25 --device cpu $R \
    --out "$D/t.safetensors" >/dev/null && pass "gemma3: calibrate" || failed "gemma3: calibrate"
  q info "$D/t.safetensors" | grep -qF "7 local (window 8, RoPE base 10000), 1 global (RoPE base 1000000)" &&
    pass "gemma3: the table records each layer's window and RoPE base" ||
    failed "gemma3: table geometry: $(q info "$D/t.safetensors" | grep -i local)"
  expect_fail "gemma3: calibrate refuses a window longer than the ring" "longer than the sliding window 8 of layer 0" \
    "$PKV_BIN" --log-level warn calibrate --dump "$D/d.h5" --k-patterns 4 --v-patterns 4 --window 16 --device cpu \
    --out "$D/never.safetensors"
  # shellcheck disable=SC2086
  q analyze --dump "$D/d.h5" --methods fp16,kivi,patternkv,q4_0,patternkv-table --bits 2 $R \
    --table "$D/t.safetensors" --json "$D/a.json" >/dev/null 2>"$D/a.err" && pass "gemma3: analyze" ||
    failed "gemma3: analyze: $(cat "$D/a.err")"
  "$PY" - "$D/a.json" <<'PY' && pass "gemma3: analyze scores attention over each layer's window; bits count the ring" ||
import json, sys
r = json.load(open(sys.argv[1]))
assert not any("attention" in w for w in r["warnings"]), r["warnings"]
rows = {(x["layer"], x["method"]): x for x in r["results"]}
for (layer, method), x in rows.items():
    assert x["attn"] is not None and x["attn"]["kl"] is not None, (layer, method)
    if method == "fp16":
        assert x["attn"]["kl"] == 0 and x["eff_bits"] == 16, x
# q4_0 costs 4.5 bits per kept element in local and global layers alike.
assert all(abs(x["eff_bits"] - 4.5) < 1e-9 for (l, m), x in rows.items() if m == "q4_0")
# kivi:2 with R = 4: the ring's last 4 tokens of V are fp16 (4 of 8 kept), a global layer
# keeps 4 of 128 tokens in fp16, so the local layers pay more bits per element.
assert rows[(0, "kivi")]["v"]["eff_bits"] > rows[(5, "kivi")]["v"]["eff_bits"] + 2
PY
    failed "gemma3: analyze report"
  expect_fail "gemma3: analyze refuses a window longer than the ring" "longer than the sliding window 8 of layer 0" \
    "$PKV_BIN" --log-level warn analyze --dump "$D/d.h5" --methods kivi --window 16 --json "$D/x.json"
  q eval --model "$FIX/gemma3.gguf" --text "$TXT" --tokens 256 --ctx 128 \
    --kv fp16 kivi:2:w4:g4 q4_0 "patternkv-table:2:w4:g4:$D/t.safetensors" \
    --json "$D/e.json" >/dev/null 2>"$D/e.err" && pass "gemma3: eval" || failed "gemma3: eval: $(cat "$D/e.err")"
  "$PY" - "$D/e.json" <<'PY' && pass "gemma3: eval's KV memory is what the rings and the global layer keep" ||
import json, sys
r = json.load(open(sys.argv[1]))
m = {x["method"]: x for x in r["methods"]}
ref = r["reference"]
# 7 local layers keep 8 tokens, the global one 128: (7 * 8 + 128) tokens * 32 dims * K,V * 2 bytes.
want = (7 * 8 + 128) * 32 * 2 * 2
assert abs(ref["kv_bytes"] - want) < 1e-9, (ref["kv_bytes"], want)
assert abs(m["q4_0"]["kv_bytes"] - want * 4.5 / 16) < 1e-9, m["q4_0"]["kv_bytes"]
PY
    failed "gemma3: eval KV memory"
  expect_fail "gemma3: eval refuses a window longer than the ring" "longer than the sliding window 8" \
    "$PKV_BIN" --log-level warn eval --model "$FIX/gemma3.gguf" --text "$TXT" --tokens 128 --ctx 128 --kv kivi:2
  expect_fail "gemma3 refuses the llama3 table" "calibrated on model sha256" \
    "$PKV_BIN" --log-level warn eval --model "$FIX/gemma3.gguf" --text "$TXT" --tokens 128 --ctx 128 \
    --kv "patternkv-table:2:w4:g4:$WORK/llama3/t_post.safetensors"
else
  failed "gemma3: dump"
fi
# A NEOX model has no interleaved key order to export to.
expect_fail "qwen3 table has no gguf key order" "NEOX RoPE" \
  "$PKV_BIN" --log-level warn export --table "$WORK/qwen3/t_post.safetensors" --format json --key-order gguf \
  --out "$WORK/x.json"
# A table calibrated on one model is refused for another.
expect_fail "qwen2 refuses the llama3 table" "calibrated on model sha256" \
  "$PKV_BIN" --log-level warn eval --model "$FIX/qwen2.gguf" --text "$TXT" --tokens 128 --ctx 64 \
  --kv "patternkv-table:2:$WORK/llama3/t_post.safetensors"
finish
