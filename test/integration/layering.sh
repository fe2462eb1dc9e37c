#!/usr/bin/env bash
# The include layering check (scripts/check_layering.cmake, docs/architecture.md): passes on
# the real tree, and refuses an upward include, an undeclared folder and a cycle in a
# scratch tree.
source "$(dirname "$0")/common.bash"
CHECK="$PKV_SOURCE_DIR/scripts/check_layering.cmake"
LAYERS="$(sed -n '/^set(PKV_LAYERS$/,/)/p' "$PKV_SOURCE_DIR/lib/CMakeLists.txt" | grep -o '"[a-z_]*:[a-z_,]*"' | tr -d '"' | paste -sd'|')"
OUTSIDE="$(sed -n '/^set(PKV_LAYERS_OUTSIDE$/,/)/p' "$PKV_SOURCE_DIR/lib/CMakeLists.txt" | grep -o '"[a-z_]*:[a-z_,]*"' | tr -d '"' | paste -sd'|')"
run_check() { # root layers [outside] -> stdout+stderr, status
  cmake "-DPKV_SOURCE_DIR=$1" "-DPKV_LAYERS=$2" "-DPKV_LAYERS_OUTSIDE=${3:-cuda:}" "-DPKV_STAMP=$WORK/stamp" \
    -P "$CHECK" 2>&1
}
out="$(run_check "$PKV_SOURCE_DIR" "$LAYERS" "$OUTSIDE")" && pass "the tree follows its declared layering ($(echo "$LAYERS" | tr '|' '\n' | wc -l) folders)" ||
  failed "the real tree: $out"

T="$WORK/tree"
mkdir -p "$T/lib/pkv/low" "$T/lib/pkv/high" "$T/cuda/pkv/cuda"
echo '#include "pkv/low/a.h"' >"$T/lib/pkv/high/b.cpp"
echo '#pragma once' >"$T/lib/pkv/low/a.h"
run_check "$T" "low:|high:low" >/dev/null && pass "a downward include passes" || failed "a downward include was refused"

echo '#include "pkv/high/b.h"' >"$T/lib/pkv/low/a.cpp"
out="$(run_check "$T" "low:|high:low")"
[ $? -ne 0 ] && echo "$out" | grep -q "lib/pkv/low/a.cpp: #include \"pkv/high/b.h\": 'low' may use no other folder" &&
  pass "an upward include fails: $(echo "$out" | grep -m1 'pkv layering:')" || failed "upward include: $out"
rm "$T/lib/pkv/low/a.cpp"

out="$(run_check "$T" "high:low|low:high")"
[ $? -ne 0 ] && echo "$out" | grep -q "'high' uses 'low', which is not listed before it" &&
  pass "a cycle in the declaration fails" || failed "cycle: $out"

mkdir -p "$T/lib/pkv/extra" && echo '#pragma once' >"$T/lib/pkv/extra/c.h"
out="$(run_check "$T" "low:|high:low")"
[ $? -ne 0 ] && echo "$out" | grep -q "lib/pkv/extra/: folder not declared" && pass "an undeclared folder fails" ||
  failed "undeclared folder: $out"
rm -r "$T/lib/pkv/extra"
mkdir -p "$T/lib/pkv/empty"
run_check "$T" "low:|high:low" >/dev/null && pass "an empty folder (a stale checkout's) is ignored" ||
  failed "an empty folder was refused"
finish
