#!/usr/bin/env bash
# pkv's q8_0 / q4_0 KV-cache methods next to llama.cpp's own quantized KV cache, on the same
# model, text, chunks and scored positions (CPU), with and without the Hadamard rotation.
#   llama.cpp: `llama-perplexity -c CTX --chunks CHUNKS -fa on -ctk T -ctv T`. The f16 run saves
#              its log-probabilities (--kl-divergence-base); every quantized run is scored against
#              them (--kl-divergence), which gives its perplexity, mean KL(f16 || T) and top-1
#              agreement over the same positions. In this llama.cpp a quantized K (V) cache is
#              Hadamard-rotated by default (src/llama-kv-cache.cpp, n_rot_k / n_rot_v);
#              LLAMA_ATTN_ROT_DISABLE=1 turns that off, so "q4_0" here is llama.cpp with the
#              variable set and "q4_0:rot" is llama.cpp's default.
#   pkv:       `pkv eval --ctx CTX --prefill CTX/2 --tokens CHUNKS*CTX --kv fp16 q8_0 q8_0:rotv64 q4_0
#              q4_0:rotv64`, whose decode positions are llama-perplexity's scored ones
#              (docs/eval.md, "Same figure as llama.cpp's llama-perplexity"); rotv64 is
#              llama.cpp's rotation (keys by H_D, values by H_64 in 64-element blocks), the
#              rows call it ":rot" after llama.cpp's side.
# Prints one table: per method both perplexities, each tool's increase over its own f16 run,
# and the differences, then both tools' mean KL and top-1 agreement. Exits 1 when the two
# increases differ by more than PKV_KV_QUANT_TOL percentage points (default 1.0; meant for
# 16 chunks or more). One more llama.cpp run, its f16 cache with -fa off, shows how far
# llama.cpp's own two attention paths lie apart. What the differences come from:
# docs/numerics.md, "Against llama.cpp's quantized cache".
# Usage: bench/kv_quant_vs_llama_cpp.sh [CHUNKS [CTX [THREADS]]] (default 16, 512, nproc);
# PKV_MODEL picks another GGUF (default: the default model). About 6 minutes on 2 idle cores
# at the defaults. llama.cpp comes from scripts/llama-cpp.sh ($PKV_DATA_DIR/llama.cpp/bin).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKV="${PKV_BIN:-$ROOT/build/apps/pkv}"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
MODEL="${PKV_MODEL:-$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
TEXT="$DATA/text/fortunes.txt"
PERPLEXITY="$DATA/llama.cpp/bin/llama-perplexity"
CHUNKS="${1:-16}"
CTX="${2:-512}"
THREADS="${3:-$(nproc)}"
[ -x "$PERPLEXITY" ] || { echo "kv-quant: $PERPLEXITY missing: run scripts/llama-cpp.sh" >&2; exit 1; }
[ -x "$PKV" ] || { echo "kv-quant: $PKV missing: build pkv (scripts/build.sh)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "kv-quant: $MODEL missing: run scripts/fetch-data.sh" >&2; exit 1; }
# PKV_BENCH_KEEP=DIR keeps every tool's output there (llama.*.out/err, pkv.json).
WORK="$(mktemp -d)"
trap '[ -n "${PKV_BENCH_KEEP:-}" ] && mkdir -p "$PKV_BENCH_KEEP" && cp "$WORK"/*.out "$WORK"/*.err "$WORK"/*.json "$PKV_BENCH_KEEP"/ 2>/dev/null; rm -rf "$WORK"' EXIT

# The first 4000 lines of the text (46k tokens with SmolLM2's vocabulary, 44k with Gemma 3's)
# are enough for 64 chunks of 512 and keep llama-perplexity's tokenization short.
head -n 4000 "$TEXT" >"$WORK/text.txt"
BOS=()
"$PKV" info "$MODEL" >"$WORK/info.txt"
if grep -q "tokenizer.ggml.add_bos_token = true" "$WORK/info.txt"; then BOS=(--bos-each-sequence); fi

echo "KV-cache quantization: pkv against llama.cpp on $(basename "$MODEL"), $CHUNKS chunks of $CTX tokens, $THREADS threads"
echo "$("$PKV" --version); llama.cpp $(cat "$DATA/llama.cpp/VERSION"); load average $(cut -d' ' -f1-3 /proc/loadavg)"

# llama NAME TYPE ROT [FA]: one llama-perplexity run; ROT=0 sets LLAMA_ATTN_ROT_DISABLE=1.
# The run named f16 writes the base log-probabilities, every other run is scored against them.
llama() {
  local name="$1" type="$2" rot="$3" fa="${4:-on}" env=() mode=(--kl-divergence)
  [ "$rot" = 0 ] && env=(LLAMA_ATTN_ROT_DISABLE=1)
  [ "$name" = f16 ] && mode=()
  echo "  llama.cpp $name ..." >&2
  env "${env[@]}" "$PERPLEXITY" -m "$MODEL" -f "$WORK/text.txt" -c "$CTX" --chunks "$CHUNKS" -t "$THREADS" \
    -fa "$fa" -ctk "$type" -ctv "$type" -lv 4 --kl-divergence-base "$WORK/base.kld" "${mode[@]}" \
    >"$WORK/llama.$name.out" 2>"$WORK/llama.$name.err" ||
    { tail -n 5 "$WORK/llama.$name.err" >&2; exit 1; }
}
llama f16 f16 1
llama f16:fa-off f16 1 off
llama q8_0 q8_0 0
llama q8_0:rot q8_0 1
llama q4_0 q4_0 0
llama q4_0:rot q4_0 1

echo "  pkv eval ..." >&2
"$PKV" --log-level warn eval --model "$MODEL" --text "$WORK/text.txt" --tokens $((CHUNKS * CTX)) --ctx "$CTX" \
  --prefill $((CTX / 2)) "${BOS[@]}" --kv fp16 q8_0 q8_0:rotv64 q4_0 q4_0:rotv64 --json "$WORK/pkv.json" --force \
  >/dev/null 2>"$WORK/pkv.err" || { tail -n 5 "$WORK/pkv.err" >&2; exit 1; }

/usr/bin/python3 - "$WORK" "$CHUNKS" "$CTX" "${PKV_KV_QUANT_TOL:-1.0}" <<'PY'
import json, re, sys
work, chunks, ctx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def log(name):
    return open(f"{work}/llama.{name}.err", errors="replace").read() + \
           open(f"{work}/llama.{name}.out", errors="replace").read()

def grab(text, pattern, what, name):
    m = re.search(pattern, text)
    if not m:
        sys.exit(f"kv-quant: llama.cpp {name}: no '{what}' line in its output")
    return m

def check_setup(text, name, rot, fa="enabled"):
    # llama.cpp logs (at -lv 4) its chunking, flash attention and rotation sizes; make sure
    # each run is the one the table says it is.
    m = grab(text, r"(?:calculating perplexity|computing) over (\d+) chunks, n_ctx=(\d+)", "chunks", name)
    if (int(m.group(1)), int(m.group(2))) != (chunks, ctx):
        sys.exit(f"kv-quant: llama.cpp {name}: ran {m.group(1)} chunks of {m.group(2)}, expected {chunks} of {ctx}")
    grab(text, r"flash_attn\s*= " + fa, "flash_attn = " + fa, name)
    k = int(grab(text, r"n_rot_k = (\d+)", "n_rot_k", name).group(1))
    v = int(grab(text, r"n_rot_v = (\d+)", "n_rot_v", name).group(1))
    if (k > 0) != rot or (v > 0) != rot:
        sys.exit(f"kv-quant: llama.cpp {name}: n_rot_k = {k}, n_rot_v = {v}, expected rotation {'on' if rot else 'off'}")
    return k, v

ll = {}
base = log("f16")
check_setup(base, "f16", False)
ll["fp16"] = dict(ppl=float(grab(base, r"Final estimate: PPL = ([0-9.]+)", "Final estimate", "f16").group(1)),
                  kl=0.0, top1=100.0, rot=(0, 0))
for name in ("f16:fa-off", "q8_0", "q8_0:rot", "q4_0", "q4_0:rot"):
    t = log(name)
    rot = check_setup(t, name, name.endswith(":rot"), "disabled" if name.endswith("fa-off") else "enabled")
    ll[name] = dict(ppl=float(grab(t, r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", "Mean PPL(Q)", name).group(1)),
                    kl=float(grab(t, r"Mean\s+KLD:\s*([0-9.eE+-]+)", "Mean KLD", name).group(1)),
                    top1=float(grab(t, r"Same top p:\s*([0-9.]+)", "Same top p", name).group(1)), rot=rot)
    # Its "Mean PPL(base)" is not used: the base file stores log-probabilities clamped 16 nats
    # below each position's maximum, so rare targets make it lower than the f16 run's own PPL.

r = json.load(open(f"{work}/pkv.json"))
want = chunks * (ctx - 1 - ctx // 2)
if r["run"]["scored_decode"] != want:
    sys.exit(f"kv-quant: pkv scored {r['run']['scored_decode']} positions, llama-perplexity scores {want}")
pk = {m["spec"].replace(":rotv64", ":rot"): dict(ppl=m["ppl"], kl=m["kl_mean"], top1=100 * m["top1_agreement"])
      for m in r["methods"]}

print(f"\n{want} scored positions ({chunks} chunks x {ctx - 1 - ctx // 2}); llama.cpp with -fa on; "
      f"rotation sizes n_rot_k / n_rot_v: " +
      ", ".join(f"{n} {ll[n]['rot'][0]}/{ll[n]['rot'][1]}" for n in ll if n[:1] == "q"))
print()
print("| method | llama.cpp PPL | pkv PPL | pkv / llama.cpp | llama.cpp ΔPPL % | pkv ΔPPL % | Δ difference (points) |")
print("|---|---:|---:|---:|---:|---:|---:|")
worst = 0.0
for n in ("fp16", "q8_0", "q8_0:rot", "q4_0", "q4_0:rot"):
    a, b = ll[n], pk[n]
    da = 100 * (a["ppl"] / ll["fp16"]["ppl"] - 1)
    db = 100 * (b["ppl"] / pk["fp16"]["ppl"] - 1)
    worst = max(worst, abs(db - da))
    print(f"| {n} | {a['ppl']:.4f} | {b['ppl']:.4f} | {100 * (b['ppl'] / a['ppl'] - 1):+.3f} % | "
          f"{da:+.3f} | {db:+.3f} | {db - da:+.3f} |")
off = ll["f16:fa-off"]
print(f"| fp16, llama.cpp -fa off | {off['ppl']:.4f} | — | {100 * (pk['fp16']['ppl'] / off['ppl'] - 1):+.3f} % | "
      f"{100 * (off['ppl'] / ll['fp16']['ppl'] - 1):+.3f} | — | — |")
print()
print("| method | llama.cpp mean KL | pkv mean KL | pkv / llama.cpp | llama.cpp top-1 % | pkv top-1 % |")
print("|---|---:|---:|---:|---:|---:|")
print(f"| fp16, llama.cpp -fa off | {off['kl']:.3e} | — | — | {off['top1']:.2f} | — |")
for n in ("q8_0", "q8_0:rot", "q4_0", "q4_0:rot"):
    a, b = ll[n], pk[n]
    print(f"| {n} | {a['kl']:.3e} | {b['kl']:.3e} | {b['kl'] / a['kl']:.2f} | {a['top1']:.2f} | {b['top1']:.2f} |")
print(f"\nllama.cpp f16 = -ctk f16 -ctv f16 (its fp16 cache); pkv fp16 = its fp32 reference. "
      f"q8_0 / q4_0 in llama.cpp: LLAMA_ATTN_ROT_DISABLE=1; :rot: llama.cpp's default rotation "
      f"and pkv's rotv64. "
      f"KL and top-1 against each tool's own f16 run; the '-fa off' row is llama.cpp's f16 cache through "
      f"its other attention path, the spread of llama.cpp's own numerics.")
# The tolerance (docs/numerics.md, "Against llama.cpp's quantized cache"): each tool's
# perplexity increase over its own f16 run agrees within TOL percentage points. It holds
# from about 4000 scored positions (16 chunks of 512) up; on fewer, q4_0's two different
# realizations of its rounding (the tools' K and V differ in the last bits) scatter more.
tol = float(sys.argv[4])
ok = worst <= tol
print(f"{'ok' if ok else 'FAIL'}: largest |pkv ΔPPL - llama.cpp ΔPPL| = {worst:.3f} points "
      f"{'<=' if ok else '>'} {tol:g} (PKV_KV_QUANT_TOL)")
sys.exit(0 if ok else 1)
PY
