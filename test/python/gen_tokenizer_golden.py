#!/usr/bin/env python3
"""Makes the golden token ids of test/unit/tokenizer/test_tokenizer_real.cpp.

The reference is independent of pkv's C++ tokenizer: it reads the vocabulary and the
merges from the GGUF with the `gguf` package and builds a byte-level BPE tokenizer
with the `tokenizers` package:
  pre-tokenizer  Sequence([Digits(individual_digits=True),
                           ByteLevel(add_prefix_space=False, use_regex=True)])
  model          BPE(vocab, merges), no unknown token (bytes with no token vanish)
  decoder        ByteLevel
  added tokens   every control (3) and user-defined (4) token; control ones special

This is how the goldens were made; CI does not run it. Usage:
  python gen_tokenizer_golden.py MODEL.gguf                print the C++ golden table
  python gen_tokenizer_golden.py MODEL.gguf --file TEXT    print the ids of TEXT's
                                                           contents, one per line
  (add --special to --file to recognise special-token strings in the text)
Needs: pip install gguf tokenizers
"""
import argparse
import sys

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

# (name, text, parse_special): the strings the C++ test checks.
CASES = [
    ("hello_comma", "Hello, we can use", False),
    ("capital", "The capital of France is", False),
    ("newline", "\n", False),
    ("hello_digits", "Hello world! 123", False),
    ("letter_two_spaces_digit", "a  1", False),
    ("newlines_digit", "x\n\n2", False),
    ("two_spaces_digit", "  1", False),
    ("pi", "3.14159", False),
    ("multiple_spaces", "  multiple   spaces", False),
    ("tabs", "a\tb\t\tc \t d\t", False),
    ("three_newlines", "\n\n\n", False),
    ("trailing_spaces", "end   ", False),
    ("contraction_dont", "don't", False),
    ("contraction_well", "WE'LL", False),
    ("contractions_mixed", "I'm sure they've said you'd go, it's what we'll do", False),
    ("accents", "Café déjà vu, naïve façade, Ærøskøbing", False),
    ("cjk", "日本語のテキストと中文", False),
    ("emoji", "I love 🦙 and 👍🏽!", False),
    ("fullwidth_digits", "Ⅻ ١٢٣ ４５", False),
    ("unicode_spaces", "a\u00a0b\u2003 c\u3000\u3000d\u180e'x\r\n\u180e\u2028e\x85 f\u000b\u000c 7", False),
    ("chat_special_on", "<|im_start|>user\nhi<|im_end|>", True),
    ("chat_special_off", "<|im_start|>user\nhi<|im_end|>", False),
    ("adjacent_specials", "<|endoftext|><|im_start|>x <|im_end|>\n", True),
    ("paragraph",
     "The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon; "
     "the crew -- Armstrong, Aldrin & Collins -- returned on July 24th.\n\n"
     "    def f(x):\n        return x**2 + 3.5e-10  # comment\n"
     "Prices rose 12.5% (from $3,400 to $3,825) — \"quite a jump\", she said.", False),
]


def field_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def field_ints(reader, key):
    f = reader.fields[key]
    return [int(f.parts[i][0]) for i in f.data]


def build(path):
    reader = gguf.GGUFReader(path)
    tokens = field_strings(reader, "tokenizer.ggml.tokens")
    types = field_ints(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field_strings(reader, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    added = [AddedToken(t, special=(ty == 3), normalized=False)
             for t, ty in zip(tokens, types) if ty in (3, 4)]
    tok.add_tokens(added)
    return tok


def encode(tok, text, parse_special):
    # Special tokens are matched unless encode_special_tokens asks to treat them as text.
    tok.encode_special_tokens = not parse_special
    return tok.encode(text, add_special_tokens=False).ids


def cpp_string(s):
    out = []
    for b in s.encode("utf-8"):
        c = chr(b)
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif 0x20 <= b < 0x7F:
            out.append(c)
        else:
            out.append("\\%03o" % b)  # octal: at most three digits, so never ambiguous
    return '"' + "".join(out) + '"'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--file")
    ap.add_argument("--special", action="store_true")
    args = ap.parse_args()
    tok = build(args.model)
    if args.file:
        with open(args.file, encoding="utf-8") as fh:
            text = fh.read()
        sys.stdout.write("".join(f"{i}\n" for i in encode(tok, text, args.special)))
        return
    for name, text, special in CASES:
        ids = encode(tok, text, special)
        print(f'    {{"{name}", {cpp_string(text)}, {"true" if special else "false"},')
        print(f'     {{{", ".join(str(i) for i in ids)}}}}},')


if __name__ == "__main__":
    main()
