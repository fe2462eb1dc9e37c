#!/usr/bin/env bash
# `pkv eval --device cuda`: the cost of each method's pass as a multiple of the plain
# forward (the fp16 reference of the same run, wall time), with each method's cache kept
# on the GPU (the default) and, side by side on the same machine and tokens, simulated on
# host threads through the engine's hook (--host-cache), plus how much the device path
# saves (every method, patternkv's prefill k-means included, has a device cache). The model: a random-weight model of SmolLM2-135M's shape
# in bf16 (pkv_bench_make_random_gguf), N random token ids, as docs/performance.md's "eval
# on the GPU" measured it.
#
# Usage: bench/eval_device_cost.sh [extra pkv eval options...]
#   PKV_BENCH_TOKENS   tokens (default 16384)
#   PKV_BENCH_CTX      tokens per sequence (default 1024)
#   PKV_KV             method specs (default "fp16 kivi:2 q4_0 fp8 kivi:2:pre:rot patternkv:2")
#   PKV_BUILD_DIR      a build with -DPKV_ENABLE_CUDA=ON -DPKV_BUILD_BENCH=ON (default build-gpu)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PKV_BUILD_DIR:-$ROOT/build-gpu}"
PKV="$BUILD/apps/pkv"
MAKE="$BUILD/bench/pkv_bench_make_random_gguf"
N="${PKV_BENCH_TOKENS:-16384}"
CTX="${PKV_BENCH_CTX:-1024}"
read -r -a KV <<<"${PKV_KV:-fp16 kivi:2 q4_0 fp8 kivi:2:pre:rot patternkv:2}"
[ -x "$PKV" ] || { echo "eval_device_cost: $PKV missing: build with -DPKV_ENABLE_CUDA=ON (PKV_BUILD_DIR)" >&2; exit 1; }
[ -x "$MAKE" ] || { echo "eval_device_cost: $MAKE missing: configure with -DPKV_BUILD_BENCH=ON" >&2; exit 1; }
"$PKV" devices 2>/dev/null | grep -q '^cuda:' || { echo "eval_device_cost: no CUDA device" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$MAKE" --shape smollm2-135m --type bf16 --out "$WORK/m.gguf" --ids "$WORK/ids.bin" --tokens "$N" >/dev/null
echo "pkv eval --device cuda, random smollm2-135m shape (bf16), $N tokens (ctx $CTX), --kv ${KV[*]} $*"
echo "machine: $(nproc) cores, $("$PKV" devices 2>/dev/null | grep '^cuda:0' | head -n 1), $("$PKV" --version)"
for mode in device host; do
  extra=()
  [ "$mode" = host ] && extra=(--host-cache)
  "$PKV" --log-level warn eval --model "$WORK/m.gguf" --token-ids "$WORK/ids.bin" --tokens "$N" --ctx "$CTX" \
    --kv "${KV[@]}" --device cuda "${extra[@]}" "$@" --json "$WORK/$mode.json" >/dev/null
done
python3 - "$WORK/device.json" "$WORK/host.json" <<'PY'
import json, sys
d, h = (json.load(open(p)) for p in sys.argv[1:3])
print(f"plain forward (fp16 reference): {1e3 * d['reference']['seconds_per_token']:.4f} ms/token (device run), "
      f"{1e3 * h['reference']['seconds_per_token']:.4f} (host run)")
print(f"{'method':22} {'cache':>7} {'x plain':>8} {'host x plain':>13} {'host / device':>14} {'ppl device':>11} {'ppl host':>11}")
for a, b in zip(d["methods"], h["methods"]):
    x, y = a["wall_cost_vs_fp16"], b["wall_cost_vs_fp16"]
    print(f"{a['label']:22} {a['cache']:>7} {x:8.2f} {y:13.2f} {y / x:14.2f} {a['ppl']:11.4f} {b['ppl']:11.4f}")
print(f"whole run: {d['run']['seconds']:.1f} s with device caches, {h['run']['seconds']:.1f} s with --host-cache")
PY
