#!/usr/bin/env bash
# `pkv tokenize` against llama.cpp's `llama-tokenize` (both load the vocabulary only):
# the same ids for every vocabulary pkv supports among llama.cpp's test vocabularies
# (Llama 3, Qwen2, ...; gpt-neox and aquila have no pre key: "default") and for the
# default model (SmolLM2, pre "smollm"), on a mixed
# text (data/tokenizer_mixed.txt: code, long digit runs, emoji, CJK, accents,
# upper-case contractions, tabs, whitespace runs, CRLF) and on the fortunes text, with
# and without BOS and special-token parsing. SentencePiece vocabularies (llama.cpp's
# llama-spm and, when $PKV_DATA_DIR/models holds it, Gemma 3 270M) also on
# data/tokenizer_spm_special.txt (Gemma and Llama 2 special strings, user-defined tokens,
# literal '▁' and <0xXX>, newline runs) and on invalid UTF-8. Also: an unknown pre-tokenizer, SentencePiece
# vocabularies without scores or byte tokens, and Gemma 4's tokenizer model are refused in
# one line. Needs scripts/llama-cpp.sh's build and sources under $PKV_DATA_DIR.
source "$(dirname "$0")/common.bash"
need_data
MIXED="$(dirname "$0")/data/tokenizer_mixed.txt"
SPM_SPECIAL="$(dirname "$0")/data/tokenizer_spm_special.txt"
GEMMA3="$PKV_DATA_DIR/models/gemma-3-270m-q4_k_m.gguf"
VENV_PY="$PKV_DATA_DIR/venv/bin/python"
LLAMA_TOKENIZE="$PKV_DATA_DIR/llama.cpp/bin/llama-tokenize"
VOCABS="$PKV_DATA_DIR/llama.cpp/src/models"

# Bad input: a copy of the default model whose tokenizer.ggml.pre says "falcon" (same
# length as "smollm", so every offset stays valid).
/usr/bin/python3 - "$MODEL" "$WORK/falcon-pre.gguf" <<'PY'
import struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
key = b"tokenizer.ggml.pre"
i = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
vtype, n = struct.unpack_from("<IQ", data, i)
assert vtype == 8 and data[i + 12:i + 12 + n] == b"smollm"
data[i + 12:i + 18] = b"falcon"
open(sys.argv[2], "wb").write(data)
PY
expect_fail "unknown pre-tokenizer" \
  "falcon-pre.gguf: tokenizer.ggml.pre: expected one of llama3, .*qwen2.*smollm.*, got 'falcon'" \
  "$PKV_BIN" tokenize --model "$WORK/falcon-pre.gguf" --text "$MIXED"
expect_fail "missing text" "nope.txt: cannot open the text to tokenize" "$PKV_BIN" tokenize --model "$MODEL" --text "$WORK/nope.txt"

# Bad SentencePiece vocabularies, forged from llama.cpp's llama-spm by PyPI's gguf package
# (ids 3..258 are its byte tokens <0x00>..<0xFF>).
SPM="$VOCABS/ggml-vocab-llama-spm.gguf"
if [ -f "$SPM" ] && [ ! -x "$VENV_PY" ]; then
  failed "no $VENV_PY: cannot forge bad SentencePiece vocabularies: run scripts/fetch-data.sh"
elif [ -f "$SPM" ]; then
  forge() { "$VENV_PY" "$(dirname "$0")/../python/forge_gguf.py" "$@" >/dev/null 2>&1 || failed "forging $2"; }
  forge "$SPM" "$WORK/spm-noscores.gguf" --drop-key tokenizer.ggml.scores
  expect_fail "SentencePiece without scores" \
    "spm-noscores.gguf: tokenizer.ggml.scores: a SentencePiece vocabulary .* needs token scores, got none" \
    "$PKV_BIN" tokenize --model "$WORK/spm-noscores.gguf" --text "$MIXED"
  forge "$SPM" "$WORK/spm-nobyte.gguf" --set-token 131 x80 1 --set-token 132 x81 1
  expect_fail "SentencePiece missing byte tokens" \
    "spm-nobyte.gguf: tokenizer.ggml.tokens: .* byte-fallback token for each of the 256 bytes: 2 missing (<0x80> <0x81>)" \
    "$PKV_BIN" tokenize --model "$WORK/spm-nobyte.gguf" --text "$MIXED"
  forge "$SPM" "$WORK/spm-badbyte.gguf" --set-token 131 "<0xG0>" 6
  expect_fail "SentencePiece byte token misnamed" \
    "spm-badbyte.gguf: tokenizer.ggml.tokens\[131\]: a byte-type token must read <0xXX>, got '<0xG0>'" \
    "$PKV_BIN" tokenize --model "$WORK/spm-badbyte.gguf" --text "$MIXED"
fi
if [ -f "$VOCABS/ggml-vocab-gemma-4.gguf" ]; then
  expect_fail "Gemma 4 tokenizer model" \
    "ggml-vocab-gemma-4.gguf: tokenizer.ggml.model: expected 'gpt2' (byte-level BPE) or 'llama' (SentencePiece), got 'gemma4'" \
    "$PKV_BIN" tokenize --model "$VOCABS/ggml-vocab-gemma-4.gguf" --text "$MIXED"
fi

if [ ! -x "$LLAMA_TOKENIZE" ] || [ ! -d "$VOCABS" ]; then
  finish || exit 1
  echo "SKIPPED: no $LLAMA_TOKENIZE or $VOCABS: run scripts/llama-cpp.sh"
  exit 77
fi

# compare NAME MODEL TEXT [--no-bos] [--parse-special]
compare() {
  local name="$1" model="$2" text="$3"; shift 3
  local lt_args=(--ids --no-escape --log-disable -m "$model" -f "$text") pkv_args=(--model "$model" --text "$text")
  local a
  for a in "$@"; do
    case "$a" in
      --no-bos) lt_args+=(--no-bos); pkv_args+=(--no-bos) ;;
      --parse-special) pkv_args+=(--parse-special) ;;
    esac
  done
  [[ " $* " == *" --parse-special "* ]] || lt_args+=(--no-parse-special)
  local want="$WORK/want.txt" got="$WORK/got.txt"
  if ! "$LLAMA_TOKENIZE" "${lt_args[@]}" 2>"$WORK/lt.err" | tr -d '[],' | tr -s ' ' '\n' | grep -v '^$' >"$want"; then
    failed "$name: llama-tokenize failed: $(tail -n 3 "$WORK/lt.err")"; return
  fi
  if ! "$PKV_BIN" --log-level warn tokenize "${pkv_args[@]}" 2>"$WORK/pkv.err" | tr -s ' ' '\n' | grep -v '^$' >"$got"; then
    failed "$name: pkv tokenize failed: $(cat "$WORK/pkv.err")"; return
  fi
  local n; n=$(grep -c '' "$want")
  if [ "$n" -lt 10 ]; then failed "$name: llama-tokenize gave only $n ids"; return; fi
  if cmp -s "$want" "$got"; then
    pass "$name: $n ids identical"
  else
    failed "$name: ids differ from llama-tokenize ($n vs $(grep -c '' "$got") ids), first at: $(diff "$want" "$got" | head -n 3 | tr '\n' ' ')"
  fi
}

# Whole lines of the fortunes (a cut inside a character would be invalid UTF-8, which
# pkv and llama.cpp handle differently on purpose).
head -n 4000 "$TEXT" >"$WORK/fortunes.txt"
texts=("$MIXED" "$WORK/fortunes.txt")
models=("$MODEL")
for v in llama-bpe qwen2 gpt-2 starcoder refact command-r mpt gpt-neox aquila; do
  if [ -f "$VOCABS/ggml-vocab-$v.gguf" ]; then models+=("$VOCABS/ggml-vocab-$v.gguf"); else failed "missing $VOCABS/ggml-vocab-$v.gguf"; fi
done
spm_models=()
if [ -f "$SPM" ]; then spm_models+=("$SPM"); else failed "missing $SPM"; fi
if [ -f "$GEMMA3" ]; then
  spm_models+=("$GEMMA3")
else
  echo "skip: Gemma 3 270M: no $GEMMA3 (the comparison on a real Gemma vocabulary is not run)"
fi
compare_all() {  # MODEL TEXT...
  local m="$1" t label; shift
  for t in "$@"; do
    label="$(basename "$m" .gguf) on $(basename "$t")"
    compare "$label" "$m" "$t"
    compare "$label --no-bos" "$m" "$t" --no-bos
    compare "$label --parse-special" "$m" "$t" --parse-special
  done
}
for m in "${models[@]}"; do compare_all "$m" "${texts[@]}"; done
# Invalid UTF-8: SentencePiece cuts it by lead bytes in pkv as in llama.cpp (BPE differs
# on purpose, see docs/models.md).
printf 'ab\xc3x \xff\xfe caf\xc3\xa9 \xe2\x82 end\xf0\x9f\nlone \x80\xbf continuation\n' >"$WORK/invalid_utf8.txt"
for m in "${spm_models[@]}"; do compare_all "$m" "${texts[@]}" "$SPM_SPECIAL" "$WORK/invalid_utf8.txt"; done
finish
