"""Writes a copy of a GGUF file with edits, for bad-input tests (PyPI's gguf package, not pkv).

  forge_gguf.py IN OUT [--drop-tensor NAME] [--resize-tensor NAME N] [--set-str KEY VALUE]
                [--set-f32 KEY VALUE] [--set-u32 KEY VALUE] [--set-arch ARCH] [--drop-key KEY]
                [--set-token ID TEXT TYPE]

--resize-tensor keeps the first N values of a 1-D F32 tensor; --set-arch renames
general.architecture and every key under the old architecture's prefix; --set-token rewrites
one entry of tokenizer.ggml.tokens and tokenizer.ggml.token_type. A --set-* of a key the file
already has replaces it.
"""
import argparse

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

p = argparse.ArgumentParser()
p.add_argument("inp")
p.add_argument("out")
p.add_argument("--drop-tensor", action="append", default=[])
p.add_argument("--resize-tensor", nargs=2, action="append", default=[])
p.add_argument("--set-str", nargs=2, action="append", default=[])
p.add_argument("--set-f32", nargs=2, action="append", default=[])
p.add_argument("--set-u32", nargs=2, action="append", default=[])
p.add_argument("--set-arch")
p.add_argument("--drop-key", action="append", default=[])
p.add_argument("--set-token", nargs=3, action="append", default=[])
a = p.parse_args()

r = GGUFReader(a.inp)
old_arch = r.fields["general.architecture"].contents()
arch = a.set_arch or old_arch
w = GGUFWriter(a.out, arch)
skip = {"general.architecture", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", *a.drop_key,
        *(k for k, _ in a.set_str + a.set_f32 + a.set_u32)}
token_edits = {"tokenizer.ggml.tokens": {int(i): s for i, s, _ in a.set_token},
               "tokenizer.ggml.token_type": {int(i): int(t) for i, _, t in a.set_token}}
for key, f in r.fields.items():
    if key in skip:
        continue
    name = arch + key[len(old_arch):] if key.startswith(old_arch + ".") else key
    t = f.types[0]
    if t == GGUFValueType.ARRAY:
        values = f.contents()
        for i, v in token_edits.get(key, {}).items():
            values[i] = v
        w.add_array(name, values)
    elif t == GGUFValueType.STRING:
        w.add_string(name, f.contents())
    else:
        w.add_key_value(name, f.contents(), t)
for k, v in a.set_str:
    w.add_string(k, v)
for k, v in a.set_f32:
    w.add_float32(k, float(v))
for k, v in a.set_u32:
    w.add_uint32(k, int(v))
resize = {n: int(k) for n, k in a.resize_tensor}
for t in r.tensors:
    if t.name in a.drop_tensor:
        continue
    data = np.array(t.data)
    if t.name in resize:
        data = data[: resize[t.name]].copy()
    w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
