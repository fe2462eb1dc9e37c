#!/usr/bin/env bash
# Perplexity of the default model and of Gemma 3 270M against llama.cpp's llama-perplexity (built by
# scripts/llama-cpp.sh), an independent implementation of tokenizer, quantized matmuls
# and attention. Same text, same protocol:
#   - the text tokenized whole, cut into chunks of CTX tokens, each run from position 0;
#   - only the second half of each chunk is scored: the logits of positions
#     CTX/2 .. CTX-2 predicting the next token (llama-perplexity's rule), which is
#     `pkv eval`'s fp16 reference with --prefill CTX/2 (its decode positions);
#   - llama-perplexity writes BOS over the first token of every chunk when the vocabulary
#     asks for BOS (tokenizer.ggml.add_bos_token: Gemma 3), which is pkv's --bos-each-sequence;
#     SmolLM2's vocabulary asks for none.
# Gemma 3 runs 1024-token chunks, longer than its 512-token sliding window, within 1 %.
# The two perplexities must agree within 0.5 %: llama.cpp rounds activations to 8 bits
# in its Q4_1 dot products and keeps its KV cache in fp16, pkv's reference computes in
# fp32 (on these 1020 scored positions they differed by 0.08 %, 18.8520 vs 18.8363).
# 20 to 50 s on 2 cores.
source "$(dirname "$0")/common.bash"
need_data
LLAMA_BIN="$PKV_DATA_DIR/llama.cpp/bin"
if [ ! -x "$LLAMA_BIN/llama-perplexity" ]; then
  echo "SKIPPED: $LLAMA_BIN/llama-perplexity missing: run scripts/llama-cpp.sh (a one-time build)"
  exit 77
fi
THREADS="$(nproc)"
head -n 1000 "$TEXT" >"$WORK/text.txt"

# compare NAME MODEL CTX CHUNKS TOL: llama-perplexity -c CTX --chunks CHUNKS against pkv eval's
# fp16 reference with the same chunking; BOS over every chunk's first token when the
# vocabulary adds BOS (llama.cpp's rule, pkv's --bos-each-sequence).
compare() {
  local name="$1" model="$2" ctx="$3" chunks="$4" tol="$5" bos=()
  "$PKV_BIN" info "$model" >"$WORK/info.txt" || { failed "pkv info $model"; return; }
  if grep -q "tokenizer.ggml.add_bos_token = true" "$WORK/info.txt"; then bos=(--bos-each-sequence); fi
  pass "$name: BOS on every chunk: ${bos[*]:-no (the vocabulary adds none)}"
  if "$LLAMA_BIN/llama-perplexity" -m "$model" -f "$WORK/text.txt" -c "$ctx" --chunks "$chunks" -t "$THREADS" \
       >"$WORK/llama.out" 2>"$WORK/llama.err"; then
    pass "$name: llama-perplexity exits 0"
  else
    failed "$name: llama-perplexity: $(tail -n 5 "$WORK/llama.err")"; return
  fi
  if "$PKV_BIN" --log-level warn eval --model "$model" --text "$WORK/text.txt" --tokens $((chunks * ctx)) \
       --ctx "$ctx" --prefill $((ctx / 2)) --kv fp16 "${bos[@]}" --json "$WORK/eval.json" --force \
       >"$WORK/eval.out" 2>"$WORK/eval.err"; then
    pass "$name: pkv eval exits 0"
  else
    failed "$name: pkv eval: $(tail -n 3 "$WORK/eval.err")"; return
  fi
  if /usr/bin/python3 - "$WORK/llama.err" "$WORK/llama.out" "$WORK/eval.json" "$ctx" "$chunks" "$tol" <<'PY'
import json, re, sys
err = open(sys.argv[1], errors="replace").read() + open(sys.argv[2], errors="replace").read()
r = json.load(open(sys.argv[3]))
ctx, chunks, tol = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
fails = 0
def check(ok, what):
    global fails
    print(("ok: " if ok else "FAIL: ") + what)
    fails += 0 if ok else 1
m = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)", err)
check(m is not None and (int(m.group(1)), int(m.group(2))) == (chunks, ctx),
      f"llama-perplexity ran {chunks} chunks of {ctx}: {m.group(0) if m else 'no such line'}")
m = re.search(r"Final estimate: PPL = ([0-9.]+)", err)
check(m is not None, "llama-perplexity printed its final estimate")
want = chunks * (ctx - 1 - ctx // 2)
check(r["run"]["scored_decode"] == want, f"pkv scored {r['run']['scored_decode']} positions, llama-perplexity's count {want}")
if m:
    ref, ours = float(m.group(1)), r["reference"]["ppl"]
    rel = ours / ref - 1
    print(f"perplexity: llama.cpp {ref:.4f}, pkv {ours:.4f}, relative difference {100 * rel:+.3f} %")
    check(abs(rel) <= tol, f"|pkv / llama.cpp - 1| = {100 * abs(rel):.3f} % <= {100 * tol:g} %")
sys.exit(1 if fails else 0)
PY
  then
    pass "$name: perplexity agrees with llama.cpp"
  else
    failed "$name: perplexity against llama.cpp (see above)"
  fi
}

compare "SmolLM2" "$MODEL" 512 4 0.005
# Gemma 3 270M: 1024-token chunks, longer than its 512-token window, so the local layers'
# window matters; within 1 %.
GEMMA="$PKV_DATA_DIR/models/gemma-3-270m-q4_k_m.gguf"
if [ -f "$GEMMA" ]; then
  compare "Gemma 3 270M" "$GEMMA" 1024 4 0.01
else
  echo "skipped: Gemma 3 270M: $GEMMA absent (scripts/fetch-data.sh fetches it)"
fi
finish
