#!/usr/bin/env bash
# Installs the Debian packages pkv builds, tests and runs with.
# Usage: scripts/install-deps.sh [--run]
#   --run  only what scripts/run.sh (the main job) needs: the compiler, CMake, the
#          libraries pkv links, pip (to fetch the model) and the fortunes text; without it,
#          also what scripts/test.sh needs (Catch2, HDF5 tools, Python test modules,
#          chromium, OpenMPI, clang/LLVM for fuzzing, clang-format for the style check).
# Skips apt entirely, and says so, when every package is installed (so re-runs are quick
# and work offline). Otherwise apt's download and install show as progress lines.
set -euo pipefail

RUN_PACKAGES=(
  build-essential cmake pkg-config git ca-certificates
  libhdf5-dev libeigen3-dev libcli11-dev nlohmann-json3-dev libfmt-dev libpcre2-dev zlib1g-dev
  python3 python3-pip unzip fortunes fortunes-min
)
TEST_PACKAGES=(
  hdf5-tools catch2 python3-venv python3-h5py python3-numpy python3-jsonschema
  chromium python3-pil
  libopenmpi-dev openmpi-bin
  clang libclang-rt-14-dev libomp-dev llvm clang-format
)
PACKAGES=("${RUN_PACKAGES[@]}")
what="pkv and the main job"
case "${1:-}" in
  --run) ;;
  "") PACKAGES+=("${TEST_PACKAGES[@]}"); what="pkv, its tests and the main job" ;;
  *) echo "install-deps: usage: install-deps.sh [--run]" >&2; exit 2 ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} Debian packages for $what are installed: apt skipped" >&2
  exit 0
fi
echo "install-deps: installing ${#missing[@]} of ${#PACKAGES[@]} Debian packages (with their dependencies): ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
echo "install-deps: apt-get update" >&2
if ! $SUDO apt-get update -q 2>&1 | { grep -E '^(Get|Err|E:|W:)' | sed 's/^/  /' >&2 || true; }; then
  echo "install-deps: error: apt-get update failed" >&2
  exit 1
fi
# apt's own lines, condensed: its plan ("N newly installed ... Need to get X MB"), then one
# progress line per tenth of the downloads and of the installs (each line when on a tty),
# and every error.
set +e
$SUDO apt-get install -y -q --no-install-recommends -o Dpkg::Progress-Fancy=0 -o Dpkg::Use-Pty=0 \
    "${missing[@]}" 2>&1 | awk -v tty="$([ -t 2 ] && echo 1 || echo 0)" '
  function show(kind, k, name) {
    step = n > 10 ? int(n / 10) : 1
    if (tty) { printf "\r  %s %d/%d %-50s", kind, k, n, substr(name, 1, 50) > "/dev/stderr"; if (k == n) printf "\n" > "/dev/stderr" }
    else if (k % step == 0 || k == n) printf "  %s %d/%d (%s)\n", kind, k, n, name > "/dev/stderr"
    fflush("/dev/stderr")
  }
  /^[0-9]+ upgraded, [0-9]+ newly installed/ { split($0, a, " "); n = a[1] + a[3]; print "  " $0 > "/dev/stderr"; next }
  /^Need to get|^After this operation/ { print "  " $0 > "/dev/stderr"; next }
  /^Get:[0-9]+/ { got++; name = $0; sub(/^Get:[0-9]+ [^ ]+ [^ ]+ [^ ]+ /, "", name); sub(/ .*/, "", name); show("downloaded", got, name); next }
  /^Setting up / { set++; name = $3; show("installed ", set, name); next }
  /^(E|W): |[Ee]rror/ { print "  " $0 > "/dev/stderr" }
'
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -eq 0 ] || { echo "install-deps: error: apt-get install failed (exit $rc)" >&2; exit "$rc"; }
echo "install-deps: done" >&2
