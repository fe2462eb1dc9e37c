#!/usr/bin/env bash
# `pkv dump --device cuda` against a Hugging Face transformers capture script
# (bench/hf_capture.py) on a random-weight model of a real shape, same token ids, same
# tensors (K before and after RoPE, V and Q of every layer, fp16), side by side in one run.
#
# Usage: bench/dump_vs_hf.sh SHAPE[:TYPE]
#   SHAPE: smollm2-135m (default 65536 tokens) or llama3-8b (default 16384 tokens)
#   TYPE:  the model's weights for pkv, bf16 (default), f16 or q8_0; transformers always
#          runs bf16 weights
# Environment (all optional):
#   PKV_BUILD_DIR         build with CUDA and bench targets (default build-gpu/):
#                         cmake -S . -B build-gpu -DPKV_ENABLE_CUDA=ON -DPKV_BUILD_BENCH=ON
#   PKV_BENCH_TOKENS      timed tokens, a multiple of PKV_BENCH_CTX
#   PKV_BENCH_CTX         tokens per sequence (default 2048)
#   PKV_BENCH_HF_BATCH    transformers sequences per forward (default 8 at 135M, 4 at 8B)
#   PKV_BENCH_WARMUP_TOKENS  pkv's warm-up run (default 2 sequences; 0: one run only)
#   PKV_DUMP_ARGS         more `pkv dump` options (e.g. --chunk-tokens 1024)
#   PKV_BENCH_SCRATCH     folder for the model, ids and outputs (default: a temporary
#                         folder); PKV_BENCH_KEEP=1 keeps it (a kept model is reused)
#   PYTHON                the Python with torch, transformers and h5py (default python3)
#
# What is timed (start-up excluded for both, the same way):
#   pkv: a run of WARMUP + N tokens minus a run of WARMUP tokens, the same model and ids:
#        the cost of N tokens once the engine has run a batch. The start-up (loading,
#        hashing and uploading the model) is the same in both runs and cancels. Two
#        figures: the whole runs' wall time (everything the N tokens cost up to the closed
#        file: the ratios use it) and the dump's own summary.seconds (forward and writes
#        from opening the output to the last layer handed to the writer; writes still
#        queued then are not in it). WARMUP 0: one run of N tokens, summary.seconds only.
#   transformers: hf_capture.py, one untimed warm-up batch, then N tokens: forward, hooks,
#        copies to pinned host memory, and (h5 mode) h5py writes, uncompressed, and close.
# Needs one GPU, ~20 GB of disk at 135M defaults and ~40 GB at llama3-8b (bf16); fits in a
# 10-minute command on one H100 at the defaults.
set -euo pipefail
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
  *) echo "dump_vs_hf: usage: bench/dump_vs_hf.sh smollm2-135m|llama3-8b[:bf16|f16|q8_0]" >&2; exit 2 ;;
esac
case "$type" in bf16 | f16 | q8_0) ;; *) echo "dump_vs_hf: type '$type': expected bf16, f16 or q8_0" >&2; exit 2 ;; esac
CTX="${PKV_BENCH_CTX:-2048}"
N="${PKV_BENCH_TOKENS:-$def_tokens}"
BATCH="${PKV_BENCH_HF_BATCH:-$def_batch}"
W="${PKV_BENCH_WARMUP_TOKENS:-$((2 * CTX))}"
[ $((N % CTX)) -eq 0 ] || { echo "dump_vs_hf: PKV_BENCH_TOKENS $N is not a multiple of the context $CTX" >&2; exit 2; }

[ -x "$PKV" ] || { echo "dump_vs_hf: $PKV missing: build with -DPKV_ENABLE_CUDA=ON (PKV_BUILD_DIR)" >&2; exit 1; }
[ -x "$MAKE" ] || { echo "dump_vs_hf: $MAKE missing: configure with -DPKV_BUILD_BENCH=ON" >&2; exit 1; }
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) || true
[ -n "$gpu" ] || { echo "dump_vs_hf: no GPU (nvidia-smi lists none)" >&2; exit 1; }
"$PY" -c 'import torch, transformers, h5py, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null ||
  { echo "dump_vs_hf: $PY lacks torch with CUDA, transformers or h5py" >&2; exit 1; }

if [ -n "${PKV_BENCH_SCRATCH:-}" ]; then
  S="$PKV_BENCH_SCRATCH"
  mkdir -p "$S"
else
  S="$(mktemp -d)"
fi
cleanup() {
  if [ "${PKV_BENCH_KEEP:-0}" = 1 ]; then
    echo "dump_vs_hf: kept $S" >&2
  elif [ -n "${PKV_BENCH_SCRATCH:-}" ]; then
    rm -f "$S"/model-*.gguf "$S"/ids-*.bin "$S"/shape-*.json "$S"/pkv-*.h5 "$S"/hf.h5
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
  echo "dump_vs_hf: model written in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s" >&2
fi

# run_pkv TOKENS NAME: dumps TOKENS tokens; prints the run's wall seconds, the dump's
# summary.seconds and the file's bytes.
run_pkv() {
  local n="$1" out="$S/pkv-$2.h5" t0 t1
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$PKV" --log-level warn dump --device cuda --model "$model" --token-ids "$ids" --tokens "$n" --ctx "$CTX" \
    --capture k_pre,k_post,v,q --out "$out" --force ${PKV_DUMP_ARGS:-} >"$S/pkv-$2.log"
  t1=$(date +%s.%N)
  "$PY" - "$out" "$t0" "$t1" <<'PY'
import h5py, json, os, sys
with h5py.File(sys.argv[1], "r") as f:
    s = json.loads(f.attrs["summary"])
print(float(sys.argv[3]) - float(sys.argv[2]), s["seconds"], os.path.getsize(sys.argv[1]))
PY
  rm -f "$out"
}

if [ "$W" -gt 0 ]; then
  echo "dump_vs_hf: pkv dump, $W + $N tokens, then $W tokens (the difference is the cost of $N)" >&2
  big=$(run_pkv $((N + W)) big)
  small=$(run_pkv "$W" small)
  read -r big_wall big_s big_bytes <<<"$big"
  read -r small_wall small_s small_bytes <<<"$small"
  pkv_rows=$(awk -v n="$N" -v w="$W" -v bw="$big_wall" -v sw="$small_wall" -v bs="$big_s" -v ss="$small_s" \
    -v bb="$big_bytes" -v sb="$small_bytes" 'BEGIN {
      printf "pkv dump (file; runs of %d+%d minus %d tokens)\t%.6f\t%d\n", w, n, w, bw - sw, bb - sb
      printf "pkv dump (summary.seconds, same difference)\t%.6f\t%d\n", bs - ss, bb - sb }')
else
  echo "dump_vs_hf: pkv dump, $N tokens" >&2
  read -r _ one_s one_bytes <<<"$(run_pkv "$N" one)"
  pkv_rows=$(printf 'pkv dump (summary.seconds, one run)\t%s\t%s' "$one_s" "$one_bytes")
fi
echo "dump_vs_hf: transformers, memory" >&2
hf_mem=$("$PY" "$ROOT/bench/hf_capture.py" --shape "$json" --ids "$ids" --tokens "$N" --ctx "$CTX" \
  --batch "$BATCH" --mode memory 2>"$S/hf-memory.log" | tail -n 1) || { tail -n 5 "$S/hf-memory.log" >&2; exit 1; }
echo "dump_vs_hf: transformers, h5py" >&2
hf_h5=$("$PY" "$ROOT/bench/hf_capture.py" --shape "$json" --ids "$ids" --tokens "$N" --ctx "$CTX" \
  --batch "$BATCH" --mode h5 --out "$S/hf.h5" 2>"$S/hf-h5.log" | tail -n 1) || { tail -n 5 "$S/hf-h5.log" >&2; exit 1; }
rm -f "$S/hf.h5"

"$PY" - "$shape" "$type" "$N" "$CTX" "$pkv_rows" "$BATCH" \
  "$hf_mem" "$hf_h5" "$gpu" "$("$PKV" --version)" "${PKV_DUMP_ARGS:-}" <<'PY'
import datetime, json, sys
shape, typ, n, ctx, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[6]
pkv = [(name, float(sec), int(b)) for name, sec, b in (line.split("\t") for line in sys.argv[5].splitlines())]
mem, h5 = json.loads(sys.argv[7]), json.loads(sys.argv[8])
gpu, version, extra = sys.argv[9], sys.argv[10], sys.argv[11]
print(f"dump vs transformers capture: {shape} ({typ} weights for pkv, bf16 for transformers), {n} tokens, "
      f"ctx {ctx}, K pre/post-RoPE, V, Q of every layer as fp16")
print(f"machine: {gpu}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {version}"
      f"{' ' + extra if extra else ''}; torch {mem['torch']}, transformers {mem['transformers']}, batch {batch}")
rows = [(name, n, sec, b) for name, sec, b in pkv]
rows.append(("transformers + h5py (file)", n, h5["seconds"], h5["bytes"]))
rows.append(("transformers (host memory)", n, mem["seconds"], None))
print(f"{'tool':<50} {'tokens':>8} {'seconds':>9} {'tokens/s':>11} {'file MiB':>10}")
for name, t, s, b in rows:
    print(f"{name:<50} {t:8d} {s:9.3f} {t / s:11.1f} {('-' if b is None else f'{b / 2**20:.1f}'):>10}")
rate = n / pkv[0][1]  # the first pkv row: whole runs (summary.seconds with one run)
print(f"ratio pkv / transformers (file):   {rate / (n / h5['seconds']):.2f}")
print(f"ratio pkv / transformers (memory): {rate / (n / mem['seconds']):.2f}")
PY
