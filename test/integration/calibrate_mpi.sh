#!/usr/bin/env bash
# `mpirun -np R pkv calibrate`: ranks split the (layer, head) problems, rank 0 writes
# the table, which equals the single-process table (patterns, counts, fitted
# parameters and per-head statistics, compared exactly); with --shard-above every head
# runs data parallel over the ranks (equal within 1e-5: partial sums added in another
# order); a failing rank ends the job naming itself and no table is written. GPU ranks,
# --devices and GPU data parallel too when pkv sees a GPU; with two GPUs also the sums
# added on the GPUs by NCCL (--devices 0,1 and one GPU a rank), recorded in the table.
# PKV_TEST_DUMP=FILE uses that dump (k_post and v, 2048 tokens of the default model)
# instead of making one: for a GPU machine that cannot hold the model.
source "$(dirname "$0")/common.bash"
[ -n "${PKV_TEST_DUMP:-}" ] || need_data
command -v mpirun >/dev/null || { echo "SKIPPED: mpirun not found (scripts/install-deps.sh installs OpenMPI)"; exit 77; }
MPIRUN=(mpirun --oversubscribe)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
DUMP="$WORK/prose.h5"
if [ -n "${PKV_TEST_DUMP:-}" ]; then
  cp "$PKV_TEST_DUMP" "$DUMP"
else
  "$PKV_BIN" --log-level warn dump --model "$MODEL" --text "$TEXT" --tokens 2048 --ctx 512 --capture k_post,v \
    --out "$DUMP" >/dev/null 2>"$WORK/dump.err" || { failed "dump: $(tail -3 "$WORK/dump.err")"; finish; exit 1; }
fi
CAL=(--log-level warn calibrate --dump "$DUMP" --k-patterns 16 --v-patterns 16 --holdout 0.25)

# Tensors and per-head statistics of two tables (JSON exports), exactly; with a third
# argument TOL, values may differ by TOL relative to the largest |value| of their tensor
# (data-parallel runs add partial sums in another order).
same_tables() {
  "$PKV_BIN" export --table "$1" --format json --out "$WORK/a.json" --force >/dev/null &&
    "$PKV_BIN" export --table "$2" --format json --out "$WORK/b.json" --force >/dev/null &&
    /usr/bin/python3 - "$WORK/a.json" "$WORK/b.json" "${3:-0}" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
tol = float(sys.argv[3])
ca, cb = (x["metadata"]["pkv.calibration"] for x in (a, b))
def flat(x):
    if isinstance(x, dict):
        for k in sorted(x):
            yield from flat(x[k])
    elif isinstance(x, list):
        for y in x:
            yield from flat(y)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield float(x)
if tol == 0:
    assert a["tensors"] == b["tensors"], "tensors differ"
    assert ca["heads"] == cb["heads"], "per-head statistics differ"
    print(cb["processes"])
else:
    assert a["tensors"].keys() == b["tensors"].keys(), "tensor names differ"
    worst = 0.0
    for name in a["tensors"]:
        va, vb = list(flat(a["tensors"][name])), list(flat(b["tensors"][name]))
        assert len(va) == len(vb), name + ": sizes differ"
        scale = max([abs(v) for v in va] + [1e-30])
        worst = max([worst] + [abs(x - y) / scale for x, y in zip(va, vb)])
    assert worst <= tol, f"largest relative difference {worst:.3g} > {tol}"
    print(f"{cb['processes']}, data_parallel {cb.get('data_parallel')}, sums on {cb.get('data_parallel_sums')}, "
          f"largest relative difference {worst:.3g}")
PY
}

"$PKV_BIN" "${CAL[@]}" --device cpu --out "$WORK/one.safetensors" >/dev/null 2>"$WORK/one.err" ||
  { failed "single process: $(tail -3 "$WORK/one.err")"; finish; exit 1; }
for R in 2 3; do
  if "${MPIRUN[@]}" -np $R "$PKV_BIN" "${CAL[@]}" --device cpu --out "$WORK/r$R.safetensors" \
       >"$WORK/r$R.out" 2>"$WORK/r$R.err"; then
    if grep -q "built without MPI" "$WORK/r$R.err"; then echo "SKIPPED: pkv built without MPI"; exit 77; fi
    procs=$(same_tables "$WORK/one.safetensors" "$WORK/r$R.safetensors" 2>"$WORK/cmp.err") &&
      pass "$R CPU ranks: table equals the single-process one ($procs)" ||
      failed "$R CPU ranks: $(cat "$WORK/cmp.err")"
    [ "$(grep -c '^wrote ' "$WORK/r$R.out")" -eq 1 ] && pass "$R ranks: only rank 0 writes and reports" ||
      failed "$R ranks: $(grep -c '^wrote ' "$WORK/r$R.out") ranks reported"
  else
    failed "mpirun -np $R: $(tail -5 "$WORK/r$R.err")"
  fi
done

# One head data parallel over the ranks (--shard-above below the 1536 training tokens):
# every rank takes every head, rows sharded over the ranks, sums added in rank order.
for R in 2 3; do
  if "${MPIRUN[@]}" -np $R "$PKV_BIN" "${CAL[@]}" --device cpu --shard-above 1000 --out "$WORK/dp$R.safetensors" \
       >/dev/null 2>"$WORK/dp$R.err"; then
    if res=$(same_tables "$WORK/one.safetensors" "$WORK/dp$R.safetensors" 1e-5 2>"$WORK/cmp.err"); then
      pass "$R ranks, data parallel: table within 1e-5 of the single-process one ($res)"
      [[ "$res" == *"data_parallel True"* ]] && pass "$R ranks: the table records data_parallel" ||
        failed "$R ranks: the table does not record data_parallel: $res"
    else
      failed "$R ranks, data parallel: $(cat "$WORK/cmp.err")"
    fi
  else
    failed "mpirun -np $R --shard-above: $(tail -5 "$WORK/dp$R.err")"
  fi
done

# Data parallel with a training subsample and restarts: the leader scatters the subsample
# to the other ranks (they hold only their shard of each head).
if "${MPIRUN[@]}" -np 3 "$PKV_BIN" "${CAL[@]}" --device cpu --shard-above 1000 --max-points-per-centroid 40 \
     --restarts 2 --out "$WORK/dps.safetensors" >/dev/null 2>"$WORK/dps.err" &&
   "$PKV_BIN" "${CAL[@]}" --device cpu --max-points-per-centroid 40 --restarts 2 --out "$WORK/ones.safetensors" \
     >/dev/null 2>"$WORK/ones.err" &&
   res=$(same_tables "$WORK/ones.safetensors" "$WORK/dps.safetensors" 1e-5 2>"$WORK/cmp.err"); then
  pass "3 ranks, data parallel, subsample and restarts: within 1e-5 of one process ($res)"
else
  failed "3 ranks, data parallel, subsample: $(cat "$WORK/dps.err" "$WORK/ones.err" "$WORK/cmp.err" 2>/dev/null | tail -5)"
fi

expect_fail "unknown --reduce" "\-\-reduce: expected auto, nccl or host, got 'gpu'" \
  "$PKV_BIN" calibrate --dump "$DUMP" --reduce gpu --device cpu --out "$WORK/x.safetensors"
expect_fail "negative --shard-above" "\-\-shard-above -5: expected 0 (automatic) or a token count" \
  "$PKV_BIN" calibrate --dump "$DUMP" --shard-above -5 --device cpu --out "$WORK/x.safetensors"
if ! "$PKV_BIN" devices 2>/dev/null | grep -q '^cuda:'; then
  expect_fail "--devices without a GPU" "\-\-devices 0: " \
    "$PKV_BIN" calibrate --dump "$DUMP" --devices 0 --out "$WORK/x.safetensors"
fi

# Rank 1 of 3 owns (layer 2, head 1) (job 2 * 3 + 1 = 7, 7 % 3 = 1): a NaN there fails
# that rank alone; the job must end, name it, and leave no table.
# Debian's python3 has h5py (python3-h5py); elsewhere the python3 on PATH may.
PY_H5=/usr/bin/python3
"$PY_H5" -c "import h5py" 2>/dev/null || PY_H5=python3
# A copy of the dump with v[layer 2, head 1, token $2, dim 12] = NaN, at $1.
nan_dump() {
  "$PY_H5" - "$DUMP" "$1" "$2" <<'PY'
import shutil, sys, h5py, numpy as np
shutil.copy(sys.argv[1], sys.argv[2])
t = int(sys.argv[3])
with h5py.File(sys.argv[2], "r+") as f:
    row = f["v"][2, 1, t, :]
    row[12] = np.nan
    f["v"][2, 1, t, :] = row
PY
}
nan_dump "$WORK/nan.h5" 517
if timeout 120 "${MPIRUN[@]}" -np 3 "$PKV_BIN" calibrate --dump "$WORK/nan.h5" --k-patterns 16 --v-patterns 16 \
     --holdout 0.25 --device cpu --out "$WORK/nan.safetensors" >/dev/null 2>"$WORK/nan.err"; then
  failed "a failing rank: the job exited 0"
else
  rc=$?
  [ "$rc" -ne 124 ] && pass "a failing rank ends the job (exit $rc)" || failed "a failing rank: the job hung"
  grep -q "rank 1 of 3: .*nan.h5::/v: layer 2, head 1, token 517, dim 12 is nan" "$WORK/nan.err" &&
    pass "the error names the rank: $(grep 'rank 1 of 3' "$WORK/nan.err" | head -1)" ||
    failed "the error does not name rank 1: $(cat "$WORK/nan.err")"
  [ ! -e "$WORK/nan.safetensors" ] && pass "no table written" || failed "a table was written"
fi

# Data parallel, ranks 1 and 2 read only their shards of a head's training rows: a NaN at
# token 5 (rank 0's shard with --holdout 0) is seen by rank 0 alone.
nan_dump "$WORK/nan0.h5" 5
timeout 120 "${MPIRUN[@]}" -np 3 "$PKV_BIN" calibrate --dump "$WORK/nan0.h5" --k-patterns 16 --v-patterns 16 \
  --holdout 0 --shard-above 1000 --device cpu --out "$WORK/nan0.safetensors" >/dev/null 2>"$WORK/nan0.err"
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -q "rank 0 of 3: .*token 5, dim 12 is nan" "$WORK/nan0.err" &&
   ! grep -q "rank [12] of 3:" "$WORK/nan0.err" && [ ! -e "$WORK/nan0.safetensors" ]; then
  pass "data parallel: only rank 0 reads the NaN outside the other ranks' shards (exit $rc, no table)"
else
  failed "data parallel shard reads (exit $rc): $(cat "$WORK/nan0.err")"
fi

# GPU ranks (each takes its host-local GPU, modulo the count: here they may share one).
if "$PKV_BIN" devices 2>/dev/null | grep -q '^cuda:'; then
  "$PKV_BIN" "${CAL[@]}" --device cuda --out "$WORK/g1.safetensors" >/dev/null 2>"$WORK/g1.err" ||
    failed "single GPU: $(tail -3 "$WORK/g1.err")"
  if "${MPIRUN[@]}" -np 2 "$PKV_BIN" "${CAL[@]}" --device cuda --out "$WORK/g2.safetensors" >/dev/null 2>"$WORK/g2.err"; then
    procs=$(same_tables "$WORK/g1.safetensors" "$WORK/g2.safetensors" 2>"$WORK/cmp.err") &&
      pass "2 GPU ranks: table equals the single-GPU one ($procs)" || failed "2 GPU ranks: $(cat "$WORK/cmp.err")"
  else
    failed "2 GPU ranks: $(tail -5 "$WORK/g2.err")"
  fi
  if "$PKV_BIN" "${CAL[@]}" --devices 0,0 --out "$WORK/gd.safetensors" >/dev/null 2>"$WORK/gd.err"; then
    same_tables "$WORK/g1.safetensors" "$WORK/gd.safetensors" >/dev/null 2>"$WORK/cmp.err" &&
      pass "--devices 0,0 (two workers): table equals the single-GPU one" || failed "--devices 0,0: $(cat "$WORK/cmp.err")"
  else
    failed "--devices 0,0: $(tail -3 "$WORK/gd.err")"
  fi
  # Data parallel over two workers of one process, and over two GPU ranks.
  "$PKV_BIN" "${CAL[@]}" --devices 0,0 --shard-above 1000 --out "$WORK/gdp.safetensors" >/dev/null 2>"$WORK/gdp.err" &&
    res=$(same_tables "$WORK/g1.safetensors" "$WORK/gdp.safetensors" 1e-4 2>"$WORK/cmp.err") &&
    pass "--devices 0,0 --shard-above: within 1e-4 of one GPU ($res)" ||
    failed "--devices 0,0 --shard-above: $(cat "$WORK/gdp.err" "$WORK/cmp.err" 2>/dev/null | tail -5)"
  "${MPIRUN[@]}" -np 2 "$PKV_BIN" "${CAL[@]}" --device cuda --shard-above 1000 --out "$WORK/g2dp.safetensors" \
    >/dev/null 2>"$WORK/g2dp.err" &&
    res=$(same_tables "$WORK/g1.safetensors" "$WORK/g2dp.safetensors" 1e-4 2>"$WORK/cmp.err") &&
    pass "2 GPU ranks, data parallel: within 1e-4 of one GPU ($res)" ||
    failed "2 GPU ranks, data parallel: $(cat "$WORK/g2dp.err" "$WORK/cmp.err" 2>/dev/null | tail -5)"
  expect_fail "--reduce nccl on one GPU twice" "\-\-reduce nccl with \-\-devices 0,0: NCCL needs distinct GPUs" \
    "$PKV_BIN" "${CAL[@]}" --devices 0,0 --reduce nccl --out "$WORK/x.safetensors"
  GPUS=$("$PKV_BIN" devices 2>/dev/null | grep -c '^cuda:')
  if [ "$GPUS" -ge 2 ] && "$PKV_BIN" devices 2>/dev/null | grep -q 'nccl: yes'; then
    # The shards' sums added on the GPUs (NCCL), one process over GPUs 0,1 and one GPU a
    # rank; the host combine of the same shards for comparison. (At 768 rows a shard the
    # shards do not start on whole 8192-row groups, so the fp32 group partials differ from
    # one GPU's: within 1e-4, not bitwise; the CUDA unit test checks bitwise at scale.)
    # name:expected data_parallel_sums (a glob):arguments
    for run in "devices:NCCL*GPUs in one process:--devices 0,1" "host:host:--devices 0,1 --reduce host"; do
      name=${run%%:*}; rest=${run#*:}; want=${rest%%:*}; args=${rest#*:}
      # shellcheck disable=SC2086
      "$PKV_BIN" "${CAL[@]}" $args --shard-above 1000 --out "$WORK/n$name.safetensors" >/dev/null 2>"$WORK/n$name.err" &&
        res=$(same_tables "$WORK/g1.safetensors" "$WORK/n$name.safetensors" 1e-4 2>"$WORK/cmp.err") &&
        # shellcheck disable=SC2053
        [[ "$res" == *"sums on "$want* ]] &&
        pass "$args --shard-above: within 1e-4 of one GPU, sums recorded ($res)" ||
        failed "$args --shard-above: $(cat "$WORK/n$name.err" "$WORK/cmp.err" 2>/dev/null | tail -5) $res"
    done
    "${MPIRUN[@]}" -np 2 "$PKV_BIN" "${CAL[@]}" --device cuda --reduce nccl --shard-above 1000 \
      --out "$WORK/nr.safetensors" >/dev/null 2>"$WORK/nr.err" &&
      res=$(same_tables "$WORK/g1.safetensors" "$WORK/nr.safetensors" 1e-4 2>"$WORK/cmp.err") &&
      [[ "$res" == *"sums on NCCL"*"2 ranks"* ]] &&
      pass "2 GPU ranks --reduce nccl, data parallel: within 1e-4 of one GPU ($res)" ||
      failed "2 GPU ranks --reduce nccl: $(cat "$WORK/nr.err" "$WORK/cmp.err" 2>/dev/null | tail -5) $res"
  else
    echo "note: fewer than 2 GPUs or no NCCL: the NCCL rows not run"
  fi
else
  echo "note: no GPU: GPU ranks and --devices not run here"
fi
finish
