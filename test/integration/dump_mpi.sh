#!/usr/bin/env bash
# `mpirun -np 2 pkv dump`: each CPU rank writes one shard, rank 0 joins them; the joined
# dump equals the one-process dump (every value, token and the perplexity) and only rank 0
# reports. A rank that fails ends the job naming itself, and no output appears. Runs on
# the tiny mistral fixture (test/fixtures/arch).
source "$(dirname "$0")/common.bash"
: "${PKV_SOURCE_DIR:?PKV_SOURCE_DIR must point to the source tree}"
command -v mpirun >/dev/null || { echo "SKIPPED: mpirun not found (scripts/install-deps.sh installs OpenMPI)"; exit 77; }
PY=/usr/bin/python3
"$PY" -c "import h5py" 2>/dev/null || { echo "SKIPPED: /usr/bin/python3 has no h5py (python3-h5py)"; exit 77; }
# The CPU engine's float results depend on its OpenMP thread count, and mpirun binds each
# rank to a core (one thread): every run here uses one thread, so the values must be equal.
export OMP_NUM_THREADS=1
MPIRUN=(mpirun --oversubscribe -x OMP_NUM_THREADS)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
M="$PKV_SOURCE_DIR/test/fixtures/arch/mistral.gguf"
TXT="$PKV_SOURCE_DIR/test/integration/data/tokenizer_mixed.txt"
[ -f "$TEXT" ] && TXT="$TEXT"
DUMP=(--log-level warn dump --model "$M" --text "$TXT" --tokens 300 --ctx 64 --chunk-tokens 32)

"$PKV_BIN" "${DUMP[@]}" --out "$WORK/one.h5" >/dev/null 2>"$WORK/one.err" ||
  { failed "one process: $(tail -3 "$WORK/one.err")"; finish; exit 1; }
if "${MPIRUN[@]}" -np 2 "$PKV_BIN" "${DUMP[@]}" --out "$WORK/mpi.h5" >"$WORK/mpi.out" 2>"$WORK/mpi.err"; then
  if grep -q "built without MPI" "$WORK/mpi.err"; then echo "SKIPPED: pkv built without MPI"; exit 77; fi
  res=$("$PY" - "$WORK/one.h5" "$WORK/mpi.h5" <<'PY' 2>&1
import json, sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
assert b["v"].is_virtual, "not a joined dump"
for name in ["k_pre", "k_post", "v", "q", "tokens/id", "tokens/pos", "tokens/seq", "tokens/nll",
             "sequences/start", "sequences/length"]:
    x, y = a[name][...], b[name][...]
    assert x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name + " differs"
sa, sb = (json.loads(f.attrs["summary"]) for f in (a, b))
assert sa["perplexity"] == sb["perplexity"], (sa["perplexity"], sb["perplexity"])
print(f"{sb['shards']} shards, {sb['processes']}")
PY
) && pass "2 CPU ranks: the joined dump equals the one-process dump ($res)" || failed "2 CPU ranks: $res"
  [ "$(grep -c '^wrote ' "$WORK/mpi.out")" -eq 1 ] && pass "only rank 0 reports" ||
    failed "$(grep -c '^wrote ' "$WORK/mpi.out") ranks reported"
  "$PKV_BIN" validate "$WORK/mpi.h5" >/dev/null 2>"$WORK/v.err" && pass "pkv validate accepts it" ||
    failed "pkv validate: $(cat "$WORK/v.err")"
else
  failed "mpirun -np 2: $(tail -5 "$WORK/mpi.err")"
fi

# Rank 1 cannot create its shard (a folder sits at its name): the job ends, naming rank 1,
# and neither the joined dump, rank 0's shard nor any temporary is left.
mkdir -p "$WORK/bad.h5.shards/part-1-of-2.h5"
if timeout 120 "${MPIRUN[@]}" -np 2 "$PKV_BIN" "${DUMP[@]}" --force --out "$WORK/bad.h5" >/dev/null 2>"$WORK/bad.err"
then
  failed "a failing rank: the job exited 0"
else
  rc=$?
  [ "$rc" -ne 124 ] && pass "a failing rank ends the job (exit $rc)" || failed "a failing rank: the job hung"
  grep -q "rank 1 of 2: .*part-1-of-2.h5: output path is a directory" "$WORK/bad.err" &&
    pass "the error names rank 1: $(grep 'rank 1 of 2' "$WORK/bad.err" | head -1)" ||
    failed "the error does not name rank 1: $(cat "$WORK/bad.err")"
  left=$(cd "$WORK" && { ls -A | grep -E '^bad\.h5$|pkv-tmp'; ls -A bad.h5.shards | grep -v '^part-1-of-2\.h5$'; })
  [ -z "$left" ] && pass "nothing written" || failed "left behind: $left"
fi
finish
