#!/usr/bin/env python3
"""Independent float64 numpy forward pass of a Llama-architecture GGUF model.

A cross-check for pkv's C++ forward pass, written from the model's equations: it
reads and dequantizes the weights with the `gguf` package from PyPI and shares no
code with pkv.

Usage:
  ref_forward.py MODEL.gguf IDS [--ids-file F] [--kpost-layers 0,5,29 --out-dir D]

IDS is a comma- or space-separated list of token ids (or use --ids-file). Prints one
line per position i < n-1: "i nll(tokens[i+1]) argmax". With --out-dir, writes
k_pre_L.npy, k_post_L.npy, v_L.npy and q_L.npy ([n_tokens, heads*head_dim], float64,
GGUF dimension order) for each layer L of --kpost-layers.

Needs: numpy, gguf (run with the project's Python environment).
"""
import argparse
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field_value(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.parts[f.data[0]]
    if f.types and f.types[0].name == "STRING":
        return bytes(v).decode("utf-8")
    return v[0].item() if hasattr(v[0], "item") else v[0]


class Weights:
    """Dequantized tensors as float64, shaped [rows, row_length] (numpy order)."""

    def __init__(self, reader):
        self.tensors = {t.name: t for t in reader.tensors}

    def has(self, name):
        return name in self.tensors

    def get(self, name):
        t = self.tensors[name]
        w = dequantize(t.data, t.tensor_type).astype(np.float64)
        # ggml ne = [row_length, rows]; numpy shape is reversed.
        return w.reshape([int(x) for x in reversed(t.shape)])


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_interleaved(x, positions, n_head, head_dim, n_rot, base, freq_scale):
    """Rotates consecutive pairs (2i, 2i+1) of each head by pos * scale * base^(-2i/n_rot)."""
    n = x.shape[0]
    xh = x.reshape(n, n_head, head_dim).copy()
    i = np.arange(n_rot // 2, dtype=np.float64)
    ang = (positions[:, None].astype(np.float64) * freq_scale) * base ** (-2.0 * i / n_rot)[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    even, odd = xh[:, :, 0:n_rot:2].copy(), xh[:, :, 1:n_rot:2].copy()
    xh[:, :, 0:n_rot:2] = even * c - odd * s
    xh[:, :, 1:n_rot:2] = even * s + odd * c
    return xh.reshape(n, n_head * head_dim)


def forward(path, ids, capture_layers=()):
    reader = GGUFReader(path)
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"{path}: architecture {arch!r} is not llama")
    a = arch + "."
    n_embd = int(field_value(reader, a + "embedding_length"))
    n_layer = int(field_value(reader, a + "block_count"))
    n_head = int(field_value(reader, a + "attention.head_count"))
    n_kv = int(field_value(reader, a + "attention.head_count_kv", n_head))
    hd = int(field_value(reader, a + "attention.key_length", n_embd // n_head))
    n_rot = int(field_value(reader, a + "rope.dimension_count", hd))
    base = float(field_value(reader, a + "rope.freq_base", 10000.0))
    eps = float(field_value(reader, a + "attention.layer_norm_rms_epsilon"))
    factor = field_value(reader, a + "rope.scaling.factor", None)
    freq_scale = 1.0 / float(factor) if factor else 1.0

    W = Weights(reader)
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    emb = W.get("token_embd.weight")
    x = emb[ids].copy()
    pos = np.arange(n)
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    group = n_head // n_kv
    captured = {}
    for l in range(n_layer):
        p = f"blk.{l}."
        h = rms_norm(x, W.get(p + "attn_norm.weight"), eps)
        q = h @ W.get(p + "attn_q.weight").T
        k = h @ W.get(p + "attn_k.weight").T
        v = h @ W.get(p + "attn_v.weight").T
        k_pre = k.copy()
        q = rope_interleaved(q, pos, n_head, hd, n_rot, base, freq_scale)
        k = rope_interleaved(k, pos, n_kv, hd, n_rot, base, freq_scale)
        if l in capture_layers:
            captured[l] = dict(k_pre=k_pre, k_post=k.copy(), v=v.copy(), q=q.copy())
        out = np.empty((n, n_head * hd))
        for hh in range(n_head):
            g = hh // group
            qh, kh, vh = q[:, hh * hd:(hh + 1) * hd], k[:, g * hd:(g + 1) * hd], v[:, g * hd:(g + 1) * hd]
            s = qh @ kh.T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            out[:, hh * hd:(hh + 1) * hd] = (s / s.sum(axis=1, keepdims=True)) @ vh
        x = x + out @ W.get(p + "attn_output.weight").T
        h = rms_norm(x, W.get(p + "ffn_norm.weight"), eps)
        gate = h @ W.get(p + "ffn_gate.weight").T
        up = h @ W.get(p + "ffn_up.weight").T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ W.get(p + "ffn_down.weight").T
    x = rms_norm(x, W.get("output_norm.weight"), eps)
    out_w = W.get("output.weight") if W.has("output.weight") else emb
    logits = x @ out_w.T
    m = logits.max(axis=1, keepdims=True)
    logz = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
    nll = logz[:-1] - logits[np.arange(n - 1), ids[1:]]
    return nll, logits.argmax(axis=1)[:-1], captured


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("ids", nargs="?", default="")
    ap.add_argument("--ids-file")
    ap.add_argument("--kpost-layers", default="")
    ap.add_argument("--out-dir")
    args = ap.parse_args()
    text = open(args.ids_file).read() if args.ids_file else args.ids
    ids = [int(t) for t in text.replace(",", " ").split()]
    if len(ids) < 2:
        sys.exit("need at least 2 token ids")
    layers = [int(t) for t in args.kpost_layers.split(",") if t.strip()]
    nll, am, cap = forward(args.model, ids, set(layers))
    for i, (a, b) in enumerate(zip(nll, am)):
        print(f"{i} {a:.9f} {b}")
    print(f"# mean nll {nll.mean():.9f} ppl {np.exp(nll.mean()):.6f}", file=sys.stderr)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        for l, d in cap.items():
            for name, arr in d.items():
                np.save(os.path.join(args.out_dir, f"{name}_{l}.npy"), arr)


if __name__ == "__main__":
    main()
