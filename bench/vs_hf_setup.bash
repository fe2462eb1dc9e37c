# Sourced by bench/dump_vs_hf.sh and bench/stream_vs_hf.sh: the arguments, checks, scratch
# folder and random-weight model that both comparisons with transformers share.
#
# In:  NAME (the script's name, for messages), PY_MODULES (Python modules the peer needs,
#      e.g. "torch, transformers"), SCRATCH_FILES (globs under the scratch folder that a
#      run writes, removed from a kept PKV_BENCH_SCRATCH folder), "$@" (SHAPE[:TYPE]).
# Out: ROOT BUILD PKV MAKE PY shape type CTX N BATCH W gpu S model ids json; the model and
#      the ids of N + W tokens written (kept ones reused); an EXIT trap that cleans up.
# Environment: PKV_BUILD_DIR, PKV_BENCH_TOKENS, PKV_BENCH_CTX, PKV_BENCH_HF_BATCH,
# PKV_BENCH_WARMUP_TOKENS, PKV_BENCH_SCRATCH, PKV_BENCH_KEEP, PYTHON (each script's header).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PKV_BUILD_DIR:-$ROOT/build-gpu}"
PKV="$BUILD/apps/pkv"
MAKE="$BUILD/bench/pkv_bench_make_random_gguf"
PY="${PYTHON:-python3}"
spec="${1:-}"
shape="${spec%%:*}"
type="bf16"
[[ "$spec" == *:* ]] && type="${spec#*:}"
case "$shape" in
  smollm2-135m) def_tokens=65536 def_batch=8 ;;
  llama3-8b) def_tokens=16384 def_batch=4 ;;
  *) echo "$NAME: usage: bench/$NAME.sh smollm2-135m|llama3-8b[:bf16|f16|q8_0]" >&2; exit 2 ;;
esac
case "$type" in bf16 | f16 | q8_0) ;; *) echo "$NAME: type '$type': expected bf16, f16 or q8_0" >&2; exit 2 ;; esac
CTX="${PKV_BENCH_CTX:-2048}"
N="${PKV_BENCH_TOKENS:-$def_tokens}"
BATCH="${PKV_BENCH_HF_BATCH:-$def_batch}"
W="${PKV_BENCH_WARMUP_TOKENS:-$((BATCH * CTX))}"
[ $((N % CTX)) -eq 0 ] || { echo "$NAME: PKV_BENCH_TOKENS $N is not a multiple of the context $CTX" >&2; exit 2; }

[ -x "$PKV" ] || { echo "$NAME: $PKV missing: build with -DPKV_ENABLE_CUDA=ON (PKV_BUILD_DIR)" >&2; exit 1; }
[ -x "$MAKE" ] || { echo "$NAME: $MAKE missing: configure with -DPKV_BUILD_BENCH=ON" >&2; exit 1; }
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) || true
[ -n "$gpu" ] || { echo "$NAME: no GPU (nvidia-smi lists none)" >&2; exit 1; }
"$PY" -c "import $PY_MODULES, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null ||
  { echo "$NAME: $PY lacks $PY_MODULES (torch with CUDA)" >&2; exit 1; }

if [ -n "${PKV_BENCH_SCRATCH:-}" ]; then
  S="$PKV_BENCH_SCRATCH"
  mkdir -p "$S"
else
  S="$(mktemp -d)"
fi
cleanup() {
  if [ "${PKV_BENCH_KEEP:-0}" = 1 ]; then
    echo "$NAME: kept $S" >&2
  elif [ -n "${PKV_BENCH_SCRATCH:-}" ]; then
    local g
    for g in model-*.gguf ids-*.bin shape-*.json $SCRATCH_FILES; do rm -f "$S"/$g; done
  else
    rm -rf "$S"
  fi
}
trap cleanup EXIT

model="$S/model-$shape-$type.gguf" ids="$S/ids-$shape.bin" json="$S/shape-$shape.json"
if [ ! -f "$model" ] || [ ! -f "$ids" ] || [ ! -f "$json" ] ||
  [ "$(stat -c %s "$ids")" -lt $(((N + W) * 4)) ]; then
  t0=$(date +%s.%N)
  "$MAKE" --shape "$shape" --type "$type" --seed 1 --out "$model" --ids "$ids" --tokens $((N + W)) \
    --json "$json" --force
  echo "$NAME: model written in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s" >&2
fi
