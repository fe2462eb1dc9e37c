#!/usr/bin/env bash
# Perplexity of the default model against llama.cpp's llama-perplexity (built by
# scripts/llama-cpp.sh), an independent implementation of tokenizer, quantized matmuls
# and attention. Same text, same protocol:
#   - the text tokenized whole, cut into chunks of CTX tokens, each run from position 0;
#   - only the second half of each chunk is scored: the logits of positions
#     CTX/2 .. CTX-2 predicting the next token (llama-perplexity's rule), which is
#     `pkv eval`'s fp16 reference with --prefill CTX/2 (its decode positions);
#   - llama-perplexity puts BOS first in every chunk only when the vocabulary asks for
#     BOS (tokenizer.ggml.add_bos_token), pkv only before the text; SmolLM2's vocabulary
#     asks for none, which this test checks first.
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
CTX=512 CHUNKS=4 TOL=0.005
THREADS="$(nproc)"
# A fixed prefix of the text, cut at a line end, holds well over CHUNKS * CTX tokens;
# both tools read this file, and neither reaches its last line.
head -n 1000 "$TEXT" >"$WORK/text.txt"

"$PKV_BIN" info "$MODEL" >"$WORK/info.txt" || { failed "pkv info $MODEL"; finish; exit 1; }
if grep -q "tokenizer.ggml.add_bos_token = true" "$WORK/info.txt"; then
  failed "$MODEL: tokenizer.ggml.add_bos_token = true: llama-perplexity would put BOS first in every chunk"
  finish; exit 1
fi
pass "the vocabulary adds no BOS: $(grep -o 'tokenizer.ggml.add_bos_token = [a-z]*' "$WORK/info.txt" || echo 'key absent')"

if "$LLAMA_BIN/llama-perplexity" -m "$MODEL" -f "$WORK/text.txt" -c $CTX --chunks $CHUNKS -t "$THREADS" \
     >"$WORK/llama.out" 2>"$WORK/llama.err"; then
  pass "llama-perplexity exits 0"
else
  failed "llama-perplexity: $(tail -n 5 "$WORK/llama.err")"; finish; exit 1
fi
if "$PKV_BIN" --log-level warn eval --model "$MODEL" --text "$WORK/text.txt" --tokens $((CHUNKS * CTX)) --ctx $CTX \
     --prefill $((CTX / 2)) --kv fp16 --json "$WORK/eval.json" >"$WORK/eval.out" 2>"$WORK/eval.err"; then
  pass "pkv eval exits 0"
else
  failed "pkv eval: $(tail -n 3 "$WORK/eval.err")"; finish; exit 1
fi

if /usr/bin/python3 - "$WORK/llama.err" "$WORK/llama.out" "$WORK/eval.json" $CTX $CHUNKS $TOL <<'PY'
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
  pass "perplexity agrees with llama.cpp"
else
  failed "perplexity against llama.cpp (see above)"
fi
finish
