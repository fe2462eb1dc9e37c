#!/usr/bin/env bash
# Bad input files get exit status 1 (a bad input), never 2 (bad arguments), with one
# error line naming the file: files too short to have a signature, unknown signatures,
# GGUF metadata of the wrong type, and a dump without a dataset the command needs.
source "$(dirname "$0")/common.bash"
need_data

# expect_exit CODE NAME PATTERN CMD...: expect_fail, and the exit status must be CODE.
expect_exit() {
  local code="$1" name="$2" pattern="$3"; shift 3
  local before=$FAILS
  expect_fail "$name" "$pattern" "$@"
  [ "$FAILS" -ne "$before" ] && return
  "$@" >/dev/null 2>&1; local rc=$?
  [ "$rc" -eq "$code" ] && pass "$name: exit $rc" || failed "$name: exit $rc, expected $code"
}

printf 'ab' > "$WORK/two.bin"
expect_exit 1 "info, 2-byte file" "two.bin: not a GGUF model, a pkv KV dump or a pattern table" "$PKV_BIN" info "$WORK/two.bin"
: > "$WORK/empty.bin"
expect_exit 1 "validate, empty file" "empty.bin: not a GGUF model" "$PKV_BIN" validate "$WORK/empty.bin"
echo "just some text, no signature" > "$WORK/text.bin"
expect_exit 1 "info, unknown signature" "text.bin: not a GGUF model" "$PKV_BIN" info "$WORK/text.bin"
expect_exit 1 "analyze, unknown signature" "text.bin" "$PKV_BIN" analyze --dump "$WORK/text.bin"

# The model with llama.block_count stored as a float32 (same 4 bytes, other type tag).
/usr/bin/python3 - "$MODEL" "$WORK/f32.gguf" <<'PY'
import struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
key = b"llama.block_count"
i = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
assert struct.unpack_from("<I", data, i)[0] == 4  # UINT32
struct.pack_into("<I", data, i, 6)  # FLOAT32
open(sys.argv[2], "wb").write(data)
PY
expect_exit 1 "dump, GGUF metadata of the wrong type" "f32.gguf: metadata 'llama.block_count': expected an integer" \
  "$PKV_BIN" --log-level warn dump --model "$WORK/f32.gguf" --text "$TEXT" --tokens 64 --ctx 64 --out "$WORK/x.h5"
expect_exit 1 "validate, GGUF metadata of the wrong type" "f32.gguf" "$PKV_BIN" validate "$WORK/f32.gguf"
rm -f "$WORK/f32.gguf"

# A metadata string that is not UTF-8: `pkv info --json` prints it with U+FFFD, not a
# JSON library error.
/usr/bin/python3 - "$MODEL" "$WORK/latin1.gguf" <<'PY'
import struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
key = b"general.name"
i = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
assert struct.unpack_from("<I", data, i)[0] == 8  # STRING
data[i + 12] = 0xE9  # a Latin-1 e-acute as the first byte of the name
open(sys.argv[2], "wb").write(data)
PY
if "$PKV_BIN" info --json "$WORK/latin1.gguf" > "$WORK/info.json" 2>"$WORK/info.err" &&
   /usr/bin/python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$WORK/info.json"; then
  pass "info --json, metadata string not UTF-8: valid JSON"
else
  failed "info --json, metadata string not UTF-8: $(cat "$WORK/info.err")"
fi
rm -f "$WORK/latin1.gguf"

"$PKV_BIN" --log-level warn dump --model "$MODEL" --text "$TEXT" --tokens 128 --ctx 64 --capture k_post \
  --out "$WORK/novalues.h5" >/dev/null || failed "dump for the calibrate case"
expect_exit 1 "calibrate, dump without values" "novalues.h5::/v: dataset missing" \
  "$PKV_BIN" calibrate --dump "$WORK/novalues.h5" --out "$WORK/t.safetensors" --k-patterns 4 --v-patterns 4
[ -e "$WORK/t.safetensors" ] && failed "a failed calibrate left its output" || pass "no table after the failure"
finish
