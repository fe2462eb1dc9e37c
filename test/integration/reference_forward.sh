#!/usr/bin/env bash
# The dump agrees with an independent float64 numpy forward pass of the default
# model (test/python/ref_forward.py, which reads the GGUF with PyPI's `gguf`
# package and shares no code with pkv): per-token NLL and K/V/Q of several layers.
# Tolerances: NLL 2e-3 nats absolute (pkv is float32); activations within float16
# rounding of the reference (relative 2e-3 of the value plus 2e-3 of the row's
# largest magnitude).
source "$(dirname "$0")/common.bash"
need_data
VENV_PY="$PKV_DATA_DIR/venv/bin/python"
[ -x "$VENV_PY" ] || { echo "FAIL: $VENV_PY missing: run scripts/fetch-data.sh" >&2; exit 1; }
DUMP="$WORK/ref.h5"
"$PKV_BIN" --log-level warn dump --model "$MODEL" --text "$TEXT" --tokens 96 --ctx 96 --out "$DUMP" >/dev/null ||
  { failed "dump"; finish; exit 1; }
/usr/bin/python3 -c "import h5py; print(' '.join(map(str, h5py.File('$DUMP')['tokens/id'][:])))" > "$WORK/ids.txt"
"$VENV_PY" "$PKV_SOURCE_DIR/test/python/ref_forward.py" "$MODEL" --ids-file "$WORK/ids.txt" \
  --kpost-layers 0,14,29 --out-dir "$WORK/ref" > "$WORK/ref_nll.txt" || { failed "reference forward"; finish; exit 1; }
/usr/bin/python3 - "$DUMP" "$WORK/ref" "$WORK/ref_nll.txt" <<'PY' && pass "dump matches the numpy reference" || failed "dump differs from the numpy reference"
import sys, h5py, numpy as np
dump, ref, nll_file = sys.argv[1:]
f = h5py.File(dump, "r")
ref_nll = np.array([float(l.split()[1]) for l in open(nll_file) if l.strip() and not l.startswith("#")])
nll = f["tokens/nll"][1:].astype(np.float64)
d = np.max(np.abs(nll - ref_nll[: len(nll)]))
print(f"NLL: {len(nll)} tokens, max |diff| {d:.2e} nats, mean {nll.mean():.5f} vs {ref_nll.mean():.5f}")
assert len(nll) == len(ref_nll) and d < 2e-3
hk, hd = f.attrs["n_head_kv"], f.attrs["head_dim"]
for layer in (0, 14, 29):
    for name, heads in (("k_pre", hk), ("k_post", hk), ("v", hk), ("q", f.attrs["n_head"])):
        r = np.load(f"{ref}/{name}_{layer}.npy")  # [T, heads*D]
        got = f[name][layer].astype(np.float64)    # [heads, T, D]
        want = r.reshape(r.shape[0], heads, hd).transpose(1, 0, 2)
        scale = np.max(np.abs(want), axis=2, keepdims=True)
        err = np.abs(got - want) / (2e-3 * np.abs(want) + 2e-3 * scale + 1e-6)
        print(f"layer {layer:2d} {name:6s}: max |diff| {np.max(np.abs(got - want)):.2e}, worst/tolerance {err.max():.3f}")
        assert err.max() <= 1.0, (layer, name)
PY
finish
