#!/usr/bin/env python3
"""Independent check of pkv's safetensors code with the reference `safetensors` package.

  check_safetensors.py check FILE   verify FILE (written by test/unit/table) holds exactly the
                                    expected tensors and metadata; exit 1 with a message otherwise
  check_safetensors.py write FILE   write a file for the C++ test to read back

The expected contents must match make_cross_check_writer() in test/unit/table/test_safetensors.cpp.
"""
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def expected_from_pkv():
    return {
        "a.f32": np.arange(6, dtype=np.float32).reshape(2, 3) * np.float32(0.5),
        "b.i32": np.array([-2, -1, 0, 7], dtype=np.int32),
        "c.u8": np.array(200, dtype=np.uint8),
        "d.empty": np.zeros((0, 4), dtype=np.float32),
        "e.f16": np.array([1.0, -2.5, 0.125], dtype=np.float16),
        "f.f64": np.array([[1e300], [-3.0]], dtype=np.float64),
    }


def check(path):
    got = load_file(path)
    want = expected_from_pkv()
    problems = []
    if sorted(got) != sorted(want):
        problems.append(f"names: expected {sorted(want)}, got {sorted(got)}")
    for name in sorted(set(got) & set(want)):
        g, w = got[name], want[name]
        if g.dtype != w.dtype:
            problems.append(f"{name}: dtype: expected {w.dtype}, got {g.dtype}")
        elif g.shape != w.shape:
            problems.append(f"{name}: shape: expected {w.shape}, got {g.shape}")
        elif not np.array_equal(g, w):
            problems.append(f"{name}: values differ: expected {w.tolist()}, got {g.tolist()}")
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    want_meta = {"format": "pkv.pattern_table", "format_version": "1", "config": '{"n_layer": 2}'}
    if meta != want_meta:
        problems.append(f"metadata: expected {want_meta}, got {meta}")
    for p in problems:
        print(f"{path}: {p}")
    if not problems:
        print(f"{path}: {len(got)} tensors and {len(meta)} metadata keys match")
    return 1 if problems else 0


def write(path):
    tensors = {
        "x": np.array([[1, 2], [3, 4]], dtype=np.float32),
        "y": np.array([5, -6, 7], dtype=np.int64),
        "z": np.array(9, dtype=np.uint8),
        "w": np.zeros((0,), dtype=np.float16),
        "v": np.array([0.5, -0.25], dtype=np.float16),
    }
    save_file(tensors, path, metadata={"who": "python", "n": "3"})
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("check", "write"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(check(sys.argv[2]) if sys.argv[1] == "check" else write(sys.argv[2]))
