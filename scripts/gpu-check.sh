#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: configure with CUDA, build, and run every CUDA
# test and benchmark, plus the CPU unit tests (which must also pass with that
# machine's library versions). Extra arguments go to cmake.
# Without PCRE2 headers pkv builds without the tokenizer (tests that need it skip).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PKV_BUILD_DIR:-$ROOT/build-gpu}"
export PATH="$PATH:/usr/local/cuda/bin"
# NVLink multicast off: the lent GPU machines require it, and pkv's all-reduces are small.
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
# No PCRE2 headers there: Debian's libpcre2-dev and libpcre2-8-0 packages, carried in build-debs/
# (scripts/gpu-debs.sh fetches them), are unpacked so that the tokenizer is built too.
if ! pkg-config --exists libpcre2-8 2>/dev/null && ls "$ROOT"/build-debs/libpcre2-*.deb >/dev/null 2>&1; then
  PCRE2_DIR="$BUILD-pcre2"
  rm -rf "$PCRE2_DIR"
  for d in "$ROOT"/build-debs/libpcre2-*.deb; do dpkg -x "$d" "$PCRE2_DIR"; done
  PC="$PCRE2_DIR/usr/lib/x86_64-linux-gnu/pkgconfig"
  sed -i "s|^prefix=.*|prefix=$PCRE2_DIR/usr|" "$PC/libpcre2-8.pc"
  export PKG_CONFIG_PATH="$PC${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DPKV_NATIVE=ON "$@" | grep -E "^-- pkv|Catch2|CUDA" || true
cmake --build "$BUILD" -j "$(nproc)"
"$BUILD/apps/pkv" devices
cd "$BUILD"
ctest --output-on-failure -L unit -j 4
# The CUDA forward engine: its kernel and engine parity tests by tag (also part of the run
# above), then `pkv dump` of the default model on the GPU (bf16 and f32 weights are the
# tests' business; this is the command's path) and on the CPU, when the model is there.
"$BUILD/test/pkv_cuda_tests" "[forward]"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
MODEL="$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$MODEL" ] && [ -f "$DATA/text/fortunes.txt" ]; then
  tmp="$(mktemp -d)"
  for dev in cuda cpu; do
    echo "pkv dump --device $dev:"
    "$BUILD/apps/pkv" dump --device "$dev" --model "$MODEL" --text "$DATA/text/fortunes.txt" --tokens 8192 \
      --ctx 1024 --out "$tmp/dump-$dev.h5"
  done
  rm -rf "$tmp"
fi
for b in "$BUILD"/bench/pkv_bench_cuda_*; do
  if [ -x "$b" ]; then "$b"; fi
done
# The model-shaped calibration over 1 and 2 GPU workers (they share a GPU on a one-GPU machine).
# One problem data parallel over 1 and 2 workers (N = 2e7 here; --sharded alone defaults to 1e8); with
# two GPUs and NCCL the 2-worker row also runs with the sums added on the GPUs.
if [ -x "$BUILD/bench/pkv_bench_cuda_kmeans" ]; then
  "$BUILD/bench/pkv_bench_cuda_kmeans" --model 90 100000 64 30 --workers 1,2
  "$BUILD/bench/pkv_bench_cuda_kmeans" --sharded 20000000 256 3 --workers 1,2
fi
# pkv's k-means against a PyTorch Lloyd loop on the same GPU, when torch is there.
if python3 -c "import torch" 2>/dev/null; then bash "$ROOT/bench/kmeans_gpu_vs_torch.sh" "$BUILD"; fi
