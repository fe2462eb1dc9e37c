# Helpers shared by scripts/run.sh, scripts/test.sh and scripts/build.sh (sourced).

# phase N/M WHAT: the one line each phase prints before it starts, on stderr:
#   pkv: [3/8] building pkv (CPU only, ~5 min on 2 cores)
# It also remembers when the phase started; phase_done prints how long it took, in wall
# time and in CPU time of its finished processes (more than the wall time when it used
# several cores, less when other programs shared them).
PKV_PHASE_START=0
PKV_PHASE_CPU=0
PKV_TIMES_FILE="$(mktemp)"
trap 'rm -f "$PKV_TIMES_FILE"' EXIT
# pkv_cpu_seconds: sets PKV_CPU to the user + system seconds of this shell's finished
# children so far (`times` must run in this shell, not in a command substitution).
pkv_cpu_seconds() {
  times >"$PKV_TIMES_FILE"
  PKV_CPU=$(tail -n 1 "$PKV_TIMES_FILE" |
    awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } printf "%d", s }')
}
phase() {
  PKV_PHASE_START=$SECONDS
  pkv_cpu_seconds
  PKV_PHASE_CPU=$PKV_CPU
  echo "pkv: [$1] $2" >&2
}
phase_done() {
  pkv_cpu_seconds
  local s=$((SECONDS - PKV_PHASE_START)) c=$((PKV_CPU - PKV_PHASE_CPU))
  echo "pkv:       done in $((s / 60)) min $((s % 60)) s (CPU time $((c / 60)) min $((c % 60)) s)" >&2
}

# pkv_has_gpu: true when an NVIDIA GPU is present and its driver answers.
pkv_has_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

# pkv_cuda_args: the CMake options for CUDA on this machine, one per line.
#  - no GPU (or PKV_CUDA=0): no CUDA at all (nvcc alone would build kernels nothing runs);
#  - a GPU: the CUDA library for the local GPUs' architectures only, and the Hopper
#    (sm_90a) k-means kernel only when one of them is compute capability 9.0.
# PKV_CUDA=1 forces the CUDA build without a GPU (the default architectures of
# CMakeLists.txt, sm_90a included), e.g. to check that the kernels compile.
pkv_cuda_args() {
  case "${PKV_CUDA:-auto}" in
    0|off|OFF) echo "-DPKV_ENABLE_CUDA=OFF"; return ;;
    1|on|ON) echo "-DPKV_ENABLE_CUDA=ON"; return ;;
  esac
  if ! pkv_has_gpu; then
    echo "-DPKV_ENABLE_CUDA=OFF"
    return
  fi
  echo "-DPKV_ENABLE_CUDA=ON"
  local caps archs
  caps="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' .' | grep -E '^[0-9]+$' | sort -u)"
  if [ -n "$caps" ]; then
    archs="$(echo "$caps" | paste -sd ';')"
    echo "-DCMAKE_CUDA_ARCHITECTURES=$archs"
    if echo "$caps" | grep -qx 90; then echo "-DPKV_ENABLE_SM90A=ON"; else echo "-DPKV_ENABLE_SM90A=OFF"; fi
  fi
}

# pkv_cuda_words: how pkv_cuda_args builds, in words, for the phase lines.
pkv_cuda_words() {
  local args; args="$(pkv_cuda_args)"
  if echo "$args" | grep -q 'PKV_ENABLE_CUDA=OFF'; then
    echo "CPU only: no GPU found"
  elif echo "$args" | grep -q 'CMAKE_CUDA_ARCHITECTURES='; then
    echo "with CUDA for sm_$(echo "$args" | sed -n 's/^-DCMAKE_CUDA_ARCHITECTURES=//p' | sed 's/;/, sm_/g')"
  else
    echo "with CUDA for the default architectures"
  fi
}

# pkv_model_file NAME DATA_DIR: the GGUF of one of pkv's real models under DATA_DIR/models:
#   smollm2  SmolLM2-135M-Instruct (Q4_1), the default
#   gemma3   Gemma 3 270M (Q4_K_M): sliding-window and global layers, head_dim 256
# Another name: one line on stderr and status 2.
pkv_model_file() {
  case "$1" in
    smollm2) echo "$2/models/SmolLM2-135M-Instruct.Q4_1.gguf" ;;
    gemma3) echo "$2/models/gemma-3-270m-q4_k_m.gguf" ;;
    *) echo "pkv: model '$1': expected smollm2 or gemma3" >&2; return 2 ;;
  esac
}
