#!/usr/bin/env bash
# `pkv dump`, `info`, `validate` and `generate` on the default model and text.
source "$(dirname "$0")/common.bash"
need_data
OUT="$WORK/dump.h5"

"$PKV_BIN" dump --model "$MODEL" --text "$TEXT" --tokens 2048 --ctx 512 --out "$OUT" >"$WORK/dump.out" 2>"$WORK/dump.err" ||
  { failed "dump: $(tail -3 "$WORK/dump.err")"; finish; exit 1; }
cat "$WORK/dump.out"
ppl=$(sed -n 's/^perplexity \([0-9.]*\).*/\1/p' "$WORK/dump.out")
# A 135M-parameter model on English prose: far better than chance (vocab 49152)
# and worse than a large model.
if [ -n "$ppl" ] && awk -v p="$ppl" 'BEGIN { exit !(p > 5 && p < 80) }'; then
  pass "perplexity $ppl is plausible"
else
  failed "perplexity '$ppl' outside (5, 80)"
fi

"$PKV_BIN" validate "$OUT" >"$WORK/validate.out" 2>&1 && pass "validate: $(tail -1 "$WORK/validate.out")" ||
  failed "validate: $(cat "$WORK/validate.out")"
/usr/bin/python3 "$PKV_SOURCE_DIR/test/python/check_dump_h5py.py" "$OUT" >"$WORK/h5py.out" 2>&1 &&
  pass "h5py check: $(tail -1 "$WORK/h5py.out")" || failed "h5py check: $(cat "$WORK/h5py.out")"
"$PKV_BIN" info "$OUT" >"$WORK/info.out" 2>&1 && grep -q "2048" "$WORK/info.out" && pass "info on a dump" ||
  failed "info on a dump: $(cat "$WORK/info.out")"
"$PKV_BIN" info "$MODEL" >"$WORK/info-model.out" 2>&1 && grep -q "30 layers" "$WORK/info-model.out" &&
  pass "info on the model" || failed "info on the model: $(head -5 "$WORK/info-model.out")"

# A subset of layers and activations, in Hugging Face dimension order.
"$PKV_BIN" --log-level warn dump --model "$MODEL" --text "$TEXT" --tokens 300 --ctx 128 --layers 0,29 \
  --capture k_pre,k_post --dim-order hf --out "$WORK/sub.h5" >/dev/null 2>"$WORK/sub.err" ||
  failed "subset dump: $(cat "$WORK/sub.err")"
/usr/bin/python3 - "$WORK/sub.h5" "$OUT" <<'PY' && pass "subset dump: layers, captures and hf order" || failed "subset dump contents"
import sys, h5py, numpy as np
sub, full = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
assert list(sub["layers"][:]) == [0, 29], sub["layers"][:]
assert "v" not in sub and "q" not in sub and sub["k_post"].shape == (2, 3, 300, 64)
assert sub["k_post"].attrs["dim_order"] == "hf_half_split"
# The first 128 tokens start the first sequence in both files: hf order is the
# gguf order de-interleaved. Layer 0 keys depend on the token alone (bit-equal);
# layer 29 went through different block sizes, so it agrees to float16 precision.
for layer, slot, tol in ((0, 0, 0.0), (29, 1, 1e-2)):
    a = full["k_post"][layer, 1, :128].astype(np.float32)
    b = sub["k_post"][slot, 1, :128].astype(np.float32)
    hf = np.concatenate([a[:, 0::2], a[:, 1::2]], axis=1)
    err = np.max(np.abs(hf - b) / (np.abs(hf) + 1e-1))
    assert err <= tol, (layer, err)
PY
"$PKV_BIN" validate "$WORK/sub.h5" >/dev/null 2>&1 && pass "subset dump validates" || failed "subset dump does not validate"

# Real activations through the chunk pipeline with deflate: h5py reads them plainly, bit
# for bit what the synchronous writer stores without filters.
for w in "0 0" "2 6"; do
  set -- $w
  "$PKV_BIN" --log-level warn dump --model "$MODEL" --text "$TEXT" --tokens 256 --ctx 128 --writer-threads "$1" \
    --compress "$2" --out "$WORK/w$1c$2.h5" >/dev/null 2>"$WORK/w$1c$2.err" || failed "dump --writer-threads $1 --compress $2: $(tail -2 "$WORK/w$1c$2.err")"
done
/usr/bin/python3 "$PKV_SOURCE_DIR/test/python/check_dump_h5py.py" "$WORK/w2c6.h5" >"$WORK/h5py6.out" 2>&1 &&
  pass "h5py check of a compressed pipeline dump: $(tail -1 "$WORK/h5py6.out")" || failed "h5py check (compressed): $(cat "$WORK/h5py6.out")"
/usr/bin/python3 - "$WORK/w0c0.h5" "$WORK/w2c6.h5" <<'PY' && pass "--compress 6 --writer-threads 2 stores the synchronous writer's bits" || failed "compressed pipeline dump differs"
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
assert b["v"].compression == "gzip" and b["v"].compression_opts == 6 and a["v"].compression is None
for name in ["k_pre", "k_post", "v", "q"]:
    assert np.array_equal(a[name][...].view(np.uint16), b[name][...].view(np.uint16)), name
PY

# Greedy continuation of a fixed prompt, pinned.
"$PKV_BIN" --log-level warn generate --model "$MODEL" --prompt "The capital of France is" --n 8 --ids >"$WORK/gen.out" 2>&1
cat "$WORK/gen.out"
EXPECTED_TEXT="${PKV_EXPECTED_CONTINUATION:-The capital of France is Paris.}"
head -1 "$WORK/gen.out" | grep -qF "$EXPECTED_TEXT" && pass "greedy continuation" ||
  failed "greedy continuation: expected to start with '$EXPECTED_TEXT', got '$(head -1 "$WORK/gen.out")'"
finish
