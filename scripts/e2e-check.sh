#!/usr/bin/env bash
# The CI regression job: a small end-to-end run on each real model (dump, calibrate,
# analyze, eval) whose reports `pkv check` compares with the baselines committed under
# test/baselines/ (SmolLM2) and test/baselines/gemma3/ (Gemma 3 270M, at a context of
# 1024 tokens: twice its 512-token sliding window, so the local layers' rings matter).
# Exit 1 when quantization error regressed beyond the tolerances.
# PKV_E2E_UPDATE=1 rewrites the baselines instead (review the diff before committing).
# PKV_E2E_MODELS (default "smollm2 gemma3") picks the models.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/common.bash"
BUILD="${PKV_BUILD_DIR:-$ROOT/build}"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
PKV="${PKV_BIN:-$BUILD/apps/pkv}"
WORK="$(mktemp -d /tmp/pkv-e2e-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cat /usr/include/stdio.h /usr/include/stdlib.h /usr/include/string.h >"$WORK/code.txt"
rc=0

# e2e NAME BASELINE_DIR CTX LAYERS: one model's run in $WORK/NAME, checked against BASELINE_DIR.
e2e() {
  local name=$1 base=$2 ctx=$3 layers=$4 model capture=k_post,v pre_table=""
  # SmolLM2 also gates a pre-RoPE table of the qk-mine objective, which needs /k_pre and /q.
  if [ "$name" = smollm2 ]; then
    capture=k_pre,k_post,v,q
    pre_table="patternkv-table:2:pre:table-pre.safetensors"
  fi
  model="$(pkv_model_file "$name" "$DATA")"
  mkdir -p "$WORK/$name"
  cp "$WORK/code.txt" "$WORK/$name/"
  # Relative names inside the run folder: method labels (patternkv-table:2:table.safetensors)
  # and paths then read the same in every run, so reports compare with the baselines.
  (
    cd "$WORK/$name"
    echo "== e2e ($name): dump, calibrate, analyze, eval" >&2
    "$PKV" --log-level warn dump --model "$model" --text "$DATA/text/fortunes.txt" --tokens 2048 --ctx "$ctx" \
      --capture "$capture" --out "calib.h5" >/dev/null
    "$PKV" --log-level warn calibrate --dump "calib.h5" --k-patterns 16 --v-patterns 16 --holdout 0.25 \
      --device cpu --out "table.safetensors" >/dev/null
    if [ -n "$pre_table" ]; then
      # The best objective measured (docs/calibration.md): pre-RoPE keys mined in the queries' metric.
      "$PKV" --log-level warn calibrate --dump "calib.h5" --k-patterns 16 --v-patterns 16 --holdout 0.25 \
        --keys pre --objective qk-mine --device cpu --out "table-pre.safetensors" >/dev/null
    fi
    "$PKV" --log-level warn dump --model "$model" --text "code.txt" --tokens 1024 --ctx "$ctx" \
      --layers "$layers" --out "code.h5" >/dev/null
    "$PKV" --log-level warn analyze --dump "code.h5" --methods fp16,kivi,patternkv,q4_0 --bits 2,4 \
      --table "table.safetensors" --attn-stride 4 --json "analyze.json" >/dev/null
    "$PKV" --log-level warn eval --model "$model" --text "code.txt" --tokens 1024 --ctx "$ctx" \
      --kv fp16 kivi:2 patternkv:2 patternkv-table:2:table.safetensors $pre_table q4_0:rot --json "eval.json" \
      >/dev/null
  )
  if [ "${PKV_E2E_UPDATE:-0}" = 1 ]; then
    mkdir -p "$base"
    cp "$WORK/$name/analyze.json" "$WORK/$name/eval.json" "$base/"
    echo "baselines of $name written to $base" >&2
    return 0
  fi
  local r junit="${PKV_E2E_JUNIT_DIR:-$WORK}"
  for r in analyze eval; do
    echo "== e2e ($name): pkv check $r" >&2
    "$PKV" check --report "$WORK/$name/$r.json" --baseline "$base/$r.json" --junit "$junit/$name-$r-junit.xml" ||
      rc=$?
  done
}

for name in ${PKV_E2E_MODELS:-smollm2 gemma3}; do
  case "$name" in
    smollm2) e2e smollm2 "$ROOT/test/baselines" 512 0,3,6,9,12,15,18,21,24,27 ;;
    # Gemma 3 270M: layers 5, 11 and 17 are global, the others local.
    gemma3) e2e gemma3 "$ROOT/test/baselines/gemma3" 1024 0,3,5,8,11,14,17 ;;
    *) echo "e2e-check: model '$name': expected smollm2 or gemma3" >&2; exit 2 ;;
  esac
done
exit "$rc"
