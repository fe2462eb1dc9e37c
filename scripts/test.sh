#!/usr/bin/env bash
# The README's test command: installs dependencies, fetches the default model and
# text, builds everything and runs every test (unit, integration on the real model,
# Python cross-checks). GPU tests skip, and say so, on machines without a GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PKV_BUILD_DIR:-$ROOT/build}"
bash "$ROOT/scripts/install-deps.sh"
bash "$ROOT/scripts/fetch-data.sh"
bash "$ROOT/scripts/build.sh"
cd "$BUILD"
ctest --output-on-failure -j "$(nproc)" "$@"
