#!/usr/bin/env bash
# Configures and builds pkv in build/ (or $PKV_BUILD_DIR).
# Usage: scripts/build.sh [--target NAME]... [CMAKE_ARGS...]
#   --target NAME  build only NAME (repeatable; default: everything configured)
#   CMAKE_ARGS     go to cmake's configure step, e.g. -DPKV_BUILD_TESTS=OFF
# The configure step prints one line (what pkv builds with: CUDA, tokenizer, OpenMP, MPI;
# its full output is in $BUILD/configure.log and is shown when it fails); the build prints
# cmake's progress lines ([ 42%] Building ...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PKV_BUILD_DIR:-$ROOT/build}"
export PATH="$PATH:/usr/local/cuda/bin"
TARGETS=()
CMAKE_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target) [ $# -ge 2 ] || { echo "build.sh: --target needs a name" >&2; exit 2; }
              TARGETS+=(--target "$2"); shift 2 ;;
    *) CMAKE_ARGS+=("$1"); shift ;;
  esac
done
mkdir -p "$BUILD"
if ! cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS[@]+"${CMAKE_ARGS[@]}"} \
     >"$BUILD/configure.log" 2>&1; then
  cat "$BUILD/configure.log" >&2
  echo "build.sh: error: cmake configure failed (log: $BUILD/configure.log)" >&2
  exit 1
fi
grep -E '^-- pkv [0-9]' "$BUILD/configure.log" | sed 's/^-- /build.sh: configured /' >&2 || true
grep -A3 '^CMake Warning' "$BUILD/configure.log" >&2 || true
cmake --build "$BUILD" -j "$(nproc)" ${TARGETS[@]+"${TARGETS[@]}"}
