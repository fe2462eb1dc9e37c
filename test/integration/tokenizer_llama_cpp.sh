#!/usr/bin/env bash
# `pkv tokenize` against llama.cpp's `llama-tokenize` (both load the vocabulary only):
# the same ids for every vocabulary pkv supports among llama.cpp's test vocabularies
# (Llama 3, Qwen2, ...; gpt-neox and aquila have no pre key: "default") and for the
# default model (SmolLM2, pre "smollm"), on a mixed
# text (data/tokenizer_mixed.txt: code, long digit runs, emoji, CJK, accents,
# upper-case contractions, tabs, whitespace runs, CRLF) and on the fortunes text, with
# and without BOS and special-token parsing. Also: an unknown pre-tokenizer is refused
# in one line. Needs scripts/llama-cpp.sh's build and sources under $PKV_DATA_DIR.
source "$(dirname "$0")/common.bash"
need_data
MIXED="$(dirname "$0")/data/tokenizer_mixed.txt"
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
for m in "${models[@]}"; do
  for t in "${texts[@]}"; do
    label="$(basename "$m" .gguf) on $(basename "$t")"
    compare "$label" "$m" "$t"
    compare "$label --no-bos" "$m" "$t" --no-bos
    compare "$label --parse-special" "$m" "$t" --parse-special
  done
done
finish
