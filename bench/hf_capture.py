#!/usr/bin/env python3
"""The peer of `pkv dump` in bench/dump_vs_hf.sh: a Hugging Face transformers Llama of the
shape bench/make_random_gguf.cpp wrote (its --json), random weights, bf16 on the GPU with
SDPA attention, run over the same token ids in batches of --batch sequences of --ctx tokens;
forward hooks on every layer's q_proj, k_proj and v_proj capture K before RoPE, K after
RoPE, V and Q after RoPE as fp16 (RoPE applied with the model's own rotary embedding, as
its attention applies it).

  --mode memory  the tensors are copied to pinned host memory (one batch, reused)
  --mode h5      ... and written with h5py, uncompressed, as pkv's dump lays them out:
                 /k_pre, /k_post, /v [layer, kv_head, token, dim], /q [layer, head, token, dim]
                 and /tokens/id

The decoder runs without the output matrix (a capture needs no logits; pkv dump also
computes every token's NLL). One batch runs first as warm-up, untimed (CUDA and cuBLAS
start-up; bench/dump_vs_hf.sh excludes pkv's start-up the same way); the timed part is
every batch from the first token: forward, copies, and in h5 mode the writes and closing
the file (with --fsync, also flushing it to disk, as `pkv dump` does unless --no-fsync).
Prints one JSON line: tokens, seconds, tokens_per_s, bytes (the file's size, or
the bytes copied to host memory).

Usage: hf_capture.py --shape SHAPE.json --ids IDS.bin --tokens N [--ctx 2048] [--batch 8]
                     --mode memory|h5 [--out FILE.h5] [--fsync] [--seed 0]
"""
import argparse
import json
import os
import sys
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", required=True, help="shape JSON from make_random_gguf --json")
    ap.add_argument("--ids", required=True, help="token ids, little-endian int32 (as pkv --token-ids)")
    ap.add_argument("--tokens", type=int, required=True, help="tokens to run, a multiple of --ctx")
    ap.add_argument("--ctx", type=int, default=2048, help="tokens per sequence")
    ap.add_argument("--batch", type=int, default=8, help="sequences per forward")
    ap.add_argument("--mode", choices=["memory", "h5"], required=True)
    ap.add_argument("--out", help="HDF5 output (--mode h5)")
    ap.add_argument("--fsync", action="store_true", help="flush the file to disk before the clock stops (--mode h5)")
    ap.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    a = ap.parse_args()
    if a.tokens < 1 or a.ctx < 1 or a.batch < 1 or a.tokens % a.ctx:
        sys.exit(f"hf_capture: --tokens {a.tokens} must be a positive multiple of --ctx {a.ctx}")
    if a.mode == "h5" and not a.out:
        sys.exit("hf_capture: --mode h5 needs --out")
    try:
        import torch
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
        from transformers.models.llama.modeling_llama import rotate_half
    except ImportError as e:
        sys.exit(f"hf_capture: {e}: needs PyTorch and transformers")
    if not torch.cuda.is_available():
        sys.exit("hf_capture: no CUDA device visible to PyTorch")
    s = json.load(open(a.shape))
    ids = np.fromfile(a.ids, dtype="<i4")
    if ids.size < a.tokens:
        sys.exit(f"hf_capture: {a.ids} holds {ids.size} ids, fewer than --tokens {a.tokens}")
    ids = ids[: a.tokens]
    if ids.min() < 0 or ids.max() >= s["n_vocab"]:
        sys.exit(f"hf_capture: {a.ids}: ids outside [0, {s['n_vocab']})")
    L, H, Hkv, D = s["n_layer"], s["n_head"], s["n_head_kv"], s["head_dim"]
    if H * D != s["n_embd"]:
        sys.exit(f"hf_capture: head_dim {D} * heads {H} != n_embd {s['n_embd']}: not a shape LlamaConfig makes")

    cfg = LlamaConfig(vocab_size=s["n_vocab"], hidden_size=s["n_embd"], intermediate_size=s["n_ff"],
                      num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=Hkv,
                      max_position_embeddings=s["n_ctx"], rope_theta=s["rope_base"], rms_norm_eps=s["rms_eps"],
                      tie_word_embeddings=s["tied_embeddings"])
    torch.manual_seed(a.seed)
    # Parameters are made in bf16 on the GPU directly (no fp32 copy of an 8B model first).
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")
    torch.set_default_dtype(torch.float32)
    model.eval()
    dev = torch.device("cuda")

    seqs = torch.from_numpy(ids.astype(np.int64)).view(-1, a.ctx).to(dev)
    n_max = min(a.batch, seqs.shape[0]) * a.ctx
    heads = {"k_pre": Hkv, "k_post": Hkv, "v": Hkv, "q": H}
    # One batch of every tensor in pinned memory, flat, so that a batch of n tokens is the
    # contiguous view [L, heads, n, D] of its start (copies land in one block each).
    flat = {k: torch.empty(L * h * n_max * D, dtype=torch.float16, pin_memory=True) for k, h in heads.items()}
    host = {}
    with torch.inference_mode():
        pos = torch.arange(a.ctx, device=dev)[None]
        # The model's rotary embedding (one per model since transformers 4.45, per layer before).
        rotary = getattr(model.model, "rotary_emb", None) or model.model.layers[0].self_attn.rotary_emb
        cos, sin = rotary(torch.zeros(1, dtype=torch.bfloat16, device=dev), pos)
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [1, ctx, 1, D]

    def capture(layer, name, x, rope):
        b, t, _ = x.shape
        h = heads[name]
        x = x.view(b, t, h, D)
        if rope:
            x = x * cos + rotate_half(x) * sin
        y = x.permute(2, 0, 1, 3).to(torch.float16).reshape(h, b * t, D)
        host[name][layer].copy_(y, non_blocking=True)

    def hook(layer, kind):
        def f(_module, _inputs, out):
            if kind == "k":
                capture(layer, "k_pre", out, False)
                capture(layer, "k_post", out, True)
            elif kind == "v":
                capture(layer, "v", out, False)
            else:
                capture(layer, "q", out, True)
        return f

    for l, blk in enumerate(model.model.layers):
        blk.self_attn.q_proj.register_forward_hook(hook(l, "q"))
        blk.self_attn.k_proj.register_forward_hook(hook(l, "k"))
        blk.self_attn.v_proj.register_forward_hook(hook(l, "v"))

    def run(batch):
        n = batch.numel()
        for k, h in heads.items():
            host[k] = flat[k][: L * h * n * D].view(L, h, n, D)
        model.model(input_ids=batch, use_cache=False)
        torch.cuda.synchronize()
        return n

    f = None
    if a.mode == "h5":
        import h5py
        f = h5py.File(a.out, "w")
        ds = {k: f.create_dataset(k, (L, h, a.tokens, D), dtype="float16") for k, h in heads.items()}
        f.create_dataset("tokens/id", data=ids.astype("<i4"))
    with torch.inference_mode():
        run(seqs[: a.batch])  # warm-up, untimed
        t0 = time.perf_counter()
        done = 0
        for b0 in range(0, seqs.shape[0], a.batch):
            n = run(seqs[b0: b0 + a.batch])
            if f is not None:
                for k in heads:
                    ds[k][:, :, done: done + n, :] = host[k].numpy()
            done += n
            print(f"hf_capture: {done}/{a.tokens} tokens", file=sys.stderr)
        if f is not None:
            f.close()
            if a.fsync:
                fd = os.open(a.out, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        seconds = time.perf_counter() - t0
    per_token = 2 * D * (3 * Hkv + H) * L
    nbytes = os.path.getsize(a.out) if a.mode == "h5" else per_token * a.tokens
    print(json.dumps({"tool": "transformers", "mode": a.mode, "fsync": bool(a.fsync), "tokens": a.tokens, "seconds": round(seconds, 3),
                      "tokens_per_s": round(a.tokens / seconds, 1), "bytes": nbytes, "ctx": a.ctx,
                      "batch": a.batch, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
