#!/usr/bin/env python3
"""Independent numpy recomputation of KIVI's final-cache K and V NMSE on a pkv dump.

Usage: kivi_numpy.py DUMP.h5 REPORT.json [--pairs L:H,...] [--tol 1e-6]

For each (layer, KV head) asked for, every sequence of the dump is simulated as
KIVI's cache ends up after prefill + decode (docs/numerics.md, "Methods"):
  K: the first P - P mod R tokens, then every later R-token block, quantized per
     channel in groups of G tokens; the rest stays fp16.
  V: all but the R most recent tokens quantized per token in groups of min(G, D).
The quantizer: min-max with fp16 scale and zero, codes rint((x - z16) / s16) in
float32, clamped, reconstruction q * s16 + z16. Both sides use fp16 scales, so the
NMSE must agree with the report's kivi rows to `tol` relative.
"""
import argparse
import json
import sys

import h5py
import numpy as np


def quant_groups(g, bits):
    """g: [n_groups, size] float32; min-max per row with fp16 parameters."""
    mn = g.min(axis=1, keepdims=True)
    mx = g.max(axis=1, keepdims=True)
    levels = np.float32(2**bits - 1)
    s = ((mx - mn) / levels).astype(np.float32)
    s16 = s.astype(np.float16).astype(np.float32)
    z16 = mn.astype(np.float16).astype(np.float32)
    safe = np.where(s16 > 0, s16, np.float32(1))
    q = np.rint((g - z16) / safe).astype(np.float32)
    q = np.clip(q, 0, levels)
    q = np.where(s16 > 0, q, 0)
    return (q.astype(np.float64) * s16.astype(np.float64) + z16.astype(np.float64)).astype(np.float32)


def quant_k_block(x, bits, G):
    """Per channel: groups of G consecutive tokens of one channel (tail group alone)."""
    out = np.empty_like(x)
    for t0 in range(0, x.shape[0], G):
        blk = x[t0:t0 + G]
        out[t0:t0 + G] = quant_groups(blk.T.copy(), bits).T
    return out


def quant_v(x, bits, G):
    D = x.shape[1]
    g = min(G, D)
    return quant_groups(x.reshape(-1, g), bits).reshape(x.shape)


def kivi_final(x, P, bits, G, R, tensor):
    n = x.shape[0]
    rec = x.copy()
    if tensor == "k":
        pq = P - P % R
        if pq > 0:
            rec[:pq] = quant_k_block(x[:pq], bits, G)
        start = pq
        for t in range(P, n):
            if t + 1 - start == R:
                rec[start:t + 1] = quant_k_block(x[start:t + 1], bits, G)
                start = t + 1
    else:
        nq = max(0, n - R) if n > P else max(0, P - R)
        if nq > 0:
            rec[:nq] = quant_v(x[:nq], bits, G)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("report")
    ap.add_argument("--pairs", default="0:0,15:1,29:2")
    ap.add_argument("--tol", type=float, default=1e-6)
    a = ap.parse_args()
    rep = json.load(open(a.report))
    st = rep["settings"]
    G, R = st["group"], st["window"]
    keys = "k_post" if st["keys"] == "post" else "k_pre"
    if not isinstance(st.get("prefill"), str):
        sys.exit("this check covers the default --prefill only")
    f = h5py.File(a.dump, "r")
    layers = list(f["layers"][:])
    starts, lengths = f["sequences/start"][:], f["sequences/length"][:]
    worst = 0.0
    checked = 0
    for item in a.pairs.split(","):
        layer, head = (int(v) for v in item.split(":"))
        slot = layers.index(layer)
        for tensor, ds in (("k", keys), ("v", "v")):
            x_all = f[ds][slot, head].astype(np.float32)
            for bits in st["bits"]:
                err = ref = 0.0
                for s0, n in zip(starts, lengths):
                    x = x_all[s0:s0 + n]
                    P = (n // 2) // R * R
                    rec = kivi_final(x, P, bits, G, R, tensor)
                    err += float(np.sum((x.astype(np.float64) - rec.astype(np.float64)) ** 2))
                    ref += float(np.sum(x.astype(np.float64) ** 2))
                mine = err / ref
                rows = [r for r in rep["results"] if r["method"] == "kivi" and r["bits"] == bits
                        and not r["rotate"] and r["layer"] == layer and r["kv_head"] == head]
                if not rows:
                    sys.exit(f"report has no kivi {bits}-bit row for layer {layer} head {head}")
                theirs = rows[0][tensor]["nmse"]
                rel = abs(mine - theirs) / max(abs(theirs), 1e-300)
                worst = max(worst, rel)
                checked += 1
                print(f"layer {layer} head {head} {tensor} {bits}-bit: numpy {mine:.9e} pkv {theirs:.9e} rel diff {rel:.2e}")
    print(f"{checked} NMSE values compared, worst relative difference {worst:.2e} (tolerance {a.tol:g})")
    sys.exit(0 if worst <= a.tol else 1)


if __name__ == "__main__":
    main()
