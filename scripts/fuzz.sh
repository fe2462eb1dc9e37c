#!/usr/bin/env bash
# Fuzzes pkv's file readers with libFuzzer under ASan + UBSan (targets in test/fuzz/,
# docs/fuzzing.md). Builds build-fuzz with clang (incrementally; only the targets and the
# seed generator), writes the seed corpus with pkv's own writers into
# build-fuzz/seeds/<target>/, copies it into the working corpus build-fuzz/corpus/<target>/
# (kept between runs, so long runs build on each other) and runs every target for a fixed
# number of executions.
#
# Usage: scripts/fuzz.sh [--runs N] [--jobs J] [TARGET...]
#   --runs N  executions per target (default 1000000: the long run; scripts/test.sh runs 2000)
#   --jobs J  targets fuzzed at the same time (default 1)
#   TARGET    fuzz_gguf fuzz_kv_dump fuzz_pattern_table fuzz_check_report (default: all four)
#
# Bounds, per target process: 2048 MiB resident (-rss_limit_mb), 1024 MiB in one allocation
# (-malloc_limit_mb; the readers' own budget PKV_MEMORY_BUDGET is 256M inside the targets),
# 10 s per input (-timeout), inputs up to 64 KiB (-max_len). A crash, leak, UB report,
# timeout or out-of-memory fails the target: the input is kept in build-fuzz/artifacts/<target>/
# and libFuzzer's output in build-fuzz/logs/<target>.log.
#
# Progress goes to stderr, one line per target (executions, seconds, result), and the last
# line is "N passed, M failed" (targets). Exit status: 0 when every target passed, 1 when
# any failed or the build failed, 2 on bad arguments.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PKV_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
ALL_TARGETS=(fuzz_gguf fuzz_kv_dump fuzz_pattern_table fuzz_check_report)

usage() {
    sed -n '9,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

RUNS=1000000
JOBS=1
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) [ $# -ge 2 ] || usage; RUNS="$2"; shift 2 ;;
        --jobs) [ $# -ge 2 ] || usage; JOBS="$2"; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "fuzz: unknown option $1" >&2; usage ;;
        *)
            case " ${ALL_TARGETS[*]} " in
                *" $1 "*) TARGETS+=("$1") ;;
                *) echo "fuzz: unknown target $1 (targets: ${ALL_TARGETS[*]})" >&2; exit 2 ;;
            esac
            shift ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: --runs expects a positive integer, got '$RUNS'" >&2; exit 2; }
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: --jobs expects a positive integer, got '$JOBS'" >&2; exit 2; }
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")

# Another clang: PKV_FUZZ_CC=clang-16 PKV_FUZZ_CXX=clang++-16 (read when build-fuzz is first configured).
CC_FUZZ="${PKV_FUZZ_CC:-clang}"
CXX_FUZZ="${PKV_FUZZ_CXX:-clang++}"
for tool in "$CC_FUZZ" "$CXX_FUZZ" cmake; do
    command -v "$tool" >/dev/null || { echo "fuzz: $tool not found (scripts/install-deps.sh installs it)" >&2; exit 1; }
done

# ---------------------------------------------------------------------------- build
mkdir -p "$BUILD"
build_log="$BUILD/fuzz-build.log"
echo "fuzz: building $BUILD (log: $build_log)" >&2
t0=$(date +%s)
if ! { CC="$CC_FUZZ" CXX="$CXX_FUZZ" cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Debug -DPKV_BUILD_FUZZ=ON \
           -DPKV_ENABLE_CUDA=OFF -DPKV_ENABLE_MPI=OFF -DPKV_BUILD_TESTS=OFF -DPKV_BUILD_BENCH=OFF &&
       cmake --build "$BUILD" --target pkv_fuzz -j "$(nproc)"; } >"$build_log" 2>&1; then
    tail -n 30 "$build_log" >&2
    echo "fuzz: build failed (full log: $build_log)" >&2
    echo "0 passed, ${#TARGETS[@]} failed" >&2
    exit 1
fi
echo "fuzz: built in $(( $(date +%s) - t0 )) s" >&2

# Sanitizer settings: UB and every ASan error abort at once, leaks are checked. Options
# already in the environment come last and so win.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:abort_on_error=0:symbolize=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:symbolize=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
if [ -z "${ASAN_SYMBOLIZER_PATH:-}" ] && command -v llvm-symbolizer >/dev/null; then
    export ASAN_SYMBOLIZER_PATH="$(command -v llvm-symbolizer)"
fi
export OMP_NUM_THREADS=1

# ---------------------------------------------------------------------------- seeds
if ! "$BUILD/test/fuzz/pkv_fuzz_seeds" "$BUILD/seeds" "$ROOT" >"$BUILD/seeds.log" 2>&1; then
    tail -n 30 "$BUILD/seeds.log" >&2
    echo "fuzz: writing the seed corpus failed (log: $BUILD/seeds.log)" >&2
    echo "0 passed, ${#TARGETS[@]} failed" >&2
    exit 1
fi

# Per-process scratch space for the targets' input files: tmpfs when there is one. It is
# removed here because a target that crashes never cleans up after itself.
SCRATCH_BASE=/dev/shm
[ -d "$SCRATCH_BASE" ] && [ -w "$SCRATCH_BASE" ] || SCRATCH_BASE="${TMPDIR:-/tmp}"
SCRATCH="$(mktemp -d "$SCRATCH_BASE/pkv-fuzz-run.XXXXXX")"
RESULTS="$(mktemp -d "${TMPDIR:-/tmp}/pkv-fuzz-results.XXXXXX")"
trap 'rm -rf "$SCRATCH" "$RESULTS"' EXIT

# What went wrong, from libFuzzer's and the sanitizers' reports in a log.
failure_kind() {
    local log="$1" s
    s=$(sed -n 's/.*ERROR: libFuzzer: \(deadly signal\|out-of-memory\|timeout\|[a-z-]*\).*/\1/p' "$log" | head -n 1)
    if [ -n "$s" ]; then
        echo "$s"
    elif grep -q 'ERROR: LeakSanitizer' "$log"; then
        echo "leak"
    elif s=$(grep -m1 -o 'SUMMARY: AddressSanitizer: [A-Za-z0-9_-]*' "$log"); then
        echo "${s#SUMMARY: AddressSanitizer: }"
    elif grep -q 'runtime error:' "$log"; then
        echo "undefined-behavior"
    else
        echo "exit status $2"
    fi
}

run_target() {
    local t="$1" corpus="$BUILD/corpus/$1" artifacts="$BUILD/artifacts/$1" log="$BUILD/logs/$1.log"
    local scratch="$SCRATCH/$1" rc=0 start end secs execs rate result artifact
    mkdir -p "$corpus" "$artifacts" "$BUILD/logs" "$scratch"
    cp -f "$BUILD/seeds/$t/"* "$corpus/"
    # Inputs that once crashed a reader: replayed first on every run, so they stay fixed.
    if [ -d "$ROOT/test/fuzz/regressions/$t" ]; then cp -f "$ROOT/test/fuzz/regressions/$t/"* "$corpus/"; fi
    start=$(date +%s.%N)
    PKV_FUZZ_TMPDIR="$scratch" "$BUILD/test/fuzz/$t" -runs="$RUNS" -rss_limit_mb=2048 -malloc_limit_mb=1024 \
        -timeout=10 -max_len=65536 -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" >"$log" 2>&1 ||
        rc=$?
    end=$(date +%s.%N)
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)
    [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#' || true)
    [ -n "$execs" ] || execs="?"
    if [ "$rc" -eq 0 ] && ! grep -q -e '^==[0-9]*==ERROR' -e 'runtime error:' "$log"; then
        result="ok"
        : >"$RESULTS/$t.pass"
    else
        artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | grep -v '/slow-unit-' | tail -n 1 || true)
        artifact="${artifact#Test unit written to }"
        result="CRASH ($(failure_kind "$log" "$rc")) ${artifact:-no artifact, see $log}"
        : >"$RESULTS/$t.fail"
    fi
    rm -rf "$scratch"
    rate=$(awk -v n="$execs" -v s="$secs" 'BEGIN { if (n ~ /^[0-9]+$/ && s > 0) printf "%.0f", n / s; else print "?" }')
    printf 'fuzz: %-20s %9s runs %8s s %8s/s  %s\n' "$t" "$execs" "$secs" "$rate" "$result" >&2
}

# ------------------------------------------------------------------------------ run
echo "fuzz: ${#TARGETS[@]} target(s), $RUNS runs each, $JOBS at a time" >&2
running=0
for t in "${TARGETS[@]}"; do
    if [ "$running" -ge "$JOBS" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    run_target "$t" &
    running=$((running + 1))
done
wait || true

passed=$(find "$RESULTS" -name '*.pass' | wc -l)
failed=$(( ${#TARGETS[@]} - passed ))
echo "$passed passed, $failed failed" >&2
[ "$failed" -eq 0 ]
