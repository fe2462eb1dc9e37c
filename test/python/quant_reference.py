#!/usr/bin/env python3
"""Independent numpy re-computation of pkv's asymmetric min-max quantizer.

Usage: quant_reference.py DIR

DIR holds manifest.txt (one case per line: "name T D bits group axis", axis being
"token" or "channel") and, per case, raw little-endian arrays written by the C++
test: name.x.f32 and name.recon.f32 ([T, D] float32), name.codes.u8 ([T, D]),
name.scales.u16 and name.zeros.u16 (binary16 bit patterns in pkv's group layout).

The reference follows docs/numerics.md: fp32 min/max and scale, binary16 rounding of
scale and zero (numpy's float32 -> float16 cast rounds to nearest even), codes
rint((x - z16) / s16) in fp32 clipped to [0, 2^b - 1], x_hat = fp32(q*s16 + z16)
formed exactly in float64 and rounded once. Every array must match bit for bit.
Exit 0 when all cases match, 1 otherwise, 77 when numpy is missing.
"""
import os
import sys

try:
    import numpy as np
except ImportError:
    print("SKIPPED: numpy is not available", file=sys.stderr)
    sys.exit(77)


def quantize_groups(g, bits):
    """g: [n_groups, n] float32; returns codes, recon, scale16, zero16 per group."""
    qmax = np.float32((1 << bits) - 1)
    mn = g.min(axis=1)
    mx = g.max(axis=1)
    s16 = ((mx - mn) / qmax).astype(np.float16)
    z16 = mn.astype(np.float16)
    s = s16.astype(np.float32)[:, None]
    z = z16.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.rint((g - z) / s)
    q = np.where(s > 0, np.clip(t, 0, qmax), 0).astype(np.float32)
    recon = (q.astype(np.float64) * s.astype(np.float64) + z.astype(np.float64)).astype(np.float32)
    return q.astype(np.uint8), recon, s16, z16


def reference(x, bits, group, axis):
    T, D = x.shape
    codes = np.zeros((T, D), np.uint8)
    recon = np.zeros((T, D), np.float32)
    if axis == "token":
        g = x.reshape(T * (D // group), group)
        q, r, s16, z16 = quantize_groups(g, bits)
        return q.reshape(T, D), r.reshape(T, D), s16.reshape(-1), z16.reshape(-1)
    scales, zeros = [], []
    for t0 in range(0, T, group):
        block = x[t0:t0 + group]  # [len, D]; the last block may be shorter
        q, r, s16, z16 = quantize_groups(np.ascontiguousarray(block.T), bits)
        codes[t0:t0 + group] = q.T
        recon[t0:t0 + group] = r.T
        scales.append(s16)
        zeros.append(z16)
    return codes, recon, np.concatenate(scales), np.concatenate(zeros)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = sys.argv[1]
    ok = True
    cases = 0
    with open(os.path.join(d, "manifest.txt")) as f:
        lines = [ln.split() for ln in f if ln.strip()]
    for name, T, D, bits, group, axis in lines:
        T, D, bits, group = int(T), int(D), int(bits), int(group)
        p = lambda ext: os.path.join(d, f"{name}.{ext}")
        x = np.fromfile(p("x.f32"), "<f4").reshape(T, D)
        got_r = np.fromfile(p("recon.f32"), "<f4").reshape(T, D)
        got_q = np.fromfile(p("codes.u8"), np.uint8).reshape(T, D)
        got_s = np.fromfile(p("scales.u16"), "<u2")
        got_z = np.fromfile(p("zeros.u16"), "<u2")
        q, r, s16, z16 = reference(x, bits, group, axis)
        diff = float(np.max(np.abs(r.astype(np.float64) - got_r))) if r.size else 0.0
        same = (np.array_equal(q, got_q) and np.array_equal(s16.view(np.uint16), got_s)
                and np.array_equal(z16.view(np.uint16), got_z)
                and np.array_equal(r.view(np.uint32), got_r.view(np.uint32)))
        print(f"{name}: T={T} D={D} bits={bits} group={group} axis={axis} "
              f"max|recon diff|={diff:.3g} {'bit-exact' if same else 'MISMATCH'}")
        ok &= same
        cases += 1
    print(f"{cases} cases, {'all bit-exact' if ok else 'mismatches found'}")
    return 0 if ok and cases else 1


if __name__ == "__main__":
    sys.exit(main())
