#!/usr/bin/env bash
# Formats the tracked C++/CUDA sources with clang-format and the repository's .clang-format
# (written for clang-format 14, Debian 12's).
#   scripts/format.sh           rewrite the files in place
#   scripts/format.sh --check   change nothing; exit non-zero when a file would change
# CLANG_FORMAT picks the binary (default: clang-format).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CLANG_FORMAT="${CLANG_FORMAT:-clang-format}"

mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.h' '*.hpp' '*.cpp' '*.cu' '*.cuh' '*.cc')
[ "${#files[@]}" -gt 0 ] || { echo "format.sh: no sources found" >&2; exit 1; }

case "${1:-}" in
    --check) exec "$CLANG_FORMAT" --style=file --dry-run -Werror "${files[@]}" ;;
    "") exec "$CLANG_FORMAT" --style=file -i "${files[@]}" ;;
    *) echo "usage: scripts/format.sh [--check]" >&2; exit 2 ;;
esac
