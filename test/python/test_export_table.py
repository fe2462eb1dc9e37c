#!/usr/bin/env python3
"""Cross-check of pattern tables and `pkv export` with the reference Python packages.

A table is written here from docs/formats/pattern_table.md alone, with the `safetensors`
package (so pkv reading it checks the spec as much as the code). Then `pkv validate`,
`pkv info` and every `pkv export` variant run on it, and each output is loaded with
`safetensors` (numpy API), `gguf` (GGUFReader) or `json` and compared with the table,
including the HF half-split permutation recomputed in numpy. Metadata is validated
against schemas/pattern_table.schema.json with jsonschema (Debian's python3-jsonschema,
run under /usr/bin/python3 because the venv's numpy and Debian's do not mix).

  test_export_table.py                      run the test (CTest: PKV_BIN, PKV_DATA_DIR, PKV_SOURCE_DIR)
  test_export_table.py --write-table PATH [--degenerate]
                                            write a spec-conformant table (with --degenerate: one
                                            with findings) for other tests; exit 0
Exit 77 (skip) when the venv with numpy, safetensors and gguf is missing.
"""
import json
import os
import subprocess
import sys
import tempfile


def _use_venv():
    try:
        import numpy  # noqa: F401
        import safetensors  # noqa: F401
        import gguf  # noqa: F401
        return
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    data = os.environ.get("PKV_DATA_DIR", os.path.join(here, "..", "..", "data"))
    py = os.path.join(data, "venv", "bin", "python")
    if os.environ.get("PKV_EXPORT_TEST_IN_VENV") or not os.access(py, os.X_OK):
        print(f"SKIPPED: {py} with numpy, safetensors and gguf not available (run scripts/fetch-data.sh)")
        sys.exit(77)
    os.environ["PKV_EXPORT_TEST_IN_VENV"] = "1"
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


_use_venv()

import numpy as np  # noqa: E402
from gguf import GGUFReader  # noqa: E402
from gguf.constants import GGMLQuantizationType as Q  # noqa: E402
from gguf.constants import GGUFValueType as VT  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

GATE_Z = 1.6448536269514722
H, MK, MV, D, LAYERS, N_LAYER = 3, 6, 5, 16, [1, 3, 4], 6
# Format 1.1: per calibrated layer, its sliding window (0: global) and RoPE base, as Gemma 3 mixes them.
WINDOWS, ROPE_BASE_TEXT = [512, 0, 512], "10000,1000000,10000"
ROPE_BASES = [float(x) for x in ROPE_BASE_TEXT.split(",")]
SUFFIXES = ["k_patterns", "v_patterns", "k_counts", "v_counts", "k_clip", "v_clip", "v_gate_z"]

CALIBRATION = {
    "tool": "pkv", "version": "0.1.0", "argv": ["pkv", "calibrate", "--dump", "out/dump.h5"],
    "time": "2026-11-29T05:00:00Z",
    "dumps": [{"path": "out/dump.h5", "tokens": 8192, "model_sha256": "ab" * 32,
               "sources": [{"path": "data/text/fortunes.txt", "sha256": "cd" * 32, "bytes": 1000, "tokens": 8192}]}],
    "tokens": {"train": 7372, "holdout": 820}, "holdout_fraction": 0.1, "seed": 1234,
    "device": "cuda:0 NVIDIA H200",
    "kmeans": {"max_iter": 30, "tol": 1e-4, "init": "kmeanspp", "restarts": 1, "max_points_per_centroid": 0},
    "seconds": 12.5,
    "heads": [{"layer": l, "head": h,
               "k": {"objective": 1.0, "variance_explained": 0.3, "dead_patterns": 0, "clip": 0.9,
                     "heldout": {"nmse_minmax": 0.07, "nmse_patterns": 0.06, "nmse_fitted": 0.05}},
               "v": {"objective": 1.0, "variance_explained": 0.3, "dead_patterns": 0, "clip": 0.95, "gate_z": 1.6,
                     "gate_rate": 0.7, "heldout": {"nmse_minmax": 0.2, "nmse_patterns": 0.12, "nmse_fitted": 0.11}}}
              for l in LAYERS for h in range(H)],
}


def make_table(degenerate=False, rotation="none", version="1.1"):
    """Tensors and metadata of a table, straight from the spec (1.0: without layer geometry)."""
    rng = np.random.default_rng(5)
    tensors = {}
    for l in LAYERS:
        kc = rng.integers(1, 50, size=MK).astype(np.int64)
        vc = rng.integers(1, 50, size=MV).astype(np.int64)
        t = {
            "k_patterns": rng.standard_normal((H, MK, D)).astype(np.float32),
            "v_patterns": rng.standard_normal((H, MV, D)).astype(np.float32),
            # the same counts rolled per head: equal totals in every head
            "k_counts": np.stack([np.roll(kc, h) for h in range(H)]),
            "v_counts": np.stack([np.roll(vc, h) for h in range(H)]),
            "k_clip": rng.uniform(0.7, 1.0, size=H).astype(np.float32),
            "v_clip": rng.uniform(0.7, 1.0, size=H).astype(np.float32),
            "v_gate_z": np.full(H, GATE_Z, dtype=np.float32),
        }
        for s in SUFFIXES:
            tensors[f"layers.{l}.{s}"] = t[s]
    if degenerate:
        tensors["layers.3.k_clip"][1] = 0.0
        kc = tensors["layers.4.k_counts"]
        kc[2, 0] += kc[2, 5]
        kc[2, 5] = 0
    meta = {
        "pkv.format": "pkv.pattern_table", "pkv.format_version": version,
        "pkv.model.name": "SmolLM2 135M Instruct", "pkv.model.arch": "llama", "pkv.model.sha256": "ef" * 32,
        "pkv.model.n_layer": str(N_LAYER), "pkv.model.n_head": str(3 * H), "pkv.model.n_head_kv": str(H),
        "pkv.model.head_dim": str(D), "pkv.layers": ",".join(map(str, LAYERS)),
        "pkv.key.basis": "post_rope", "pkv.key.dim_order": "gguf_interleaved",
        "pkv.rotation": rotation, "pkv.rotation.seed": "0",
        "pkv.quant.bits": "2", "pkv.quant.group": "128", "pkv.quant.window": "128", "pkv.assign": "minmax",
        "pkv.k_patterns": str(MK), "pkv.v_patterns": str(MV), "pkv.calibration": json.dumps(CALIBRATION),
    }
    if version != "1.0":
        meta["pkv.layers.window"] = ",".join(map(str, WINDOWS))
        meta["pkv.layers.rope_base"] = ROPE_BASE_TEXT
    return tensors, meta


def hf_of(k):
    """gguf_interleaved -> hf_half_split: hf[i] = gguf[2i], hf[i + D/2] = gguf[2i + 1]."""
    return np.concatenate([k[..., 0::2], k[..., 1::2]], axis=-1)


class Checker:
    def __init__(self):
        self.failures = 0
        self.passes = 0

    def ok(self, cond, what):
        if cond:
            self.passes += 1
        else:
            self.failures += 1
            print(f"FAIL: {what}", flush=True)
        return cond


def run(pkv, *args):
    return subprocess.run([pkv, *args], capture_output=True, text=True)


def error_lines(stderr):
    return [l for l in stderr.splitlines() if l and not l.startswith(("pkv: info:", "pkv: warning:"))]


def schema_problems(docs):
    """jsonschema messages for each document (empty lists: valid), via Debian's Python."""
    schema = os.path.join(os.environ["PKV_SOURCE_DIR"], "schemas", "pattern_table.schema.json")
    code = (
        "import json, sys\n"
        "from jsonschema import Draft202012Validator\n"
        "schema = json.load(open(sys.argv[1]))\n"
        "Draft202012Validator.check_schema(schema)\n"
        "v = Draft202012Validator(schema)\n"
        "out = [[('/'.join(map(str, e.absolute_path)) + ': ' + e.message[:200]) for e in v.iter_errors(d)]\n"
        "       for d in json.load(sys.stdin)]\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run(["/usr/bin/python3", "-c", code, schema], input=json.dumps(docs), capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"jsonschema run failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def metadata_doc(meta):
    doc = dict(meta)
    doc["pkv.calibration"] = json.loads(doc["pkv.calibration"])
    return doc


def gguf_value(field):
    return field.contents()


def main():
    pkv = os.environ["PKV_BIN"]
    c = Checker()
    with tempfile.TemporaryDirectory(prefix="pkv-export-") as tmp:
        def p(name):
            return os.path.join(tmp, name)

        tensors, meta = make_table()
        save_file(tensors, p("table.safetensors"), metadata=meta)

        # pkv reads the spec-conformant table written by the reference package.
        r = run(pkv, "validate", p("table.safetensors"))
        c.ok(r.returncode == 0 and r.stdout.strip().endswith(": valid"),
             f"validate of the Python-written table: rc {r.returncode}: {r.stdout} {r.stderr}")
        r = run(pkv, "info", "--json", p("table.safetensors"))
        c.ok(r.returncode == 0, f"info --json: {r.stderr}")
        info = json.loads(r.stdout) if r.returncode == 0 else {}
        c.ok(info.get("metadata") == metadata_doc(meta), "info --json metadata equals the table's")

        # safetensors, unchanged: every tensor and key equal.
        r = run(pkv, "export", "--table", p("table.safetensors"), "--format", "safetensors", "--out", p("same.safetensors"))
        c.ok(r.returncode == 0, f"export safetensors: {r.stderr}")
        same = load_file(p("same.safetensors"))
        with safe_open(p("same.safetensors"), framework="numpy") as f:
            same_meta = f.metadata()
        c.ok(sorted(same) == sorted(tensors), f"tensor names {sorted(same)}")
        for n, a in tensors.items():
            c.ok(same[n].dtype == a.dtype and np.array_equal(same[n], a), f"same.safetensors {n}")
        # pkv re-serializes pkv.calibration (compact, keys sorted): compare it parsed.
        c.ok(metadata_doc(same_meta) == metadata_doc(meta), f"same.safetensors metadata: {same_meta}")

        # HF key order: K permuted as numpy computes it, V and the rest untouched.
        r = run(pkv, "export", "--table", p("table.safetensors"), "--format", "safetensors", "--key-order", "hf",
                "--out", p("hf.safetensors"))
        c.ok(r.returncode == 0, f"export --key-order hf: {r.stderr}")
        hf = load_file(p("hf.safetensors"))
        with safe_open(p("hf.safetensors"), framework="numpy") as f:
            hf_meta = f.metadata()
        for n, a in tensors.items():
            want = hf_of(a) if n.endswith(".k_patterns") else a
            c.ok(hf[n].dtype == a.dtype and np.array_equal(hf[n], want), f"hf.safetensors {n}")
        c.ok(hf_meta.get("pkv.key.dim_order") == "hf_half_split", "hf dim_order key")
        c.ok({k: v for k, v in metadata_doc(hf_meta).items() if k != "pkv.key.dim_order"} ==
             {k: v for k, v in metadata_doc(meta).items() if k != "pkv.key.dim_order"}, "hf: other metadata unchanged")
        # ... and back: the same bytes as the plain export.
        r = run(pkv, "export", "--table", p("hf.safetensors"), "--format", "safetensors", "--key-order", "gguf",
                "--out", p("back.safetensors"))
        c.ok(r.returncode == 0 and open(p("back.safetensors"), "rb").read() == open(p("same.safetensors"), "rb").read(),
             "gguf -> hf -> gguf round trip gives identical bytes")

        # F16 patterns.
        r = run(pkv, "export", "--table", p("table.safetensors"), "--format", "safetensors", "--dtype", "f16",
                "--out", p("f16.safetensors"))
        c.ok(r.returncode == 0, f"export --dtype f16: {r.stderr}")
        h = load_file(p("f16.safetensors"))
        for n, a in tensors.items():
            want = a.astype(np.float16) if n.endswith("_patterns") else a
            c.ok(h[n].dtype == want.dtype and np.array_equal(h[n], want), f"f16.safetensors {n}")
        c.ok(run(pkv, "validate", p("f16.safetensors")).returncode == 0, "validate accepts F16 patterns")

        # GGUF: typed keys, ne fastest first, values as numpy reads them.
        for order, dtype in (("gguf", "f32"), ("hf", "f16")):
            out = p(f"t-{order}-{dtype}.gguf")
            r = run(pkv, "export", "--table", p("table.safetensors"), "--format", "gguf", "--key-order", order,
                    "--dtype", dtype, "--out", out)
            c.ok(r.returncode == 0, f"export gguf {order} {dtype}: {r.stderr}")
            g = GGUFReader(out)
            fields = {k: gguf_value(v) for k, v in g.fields.items() if not k.startswith("GGUF.")}
            c.ok(fields.get("general.type") == "pkv_patterns", f"general.type {fields.get('general.type')}")
            c.ok(fields.get("general.name") == meta["pkv.model.name"], "general.name")
            for k, v in meta.items():
                got = fields.get(k)
                if k in ("pkv.layers", "pkv.layers.window"):
                    want = [int(x) for x in v.split(",")]
                    c.ok(g.fields[k].types == [VT.ARRAY, VT.INT32], f"gguf {k}: types {g.fields[k].types}")
                elif k == "pkv.layers.rope_base":
                    want = [float(x) for x in v.split(",")]
                    c.ok(g.fields[k].types == [VT.ARRAY, VT.FLOAT64], f"gguf {k}: types {g.fields[k].types}")
                elif k == "pkv.calibration":
                    got, want = json.loads(got), CALIBRATION
                elif k == "pkv.key.dim_order":
                    want = "hf_half_split" if order == "hf" else "gguf_interleaved"
                elif v.isdigit() and k not in ("pkv.format_version",):
                    want = int(v)
                else:
                    want = v
                c.ok(got == want, f"gguf {order}: key {k}: expected {want!r}, got {got!r}")
            extra = set(fields) - set(meta) - {"general.type", "general.name"}
            c.ok(not extra, f"gguf: unexpected keys {extra}")
            gt = {t.name: t for t in g.tensors}
            c.ok(len(gt) == len(tensors), f"gguf tensor count {len(gt)}")
            for n, a in tensors.items():
                _, l, s = n.split(".")
                t = gt.get(f"blk.{l}.pkv_{s}")
                if not c.ok(t is not None, f"gguf tensor blk.{l}.pkv_{s}"):
                    continue
                want = hf_of(a) if (s == "k_patterns" and order == "hf") else a
                want_type = Q.I64 if s.endswith("counts") else (Q.F16 if s.endswith("patterns") and dtype == "f16" else Q.F32)
                if want_type == Q.F16:
                    want = want.astype(np.float16)
                c.ok(t.tensor_type == want_type, f"{t.name}: type {t.tensor_type!r}")
                c.ok(list(t.shape) == list(reversed(a.shape)), f"{t.name}: ne {list(t.shape)} vs shape {a.shape}")
                c.ok(t.data.shape == a.shape and np.array_equal(t.data, want), f"{t.name}: values")

        # JSON: everything, for inspection.
        r = run(pkv, "export", "--table", p("table.safetensors"), "--format", "json", "--key-order", "hf",
                "--out", p("t.json"))
        c.ok(r.returncode == 0, f"export json: {r.stderr}")
        doc = json.load(open(p("t.json")))
        c.ok(doc["format"] == "pkv.pattern_table" and doc["format_version"] == "1.1", "json format fields")
        want_layers = [{"layer": l, "window": w, "rope_base": b} for l, w, b in zip(LAYERS, WINDOWS, ROPE_BASES)]
        c.ok(doc.get("layers") == want_layers, f"json layers: {doc.get('layers')}")
        want_meta = metadata_doc(meta)
        want_meta["pkv.key.dim_order"] = "hf_half_split"
        c.ok(doc["metadata"] == want_meta, "json metadata")
        c.ok(sorted(doc["tensors"]) == sorted(tensors), "json tensor names")
        for n, a in tensors.items():
            e = doc["tensors"][n]
            want = hf_of(a) if n.endswith("k_patterns") else a
            got = np.array(e["data"], dtype=a.dtype)
            c.ok(e["shape"] == list(a.shape) and e["dtype"] == {"float32": "F32", "int64": "I64"}[str(a.dtype)],
                 f"json {n}: dtype/shape")
            c.ok(got.shape == a.shape and np.array_equal(got, want), f"json {n}: values")

        # A 1.0 table (no layer geometry) exports as 1.0: no window or RoPE base is invented.
        ot, om = make_table(version="1.0")
        save_file(ot, p("t10.safetensors"), metadata=om)
        r = run(pkv, "export", "--table", p("t10.safetensors"), "--format", "gguf", "--out", p("t10.gguf"))
        c.ok(r.returncode == 0, f"export 1.0 gguf: {r.stderr}")
        g10 = {k: gguf_value(v) for k, v in GGUFReader(p("t10.gguf")).fields.items()}
        c.ok(g10.get("pkv.format_version") == "1.0" and "pkv.layers.window" not in g10 and
             "pkv.layers.rope_base" not in g10, f"1.0 gguf export: {g10.get('pkv.format_version')}")
        r = run(pkv, "export", "--table", p("t10.safetensors"), "--format", "json", "--out", p("t10.json"))
        d10 = json.load(open(p("t10.json"))) if r.returncode == 0 else {}
        c.ok(d10.get("format_version") == "1.0" and
             d10.get("layers") == [{"layer": l, "window": None, "rope_base": None} for l in LAYERS],
             f"1.0 json export: {r.stderr} {d10.get('layers')}")

        # Schema: metadata as pkv writes it, as info and JSON export report it; and rejections.
        docs = [metadata_doc(same_meta), metadata_doc(hf_meta), doc["metadata"], info.get("metadata", {}),
                metadata_doc(om)]
        bad_version = dict(docs[0], **{"pkv.format_version": "2.0"})
        no_seed = metadata_doc(same_meta)
        del no_seed["pkv.calibration"]["seed"]
        bad_basis = dict(docs[0], **{"pkv.key.basis": "rope"})
        minimal_cal = dict(docs[0], **{"pkv.calibration": {k: CALIBRATION[k] for k in
                                                            ("tool", "version", "argv", "dumps", "seed", "heads")}})
        no_window = {k: v for k, v in docs[0].items() if k != "pkv.layers.window"}
        bad_window = dict(docs[0], **{"pkv.layers.window": "512,-1,512"})
        bad_base = dict(docs[0], **{"pkv.layers.rope_base": "10000,nan,10000"})
        res = schema_problems(docs + [minimal_cal, bad_version, no_seed, bad_basis, no_window, bad_window, bad_base])
        for i, problems in enumerate(res[:6]):
            c.ok(problems == [], f"schema: document {i} should validate: {problems}")
        for name, problems in zip(("format_version 2.0", "calibration without seed", "basis 'rope'",
                                   "1.1 without pkv.layers.window", "window -1", "rope base nan"), res[6:]):
            c.ok(problems != [], f"schema: {name} should be rejected")

        # Findings and bad input: one error line, non-zero exit.
        dt, dm = make_table(degenerate=True)
        save_file(dt, p("degenerate.safetensors"), metadata=dm)
        r = run(pkv, "validate", p("degenerate.safetensors"))
        lines = r.stdout.strip().splitlines()
        c.ok(r.returncode == 1 and len(lines) == 2 and
             "layers.3.k_clip: head 1: expected a clip ratio in (0, 1], got 0" in lines[0] and
             "layers.4.k_counts: head 2: 1 dead pattern(s) of 6 (count 0): 5" in lines[1],
             f"validate findings: rc {r.returncode}: {lines}")
        raw = open(p("table.safetensors"), "rb").read()
        open(p("cut.safetensors"), "wb").write(raw[:-5])
        cases = [
            (["--table", p("cut.safetensors"), "--format", "json", "--out", p("x.json")], 1, "cut.safetensors: "),
            (["--table", p("table.safetensors"), "--format", "onnx", "--out", p("x.onnx")], 2,
             "--format: expected safetensors, gguf or json, got 'onnx'"),
            (["--table", p("table.safetensors"), "--format", "json", "--key-order", "neox", "--out", p("x.json")], 2,
             "--key-order: expected gguf or hf, got 'neox'"),
            (["--table", p("table.safetensors"), "--format", "gguf", "--out", p("t.json")], 1,
             "output exists; pass --force to overwrite it"),
        ]
        rt, rm = make_table(rotation="hadamard")
        save_file(rt, p("rot.safetensors"), metadata=rm)
        cases.append((["--table", p("rot.safetensors"), "--format", "gguf", "--key-order", "hf", "--out", p("r.gguf")], 1,
                      "cannot be re-ordered"))
        for args, rc, pattern in cases:
            r = run(pkv, "export", *args)
            errs = error_lines(r.stderr)
            c.ok(r.returncode == rc and len(errs) == 1 and pattern in errs[0],
                 f"export {args[1:]}: expected exit {rc} and one line with {pattern!r}, got {r.returncode}: {errs}")
        c.ok(not os.path.exists(p("x.json")) and not os.path.exists(p("r.gguf")), "failed exports leave no output")
        r = run(pkv, "export", "--table", p("table.safetensors"), "--format", "gguf", "--out", p("t.json"), "--force")
        c.ok(r.returncode == 0 and open(p("t.json"), "rb").read(4) == b"GGUF", "--force overwrites")

    print(f"{c.passes} passed, {c.failures} failed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--write-table":
        t, m = make_table(degenerate="--degenerate" in sys.argv[3:])
        save_file(t, sys.argv[2], metadata=m)
        sys.exit(0)
    sys.exit(main())
