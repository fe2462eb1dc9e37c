# Shared helpers for the integration tests (sourced, not a test itself).
set -uo pipefail
: "${PKV_BIN:?PKV_BIN must point to the pkv binary}"
: "${PKV_DATA_DIR:?PKV_DATA_DIR must point to the fetched data}"
MODEL="$PKV_DATA_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="$PKV_DATA_DIR/text/fortunes.txt"
WORK="$(mktemp -d /tmp/pkv-it-XXXXXX)"
# Only the test's own shell cleans up: a child forked for a background command that a test
# signals before it execs (the SIGINT cases of faults.sh) could otherwise run this trap.
PKV_TEST_SHELL=$BASHPID
trap '[ "$BASHPID" = "$PKV_TEST_SHELL" ] && rm -rf "$WORK"' EXIT
FAILS=0
PASSES=0

need_data() {
  if [ ! -f "$MODEL" ] || [ ! -f "$TEXT" ]; then
    echo "FAIL: default model or text missing under $PKV_DATA_DIR: run scripts/fetch-data.sh" >&2
    exit 1
  fi
}

pass() { PASSES=$((PASSES + 1)); echo "ok: $*"; }
failed() { FAILS=$((FAILS + 1)); echo "FAIL: $*" >&2; }

# expect_fail NAME PATTERN CMD...: the command must exit non-zero with exactly one
# stderr line matching PATTERN.
expect_fail() {
  local name="$1" pattern="$2"; shift 2
  local err="$WORK/err.txt" rc
  "$@" >/dev/null 2>"$err"; rc=$?
  local lines; lines=$(grep -c '' "$err")
  local last; last=$(grep -v '^pkv: \(info\|warning\):' "$err" | tail -n 1)
  if [ "$rc" -eq 0 ]; then failed "$name: exit 0, expected failure"; return; fi
  if ! grep -q -- "$pattern" "$err"; then failed "$name: stderr does not match '$pattern': $(cat "$err")"; return; fi
  if [ "$(grep -v '^pkv: \(info\|warning\):' "$err" | grep -c '')" -ne 1 ]; then
    failed "$name: expected one error line, got: $(cat "$err")"; return
  fi
  pass "$name (exit $rc): $last"
}

finish() {
  echo "$PASSES passed, $FAILS failed"
  [ "$FAILS" -eq 0 ]
}
