#!/usr/bin/env bash
# Bad model files, forged from the converted tiny models by test/python/forge_gguf.py (PyPI's
# gguf package): each is refused by `pkv dump` with one line and a non-zero exit, and
# `pkv validate` lists every problem of a file at once.
source "$(dirname "$0")/common.bash"
: "${PKV_SOURCE_DIR:?PKV_SOURCE_DIR must point to the source tree}"
FIX="$PKV_SOURCE_DIR/test/fixtures/arch"
VENV_PY="$PKV_DATA_DIR/venv/bin/python"
[ -x "$VENV_PY" ] || { echo "FAIL: $VENV_PY missing: run scripts/fetch-data.sh" >&2; exit 1; }
TXT="$PKV_SOURCE_DIR/test/integration/data/tokenizer_mixed.txt"
forge() { "$VENV_PY" "$PKV_SOURCE_DIR/test/python/forge_gguf.py" "$@" || failed "forging $2"; }
dump_fails() {  # NAME PATTERN GGUF
  expect_fail "$1" "$2" "$PKV_BIN" --log-level warn dump --model "$3" --text "$TXT" --tokens 64 --ctx 64 \
    --out "$WORK/never.h5"
  [ ! -e "$WORK/never.h5" ] || failed "$1: a dump was left behind"
}

forge "$FIX/qwen3.gguf" "$WORK/no_knorm.gguf" --drop-tensor blk.1.attn_k_norm.weight
dump_fails "qwen3 without a K norm" "tensor 'blk.1.attn_k_norm.weight' is missing" "$WORK/no_knorm.gguf"

forge "$FIX/llama3.gguf" "$WORK/as_qwen3.gguf" --set-arch qwen3
dump_fails "llama 3 file declaring qwen3 (no Q/K norms)" "tensor 'blk.0.attn_q_norm.weight' is missing" \
  "$WORK/as_qwen3.gguf"

forge "$FIX/llama3.gguf" "$WORK/short_freqs.gguf" --resize-tensor rope_freqs.weight 6
dump_fails "rope_freqs of the wrong length" "'rope_freqs.weight': expected shape \[8\] (rope.dimension_count / 2), got 6" \
  "$WORK/short_freqs.gguf"

forge "$FIX/mistral.gguf" "$WORK/gemma2.gguf" --set-arch gemma2
dump_fails "unknown architecture" "'gemma2' is not supported (supported: llama, qwen2, qwen3, gemma3)" "$WORK/gemma2.gguf"

forge "$FIX/mistral.gguf" "$WORK/yarn.gguf" --set-str llama.rope.scaling.type yarn
dump_fails "YaRN scaling" "'llama.rope.scaling.type' = 'yarn': not supported" "$WORK/yarn.gguf"

forge "$FIX/qwen2.gguf" "$WORK/softcap.gguf" --set-f32 qwen2.attn_logit_softcapping 50
dump_fails "a key that changes the math" "metadata 'qwen2.attn_logit_softcapping' = 50: not applied" \
  "$WORK/softcap.gguf"

forge "$FIX/gemma3.gguf" "$WORK/wide_window.gguf" --set-u32 gemma3.attention.sliding_window 1024
dump_fails "a sliding window larger than the context" \
  "metadata 'gemma3.attention.sliding_window': expected at most context_length 128, got 1024" "$WORK/wide_window.gguf"

forge "$FIX/qwen2.gguf" "$WORK/falcon_pre.gguf" --set-str tokenizer.ggml.pre falcon
dump_fails "unknown pre-tokenizer" "tokenizer.ggml.pre" "$WORK/falcon_pre.gguf"

forge "$FIX/llama3.gguf" "$WORK/two.gguf" --resize-tensor rope_freqs.weight 6 \
  --set-f32 llama.final_logit_softcapping 30
"$PKV_BIN" validate "$WORK/two.gguf" >"$WORK/v.txt" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && grep -q "final_logit_softcapping" "$WORK/v.txt" && grep -q "rope_freqs.weight" "$WORK/v.txt"; then
  pass "validate lists both problems (exit $rc)"
else
  failed "validate: $(cat "$WORK/v.txt")"
fi
for f in llama3 mistral qwen2 qwen3 gemma3; do
  "$PKV_BIN" validate "$FIX/$f.gguf" >/dev/null 2>&1 && pass "$f.gguf valid" || failed "$f.gguf reported invalid"
done
finish
