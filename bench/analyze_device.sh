#!/usr/bin/env bash
# `pkv analyze --device cuda` against `--device cpu` (every core) on the same dump and
# the same options, measured side by side on one machine: wall seconds of each, their
# ratio, each run's `time:` line (where its loop spent its time), the largest relative
# difference of the attention figures and of patternkv's NMSE (its device k-means agrees
# with the host's statistically); every other figure of every other method must be equal. The dump: a random-weight model of SmolLM2-135M's shape
# (pkv_bench_make_random_gguf), N random token ids, ctx 2048, only the analysed layers.
#
# Usage: bench/analyze_device.sh [extra pkv analyze options...]
#   PKV_BENCH_TOKENS   tokens of the dump (default 65536; a multiple of the context)
#   PKV_BENCH_CTX      tokens per sequence (default 2048)
#   PKV_BENCH_LAYERS   layers dumped and analysed (default 0,15,29: 9 (layer, KV head) pairs)
#   PKV_BENCH_CPU      0: skip the CPU run (a GPU-only timing, e.g. the whole 1M-token dump)
#   PKV_BUILD_DIR      a build with -DPKV_ENABLE_CUDA=ON -DPKV_BUILD_BENCH=ON (default build-gpu)
# The CPU path scores attention at about 0.2 s per sequence of 2048 tokens and KV head on
# 16 cores, so the default CPU run takes about a minute there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PKV_BUILD_DIR:-$ROOT/build-gpu}"
PKV="$BUILD/apps/pkv"
MAKE="$BUILD/bench/pkv_bench_make_random_gguf"
CTX="${PKV_BENCH_CTX:-2048}"
N="${PKV_BENCH_TOKENS:-65536}"
LAYERS="${PKV_BENCH_LAYERS:-0,15,29}"
RUN_CPU="${PKV_BENCH_CPU:-1}"
[ $((N % CTX)) -eq 0 ] || { echo "analyze_device: PKV_BENCH_TOKENS $N is not a multiple of $CTX" >&2; exit 2; }
[ -x "$PKV" ] || { echo "analyze_device: $PKV missing: build with -DPKV_ENABLE_CUDA=ON (PKV_BUILD_DIR)" >&2; exit 1; }
[ -x "$MAKE" ] || { echo "analyze_device: $MAKE missing: configure with -DPKV_BUILD_BENCH=ON" >&2; exit 1; }
"$PKV" devices 2>/dev/null | grep -q '^cuda:' || { echo "analyze_device: no CUDA device" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$MAKE" --shape smollm2-135m --out "$WORK/m.gguf" --ids "$WORK/ids.bin" --tokens "$N" >/dev/null
"$PKV" --log-level warn dump --device cuda --model "$WORK/m.gguf" --token-ids "$WORK/ids.bin" --tokens "$N" \
  --ctx "$CTX" --layers "$LAYERS" --capture k_post,v,q --out "$WORK/d.h5" >/dev/null 2>"$WORK/dump.err" ||
  { cat "$WORK/dump.err" >&2; exit 1; }
args=(analyze --dump "$WORK/d.h5" "$@")
echo "pkv analyze, random smollm2-135m shape, $N tokens (ctx $CTX), layers $LAYERS, options: ${*:-defaults}"
echo "machine: $(nproc) cores, $("$PKV" devices 2>/dev/null | grep '^cuda:0' | head -n 1), $("$PKV" --version)"

run() {  # run NAME DEVICE: wall seconds into $WORK/NAME.s, report into $WORK/NAME.json
  local t0 t1
  t0=$(date +%s.%N)
  "$PKV" --log-level info "${args[@]}" --device "$2" --json "$WORK/$1.json" >/dev/null 2>"$WORK/$1.err" ||
    { cat "$WORK/$1.err" >&2; exit 1; }
  t1=$(date +%s.%N)
  python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$t1" >"$WORK/$1.s"
  printf '%-5s %8.1f s  (%s)\n' "$1" "$(cat "$WORK/$1.s")" \
    "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['provenance']['device'])" "$WORK/$1.json")"
  grep -o "time: .*" "$WORK/$1.err" | sed 's/^/      /'
}
run gpu cuda
[ "$RUN_CPU" = 1 ] || exit 0
run cpu cpu
awk -v c="$(cat "$WORK/cpu.s")" -v g="$(cat "$WORK/gpu.s")" 'BEGIN { printf "cuda / cpu speed-up: %.1fx\n", c / g }'
python3 - "$WORK/cpu.json" "$WORK/gpu.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
worst = {}
for x, y in zip(a["results"], b["results"]):
    if x["method"] == "patternkv":
        for t in ("k", "v"):
            u, v = x[t]["nmse"], y[t]["nmse"]
            worst["patternkv nmse"] = max(worst.get("patternkv nmse", 0.0), abs(u - v) / (abs(u) + 1e-30))
a = [x for x in a["results"] if x["method"] != "patternkv"]
b = [x for x in b["results"] if x["method"] != "patternkv"]
def walk(x, y, key):
    if isinstance(x, dict):
        for k in x:
            if k != "provenance":
                walk(x[k], y[k], k)
    elif isinstance(x, list):
        for u, v in zip(x, y):
            walk(u, v, key)
    elif key in ("kl", "out_rel_err", "attn_kl", "attn_out_rel_err") and isinstance(x, float):
        worst[key] = max(worst.get(key, 0.0), abs(x - y) / (abs(x) + 1e-30))
    else:
        assert x == y, f"{key}: {x!r} vs {y!r}"
walk(a, b, "")
print("largest relative difference: " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items())))
PY
