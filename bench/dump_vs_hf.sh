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
#   PKV_BENCH_WARMUP_TOKENS  pkv's warm-up run (default one batch of PKV_BENCH_HF_BATCH
#                         sequences; 0: one run only)
#   PKV_DUMP_ARGS         more `pkv dump` options (e.g. --chunk-tokens 1024)
#   PKV_BENCH_SCRATCH     folder for the model, ids and outputs (default: a temporary
#                         folder); PKV_BENCH_KEEP=1 keeps it (a kept model is reused)
#   PYTHON                the Python with torch, transformers and h5py (default python3)
#
# What is timed (start-up excluded for both, the same way):
#   pkv: a run of WARMUP + N tokens minus a run of WARMUP tokens, the same model and ids:
#        the cost of N tokens once the engine has run a batch. Both tools run batches of
#        PKV_BENCH_HF_BATCH sequences (pkv: PKV_CUDA_BATCH_TOKENS), so the engine's buffers
#        are grown in the warm-up batch of both runs, as transformers' warm-up batch allocates
#        its own before its clock starts. The start-up (loading,
#        hashing and uploading the model) is the same in both runs and cancels. Two
#        figures: the whole runs' wall time (everything the N tokens cost up to the closed
#        file: the ratios use it) and the dump's own summary.seconds (forward and writes
#        from opening the output to the last layer handed to the writer; writes still
#        queued then are not in it). WARMUP 0: one run of N tokens, summary.seconds only.
#   transformers: hf_capture.py, one untimed warm-up batch, then N tokens: forward, hooks,
#        copies to pinned host memory, and (h5 mode) h5py writes, uncompressed, and close.
#   Files, both ways for both tools: flushed to disk before the clock stops (pkv's default;
#   hf_capture.py --fsync) and left in the page cache (pkv --no-fsync; h5py's default).
#   Each pkv/transformers ratio compares runs that treat the file alike.
# Needs one GPU, ~20 GB of disk at 135M defaults and ~40 GB at llama3-8b (bf16); fits in a
# 10-minute command on one H100 at the defaults.
set -euo pipefail
NAME=dump_vs_hf PY_MODULES="torch, transformers, h5py" SCRATCH_FILES="pkv-*.h5 hf.h5"
# shellcheck source=bench/vs_hf_setup.bash
source "$(dirname "${BASH_SOURCE[0]}")/vs_hf_setup.bash"

# run_pkv TOKENS NAME [ARGS...]: dumps TOKENS tokens; prints the run's wall seconds, the
# dump's summary.seconds and the file's bytes.
run_pkv() {
  local n="$1" out="$S/pkv-$2.h5" name="$2" t0 t1
  shift 2
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  PKV_CUDA_BATCH_TOKENS=$((BATCH * CTX)) "$PKV" --log-level warn dump --device cuda --model "$model" --token-ids "$ids" --tokens "$n" --ctx "$CTX" \
    --capture k_pre,k_post,v,q --out "$out" --force "$@" ${PKV_DUMP_ARGS:-} >"$S/pkv-$name.log"
  t1=$(date +%s.%N)
  "$PY" - "$out" "$t0" "$t1" <<'PY'
import h5py, json, os, sys
with h5py.File(sys.argv[1], "r") as f:
    s = json.loads(f.attrs["summary"])
print(float(sys.argv[3]) - float(sys.argv[2]), s["seconds"], os.path.getsize(sys.argv[1]))
PY
  rm -f "$out"
}

# pkv_rows TAG [ARGS...]: the rows (name, seconds, bytes; tab-separated) of one way of
# running pkv dump, named "pkv dump TAG".
pkv_rows() {
  local tag="$1" big small bw bs bb sw ss sb one_s one_bytes
  shift
  if [ "$W" -gt 0 ]; then
    echo "dump_vs_hf: pkv dump $tag, $W + $N tokens, then $W tokens (the difference is the cost of $N)" >&2
    big=$(run_pkv $((N + W)) big "$@")
    small=$(run_pkv "$W" small "$@")
    read -r bw bs bb <<<"$big"
    read -r sw ss sb <<<"$small"
    awk -v t="$tag" -v n="$N" -v w="$W" -v bw="$bw" -v sw="$sw" -v bs="$bs" -v ss="$ss" -v bb="$bb" -v sb="$sb" 'BEGIN {
      printf "pkv dump %s (file; runs of %d+%d minus %d tokens)\t%.6f\t%d\n", t, w, n, w, bw - sw, bb - sb
      printf "pkv dump %s (summary.seconds, same difference)\t%.6f\t%d\n", t, bs - ss, bb - sb }'
  else
    echo "dump_vs_hf: pkv dump $tag, $N tokens" >&2
    read -r _ one_s one_bytes <<<"$(run_pkv "$N" one "$@")"
    printf 'pkv dump %s (summary.seconds, one run)\t%s\t%s\n' "$tag" "$one_s" "$one_bytes"
  fi
}
rows_sync=$(pkv_rows "(fsync)")
rows_cache=$(pkv_rows "--no-fsync" --no-fsync)

# hf MODE [ARGS...]: hf_capture.py's JSON line.
hf() {
  local log="$S/hf-$1${2:-}.log"
  echo "dump_vs_hf: transformers, $1 ${2:-}" >&2
  "$PY" "$ROOT/bench/hf_capture.py" --shape "$json" --ids "$ids" --tokens "$N" --ctx "$CTX" --batch "$BATCH" \
    --mode "$@" --out "$S/hf.h5" 2>"$log" | tail -n 1 || { tail -n 5 "$log" >&2; return 1; }
  rm -f "$S/hf.h5"
}
hf_mem=$(hf memory)
hf_h5=$(hf h5)
hf_h5_sync=$(hf h5 --fsync)

"$PY" - "$shape" "$type" "$N" "$CTX" "$rows_sync" "$rows_cache" "$BATCH" \
  "$hf_mem" "$hf_h5" "$hf_h5_sync" "$gpu" "$("$PKV" --version)" "${PKV_DUMP_ARGS:-}" <<'PY'
import datetime, json, sys
shape, typ, n, ctx, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[7]
def rows(text):
    return [(name, float(sec), int(b)) for name, sec, b in (line.split("\t") for line in text.splitlines())]
pkv_sync, pkv_cache = rows(sys.argv[5]), rows(sys.argv[6])
mem, h5, h5_sync = json.loads(sys.argv[8]), json.loads(sys.argv[9]), json.loads(sys.argv[10])
gpu, version, extra = sys.argv[11], sys.argv[12], sys.argv[13]
print(f"dump vs transformers capture: {shape} ({typ} weights for pkv, bf16 for transformers), {n} tokens, "
      f"ctx {ctx}, K pre/post-RoPE, V, Q of every layer as fp16")
print(f"machine: {gpu}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {version}"
      f"{' ' + extra if extra else ''}; torch {mem['torch']}, transformers {mem['transformers']}, batch {batch}")
table = [(name, n, sec, b) for name, sec, b in pkv_sync + pkv_cache]
table.append(("transformers + h5py + fsync (file)", n, h5_sync["seconds"], h5_sync["bytes"]))
table.append(("transformers + h5py (file, page cache)", n, h5["seconds"], h5["bytes"]))
table.append(("transformers (host memory)", n, mem["seconds"], None))
print(f"{'tool':<62} {'tokens':>8} {'seconds':>9} {'tokens/s':>11} {'file MiB':>10}")
for name, t, s, b in table:
    print(f"{name:<62} {t:8d} {s:9.3f} {t / s:11.1f} {('-' if b is None else f'{b / 2**20:.1f}'):>10}")
# The first row of each pkv way: whole runs (summary.seconds with one run).
sync_rate, cache_rate = n / pkv_sync[0][1], n / pkv_cache[0][1]
print(f"ratio pkv / transformers (file flushed to disk, both): {sync_rate / (n / h5_sync['seconds']):.2f}")
print(f"ratio pkv / transformers (file in the page cache, both): {cache_rate / (n / h5['seconds']):.2f}")
print(f"ratio pkv --no-fsync / transformers (memory): {cache_rate / (n / mem['seconds']):.2f}")
PY
