#!/usr/bin/env bash
# `pkv dump --token-ids`, `pkv eval --token-ids` and `pkv analyze --model --token-ids`: the
# dump stores exactly the file's ids
# (default model), bad id files are refused with one line naming the file and position,
# and a random-weight model of SmolLM2-135M's widths from bench/make_random_gguf.cpp
# (2 layers, no tokenizer; test/CMakeLists.txt builds it also without the bench targets)
# runs through dump and eval on the CPU as bench/dump_vs_hf.sh runs it on a GPU.
source "$(dirname "$0")/common.bash"
need_data

# 600 ids of the default model's vocabulary (49152), little-endian int32.
python3 - "$WORK/ids.bin" <<'PY'
import struct, sys
ids = [(i * 7919 + 11) % 49152 for i in range(600)]
open(sys.argv[1], "wb").write(struct.pack("<600i", *ids))
PY
"$PKV_BIN" --log-level warn dump --model "$MODEL" --token-ids "$WORK/ids.bin" --tokens 512 --ctx 256 \
  --capture k_post,v --device cpu --out "$WORK/d.h5" >/dev/null 2>"$WORK/dump.err" ||
  failed "dump --token-ids: $(cat "$WORK/dump.err")"
h5dump -b LE -d /tokens/id -o "$WORK/stored.bin" "$WORK/d.h5" >/dev/null
if cmp -s "$WORK/stored.bin" <(head -c 2048 "$WORK/ids.bin"); then
  pass "dump stores the first 512 ids of the file"
else
  failed "stored token ids differ from the file's"
fi
sha=$(sha256sum "$WORK/ids.bin" | cut -d' ' -f1)
h5dump -d /sources/sha256 "$WORK/d.h5" | grep -q "$sha" && pass "the ids file's sha256 is the source" ||
  failed "sources do not record $sha"
h5dump -a /provenance "$WORK/d.h5" | grep -q 'input\\*":\\*"token_ids' && pass "provenance says input token_ids" ||
  failed "provenance lacks input token_ids"

python3 -c 'import struct; open("'"$WORK"'/big.bin", "wb").write(struct.pack("<3i", 5, 49152, 1))'
expect_fail "id beyond the vocabulary" "big.bin: token 1 (byte offset 4) is 49152, expected an id in \[0, 49152)" \
  "$PKV_BIN" dump --model "$MODEL" --token-ids "$WORK/big.bin" --tokens 3 --device cpu --out "$WORK/x.h5"
python3 -c 'import struct; open("'"$WORK"'/neg.bin", "wb").write(struct.pack("<3i", 5, 6, -3))'
expect_fail "negative id" "neg.bin: token 2 (byte offset 8) is -3" \
  "$PKV_BIN" eval --model "$MODEL" --token-ids "$WORK/neg.bin" --tokens 3 --ctx 3 --kv q8_0
printf 'abcde' >"$WORK/odd.bin"
expect_fail "size not a multiple of 4" "odd.bin: token-ids file of 5 bytes" \
  "$PKV_BIN" dump --model "$MODEL" --token-ids "$WORK/odd.bin" --tokens 1 --device cpu --out "$WORK/x.h5"
expect_fail "fewer ids than tokens" "--tokens 700: .*ids.bin holds only 600 token ids" \
  "$PKV_BIN" dump --model "$MODEL" --token-ids "$WORK/ids.bin" --tokens 700 --device cpu --out "$WORK/x.h5"
expect_fail "missing ids file" "none.bin: token-ids file not found" \
  "$PKV_BIN" dump --model "$MODEL" --token-ids "$WORK/none.bin" --device cpu --out "$WORK/x.h5"
if "$PKV_BIN" dump --model "$MODEL" --text "$TEXT" --token-ids "$WORK/ids.bin" --out "$WORK/x.h5" \
  >/dev/null 2>"$WORK/both.err"; then
  failed "both --text and --token-ids: exit 0"
else
  grep -q -- "--text excludes --token-ids" "$WORK/both.err" && pass "both --text and --token-ids refused" ||
    failed "both --text and --token-ids: $(cat "$WORK/both.err")"
fi
[ ! -e "$WORK/x.h5" ] && pass "no output after a refusal" || failed "a refused dump left $WORK/x.h5"

MAKE="${PKV_BUILD_DIR:-}/bench/pkv_bench_make_random_gguf"
if [ ! -x "$MAKE" ]; then
  failed "$MAKE not built (PKV_BUILD_DIR must name the build folder)"
else
  "$MAKE" --shape smollm2-135m --layers 2 --type q8_0 --seed 7 --out "$WORK/r.gguf" --ids "$WORK/r.bin" \
    --tokens 300 --json "$WORK/r.json" 2>"$WORK/make.err" || failed "make_random_gguf: $(cat "$WORK/make.err")"
  "$MAKE" --shape smollm2-135m --layers 2 --type q8_0 --seed 7 --out "$WORK/r2.gguf" --threads 1 2>/dev/null
  cmp -s "$WORK/r.gguf" "$WORK/r2.gguf" && pass "random model: same bytes with 1 thread and all" ||
    failed "random model depends on the thread count"
  grep -q '"n_head_kv": 3' "$WORK/r.json" && pass "shape JSON written" || failed "shape JSON: $(cat "$WORK/r.json")"
  out=$("$PKV_BIN" --log-level warn dump --model "$WORK/r.gguf" --token-ids "$WORK/r.bin" --tokens 256 \
    --ctx 128 --device cpu --no-fsync --out "$WORK/r.h5" 2>"$WORK/rdump.err") ||
    failed "random model dump: $(cat "$WORK/rdump.err")"
  h5dump -a /provenance "$WORK/r.h5" | grep -q 'fsync\\*":false' && pass "--no-fsync is recorded in the provenance" ||
    failed "provenance lacks fsync false"
  h5dump -b LE -d /tokens/id -o "$WORK/rstored.bin" "$WORK/r.h5" >/dev/null
  cmp -s "$WORK/rstored.bin" <(head -c 1024 "$WORK/r.bin") && pass "random model dump stores the ids" ||
    failed "random model dump: stored ids differ"
  # Uniform ids over 49152 tokens: a finite NLL near ln(49152) = 10.8 says the activations
  # stayed sane through the layers.
  nll=$(sed -n 's/.*mean NLL \([0-9.]*\) nats.*/\1/p' <<<"$out")
  awk -v x="$nll" 'BEGIN { exit !(x > 9 && x < 13) }' && pass "random model mean NLL $nll" ||
    failed "random model mean NLL '$nll' (output: $out)"
  "$PKV_BIN" --log-level warn eval --model "$WORK/r.gguf" --token-ids "$WORK/r.bin" --tokens 256 --ctx 128 \
    --kv q8_0 >/dev/null 2>"$WORK/reval.err" && pass "random model eval --token-ids" ||
    failed "random model eval: $(cat "$WORK/reval.err")"
  # Streamed from the ids, analyze reports what it reports from the dump of those ids.
  "$PKV_BIN" --log-level warn analyze --dump "$WORK/r.h5" --methods kivi,q4_0 --json "$WORK/ra1.json" \
    >/dev/null 2>"$WORK/ra1.err" || failed "analyze --dump: $(cat "$WORK/ra1.err")"
  "$PKV_BIN" --log-level warn analyze --model "$WORK/r.gguf" --token-ids "$WORK/r.bin" --tokens 256 --ctx 128 \
    --device cpu --methods kivi,q4_0 --json "$WORK/ra2.json" >/dev/null 2>"$WORK/ra2.err" ||
    failed "analyze --model --token-ids: $(cat "$WORK/ra2.err")"
  python3 - "$WORK/ra1.json" "$WORK/ra2.json" <<'PY' && pass "analyze --model --token-ids: the report of the dump" ||
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["results"] and a["results"] == b["results"]
assert b["provenance"]["dump"]["provenance"]["settings"]["input"] == "token_ids"
PY
    failed "analyze --model --token-ids differs from analyze --dump of the same ids"
fi
finish
