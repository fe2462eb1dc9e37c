#!/usr/bin/env bash
# The CI regression job: a small end-to-end run on the default model (dump, calibrate,
# analyze, eval) whose reports `pkv check` compares with the baselines committed under
# test/baselines/. Exit 1 when quantization error regressed beyond the tolerances.
# PKV_E2E_UPDATE=1 rewrites the baselines instead (review the diff before committing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PKV_BUILD_DIR:-$ROOT/build}"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
PKV="${PKV_BIN:-$BUILD/apps/pkv}"
BASE="$ROOT/test/baselines"
MODEL="$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf"
WORK="$(mktemp -d /tmp/pkv-e2e-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
# Relative names inside $WORK: method labels (patternkv-table:2:table.safetensors) and
# paths then read the same in every run, so reports compare with the baselines.
cd "$WORK"
cat /usr/include/stdio.h /usr/include/stdlib.h /usr/include/string.h >code.txt
echo "== e2e: dump, calibrate, analyze, eval on the default model" >&2
"$PKV" --log-level warn dump --model "$MODEL" --text "$DATA/text/fortunes.txt" --tokens 2048 --ctx 512 \
  --capture k_post,v --out "calib.h5" >/dev/null
"$PKV" --log-level warn calibrate --dump "calib.h5" --k-patterns 16 --v-patterns 16 --holdout 0.25 \
  --device cpu --out "table.safetensors" >/dev/null
"$PKV" --log-level warn dump --model "$MODEL" --text "code.txt" --tokens 1024 --ctx 512 \
  --layers 0,3,6,9,12,15,18,21,24,27 --out "code.h5" >/dev/null
"$PKV" --log-level warn analyze --dump "code.h5" --methods fp16,kivi,patternkv,q4_0 --bits 2,4 \
  --table "table.safetensors" --attn-stride 4 --json "analyze.json" >/dev/null
"$PKV" --log-level warn eval --model "$MODEL" --text "code.txt" --tokens 1024 --ctx 512 \
  --kv fp16 kivi:2 patternkv:2 patternkv-table:2:table.safetensors q4_0:rot --json "eval.json" >/dev/null
if [ "${PKV_E2E_UPDATE:-0}" = 1 ]; then
  mkdir -p "$BASE"
  cp "analyze.json" "eval.json" "$BASE/"
  echo "baselines written to $BASE" >&2
  exit 0
fi
rc=0
for r in analyze eval; do
  echo "== e2e: pkv check $r" >&2
  "$PKV" check --report "$r.json" --baseline "$BASE/$r.json" --junit "${PKV_E2E_JUNIT_DIR:-$WORK}/$r-junit.xml" ||
    rc=$?
done
exit "$rc"
