#!/usr/bin/env bash
# The streaming rate (`pkv calibrate --model`, the captured tensors kept in host memory for
# k-means, no file) against the Hugging Face transformers capture script in host memory
# (bench/hf_capture.py --mode memory), on a random-weight model of a real shape, same token
# ids, same tensors (K before and after RoPE, V and Q of every layer), side by side in one run.
#
# Usage: bench/stream_vs_hf.sh SHAPE[:TYPE]
#   SHAPE: smollm2-135m (default 65536 tokens) or llama3-8b (default 16384 tokens)
#   TYPE:  the model's weights for pkv, bf16 (default), f16 or q8_0; transformers always
#          runs bf16 weights
# Environment (all optional):
#   PKV_BUILD_DIR            build with CUDA and bench targets (default build-gpu/)
#   PKV_BENCH_TOKENS         timed tokens, a multiple of PKV_BENCH_CTX
#   PKV_BENCH_CTX            tokens per sequence (default 2048)
#   PKV_BENCH_HF_BATCH       transformers sequences per forward (default 8 at 135M, 4 at 8B)
#   PKV_BENCH_WARMUP_TOKENS  pkv's warm-up run (default one batch: PKV_BENCH_HF_BATCH sequences)
#   PKV_BENCH_SCRATCH, PKV_BENCH_KEEP, PYTHON: as for bench/dump_vs_hf.sh
#
# What is timed (start-up excluded for both, the same way):
#   pkv: the forward's own line (`calibrate: forward ... tok/s`: from the first batch handed
#        to the engine to the last layer the sink stored), over WARMUP + N tokens minus over
#        WARMUP tokens, so the first batch's one-time costs cancel (cuBLAS's first calls, the
#        engine's device and page-locked buffers, grown once to the batch). Both tools run
#        batches of the same PKV_BENCH_HF_BATCH sequences (pkv: PKV_CUDA_BATCH_TOKENS), and
#        the warm-up is one such batch, as transformers' untimed one. --sample-tokens is the
#        run's token count, so every token goes through the engine and into the sample that
#        k-means reads (docs/streaming.md); k-means and the fit that follow are not timed.
#        The engine computes K before and after RoPE, V and Q of every layer either way;
#        calibrate keeps what it mines (post-RoPE K and V, as binary16), transformers
#        copies all four to the host.
#   transformers: hf_capture.py --mode memory, one untimed warm-up batch, then N tokens:
#        forward, hooks, copies into one pinned host batch (reused).
# Needs one GPU; fits in a 10-minute command on one H100 at the defaults.
set -euo pipefail
NAME=stream_vs_hf PY_MODULES="torch, transformers" SCRATCH_FILES="table-*.safetensors pkv-*.log"
# shellcheck source=bench/vs_hf_setup.bash
source "$(dirname "${BASH_SOURCE[0]}")/vs_hf_setup.bash"
[ "$W" -gt 0 ] || { echo "stream_vs_hf: PKV_BENCH_WARMUP_TOKENS must be > 0" >&2; exit 2; }

# forward_seconds TOKENS: `pkv calibrate --model` over TOKENS tokens (all of them sampled);
# prints the forward's seconds (tokens / the final line's rate).
forward_seconds() {
  local n="$1" log="$S/pkv-$1.log"
  PKV_CUDA_BATCH_TOKENS=$((BATCH * CTX)) "$PKV" calibrate --device cuda --model "$model" --token-ids "$ids" --tokens "$n" --ctx "$CTX" \
    --sample-tokens "$n" --out "$S/table-$n.safetensors" --force 2>"$log" >/dev/null ||
    { tail -n 5 "$log" >&2; return 1; }
  # The progress line ends "N/N tok  RATE tok/s  SECs"; the rate has more digits than the seconds.
  tr '\r' '\n' <"$log" | grep -E 'forward .*100% ' | tail -n 1 |
    awk -v n="$n" '{ for (i = 1; i < NF; ++i) if ($(i + 1) == "tok/s") { printf "%.6f\n", n / $i; exit } }'
}
echo "stream_vs_hf: pkv calibrate --model, $W + $N tokens, then $W tokens" >&2
big=$(forward_seconds $((N + W)))
small=$(forward_seconds "$W")
[ -n "$big" ] && [ -n "$small" ] || { echo "stream_vs_hf: no forward line in pkv's log ($S)" >&2; exit 1; }
echo "stream_vs_hf: transformers, memory" >&2
hf_mem=$("$PY" "$ROOT/bench/hf_capture.py" --shape "$json" --ids "$ids" --tokens "$N" --ctx "$CTX" \
  --batch "$BATCH" --mode memory 2>"$S/hf.log" | tail -n 1) || { tail -n 5 "$S/hf.log" >&2; exit 1; }

"$PY" - "$shape" "$type" "$N" "$W" "$CTX" "$big" "$small" "$hf_mem" "$gpu" "$("$PKV" --version)" <<'PY'
import datetime, json, sys
shape, typ, n, w, ctx = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
big, small, mem = float(sys.argv[6]), float(sys.argv[7]), json.loads(sys.argv[8])
gpu, version = sys.argv[9], sys.argv[10]
sec = big - small
print(f"streaming vs transformers in host memory: {shape} ({typ} weights for pkv, bf16 for transformers), "
      f"{n} tokens, ctx {ctx}")
print(f"machine: {gpu}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {version}; "
      f"torch {mem['torch']}, transformers {mem['transformers']}, batch {mem['batch']}")
print(f"{'tool':<66} {'tokens':>8} {'seconds':>9} {'tokens/s':>11}")
print(f"{'pkv calibrate --model, forward into the sample (' + str(w + n) + ' minus ' + str(w) + ' tokens)':<66} "
      f"{n:8d} {sec:9.3f} {n / sec:11.1f}")
print(f"{'transformers (host memory)':<66} {n:8d} {mem['seconds']:9.3f} {n / mem['seconds']:11.1f}")
print(f"ratio pkv / transformers (streaming, host memory; batches of {mem['batch']} sequences both): "
      f"{mem['seconds'] / sec:.2f}")
PY
