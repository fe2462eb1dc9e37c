#!/usr/bin/env bash
# Installs the Debian packages pkv builds, tests and runs with. Does nothing when
# they are all present (so it also works offline once installed).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git ca-certificates
  libhdf5-dev hdf5-tools libeigen3-dev libcli11-dev nlohmann-json3-dev catch2 libfmt-dev libpcre2-dev zlib1g-dev
  python3 python3-venv python3-pip python3-h5py python3-numpy python3-jsonschema
  unzip fortunes fortunes-min chromium python3-pil
  libopenmpi-dev openmpi-bin
  clang libclang-rt-14-dev libomp-dev llvm
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present" >&2
  exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done" >&2
