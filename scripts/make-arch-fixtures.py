#!/usr/bin/env python3
"""Builds the tiny reference models of test/fixtures/arch/ (see its README.md).

For each fixture (gemma3, llama3, mistral, qwen2, qwen3) it
  1. trains a small tokenizer on a text generated here from a fixed seed: a byte-level
     BPE with the `tokenizers` package, or for gemma3 a SentencePiece BPE model
     (tokenizer.model, byte fallback) with the `sentencepiece` package,
  2. builds a tiny random float32 model with Hugging Face `transformers`, draws every
     parameter itself (norm weights and biases included, so that each feature of the
     architecture changes the result) and saves it as a model directory,
  3. converts that directory with llama.cpp's own convert_hf_to_gguf.py --outtype f32,
  4. reloads the saved model (attn_implementation="eager", float32, CPU), runs it on a
     fixed token sequence and writes the reference activations and logits.

Outputs: OUT/<name>.gguf, OUT/<name>.ref.safetensors and OUT/SHA256SUMS.

The reference file holds (all row-major, one row per token):
  tokens            I32 [T]
  logits            F32 [T, n_vocab]
  blk.L.q           F32 [T, n_head*head_dim]     query after RoPE
  blk.L.k_pre       F32 [T, n_head_kv*head_dim]  key entering RoPE (qwen3, gemma3: after k_norm)
  blk.L.k_post      F32 [T, n_head_kv*head_dim]  key after RoPE
  blk.L.v           F32 [T, n_head_kv*head_dim]  value (with its bias where there is one)
Heads are contiguous blocks of head_dim and dimensions are in Hugging Face's order
("dim_order": "hf"): for rotate-half RoPE, dims i and i + head_dim/2 form a pair.
The activations are taken from the model's own code: the modeling module's
apply_rotary_pos_emb is wrapped (its inputs are q/k before RoPE, its outputs q/k after)
and v_proj carries a forward hook; nothing here recomputes the model's math.

Pre-tokenizer name: the converter identifies the pre-tokenizer by hashing the encoding
of a fixed text and only knows published tokenizers, so a toy tokenizer would stop the
conversion. This script replaces TextModel.get_vocab_base_pre in the converter's
process to return "llama-bpe" (llama3, mistral) or "qwen2" (qwen2, qwen3); the toy
tokenizers use the split patterns of those pre-tokenizers, so the names are true.
gemma3 needs no such override: with a tokenizer.model the converter writes a
SentencePiece ("llama") vocabulary with pre-tokenizer "default", as for Gemma 3 itself.

Gemma's RMSNorm multiplies by (1 + weight); the script draws those weights so that the
factor 1 + w lies where the other fixtures' norm weights do, and checks that the
converter wrote 1 + w into the GGUF (the reference metadata says so: norm_weights).

Usage:
  make-arch-fixtures.py --llama-cpp DIR [--out DIR] [--work DIR] [--only NAME ...]
DIR is a llama.cpp source tree (convert_hf_to_gguf.py, conversion/, gguf-py/; its
version is read from DIR/VERSION or ../VERSION when present).
Needs: torch, transformers, tokenizers, sentencepiece, safetensors, numpy (and PyYAML,
which gguf-py imports).
"""
import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

SEED = 20240611
N_TOKENS = 24

# Split patterns of the two pre-tokenizers (facts about the published tokenizers).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

TOKENIZERS = {
    "llama-bpe": {"split": LLAMA3_SPLIT, "vocab_size": 384,
                  "special": ["<|begin_of_text|>", "<|end_of_text|>"], "bos": "<|begin_of_text|>",
                  "eos": "<|end_of_text|>"},
    "qwen2": {"split": QWEN2_SPLIT, "vocab_size": 352,
              "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "bos": None,
              "eos": "<|im_end|>"},
    # SentencePiece BPE as Gemma's: ids 0-3 are <pad>, </s>, <s>, <unk>, then 256 byte
    # pieces (byte fallback), digits split, no dummy prefix, no normalization.
    "spm": {"vocab_size": 512, "pad": 0, "eos": 1, "bos": 2, "unk": 3},
}

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, attention_dropout=0.0)

# Gemma 3: 5 sliding-window layers, then 1 global one. The converter does not write this
# pattern; llama.cpp assumes 6 for gemma3 unless <arch>.attention.sliding_window_pattern is
# present, so the fixture uses 6 (and 8 layers, so that a local layer follows the global one).
GEMMA3_PATTERN = 6
GEMMA3_LAYERS = 8

# name -> (HF class, tokenizer, config arguments (override COMMON), GGUF architecture)
FIXTURES = {
    "gemma3": ("Gemma3ForCausalLM", "spm",
               dict(head_dim=32, num_key_value_heads=1, num_hidden_layers=GEMMA3_LAYERS, rms_norm_eps=1e-6,
                    hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, attention_bias=False,
                    # The GGUF has no key for the attention scale: llama.cpp uses
                    # 1/sqrt(key_length) except for the 62-layer (27B) model. Any other
                    # query_pre_attn_scalar would describe a model the file cannot.
                    query_pre_attn_scalar=32,
                    sliding_window=8, sliding_window_pattern=GEMMA3_PATTERN,
                    layer_types=["full_attention" if (i + 1) % GEMMA3_PATTERN == 0 else "sliding_attention"
                                 for i in range(GEMMA3_LAYERS)],
                    rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                    final_logit_softcapping=None, attn_logit_softcapping=None),
               "gemma3"),
    "llama3": ("LlamaForCausalLM", "llama-bpe",
               dict(head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                    attention_bias=False, mlp_bias=False,
                    # A small original context makes the factors differ across dims:
                    # with head_dim 16 and base 1e4, wavelengths 6.3 (< 64/4: factor 1),
                    # 19.9 and 62.8 (smoothed) and the rest (> 64: factor 8).
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
               "llama"),
    "mistral": ("MistralForCausalLM", "llama-bpe",
                dict(head_dim=32, rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None,
                     tie_word_embeddings=False),
                "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2",
              dict(rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                   use_sliding_window=False, sliding_window=None),
              "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen2",
              dict(head_dim=32, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
                   attention_bias=False, use_sliding_window=False, sliding_window=None),
              "qwen3"),
}

WORDS = ("the a of to and in key value cache pattern table layer head token model rope query "
         "norm bias weight matrix vector row column block sum mean error small large fast slow "
         "quantize restore compare measure write read file text number zero one two three four "
         "five six seven eight nine ten red green blue north south east west river stone cloud "
         "light dark early late open close begin end left right upper lower inner outer").split()
PUNCT = [".", ",", ";", ":", "!", "?", "'s", "'ll", "'re", " -", " (", ")", "\"", "..."]


def corpus_text(seed=SEED, n_lines=160):
    """A few KB of deterministic text with words, numbers, punctuation and newlines."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        parts = []
        for _ in range(rng.randint(4, 11)):
            r = rng.random()
            if r < 0.78:
                w = rng.choice(WORDS)
                parts.append(w.capitalize() if rng.random() < 0.12 else w)
            elif r < 0.9:
                parts.append(str(rng.randint(0, 99999)))
            else:
                parts[-1:] = [(parts[-1] if parts else "") + rng.choice(PUNCT)]
        sep = "\n\n" if i % 9 == 8 else "\n"
        lines.append(" ".join(parts) + sep)
    return "".join(lines)


def train_sentencepiece(out_dir):
    """Trains a SentencePiece BPE model on corpus_text() and writes out_dir/tokenizer.model
    (and the tokenizer_config.json flags the converter reads for BOS/EOS)."""
    import io

    import sentencepiece as spm

    spec = TOKENIZERS["spm"]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_text().splitlines(keepends=True)), model_writer=proto, model_type="bpe",
        vocab_size=spec["vocab_size"], character_coverage=1.0, byte_fallback=True, split_digits=True,
        add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, pad_id=spec["pad"], eos_id=spec["eos"], bos_id=spec["bos"],
        unk_id=spec["unk"], num_threads=1, shuffle_input_sentence=False, minloglevel=2)
    (out_dir / "tokenizer.model").write_bytes(proto.getvalue())
    (out_dir / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False}))
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    assert sp.vocab_size() == spec["vocab_size"], sp.vocab_size()
    return sp.vocab_size(), spec["eos"], spec["bos"]


def train_tokenizer(pre, out_dir):
    """Trains a byte-level BPE on corpus_text() and saves it as a fast tokenizer ("spm":
    a SentencePiece model instead). Returns (vocabulary size, EOS id, BOS id or None)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if pre == "spm":
        return train_sentencepiece(out_dir)
    spec = TOKENIZERS[pre]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec["split"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec["vocab_size"], special_tokens=spec["special"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_text().splitlines(keepends=True), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec["bos"], eos_token=spec["eos"])
    fast.save_pretrained(out_dir)
    return tok.get_vocab_size(with_added_tokens=True), tok.token_to_id(spec["eos"]), \
        (tok.token_to_id(spec["bos"]) if spec["bos"] else None)


# Model classes whose config class is not named after them (Gemma3Config is multimodal).
CONFIG_CLASS = {"Gemma3ForCausalLM": "Gemma3TextConfig"}

# Fixtures whose RMSNorm multiplies by (shift + weight) instead of weight.
NORM_SHIFT = {"gemma3": 1.0}


def init_parameters(model, torch, seed, norm_shift=0.0):
    """Draws every parameter: embeddings N(0,1), matrices N(0, 1/fan_in), norm factors
    U(0.6, 1.4) (the weight is the factor minus norm_shift), biases N(0, 0.2^2); the draws
    depend only on the seed and names."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=gen) - norm_shift)
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[1]))


def rope_arguments(cfg_cls, args):
    """Newer transformers take RoPE settings as one `rope_parameters` dict (theta
    included) instead of rope_theta + rope_scaling."""
    import inspect

    if "rope_parameters" in args or "rope_parameters" not in inspect.signature(cfg_cls.__init__).parameters:
        return args
    args = dict(args)
    rope = dict(args.pop("rope_scaling", None) or {"rope_type": "default"})
    rope["rope_theta"] = args.pop("rope_theta")
    args["rope_parameters"] = rope
    return args


def build_model(name, model_dir):
    import torch
    import transformers

    cls_name, pre, args, _ = FIXTURES[name]
    n_vocab, eos_id, bos_id = train_tokenizer(pre, model_dir)
    cfg_cls = getattr(transformers, CONFIG_CLASS.get(cls_name, cls_name.replace("ForCausalLM", "Config")))
    cfg = cfg_cls(vocab_size=n_vocab, bos_token_id=bos_id, eos_token_id=eos_id,
                  **rope_arguments(cfg_cls, {**COMMON, **args}))
    torch.manual_seed(SEED)
    model = getattr(transformers, cls_name)(cfg).to(torch.float32)
    init_parameters(model, torch, SEED + sum(map(ord, name)), NORM_SHIFT.get(name, 0.0))
    model.save_pretrained(model_dir, safe_serialization=True)
    return n_vocab


def convert(name, model_dir, gguf_path, lcpp):
    """Runs llama.cpp's converter in this process with the pre-tokenizer name fixed."""
    sys.path.insert(0, str(lcpp))
    sys.path.insert(0, str(lcpp / "gguf-py"))
    import convert_hf_to_gguf
    from conversion.base import TextModel

    pre = FIXTURES[name][1]
    if pre != "spm":
        TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outtype", "f32", "--outfile", str(gguf_path),
                "--model-name", f"pkv-arch-{name}"]
    try:
        convert_hf_to_gguf.main()
    finally:
        sys.argv = argv


def fixed_tokens(n_vocab, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, n_vocab - 1, size=N_TOKENS).astype(np.int32)
    ids[3] = 0
    ids[11] = n_vocab - 1
    return ids


def rows(x):
    """[1, heads, T, hd] -> [T, heads*hd] float32 (heads as contiguous blocks)."""
    x = x.detach().to("cpu").float()
    b, h, t, d = x.shape
    assert b == 1
    return x[0].permute(1, 0, 2).reshape(t, h * d).contiguous().numpy()


def reference(name, model_dir, tokens):
    """Runs the saved model and returns the reference tensors (see the module doc)."""
    import torch
    import transformers

    cls_name = FIXTURES[name][0]
    cls = getattr(transformers, cls_name)
    model = cls.from_pretrained(model_dir, attn_implementation="eager")
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters()), f"{name}: weights are not float32"
    module = sys.modules[cls.__module__]
    original = module.apply_rotary_pos_emb
    layers = model.model.layers
    state = {"layer": None}
    out = {}

    def wrapped(q, k, *args, **kwargs):
        q_rot, k_rot = original(q, k, *args, **kwargs)
        l = state["layer"]
        assert l is not None and f"blk.{l}.q" not in out, f"unexpected RoPE call in layer {l}"
        out[f"blk.{l}.k_pre"] = rows(k)
        out[f"blk.{l}.q"] = rows(q_rot)
        out[f"blk.{l}.k_post"] = rows(k_rot)
        return q_rot, k_rot

    handles = []
    for l, layer in enumerate(layers):
        handles.append(layer.self_attn.register_forward_pre_hook(lambda m, a, l=l: state.update(layer=l)))
        handles.append(layer.self_attn.v_proj.register_forward_hook(
            lambda m, a, o, l=l: out.__setitem__(f"blk.{l}.v", o[0].detach().float().numpy().copy())))
    module.apply_rotary_pos_emb = wrapped
    try:
        with torch.no_grad():
            logits = model(torch.from_numpy(tokens.astype(np.int64))[None, :]).logits[0]
    finally:
        module.apply_rotary_pos_emb = original
        for h in handles:
            h.remove()
    for l in range(len(layers)):
        for kind in ("q", "k_pre", "k_post", "v"):
            assert f"blk.{l}.{kind}" in out, f"{name}: layer {l} produced no {kind}"
    out["logits"] = logits.float().numpy().copy()
    out["tokens"] = tokens
    return model, out


def llama3_factors_check(model, torch):
    """The model's inverse frequencies must differ from the plain ones by more than one
    factor, or the fixture would not exercise rope_freqs."""
    cfg = model.config
    hd = cfg.head_dim
    theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    plain = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ratio = (plain / model.model.rotary_emb.inv_freq.double()).numpy()
    distinct = np.unique(np.round(ratio, 6))
    assert len(distinct) >= 3, f"llama3 frequency factors are not varied enough: {ratio}"
    return ratio


def metadata(name, model, n_vocab, lcpp_version):
    import tokenizers
    import torch
    import transformers

    cls_name, pre, _, arch = FIXTURES[name]
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    meta = {
        "fixture": name, "arch": arch, "hf_class": cls_name, "dim_order": "hf",
        "tokenizer_pre": pre, "seed": str(SEED),
        "n_vocab": str(n_vocab), "n_embd": str(cfg.hidden_size), "n_ff": str(cfg.intermediate_size),
        "n_layer": str(cfg.num_hidden_layers), "n_head": str(cfg.num_attention_heads),
        "n_head_kv": str(cfg.num_key_value_heads), "head_dim": str(head_dim),
        "rms_eps": repr(cfg.rms_norm_eps), "tied_output": str(bool(cfg.tie_word_embeddings)).lower(),
        "hf_config": json.dumps(json.loads(cfg.to_json_string(use_diff=True)), sort_keys=True),
        "transformers": transformers.__version__, "torch": torch.__version__,
        "tokenizers": tokenizers.__version__, "numpy": np.__version__,
        "llama_cpp": lcpp_version, "converter": "convert_hf_to_gguf.py --outtype f32",
        "attn_implementation": "eager", "dtype": "float32", "device": "cpu",
    }
    if pre == "spm":
        import sentencepiece

        meta.update(tokenizer_pre="default", tokenizer="sentencepiece bpe", sentencepiece=sentencepiece.__version__)
    if arch == "gemma3":
        meta.update(layer_attention(model))
    return meta


def layer_attention(model):
    """Per layer: attention type, window (0: none), RoPE base and the scale of q.k, as the
    model's own modules hold them; plus the embedding scale and how norms apply weights."""
    cfg = model.config
    kinds, windows, scales = [], [], []
    for layer in model.model.layers:
        att = layer.self_attn
        assert att.layer_type in ("sliding_attention", "full_attention"), att.layer_type
        kinds.append("sliding" if att.layer_type == "sliding_attention" else "full")
        windows.append(int(att.sliding_window or 0))
        scales.append(float(att.scaling))
    assert "sliding" in kinds and "full" in kinds, f"the fixture needs local and global layers: {kinds}"
    assert len(set(scales)) == 1, scales
    thetas = [cfg.rope_parameters[cfg.layer_types[l]]["rope_theta"] for l in range(len(kinds))]
    assert len(set(thetas)) == 2, f"local and global RoPE bases should differ: {thetas}"
    return {"layer_types": json.dumps(kinds), "layer_window": json.dumps(windows),
            "layer_rope_theta": json.dumps(thetas), "attn_scale": repr(scales[0]),
            "query_pre_attn_scalar": repr(cfg.query_pre_attn_scalar),
            "embed_scale": repr(float(model.model.embed_tokens.embed_scale)),
            "hidden_activation": cfg.hidden_activation,
            "norm_weights": "gguf = 1 + hf (the model multiplies by 1 + weight)"}


# Gemma 3's norm tensors: Hugging Face name (after model.layers.L.) -> GGUF name (after blk.L.).
GEMMA3_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
                "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
                "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}


def check_norm_shift(model, gguf_path, shift):
    """Every norm weight in the GGUF must be exactly the model's weight + shift (float32),
    so that a reader multiplies by the stored value as for the other architectures."""
    from gguf import GGUFReader

    stored = {t.name: np.asarray(t.data) for t in GGUFReader(str(gguf_path)).tensors}
    pairs = [("model.norm.weight", "output_norm.weight")]
    for l in range(model.config.num_hidden_layers):
        pairs += [(f"model.layers.{l}.{h}.weight", f"blk.{l}.{g}.weight") for h, g in GEMMA3_NORMS.items()]
    params = dict(model.named_parameters())
    assert sum("norm" in n for n in params) == len(pairs), sorted(n for n in params if "norm" in n)
    for hf, gg in pairs:
        want = params[hf].detach().numpy() + np.float32(shift)
        assert np.array_equal(stored[gg], want), f"{gg}: not {hf} + {shift}"


def llama_cpp_version(lcpp):
    for p in (lcpp / "VERSION", lcpp.parent / "VERSION"):
        if p.is_file():
            return p.read_text().strip()
    return "unknown"


def write_safetensors(path, tensors, meta):
    """A safetensors file with tensors and header keys in name order, so that the same
    content always gives the same bytes (the `safetensors` package orders metadata by
    hash). Header padded with spaces to a multiple of 8."""
    dtypes = {np.dtype("float32"): "F32", np.dtype("int32"): "I32"}
    header, blobs, offset = {"__metadata__": dict(sorted(meta.items()))}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        blob = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def make_one(name, out_dir, work, lcpp):
    import torch
    from safetensors.numpy import load_file

    model_dir = work / name
    model_dir.mkdir(parents=True, exist_ok=True)
    n_vocab = build_model(name, model_dir)
    gguf_path = out_dir / f"{name}.gguf"
    convert(name, model_dir, gguf_path, lcpp)
    tokens = fixed_tokens(n_vocab, SEED + 1)
    model, ref = reference(name, model_dir, tokens)
    meta = metadata(name, model, n_vocab, llama_cpp_version(lcpp))
    if name in NORM_SHIFT:
        check_norm_shift(model, gguf_path, NORM_SHIFT[name])
    if name == "llama3":
        meta["rope_freq_factors_hf"] = json.dumps([round(float(x), 6) for x in llama3_factors_check(model, torch)])
    path = out_dir / f"{name}.ref.safetensors"
    write_safetensors(path, ref, meta)
    back = load_file(str(path))  # the reference reader must read back what was written
    assert back.keys() == ref.keys() and all(np.array_equal(back[k], ref[k]) for k in ref), path
    print(f"{name}: n_vocab {n_vocab}, tokens {tokens.tolist()}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-cpp", required=True, type=Path, help="llama.cpp source tree")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "test/fixtures/arch")
    ap.add_argument("--work", type=Path, help="where the HF model dirs go (default: a temp dir)")
    ap.add_argument("--only", nargs="*", choices=sorted(FIXTURES), help="fixtures to make (default: all)")
    a = ap.parse_args()
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.work or Path(tempfile.mkdtemp(prefix="pkv-arch-"))
    for name in a.only or sorted(FIXTURES):
        make_one(name, a.out, work, a.llama_cpp.resolve())
    sums = []
    for p in sorted(a.out.iterdir()):
        if p.suffix in (".gguf", ".safetensors"):
            sums.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n")
    (a.out / "SHA256SUMS").write_text("".join(sums))
    print("".join(sums), end="")


if __name__ == "__main__":
    main()
