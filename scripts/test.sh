#!/usr/bin/env bash
# The README's test command: installs dependencies, fetches the default model and
# text, builds everything and runs every test (unit, integration on the real model,
# Python cross-checks), then the end-to-end regression job (scripts/e2e-check.sh) and a
# short fuzzing pass over the file readers (scripts/fuzz.sh, docs/fuzzing.md).
# GPU tests skip, and say so, on machines without a GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PKV_BUILD_DIR:-$ROOT/build}"
bash "$ROOT/scripts/install-deps.sh"
bash "$ROOT/scripts/fetch-data.sh"
bash "$ROOT/scripts/build.sh"
(cd "$BUILD" && ctest --output-on-failure -j "$(nproc)" "$@")
# The regression gate: a small end-to-end run on the default model checked against
# the committed baselines (test/baselines/) by `pkv check`.
PKV_BUILD_DIR="$BUILD" bash "$ROOT/scripts/e2e-check.sh"
# Fuzzing, short and bounded: 2000 executions per reader under ASan + UBSan (two to three
# minutes on two cores, most of it the instrumented build in build-fuzz/).
bash "$ROOT/scripts/fuzz.sh" --runs 2000
