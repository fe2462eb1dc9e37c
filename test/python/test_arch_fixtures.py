#!/usr/bin/python3
"""Independent check of test/fixtures/arch/: a float64 numpy forward pass over each GGUF
(parsed here, F32 tensors only) must reproduce the Hugging Face reference stored beside it.

It shares no code with pkv or with the script that made the fixtures, and shows that the
converted file and the reference describe the same model: Llama-3 frequency factors
(rope_freqs.weight), head_dim from key_length, Q/K/V biases, per-head Q/K RMSNorm,
NORM RoPE on the converter's permuted Q/K (llama) and NEOX RoPE (qwen2, qwen3), and
Gemma 3 (forward_gemma3): scaled embeddings, norms after attention and FFN, GeGLU,
sliding-window layers with their own RoPE base, read the way llama.cpp reads the file.

Checks per fixture: SHA256SUMS, q/k_pre/k_post/v of every layer and all logits, each
element within 1e-4 x (largest |ref| of its row) + 1e-5. Prints the worst
|diff| / rowmax per kind. For gemma3 each of its features, changed in the forward pass,
must also break the agreement (worst |diff| / rowmax above 100 x 1e-4): the check can see
them. Exit 0 when all hold, 1 otherwise.
"""
import hashlib
import json
import os
import struct
import sys

import numpy as np

ROOT = os.environ.get("PKV_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIXTURES = os.path.join(ROOT, "test", "fixtures", "arch")
NAMES = ["gemma3", "llama3", "mistral", "qwen2", "qwen3"]
REL, ABS = 1e-4, 1e-5

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.data[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def value(self, t):
        if t in SCALARS:
            return self.take(SCALARS[t])
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.take("<I"), self.take("<Q")
            return [self.value(et) for _ in range(n)]
        raise ValueError(f"unknown GGUF value type {t}")


def read_gguf(path):
    """(metadata dict, {name: float64 array in numpy order}) of an all-F32 GGUF v3 file."""
    with open(path, "rb") as f:
        data = f.read()
    r = Reader(data)
    assert data[:4] == b"GGUF", f"{path}: not GGUF"
    r.pos = 4
    version, n_tensors, n_kv = r.take("<I"), r.take("<Q"), r.take("<Q")
    assert version == 3, f"{path}: GGUF version {version}"
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.take("<Q") for _ in range(r.take("<I"))]
        ttype, offset = r.take("<I"), r.take("<Q")
        infos.append((name, dims, ttype, offset))
    align = meta.get("general.alignment", 32)
    base = (r.pos + align - 1) // align * align
    tensors = {}
    for name, dims, ttype, offset in infos:
        assert ttype == 0, f"{path}: tensor {name} has type {ttype}, expected F32 (0)"
        n = int(np.prod(dims))
        a = np.frombuffer(data, dtype="<f4", count=n, offset=base + offset)
        tensors[name] = a.reshape(list(reversed(dims))).astype(np.float64)
    return meta, tensors


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack_from("<Q", data, 0)[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F32": "<f4", "I32": "<i4"}
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + end], dtype=dtypes[e["dtype"]]).reshape(e["shape"])
    return meta, out


def rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, base, n_rot, factors, neox):
    """x [T, heads, hd]. NORM: pairs (2i, 2i+1); NEOX: pairs (i, i + n_rot/2)."""
    half = n_rot // 2
    theta = base ** (-2.0 * np.arange(half) / n_rot) / factors
    ang = pos[:, None] * theta[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    y = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:n_rot]
        y[..., :half], y[..., half:n_rot] = a * cos - b * sin, a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        y[..., 0:n_rot:2], y[..., 1:n_rot:2] = a * cos - b * sin, a * sin + b * cos
    return y


def to_hf(x, hd):
    """[T, heads*hd] in the converter's permuted order -> HF order."""
    t = x.reshape(x.shape[0], -1, hd // 2, 2)
    return np.concatenate([t[..., 0], t[..., 1]], axis=-1).reshape(x.shape)


def forward(meta, w, tokens):
    """Returns ({"blk.L.kind": [T, width] in HF order}, logits [T, V])."""
    arch = meta["general.architecture"]
    a = arch + "."
    n_embd, n_head = meta[a + "embedding_length"], meta[a + "attention.head_count"]
    n_kv = meta.get(a + "attention.head_count_kv", n_head)
    hd = meta.get(a + "attention.key_length", n_embd // n_head)
    n_rot = meta.get(a + "rope.dimension_count", hd)
    eps, base = meta[a + "attention.layer_norm_rms_epsilon"], meta.get(a + "rope.freq_base", 10000.0)
    neox = {"llama": False, "qwen2": True, "qwen3": True}[arch]
    factors = w.get("rope_freqs.weight", np.ones(n_rot // 2))
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    x = w["token_embd.weight"][tokens]
    acts = {}
    for l in range(meta[a + "block_count"]):
        p = f"blk.{l}."
        h = rms(x, w[p + "attn_norm.weight"], eps)
        q, k, v = (h @ w[p + f"attn_{n}.weight"].T + w.get(p + f"attn_{n}.bias", 0.0) for n in "qkv")
        q, k = q.reshape(T, n_head, hd), k.reshape(T, n_kv, hd)
        if p + "attn_q_norm.weight" in w:
            q, k = rms(q, w[p + "attn_q_norm.weight"], eps), rms(k, w[p + "attn_k_norm.weight"], eps)
        k_pre = k
        q, k = rope(q, pos, base, n_rot, factors, neox), rope(k, pos, base, n_rot, factors, neox)
        vv = v.reshape(T, n_kv, hd)
        fix = (lambda z: z.reshape(T, -1)) if neox else (lambda z: to_hf(z.reshape(T, -1), hd))
        acts.update({p + "q": fix(q), p + "k_pre": fix(k_pre), p + "k_post": fix(k), p + "v": v})
        g = n_head // n_kv
        att = np.einsum("thd,shd->hts", q, np.repeat(k, g, axis=1)) / np.sqrt(hd)
        att = np.where(np.tril(np.ones((T, T), bool))[None], att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, np.repeat(vv, g, axis=1)).reshape(T, -1)
        x = x + o @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"], eps)
        gate, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
    out = w.get("output.weight", w["token_embd.weight"])
    return acts, rms(x, w["output_norm.weight"], eps) @ out.T


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def gemma3_swa_layers(meta, n_layer):
    """Which layers use the sliding window, as llama.cpp decides for gemma3: none without
    attention.sliding_window; else attention.sliding_window_pattern (a per-layer bool array
    or a period n: layer l is local when l % n < n - 1), 6 when that key is absent."""
    a = "gemma3."
    if not meta.get(a + "attention.sliding_window"):
        return [False] * n_layer
    pattern = meta.get(a + "attention.sliding_window_pattern", 6)
    if isinstance(pattern, list):
        assert len(pattern) == n_layer, f"sliding_window_pattern has {len(pattern)} entries for {n_layer} layers"
        return [bool(p) for p in pattern]
    return [l % pattern < pattern - 1 for l in range(n_layer)]


# Changes of forward_gemma3 that must each break the agreement.
# (GELU with erf instead of tanh moves the result by only ~1.3e-4 of the row maximum here.)
GEMMA3_CHANGES = ["no sliding window", "window one longer", "only the last layer global", "global RoPE base everywhere",
                  "norm factor 1 + stored weight", "scale 1/sqrt(n_embd/n_head)", "no embedding scale",
                  "no post-attention/FFN norms", "NORM pairing"]


def forward_gemma3(meta, w, tokens, change=None):
    """Gemma 3 over the GGUF: embeddings times sqrt(n_embd); per layer x += N(attn(N(x)))
    and x += N(FFN(N(x))) with an RMSNorm before and after each; Q/K RMSNorm per head
    before NEOX RoPE, whose base is rope.freq_base_swa on local layers; local layers see
    the last `sliding_window` positions (t - s < window); FFN GELU(tanh)(gate) * up; scale
    1/sqrt(key_length); norm weights used as stored (the converter wrote 1 + w)."""
    a = "gemma3."
    n_embd, n_head, n_kv = meta[a + "embedding_length"], meta[a + "attention.head_count"], meta[a + "attention.head_count_kv"]
    hd, n_layer = meta[a + "attention.key_length"], meta[a + "block_count"]
    assert meta[a + "attention.value_length"] == hd and n_layer != 62  # 62 layers: llama.cpp's 27B scale
    eps = meta[a + "attention.layer_norm_rms_epsilon"]
    base, base_swa = meta[a + "rope.freq_base"], meta.get(a + "rope.freq_base_swa", 10000.0)
    window = meta.get(a + "attention.sliding_window", 0) + (change == "window one longer")
    swa = gemma3_swa_layers(meta, n_layer)
    if change == "only the last layer global":
        swa = [l < n_layer - 1 for l in range(n_layer)]
    scale = 1 / np.sqrt(n_embd / n_head if change == "scale 1/sqrt(n_embd/n_head)" else hd)
    norm = (lambda x, g: rms(x, g + 1.0, eps)) if change == "norm factor 1 + stored weight" else (lambda x, g: rms(x, g, eps))
    post = (lambda x, g: x) if change == "no post-attention/FFN norms" else norm
    neox = change != "NORM pairing"
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    x = w["token_embd.weight"][tokens] * (1.0 if change == "no embedding scale" else np.sqrt(n_embd))
    causal = np.tril(np.ones((T, T), bool))
    local = causal & (pos[:, None] - pos[None, :] < window)
    acts = {}
    for l in range(n_layer):
        p = f"blk.{l}."
        is_local = swa[l] and change != "no sliding window"
        b = base_swa if swa[l] and change != "global RoPE base everywhere" else base
        h = norm(x, w[p + "attn_norm.weight"])
        q, k, v = (h @ w[p + f"attn_{n}.weight"].T for n in "qkv")
        q = norm(q.reshape(T, n_head, hd), w[p + "attn_q_norm.weight"])
        k_pre = norm(k.reshape(T, n_kv, hd), w[p + "attn_k_norm.weight"])
        q, k = rope(q, pos, b, hd, np.ones(hd // 2), neox), rope(k_pre, pos, b, hd, np.ones(hd // 2), neox)
        acts.update({p + "q": q.reshape(T, -1), p + "k_pre": k_pre.reshape(T, -1), p + "k_post": k.reshape(T, -1),
                     p + "v": v})
        g = n_head // n_kv
        att = np.einsum("thd,shd->hts", q, np.repeat(k, g, axis=1)) * scale
        att = np.where((local if is_local else causal)[None], att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, np.repeat(v.reshape(T, n_kv, hd), g, axis=1)).reshape(T, -1)
        x = x + post(o @ w[p + "attn_output.weight"].T, w[p + "post_attention_norm.weight"])
        h = norm(x, w[p + "ffn_norm.weight"])
        f = (gelu_tanh(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        x = x + post(f, w[p + "post_ffw_norm.weight"])
    out = w.get("output.weight", w["token_embd.weight"])
    return acts, norm(x, w["output_norm.weight"]) @ out.T


def worst(got, want):
    rowmax = np.abs(want).max(axis=-1, keepdims=True)
    d = np.abs(got - want)
    return float((d / rowmax).max()), int((d > REL * rowmax + ABS).sum())


def check_sums(problems):
    path = os.path.join(FIXTURES, "SHA256SUMS")
    with open(path) as f:
        for line in f:
            digest, name = line.split()
            with open(os.path.join(FIXTURES, name), "rb") as g:
                if hashlib.sha256(g.read()).hexdigest() != digest:
                    problems.append(f"{name}: SHA-256 differs from SHA256SUMS")


def check(name, problems):
    meta, w = read_gguf(os.path.join(FIXTURES, name + ".gguf"))
    rmeta, ref = read_safetensors(os.path.join(FIXTURES, name + ".ref.safetensors"))
    if rmeta.get("dim_order") != "hf" or rmeta.get("arch") != meta["general.architecture"]:
        problems.append(f"{name}: reference metadata arch/dim_order {rmeta.get('arch')}/{rmeta.get('dim_order')}")
    if name == "llama3" and len(np.unique(w["rope_freqs.weight"])) < 3:
        problems.append(f"{name}: rope_freqs.weight has fewer than 3 distinct factors")
    tokens = ref["tokens"].astype(np.int64)
    gemma = meta["general.architecture"] == "gemma3"
    acts, logits = (forward_gemma3 if gemma else forward)(meta, w, tokens)
    acts["logits"] = logits
    by_kind = {}
    for key, got in sorted(acts.items()):
        ratio, bad = worst(got, ref[key].astype(np.float64))
        kind = key.split(".")[-1]
        by_kind[kind] = max(by_kind.get(kind, 0.0), ratio)
        if bad:
            problems.append(f"{name}: {key}: {bad} elements outside tolerance (worst |diff|/rowmax {ratio:.3g})")
    print(f"{name}: worst |diff|/rowmax " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(by_kind.items())))
    if gemma:
        check_gemma3_layout(name, rmeta, meta, problems)
        for change in GEMMA3_CHANGES:
            acts, logits = forward_gemma3(meta, w, tokens, change)
            acts["logits"] = logits
            ratio = max(worst(got, ref[key].astype(np.float64))[0] for key, got in acts.items())
            print(f"{name} with {change}: worst |diff|/rowmax {ratio:.3g}")
            if not ratio > 100 * REL:
                problems.append(f"{name}: with {change} the forward pass still agrees ({ratio:.3g})")


def check_gemma3_layout(name, rmeta, meta, problems):
    """The layer types, windows and RoPE bases the reference recorded must be what the
    GGUF says, read as llama.cpp reads it."""
    a = "gemma3."
    n_layer = meta[a + "block_count"]
    swa = gemma3_swa_layers(meta, n_layer)
    window = meta.get(a + "attention.sliding_window", 0)
    want = {"layer_types": ["sliding" if s else "full" for s in swa],
            "layer_window": [window if s else 0 for s in swa],
            "layer_rope_theta": [meta[a + "rope.freq_base_swa"] if s else meta[a + "rope.freq_base"] for s in swa]}
    for key, value in want.items():
        if json.loads(rmeta.get(key, "null")) != value:
            problems.append(f"{name}: reference {key} {rmeta.get(key)}, the GGUF says {value}")


def main():
    problems = []
    check_sums(problems)
    for name in NAMES:
        check(name, problems)
    for p in problems:
        print("FAIL", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
