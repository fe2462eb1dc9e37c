#!/usr/bin/env bash
# `pkv dump --workers 2`: two workers write a shard each and the output joins them with
# HDF5 virtual datasets. h5py reads the joined dump (also from another folder, and after
# the folder moved) with every value equal to a one-worker dump's; pkv validate and info
# accept it; a missing shard is one error line naming it; old shards need --force. Shards
# written by the chunk pipeline with compression hold the synchronous writer's values.
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

# Each shard through the chunk pipeline with compression: the values of the synchronous
# writer's uncompressed dump, the shards' filters as asked, h5py reading them plainly.
"$PKV_BIN" "${DUMP[@]}" --writer-threads 0 --compress 0 --out "$WORK/sync.h5" >/dev/null 2>"$WORK/sync.err" ||
  failed "synchronous writer: $(tail -3 "$WORK/sync.err")"
if "$PKV_BIN" "${DUMP[@]}" --workers 2 --writer-threads 2 --compress 6 --out "$WORK/z.h5" >/dev/null 2>"$WORK/z.err"; then
  res=$(same_dump "$WORK/sync.h5" "$WORK/z.h5" 2>&1) &&
    pass "--compress 6 --writer-threads 2 shards: the synchronous writer's values ($res)" ||
    failed "compressed shards differ: $res"
  "$PY" -c "import h5py, sys; d = h5py.File(sys.argv[1], 'r')['v']; assert (d.compression, d.compression_opts, d.shuffle) == ('gzip', 6, True), (d.compression, d.compression_opts, d.shuffle)" \
    "$WORK/z.h5.shards/part-0-of-2.h5" 2>"$WORK/zf.err" && pass "the shards are shuffle + gzip 6" ||
    failed "shard filters: $(tail -1 "$WORK/zf.err")"
  "$PY" "$PKV_SOURCE_DIR/test/python/check_dump_h5py.py" "$WORK/z.h5" >"$WORK/zchk.out" 2>&1 &&
    pass "check_dump_h5py.py accepts the compressed joined dump" || failed "check_dump_h5py.py: $(cat "$WORK/zchk.out")"
  grep -q "^time: forward .* writer (pipeline, 2 threads, shuffle+deflate 6)" "$WORK/z.err" &&
    pass "the summary says where the time went" || failed "no time line on stderr: $(cat "$WORK/z.err")"
else
  failed "--compress 6 --writer-threads 2: $(tail -3 "$WORK/z.err")"
fi
"$PKV_BIN" "${DUMP[@]}" --compress 10 --out "$WORK/c.h5" >/dev/null 2>"$WORK/c10.err" && failed "--compress 10 accepted" ||
  { grep -q "compress: Value 10 not in range" "$WORK/c10.err" && pass "--compress 10 refused" ||
    failed "--compress 10: $(cat "$WORK/c10.err")"; }

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
