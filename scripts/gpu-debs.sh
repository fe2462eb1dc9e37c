#!/usr/bin/env bash
# Puts Debian's libpcre2-dev and libpcre2-8-0 packages in build-debs/ (about 1 MB), for the GPU
# machine, which has no PCRE2 headers: pass `carry: ["build-debs"]` and scripts/gpu-check.sh
# unpacks them so that pkv is built with its tokenizer there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$ROOT/build-debs"
cd "$ROOT/build-debs"
apt-get download libpcre2-dev libpcre2-8-0 2>/dev/null
ls -1 "$ROOT"/build-debs/*.deb
