#!/usr/bin/env bash
# Faults while dump, calibrate, analyze, eval and export work: outputs appear whole or
# not at all. For each command:
#  - SIGINT in the middle of the work exits 130 with one "interrupted" error line and
#    leaves no temporary; a run to a new name leaves nothing under it, and a --force
#    run over an earlier output leaves that file byte for byte (same checksum);
#  - SIGKILL in the middle of the work does the same for the new name and for the
#    earlier output (only a hidden temporary may remain: dump's is checked to be
#    removed by the next run for its name);
#  - a read-only output directory and a full disk each give one error line naming the
#    output and a non-zero exit, and the full disk keeps no file.
# "The middle": dump once its temporary exists, eval once it logged its token count
# (it polls from then on), the others after a CPU time well past their setup. dump,
# analyze, eval and export poll for the signal in their loops ("no output was
# written"); calibrate does not, so it ends at once ("unfinished outputs removed").
# analyze, eval, calibrate and the JSON export write at the very end, so what is
# checked there is that a cut run leaves the earlier output alone. A GGUF export is
# too fast to cut reliably: signals at growing delays around it must each leave the
# earlier file or the whole new one. The read-only and full-disk cases mount small
# tmpfs (root ignores chmod); without permission to mount they are skipped with a note.
source "$(dirname "$0")/common.bash"
need_data
cd "$WORK" || exit 1
# A short text: dump and eval tokenize the whole file on every run.
head -c 200000 "$TEXT" > text.txt
T="$WORK/text.txt"

sum() { if [ -f "$1" ]; then sha256sum < "$1" | cut -d' ' -f1; else echo missing; fi; }
temps() { ls -A "$(dirname "$1")" | grep -F ".$(basename "$1").pkv-tmp." || true; }

# wait_exec PID: returns once PID runs pkv itself (not the shell forked for it, which
# a signal would hit instead) or has ended.
PKV_REAL="$(readlink -f "$PKV_BIN")"
wait_exec() {
  for _ in $(seq 1 1200); do
    [ "$(readlink -f "/proc/$1/exe" 2>/dev/null)" = "$PKV_REAL" ] && return 0
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.01
  done
}

# wait_busy PID SECONDS: returns once PID has used SECONDS of CPU time (well past the
# setup of every run below, so in its long loop) or has ended.
wait_busy() {
  local pid=$1 want stat
  want=$(awk -v s="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { print int(s * hz) }')
  for _ in $(seq 1 1200); do
    stat=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || return 0
    set -- $stat
    [ "$1" = Z ] && return 0
    [ $(( ${12} + ${13} )) -ge "$want" ] && return 0
    sleep 0.05
  done
}

# wait_for PID TEST...: returns once TEST succeeds or PID has ended.
wait_for() {
  local pid=$1; shift
  for _ in $(seq 1 1200); do
    "$@" && return 0
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
}

# signal_case NAME SIG OUT WAIT MESSAGE -- CMD...: runs CMD (pkv's arguments) in the
# background, waits, sends SIG (INT or KILL) and checks the outcome against OUT's
# checksum before the run. WAIT is "temp" (until the temporary for OUT exists, then
# half a second), "line:TEXT" (until stderr has TEXT, then half a second) or a CPU
# time in seconds. MESSAGE ends the "interrupted by signal" line SIGINT must print.
KILLED_PID=
signal_case() {
  local name=$1 sig=$2 out=$3 how=$4 msg=$5; shift 6
  local before err="$WORK/$name-$sig.err" pid rc
  before=$(sum "$out")
  "$PKV_BIN" "$@" > /dev/null 2> "$err" &
  pid=$!
  case $how in
    temp) wait_for "$pid" test -e "$(dirname "$out")/.$(basename "$out").pkv-tmp.$pid"; sleep 0.5 ;;
    line:*) wait_for "$pid" grep -sqF "${how#line:}" "$err"; sleep 0.5 ;;
    *) wait_busy "$pid" "$how" ;;
  esac
  kill -s "$sig" "$pid"
  { wait "$pid"; } 2>/dev/null; rc=$?
  local what="$name: SIG$sig"
  [ "$before" = missing ] && what="$what (no earlier output)" || what="$what (--force over an earlier output)"
  if [ "$sig" = INT ]; then
    [ "$rc" -eq 130 ] && pass "$what exits 130" || failed "$what: exit $rc: $(tail -n 2 "$err")"
    local lines; lines=$(grep -v '^pkv: \(info\|warning\):' "$err" | grep -c '^pkv: ')
    if grep -q "^pkv: error: interrupted by signal$msg" "$err" && [ "$lines" -eq 1 ]; then
      pass "$what: $(grep '^pkv: error:' "$err")"
    else
      failed "$what: expected one line 'pkv: error: interrupted by signal$msg', got: $(grep '^pkv: ' "$err")"
    fi
    [ -z "$(temps "$out")" ] && pass "$what: no temporary left" || failed "$what: left $(temps "$out")"
  else
    # 137: it was still running when killed, so the check below is about a cut run.
    [ "$rc" -eq 137 ] && pass "$what: killed while running" || failed "$what: exit $rc, not killed mid-run"
    KILLED_PID=$pid
  fi
  if [ "$(sum "$out")" = "$before" ]; then
    [ "$before" = missing ] && pass "$what: nothing under $(basename "$out")" || pass "$what: earlier $(basename "$out") intact"
  else
    failed "$what: $(basename "$out") changed (checksum $before -> $(sum "$out"))"
  fi
}

# Mount points for the read-only and full-disk cases.
RO="$WORK/ro"
FULL="$WORK/full"
mkdir -p "$RO" "$FULL"
CAN_MOUNT=0
if mount -t tmpfs -o ro,size=1m tmpfs "$RO" 2>/dev/null; then
  CAN_MOUNT=1
else
  echo "note: read-only and full-disk cases not run: no permission to mount a tmpfs"
fi
cleanup_mounts() { mountpoint -q "$RO" && umount "$RO"; mountpoint -q "$FULL" && umount "$FULL"; rm -rf "$WORK"; }
trap '[ "$BASHPID" = "$PKV_TEST_SHELL" ] && cleanup_mounts' EXIT

# read_only NAME OUT -- CMD...: OUT lies in the read-only mount.
read_only() {
  local name=$1 out=$2; shift 3
  [ "$CAN_MOUNT" -eq 1 ] || return 0
  expect_fail "$name: read-only output directory" "$out: output directory .* is not writable" \
    "$PKV_BIN" --log-level warn "$@"
}

# full_disk NAME SIZE OUT -- CMD...: OUT lies on a fresh tmpfs of SIZE, smaller than
# the output.
full_disk() {
  local name=$1 size=$2 out=$3; shift 4
  [ "$CAN_MOUNT" -eq 1 ] || return 0
  mount -t tmpfs -o "size=$size" tmpfs "$FULL" || { failed "$name: cannot mount a tmpfs of $size"; return; }
  expect_fail "$name: full disk" "$out" "$PKV_BIN" --log-level warn "$@"
  local left; left=$(ls -A "$FULL")
  [ -z "$left" ] && pass "$name: full disk left no file" || failed "$name: full disk left: $left"
  umount "$FULL"
}

# ---- dump: writes its HDF5 file while the model runs, so the temporary exists early.
# The earlier output is the dump the other commands read.
MODEL_ARGS=(--model "$MODEL" --text "$T")
"$PKV_BIN" --log-level warn dump "${MODEL_ARGS[@]}" --tokens 1024 --ctx 256 --out dump.h5 > /dev/null ||
  { failed "setup: dump"; finish; exit 1; }
BIG_DUMP=(dump "${MODEL_ARGS[@]}" --tokens 16384 --ctx 256)
POLLED="; no output was written"
signal_case dump INT "$WORK/new.h5" temp "$POLLED" -- "${BIG_DUMP[@]}" --out new.h5
signal_case dump KILL "$WORK/new.h5" temp "" -- "${BIG_DUMP[@]}" --out new.h5
signal_case dump KILL "$WORK/dump.h5" temp "" -- "${BIG_DUMP[@]}" --out dump.h5 --force
stale=".dump.h5.pkv-tmp.$KILLED_PID"
[ -e "$stale" ] && pass "dump: SIGKILL left its temporary $stale" || failed "dump: SIGKILL left no temporary to clean"
# The next run for the same name removes what the killed one left.
signal_case dump INT "$WORK/dump.h5" temp "$POLLED" -- "${BIG_DUMP[@]}" --out dump.h5 --force
[ ! -e "$stale" ] && grep -q "removed '.*$stale', left by process $KILLED_PID" "$WORK/dump-INT.err" &&
  pass "dump: the next run removed the stale $stale" || failed "dump: stale $stale not removed: $(grep info "$WORK/dump-INT.err")"
read_only dump "$RO/out.h5" -- dump "${MODEL_ARGS[@]}" --tokens 256 --ctx 128 --out "$RO/out.h5"
full_disk dump 2m "$FULL/out.h5" -- dump "${MODEL_ARGS[@]}" --tokens 256 --ctx 128 --out "$FULL/out.h5"

# ---- calibrate: mines every head, then writes the table at the end; it does not poll
# for signals, so the first one ends it at once. k = 256 patterns make the run long
# enough to interrupt, and the table large enough for a slow JSON export below.
CAL=(calibrate --dump dump.h5 --device cpu --k-patterns 256 --v-patterns 256)
"$PKV_BIN" --log-level warn "${CAL[@]}" --out table.safetensors > /dev/null || { failed "setup: calibrate"; finish; exit 1; }
EXITED="; unfinished outputs removed"
signal_case calibrate INT "$WORK/new.safetensors" 1 "$EXITED" -- "${CAL[@]}" --out new.safetensors
signal_case calibrate INT "$WORK/table.safetensors" 1 "$EXITED" -- "${CAL[@]}" --out table.safetensors --force
signal_case calibrate KILL "$WORK/new.safetensors" 1 "" -- "${CAL[@]}" --out new.safetensors
signal_case calibrate KILL "$WORK/table.safetensors" 1 "" -- "${CAL[@]}" --out table.safetensors --force
read_only calibrate "$RO/t.safetensors" -- calibrate --dump dump.h5 --device cpu --out "$RO/t.safetensors"
full_disk calibrate 64k "$FULL/t.safetensors" -- calibrate --dump dump.h5 --device cpu --layers 0-3 \
  --out "$FULL/t.safetensors"

# ---- analyze: simulates every method per sequence, polling between sequences; the
# reports are written at the end, so an interrupted run keeps the earlier report.
"$PKV_BIN" --log-level warn analyze --dump dump.h5 --layers 0 --heads 0 --methods kivi --bits 2 --json report.json \
  > /dev/null || { failed "setup: analyze"; finish; exit 1; }
signal_case analyze INT "$WORK/new.json" 1.5 "$POLLED" -- analyze --dump dump.h5 --json new.json
signal_case analyze INT "$WORK/report.json" 1.5 "$POLLED" -- analyze --dump dump.h5 --json report.json --force
signal_case analyze KILL "$WORK/new.json" 1.5 "" -- analyze --dump dump.h5 --json new.json
signal_case analyze KILL "$WORK/report.json" 1.5 "" -- analyze --dump dump.h5 --json report.json --force
read_only analyze "$RO/r.json" -- analyze --dump dump.h5 --json "$RO/r.json"
# A 4 KiB tmpfs: the HTML report of one head is several times larger.
full_disk analyze 4k "$FULL/r.html" -- analyze --dump dump.h5 --layers 0 --heads 0 --methods kivi --bits 2 \
  --html "$FULL/r.html"

# ---- eval: runs the model once per method and sequence, polling before each pass;
# the report is written at the end. It logs the text's token count once it polls.
"$PKV_BIN" --log-level warn eval "${MODEL_ARGS[@]}" --tokens 64 --ctx 64 --kv fp16 kivi:2 --json eval.json \
  > /dev/null || { failed "setup: eval"; finish; exit 1; }
EVAL=(eval "${MODEL_ARGS[@]}" --tokens 4096 --ctx 256 --kv fp16 kivi:2)
signal_case eval INT "$WORK/new-eval.json" "line:tokens (using" "$POLLED" -- "${EVAL[@]}" --json new-eval.json
signal_case eval INT "$WORK/eval.json" "line:tokens (using" "$POLLED" -- "${EVAL[@]}" --json eval.json --force
signal_case eval KILL "$WORK/new-eval.json" "line:tokens (using" "" -- "${EVAL[@]}" --json new-eval.json
signal_case eval KILL "$WORK/eval.json" "line:tokens (using" "" -- "${EVAL[@]}" --json eval.json --force
read_only eval "$RO/e.json" -- "${EVAL[@]}" --json "$RO/e.json"
# Three methods make the report larger than a 4 KiB tmpfs.
full_disk eval 4k "$FULL/e.json" -- eval "${MODEL_ARGS[@]}" --tokens 64 --ctx 64 --kv fp16 kivi:2 kivi:4 \
  --json "$FULL/e.json"

# ---- export: the JSON of the k = 256 table takes about a second (most of it turning
# numbers into text, polled per layer), long enough to interrupt in the middle.
"$PKV_BIN" --log-level warn export --table table.safetensors --format json --dtype f16 --out export.json > /dev/null ||
  { failed "setup: export"; finish; exit 1; }
EXPORT=(export --table table.safetensors --format json)
signal_case export INT "$WORK/new-export.json" 0.2 "" -- "${EXPORT[@]}" --out new-export.json
signal_case export INT "$WORK/export.json" 0.2 "" -- "${EXPORT[@]}" --out export.json --force
signal_case export KILL "$WORK/new-export.json" 0.2 "" -- "${EXPORT[@]}" --out new-export.json
signal_case export KILL "$WORK/export.json" 0.2 "" -- "${EXPORT[@]}" --out export.json --force
read_only export "$RO/x.gguf" -- export --table table.safetensors --format gguf --out "$RO/x.gguf"
full_disk export 64k "$FULL/x.gguf" -- export --table table.safetensors --format gguf --out "$FULL/x.gguf"

# A GGUF export takes milliseconds: signals at growing delays land before, during and
# after it. Whatever the moment, the output is the earlier file (f16) or the complete
# new one (f32, the same bytes as a reference export), never anything else.
"$PKV_BIN" --log-level warn export --table table.safetensors --format gguf --out ref.gguf > /dev/null &&
  "$PKV_BIN" --log-level warn export --table table.safetensors --format gguf --dtype f16 --out x.gguf > /dev/null ||
  { failed "setup: gguf exports"; finish; exit 1; }
old=$(sum x.gguf); new=$(sum ref.gguf)
for sig in INT KILL; do
  [ "$sig" = INT ] && cut=130 || cut=137
  kept=0 replaced=0 bad=""
  for delay in 0 0.005 0.01 0.02 0.03 0.05 0.08 0.12 0.2 0.3; do
    "$PKV_BIN" export --table table.safetensors --format gguf --out x.gguf --force > /dev/null 2>&1 &
    pid=$!
    wait_exec "$pid"
    sleep "$delay"
    kill -s "$sig" "$pid" 2>/dev/null
    { wait "$pid"; } 2>/dev/null; rc=$?
    now=$(sum x.gguf)
    if [ "$now" = "$old" ] && [ "$rc" -eq "$cut" ]; then
      kept=$((kept + 1))
    elif [ "$now" = "$new" ] && { [ "$rc" -eq 0 ] || [ "$rc" -eq 137 ]; }; then
      # Finished (or killed after the rename): put the earlier file back for the next delay.
      replaced=$((replaced + 1))
      "$PKV_BIN" --log-level warn export --table table.safetensors --format gguf --dtype f16 --out x.gguf --force \
        > /dev/null
    else
      bad="$bad delay $delay: exit $rc, x.gguf ${now:0:12};"
    fi
    if [ "$sig" = INT ] && [ -n "$(temps x.gguf)" ]; then bad="$bad delay $delay: left $(temps x.gguf);"; fi
  done
  [ -z "$bad" ] && pass "export gguf: SIG$sig at 10 delays: $kept kept the earlier file, $replaced wrote the whole new one" ||
    failed "export gguf: SIG$sig:$bad"
done
# Whatever the killed exports left, the next one for the name removes.
"$PKV_BIN" --log-level warn export --table table.safetensors --format gguf --out x.gguf --force > /dev/null
[ -z "$(temps x.gguf)" ] && [ "$(sum x.gguf)" = "$new" ] && pass "export gguf: a later export leaves no temporary" ||
  failed "export gguf: temporaries remain: $(temps x.gguf)"

finish
