#!/usr/bin/env bash
# `pkv dump --workers 2`: two workers write a shard each and the output joins them with
# HDF5 virtual datasets. h5py reads the joined dump (also from another folder, and after
# the folder moved) with every value equal to a one-worker dump's; pkv validate and info
# accept it; a missing shard is one error line naming it; old shards need --force.
# Runs on the tiny mistral fixture (test/fixtures/arch), so it takes seconds.
source "$(dirname "$0")/common.bash"
: "${PKV_SOURCE_DIR:?PKV_SOURCE_DIR must point to the source tree}"
M="$PKV_SOURCE_DIR/test/fixtures/arch/mistral.gguf"
TXT="$PKV_SOURCE_DIR/test/integration/data/tokenizer_mixed.txt"
[ -f "$TEXT" ] && TXT="$TEXT"
PY=/usr/bin/python3
"$PY" -c "import h5py" 2>/dev/null || { echo "SKIPPED: /usr/bin/python3 has no h5py (python3-h5py)"; exit 77; }
DUMP=(--log-level warn dump --model "$M" --text "$TXT" --tokens 300 --ctx 64 --chunk-tokens 32)

# same_dump A B: every dataset a reader sees (activations read through the virtual
# datasets), the token columns and the perplexity are equal; B is a joined dump.
same_dump() {
  "$PY" - "$1" "$2" <<'PY'
import json, sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
assert b["k_post"].is_virtual and b.attrs["format_version"] == "1.2", "not a joined dump"
for name in ["k_pre", "k_post", "v", "q", "layers", "tokens/id", "tokens/pos", "tokens/seq", "tokens/nll",
             "sequences/start", "sequences/length", "layer_info/window", "sources/tokens"]:
    x, y = a[name][...], b[name][...]
    assert x.shape == y.shape and x.dtype == y.dtype, name
    assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name + " differs"
sa, sb = (json.loads(f.attrs["summary"]) for f in (a, b))
assert sa["perplexity"] == sb["perplexity"], (sa["perplexity"], sb["perplexity"])
print(f"{len(b['k_post'].virtual_sources())} shards, perplexity {sb['perplexity']:.4f}")
PY
}

"$PKV_BIN" "${DUMP[@]}" --out "$WORK/one.h5" >/dev/null 2>"$WORK/one.err" ||
  { failed "one worker: $(tail -3 "$WORK/one.err")"; finish; exit 1; }
if "$PKV_BIN" "${DUMP[@]}" --workers 2 --out "$WORK/two.h5" >"$WORK/two.out" 2>"$WORK/two.err"; then
  grep -q "joins 2 shards in $WORK/two.h5.shards/" "$WORK/two.out" && pass "--workers 2: $(grep joins "$WORK/two.out")" ||
    failed "--workers 2 does not report its shards: $(cat "$WORK/two.out")"
  res=$(same_dump "$WORK/one.h5" "$WORK/two.h5" 2>&1) && pass "h5py: the joined dump equals one worker's ($res)" ||
    failed "h5py comparison: $res"
  # From another folder: the shards are found relative to the joined dump.
  res=$(cd / && same_dump "$WORK/one.h5" "$WORK/two.h5" 2>&1) && pass "h5py from another folder" ||
    failed "h5py from another folder: $res"
  "$PY" "$PKV_SOURCE_DIR/test/python/check_dump_h5py.py" "$WORK/two.h5" >"$WORK/chk.out" 2>&1 &&
    pass "check_dump_h5py.py accepts the joined dump" || failed "check_dump_h5py.py: $(cat "$WORK/chk.out")"
  out=$("$PKV_BIN" validate "$WORK/two.h5" 2>&1) && pass "pkv validate: $(echo "$out" | tail -1)" ||
    failed "pkv validate: $out"
  for p in 0 1; do
    "$PKV_BIN" validate "$WORK/two.h5.shards/part-$p-of-2.h5" >/dev/null 2>&1 && pass "shard $p is a valid dump" ||
      failed "shard $p does not validate"
  done
  "$PKV_BIN" info "$WORK/two.h5" >"$WORK/info.txt" 2>&1 && grep -q "shards:      2" "$WORK/info.txt" &&
    pass "pkv info lists the shards" || failed "pkv info: $(cat "$WORK/info.txt")"
  # The folder moves as a whole.
  mkdir "$WORK/moved" && mv "$WORK/two.h5" "$WORK/two.h5.shards" "$WORK/moved/" &&
    res=$(same_dump "$WORK/one.h5" "$WORK/moved/two.h5" 2>&1) &&
    "$PKV_BIN" validate "$WORK/moved/two.h5" >/dev/null 2>&1 && pass "moved with its shards: still one dump" ||
    failed "moved: $res"
  rm "$WORK/moved/two.h5.shards/part-1-of-2.h5"
  expect_fail "a missing shard" "two.h5::/k_pre: missing shard $WORK/moved/two.h5.shards/part-1-of-2.h5 (tokens" \
    "$PKV_BIN" info "$WORK/moved/two.h5"
  out=$("$PKV_BIN" validate "$WORK/moved/two.h5" 2>&1) && failed "validate accepts a dump without its shard" ||
    { grep -q "missing shard" <<<"$out" && pass "validate names the missing shard" || failed "validate: $out"; }
else
  failed "--workers 2: $(tail -3 "$WORK/two.err")"
fi

# Shards of an earlier dump block a new one (even without its joined file) unless --force,
# which replaces them; --workers 3 over 2 sequences writes 2 shards.
"$PKV_BIN" "${DUMP[@]}" --workers 2 --out "$WORK/f.h5" >/dev/null 2>&1 && rm "$WORK/f.h5"
expect_fail "old shards without --force" "f.h5.shards' holds shards already (part-0-of-2.h5); pass --force" \
  "$PKV_BIN" "${DUMP[@]}" --workers 3 --out "$WORK/f.h5"
if "$PKV_BIN" "${DUMP[@]}" --tokens 100 --workers 3 --force --out "$WORK/f.h5" >/dev/null 2>"$WORK/f.err"; then
  [ "$(ls "$WORK/f.h5.shards")" = "part-0-of-2.h5
part-1-of-2.h5" ] && "$PKV_BIN" validate "$WORK/f.h5" >/dev/null 2>&1 &&
    pass "--force: the new shards replace the old ones (2 sequences, 2 shards)" ||
    failed "--force: $(ls -a "$WORK/f.h5.shards")"
else
  failed "--force: $(tail -3 "$WORK/f.err")"
fi
"$PKV_BIN" "${DUMP[@]}" --workers 0 --out "$WORK/x.h5" >/dev/null 2>"$WORK/w0.err" &&
  failed "--workers 0 accepted" || { grep -q "workers: Value 0 not in range" "$WORK/w0.err" &&
  pass "--workers 0 refused" || failed "--workers 0: $(cat "$WORK/w0.err")"; }
finish
