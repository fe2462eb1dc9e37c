#!/usr/bin/python3
"""Independent check of a pkv KV dump with h5py and numpy only (no pkv code).

Usage: /usr/bin/python3 test/python/check_dump_h5py.py DUMP.h5

Checks the layout in docs/formats/kv_dump.md: root attributes, dataset shapes,
float16 dtypes, chunking and filters (of the shards, in a joined dump: format 1.2),
/layer_info (format 1.1), token/sequence
bookkeeping, finiteness, and that k_post equals RoPE(k_pre) recomputed here from
/tokens/pos, the model record (rope_freq_scale, n_rot) and each layer's RoPE base
(/layer_info/rope_base; rope_freq_base in a 1.0 file) in the file's dim_order:
  gguf_interleaved: dims (2i, 2i+1) form pair i
  hf_half_split:    dims (i, i + D/2) form pair i
Pair i (i < n_rot/2) turns by pos * scale * base^(-2i/n_rot), with scale = rope_freq_scale
on global layers and 1 on local (sliding-window) ones.

Exit status 0 when everything holds, 1 with one line per failure otherwise,
2 when the file cannot be read at all.
"""
import json
import os
import sys

import h5py
import numpy as np

ACTIVATIONS = ["k_pre", "k_post", "v", "q"]
MODEL_KEYS = ["name", "file", "sha256", "arch", "n_layer", "n_head", "n_head_kv", "head_dim", "n_rot",
              "n_embd", "n_ff", "n_vocab", "n_ctx_train", "rope_freq_base", "rope_freq_scale", "rope_type",
              "rms_eps", "file_type"]
F16_EPS = 2.0 ** -11  # half of binary16's spacing at 1: the largest relative rounding error


class Report:
    def __init__(self, path):
        self.path = path
        self.failures = []
        self.notes = []

    def fail(self, obj, msg):
        self.failures.append(f"{self.path}::{obj}: {msg}")

    def check(self, cond, obj, msg):
        if not cond:
            self.fail(obj, msg)
        return cond


def as_str(x):
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def check_root(f, r):
    a = f.attrs
    for key in ["format", "format_version", "model", "provenance", "summary", "dim_order",
                "n_layer", "n_head", "n_head_kv", "head_dim", "n_tokens"]:
        r.check(key in a, "/", f"missing attribute '{key}'")
    if r.failures:
        return None
    r.check(as_str(a["format"]) == "pkv.kvdump", "/", f"expected format 'pkv.kvdump', got {a['format']!r}")
    r.check(as_str(a["format_version"]).split(".")[0] == "1", "/",
            f"expected format_version 1.x, got {a['format_version']!r}")
    for key in ["n_layer", "n_head", "n_head_kv", "head_dim", "n_tokens"]:
        r.check(np.issubdtype(np.asarray(a[key]).dtype, np.integer), "/",
                f"attribute '{key}': expected an integer, got {np.asarray(a[key]).dtype}")
    docs = {}
    for key in ["model", "provenance", "summary"]:
        try:
            docs[key] = json.loads(as_str(a[key]))
        except ValueError as e:
            r.fail("/", f"attribute '{key}': expected JSON text, got a parse error: {e}")
            return None
    model = docs["model"]
    for key in MODEL_KEYS:
        r.check(key in model, "/", f"attribute 'model': missing field '{key}'")
    for key in ["n_layer", "n_head", "n_head_kv", "head_dim"]:
        if key in model:
            r.check(model[key] == int(a[key]), "/",
                    f"attribute 'model': {key} = {model[key]}, root attribute says {int(a[key])}")
    r.check(model.get("rope_type") == "norm", "/", f"expected rope_type 'norm', got {model.get('rope_type')!r}")
    order = as_str(a["dim_order"])
    r.check(order in ("gguf_interleaved", "hf_half_split"), "/", f"unknown dim_order {order!r}")
    minor = as_str(a["format_version"]).split(".")[-1]
    return {
        "minor": int(minor) if minor.isdigit() else 0,
        "L_model": int(a["n_layer"]), "H": int(a["n_head"]), "Hkv": int(a["n_head_kv"]), "D": int(a["head_dim"]),
        "T": int(a["n_tokens"]), "order": order, "model": model, "summary": docs["summary"],
    }


def check_datasets(f, r, m):
    L = None
    if r.check("layers" in f, "/layers", "missing dataset"):
        layers = f["layers"][...]
        L = len(layers)
        r.check(layers.dtype == np.int32, "/layers", f"expected int32, got {layers.dtype}")
        r.check(L > 0 and np.all(np.diff(layers) > 0) and layers.min() >= 0 and layers.max() < m["L_model"],
                "/layers", f"expected ascending layers in [0, {m['L_model']}), got {layers.tolist()}")
    check_layer_info(f, r, m, L)
    present = [n for n in ACTIVATIONS if n in f]
    r.check(len(present) > 0, "/", "no activation dataset")
    for name in present:
        ds = f[name]
        H = m["H"] if name == "q" else m["Hkv"]
        want = (L, H, m["T"], m["D"])
        r.check(ds.shape == want, "/" + name, f"expected shape {list(want)}, got {list(ds.shape)}")
        r.check(ds.dtype == np.float16, "/" + name, f"expected dtype float16, got {ds.dtype}")
        if ds.is_virtual:
            check_shards(f, r, m, name, ds, want)
        else:
            check_storage(r, m, "/" + name, ds)
        axes = [as_str(x) for x in ds.attrs.get("axes", [])]
        want_axes = ["layer", "head" if name == "q" else "kv_head", "token", "dim"]
        r.check(axes == want_axes, "/" + name, f"attribute 'axes': expected {want_axes}, got {axes}")
        if name != "v":
            got = as_str(ds.attrs.get("dim_order", ""))
            r.check(got == m["order"], "/" + name, f"attribute 'dim_order': expected {m['order']!r}, got {got!r}")
    return present


def check_storage(r, m, obj, ds):
    r.check(ds.chunks is not None and ds.chunks[:2] == (1, 1) and ds.chunks[3] == m["D"], obj,
            f"expected chunks [1, 1, Tc, {m['D']}], got {ds.chunks}")
    # pkv dump --compress 0 stores no filters; 1-9 shuffle then gzip at that level.
    plain = ds.compression is None and not ds.shuffle
    r.check(plain or (ds.compression == "gzip" and ds.shuffle), obj,
            f"expected no filters or shuffle + gzip, got compression {ds.compression}, shuffle {ds.shuffle}")


def check_shards(f, r, m, name, ds, want):
    """A joined dump (format 1.2): the activation is a virtual dataset whose mappings tile the
    tokens in order, each the whole dataset of the same name in a shard file named relative
    to the dump's folder; each shard's dataset is stored as a dump's is."""
    r.check(as_str(f.attrs["format_version"]) == "1.2" and "shards" in f.attrs, "/",
            "expected format_version 1.2 and attribute 'shards' (virtual activations)")
    folder = os.path.dirname(os.path.abspath(f.filename))
    L, H, T, D = want
    nxt = 0
    for vs in ds.virtual_sources():
        lo, hi = vs.vspace.get_select_bounds()
        obj = f"/{name} <- {vs.file_name}"
        r.check(lo == (0, 0, nxt, 0) and hi[0] == L - 1 and hi[1] == H - 1 and hi[3] == D - 1, obj,
                f"expected the block [0:{L}, 0:{H}, {nxt}:..., 0:{D}], got {lo}..{hi}")
        r.check(not os.path.isabs(vs.file_name) and ".." not in vs.file_name.split("/"), obj,
                "expected a path relative to the dump's folder")
        r.check(vs.dset_name.lstrip("/") == name, obj, f"expected dataset {name}, got {vs.dset_name}")
        n = hi[2] - lo[2] + 1
        path = os.path.join(folder, vs.file_name)
        if r.check(os.path.exists(path), obj, f"missing shard {path}"):
            with h5py.File(path, "r") as s:
                sd = s[name]
                r.check(sd.shape == (L, H, n, D) and not sd.is_virtual, obj,
                        f"expected stored shape {[L, H, n, D]}, got {list(sd.shape)}")
                check_storage(r, m, obj, sd)
        nxt = hi[2] + 1
    r.check(nxt == T, "/" + name, f"expected shards covering {T} tokens, got {nxt}")


def check_layer_info(f, r, m, L):
    """/layer_info: required from 1.1 on; sets m["windows"] and m["bases"] (per stored layer)."""
    if "layer_info" not in f:
        # A 1.0 file: the model record says which layers are local.
        model, layers = m["model"], f["layers"][...].tolist() if L else []
        local = [l in (model.get("swa_layers") or []) for l in layers]
        m["windows"] = [int(model["sliding_window"]) if x else 0 for x in local]
        m["bases"] = [float(model["rope_freq_base_swa"] if x else model["rope_freq_base"]) for x in local]
        r.check(m["minor"] < 1, "/layer_info", f"missing group (format_version 1.{m['minor']} requires it)")
        return
    cols = {}
    for name, kind in [("window", "i"), ("rope_base", "f"), ("n_head_kv", "i"), ("head_dim", "i")]:
        obj = "/layer_info/" + name
        if not r.check(name in f["layer_info"], obj, "missing dataset"):
            return
        x = f["layer_info"][name][...]
        r.check(x.shape == (L,), obj, f"expected shape [{L}], got {list(x.shape)}")
        r.check(x.dtype.kind == kind and x.dtype.itemsize == (8 if kind == "f" else 4), obj,
                f"expected {'float64' if kind == 'f' else 'int32'}, got {x.dtype}")
        cols[name] = x
    if r.failures:
        return
    r.check(np.all(cols["window"] >= 0), "/layer_info/window", f"expected windows >= 0, got {cols['window'].tolist()}")
    r.check(np.all(np.isfinite(cols["rope_base"]) & (cols["rope_base"] >= 0)), "/layer_info/rope_base",
            f"expected finite bases >= 0, got {cols['rope_base'].tolist()}")
    r.check(np.all(cols["n_head_kv"] == m["Hkv"]), "/layer_info/n_head_kv", f"expected {m['Hkv']} everywhere")
    r.check(np.all(cols["head_dim"] == m["D"]), "/layer_info/head_dim", f"expected {m['D']} everywhere")
    m["windows"] = cols["window"].tolist()
    m["bases"] = cols["rope_base"].tolist()


def check_tokens(f, r, m):
    T = m["T"]
    cols = {}
    for name, dtype in [("tokens/id", np.int32), ("tokens/pos", np.int32), ("tokens/seq", np.int32),
                        ("tokens/nll", np.float32)]:
        if not r.check(name in f, "/" + name, "missing dataset"):
            return None
        x = f[name][...]
        r.check(x.shape == (T,), "/" + name, f"expected shape [{T}], got {list(x.shape)}")
        r.check(x.dtype == dtype, "/" + name, f"expected {np.dtype(dtype)}, got {x.dtype}")
        cols[name.split("/")[1]] = x
    if r.failures:
        return None
    for name in ["sequences/start", "sequences/length", "sources/path", "sources/sha256", "sources/bytes",
                 "sources/tokens"]:
        r.check(name in f, "/" + name, "missing dataset")
    if r.failures:
        return None
    start, length = f["sequences/start"][...], f["sequences/length"][...]
    r.check(start.shape == length.shape and len(start) > 0, "/sequences",
            f"start {start.shape} and length {length.shape} disagree")
    ends = np.cumsum(length)
    r.check(start[0] == 0 and np.all(start[1:] == ends[:-1]) and ends[-1] == T and np.all(length > 0),
            "/sequences", "sequences do not tile [0, T)")
    want_seq = np.repeat(np.arange(len(length)), length)
    want_pos = np.concatenate([np.arange(n) for n in length])
    if len(want_seq) == T:
        bad = np.nonzero(want_seq != cols["seq"])[0]
        r.check(len(bad) == 0, "/tokens/seq", f"{len(bad)} tokens disagree with /sequences, first at {bad[:1]}")
        bad = np.nonzero(want_pos != cols["pos"])[0]
        r.check(len(bad) == 0, "/tokens/pos", f"{len(bad)} positions do not restart at 0 per sequence, first at {bad[:1]}")
    nll = cols["nll"]
    at0 = cols["pos"] == 0
    r.check(np.all(np.isnan(nll[at0])) and np.all(np.isfinite(nll[~at0])), "/tokens/nll",
            "expected NaN at position 0 and finite values elsewhere")
    paths = f["sources/path"].asstr()[...]
    shas = f["sources/sha256"].asstr()[...]
    toks = f["sources/tokens"][...]
    r.check(len(paths) == len(shas) == len(toks), "/sources", "columns of different lengths")
    r.check(all(len(s) == 64 for s in shas), "/sources/sha256", "expected 64 hex digits per source")
    if len(toks):
        r.check(int(toks.sum()) == T, "/sources/tokens", f"sum {int(toks.sum())} != n_tokens {T}")
    if "n_tokens" in m["summary"]:
        r.check(m["summary"]["n_tokens"] == T, "/", "summary n_tokens disagrees with n_tokens")
    return cols


def rope(x, pos, model, order, base, local):
    """RoPE (NORM pairs) of x [T, D] float64 at positions pos [T], pairs per `order`; a local
    layer has no linear scaling."""
    T, D = x.shape
    n_rot = int(model["n_rot"])
    scale = 1.0 if local else float(model.get("rope_freq_scale", 1.0) or 1.0)
    i = np.arange(n_rot // 2)
    theta = scale * pos[:, None].astype(np.float64) * base ** (-2.0 * i / n_rot)[None, :]
    c, s = np.cos(theta), np.sin(theta)
    if order == "gguf_interleaved":
        ia, ib = 2 * i, 2 * i + 1
    else:
        ia, ib = i, i + D // 2
    out = x.copy()
    a, b = x[:, ia], x[:, ib]
    out[:, ia] = a * c - b * s
    out[:, ib] = a * s + b * c
    return out, ia, ib


def check_values(f, r, m, present, pos):
    for name in present:
        ds = f[name]
        bad = 0
        for l in range(ds.shape[0]):
            for h in range(ds.shape[1]):
                x = ds[l, h]
                n = int(np.count_nonzero(~np.isfinite(x)))
                if n and not bad:
                    t, d = np.argwhere(~np.isfinite(x))[0]
                    r.fail("/" + name, f"non-finite value at [{l}, {h}, {t}, {d}]")
                bad += n
    if not ("k_pre" in present and "k_post" in present):
        r.notes.append("k_pre or k_post not captured: RoPE check skipped")
        return
    kpre, kpost = f["k_pre"], f["k_post"]
    worst = 0.0
    for l in range(kpre.shape[0]):
        for h in range(kpre.shape[1]):
            pre = kpre[l, h].astype(np.float64)
            post = kpost[l, h].astype(np.float64)
            want, ia, ib = rope(pre, pos, m["model"], m["order"], m["bases"][l], m["windows"][l] > 0)
            # Rotation keeps each pair's length, so the float16 rounding of k_pre and of
            # k_post both stay within a few F16_EPS of that length.
            norm = np.sqrt(pre[:, ia] ** 2 + pre[:, ib] ** 2)
            tol = 4 * F16_EPS * norm + 2.0 ** -23
            err = np.maximum(np.abs(want[:, ia] - post[:, ia]), np.abs(want[:, ib] - post[:, ib]))
            ratio = err / tol
            worst = max(worst, float(ratio.max()) if ratio.size else 0.0)
            if np.any(ratio > 1):
                t, i = np.unravel_index(np.argmax(ratio), ratio.shape)
                r.fail("/k_post", f"not RoPE(k_pre) in {m['order']} order: layer slot {l}, head {h}, token {t}, "
                       f"pair {i}: got ({post[t, ia[i]]:.6g}, {post[t, ib[i]]:.6g}), "
                       f"expected ({want[t, ia[i]]:.6g}, {want[t, ib[i]]:.6g}) at pos {pos[t]}")
                return
            rest = np.setdiff1d(np.arange(pre.shape[1]), np.concatenate([ia, ib]))
            if rest.size and not np.array_equal(pre[:, rest], post[:, rest]):
                r.fail("/k_post", f"dims beyond n_rot differ from k_pre (layer slot {l}, head {h})")
                return
    r.notes.append(f"k_post = RoPE(k_pre) holds for every vector; worst error {worst:.3f} of the tolerance")


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    path = argv[1]
    r = Report(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        print(f"{path}: cannot open with h5py: {e}", file=sys.stderr)
        return 2
    with f:
        m = check_root(f, r)
        if m is not None and not r.failures:
            present = check_datasets(f, r, m)
            cols = check_tokens(f, r, m)
            if cols is not None and not r.failures:
                check_values(f, r, m, present, cols["pos"])
    if r.failures:
        for line in r.failures:
            print("FAIL " + line, file=sys.stderr)
        return 1
    for note in r.notes:
        print(f"{path}: {note}")
    print(f"{path}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
