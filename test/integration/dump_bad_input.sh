#!/usr/bin/env bash
# Bad input to `pkv dump`: each case exits non-zero with one clear line naming the
# input, and no file appears under the output name.
source "$(dirname "$0")/common.bash"
need_data
OUT="$WORK/out.h5"
dump() { "$PKV_BIN" --log-level warn dump --ctx 64 --tokens 128 "$@"; }

expect_fail "missing model" "nope.gguf: model file not found" dump --model "$WORK/nope.gguf" --text "$TEXT" --out "$OUT"
echo "plain text, not a model" > "$WORK/text.gguf"
expect_fail "non-GGUF model" "text.gguf: not a GGUF file" dump --model "$WORK/text.gguf" --text "$TEXT" --out "$OUT"
head -c 1000000 "$MODEL" > "$WORK/trunc.gguf"
expect_fail "truncated GGUF" "trunc.gguf" dump --model "$WORK/trunc.gguf" --text "$TEXT" --out "$OUT"
head -c 4000 "$MODEL" > "$WORK/trunc-header.gguf"
expect_fail "GGUF truncated in its header" "trunc-header.gguf: \(truncated\|corrupt\)" dump --model "$WORK/trunc-header.gguf" --text "$TEXT" --out "$OUT"

# A copy of the real model whose general.architecture says "bloom" (same length as
# "llama", so every offset stays valid), and one whose first attention weight
# claims a type pkv does not implement (IQ2_XXS, id 16).
/usr/bin/python3 - "$MODEL" "$WORK" <<'PY'
import struct, sys
src, work = sys.argv[1], sys.argv[2]
data = bytearray(open(src, "rb").read(8 << 20))
key = b"general.architecture"
i = data.index(key) + len(key)
vtype, n = struct.unpack_from("<IQ", data, i)
assert vtype == 8 and data[i + 12:i + 12 + n] == b"llama"
full = bytearray(open(src, "rb").read())
full[i + 12:i + 17] = b"bloom"
open(work + "/bloom.gguf", "wb").write(full)
full[i + 12:i + 17] = b"llama"
name = b"blk.0.attn_q.weight"
j = full.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
ndim = struct.unpack_from("<I", full, j)[0]
t = j + 4 + 8 * ndim
assert struct.unpack_from("<I", full, t)[0] == 3  # Q4_1
struct.pack_into("<I", full, t, 16)
open(work + "/iq2.gguf", "wb").write(full)
PY
expect_fail "unsupported architecture" "bloom.gguf.*bloom" dump --model "$WORK/bloom.gguf" --text "$TEXT" --out "$OUT"
expect_fail "unsupported tensor type" "iq2.gguf.*blk.0.attn_q.weight.*IQ2_XXS" dump --model "$WORK/iq2.gguf" --text "$TEXT" --out "$OUT"
rm -f "$WORK/bloom.gguf" "$WORK/iq2.gguf"

: > "$WORK/empty.txt"
expect_fail "empty text" "empty.txt: text file is empty" dump --model "$MODEL" --text "$WORK/empty.txt" --out "$OUT"
expect_fail "missing text" "missing.txt: text file not found" dump --model "$MODEL" --text "$WORK/missing.txt" --out "$OUT"
echo "A short text of a few words." > "$WORK/short.txt"
expect_fail "more tokens than the text holds" "the text holds only" dump --model "$MODEL" --text "$WORK/short.txt" --out "$OUT"
expect_fail "context longer than the model's" "longer than the model's context length 8192" \
  dump --model "$MODEL" --text "$TEXT" --ctx 9000 --out "$OUT"
expect_fail "layer out of range" "layer 30 is out of range" dump --model "$MODEL" --text "$TEXT" --layers 0,30 --out "$OUT"
expect_fail "bad capture list" "capture list 'k_post,x': unknown item 'x'" dump --model "$MODEL" --text "$TEXT" --capture k_post,x --out "$OUT"
expect_fail "output directory missing" "does not exist" dump --model "$MODEL" --text "$TEXT" --out "$WORK/no/dir/out.h5"
[ -e "$OUT" ] && failed "a failed dump left $OUT behind" || pass "no output after failures"

echo "existing" > "$OUT"
expect_fail "existing output without --force" "out.h5: output exists; pass --force" \
  dump --model "$MODEL" --text "$TEXT" --out "$OUT"
[ "$(cat "$OUT")" = "existing" ] && pass "existing output untouched" || failed "existing output was modified"
rm -f "$OUT"

# Full disk: a 2 MiB tmpfs cannot hold the dump. Needs permission to mount.
MNT="$WORK/full"
mkdir -p "$MNT"
if mount -t tmpfs -o size=2m tmpfs "$MNT" 2>/dev/null; then
  expect_fail "full disk" "$MNT/out.h5" dump --model "$MODEL" --text "$TEXT" --tokens 512 --out "$MNT/out.h5"
  left=$(ls -A "$MNT")
  [ -z "$left" ] && pass "full disk left no file" || failed "full disk left files: $left"
  umount "$MNT"
else
  echo "note: full-disk case not run: no permission to mount a tmpfs"
fi

# Interrupt: SIGINT during the forward pass ends with status 130 and no file.
"$PKV_BIN" dump --model "$MODEL" --text "$TEXT" --tokens 65536 --ctx 512 --out "$OUT" 2>"$WORK/int.err" &
pid=$!
for _ in $(seq 1 600); do
  ls -A "$WORK" | grep -q "^\.out\.h5\.pkv-tmp" && break
  sleep 0.1
done
sleep 1
kill -INT "$pid"
wait "$pid"; rc=$?
[ "$rc" -eq 130 ] && pass "interrupted dump exits 130" || failed "interrupted dump exit $rc: $(tail -2 "$WORK/int.err")"
leftover=$(ls -A "$WORK" | grep -E '^(out\.h5|\.out\.h5\.pkv-tmp)' || true)
[ -z "$leftover" ] && pass "interrupted dump left no file" || failed "interrupted dump left: $leftover"
finish
