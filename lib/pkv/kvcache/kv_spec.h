// pkv/kvcache/kv_spec.h — one `--kv` method specification of `pkv eval`.
//
// Grammar (docs/eval.md, "Method specs"):
//   SPEC  := METHOD ( ':' FIELD )*
//   METHOD:= fp16 | kivi | patternkv | patternkv-table | q4_0 | q8_0 | fp8
//   FIELD := N      code width: 2, 3, 4 or 8 for kivi / patternkv / patternkv-table
//                   (required there); a fixed-width method accepts only its own width
//          | gN     group G: tokens per key channel group, value groups of min(G, head_dim)
//                   channels (kivi, patternkv; default 128)
//          | wN     fp16 window / flush block R in tokens (kivi, patternkv; default 128)
//          | pN     patterns k-means mines from the prefill (patternkv; default 32)
//          | capN   pattern bank limit, 0 = none (patternkv; default 0)
//          | sinkN  the first N prompt tokens of each sequence stay exact (fp16; kivi,
//                   patternkv, patternkv-table; default 0): attention sinks, whose outlier
//                   keys would otherwise set the ranges of their whole K group
//          | outN   in every quantizer group the N (1..8) elements that stretch its range
//                   most stay exact, value and position (kivi, patternkv, patternkv-table)
//          | l2     decode-time pattern assignment by L2 instead of min-max (patternkv)
//          | rot    Hadamard-rotate every head before quantizing, rotate back after
//          | rotv64 as rot, but values rotated in 64-element blocks (H_64 on each; keys
//                   still by H_D): llama.cpp's rotation of a quantized cache; head_dim a
//                   power of two >= 64; simulated on the host (no device engine has it)
//          | auto   patternkv-table only, in place of N: the table's own widths (its
//                   per-head allocation, pkv.quant.allocation, or else pkv.quant.bits)
//          | pre    quantize keys before RoPE (the cache then holds RoPE(k̃_pre));
//            post   after RoPE, as runtimes cache them (default)
//          | PATH   patternkv-table only: the pattern table written by `pkv calibrate`;
//                   the first field that is none of the above starts it, and the rest
//                   of the spec (colons included) is the path
// Fields may come in any order; each at most once. fp16 takes no field.
// Errors name the spec: "unknown method 'foo' in --kv 'foo:2': expected one of ...".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pkv/kvcache/simulate.h"

namespace pkv {

struct KvSpec {
    std::string text;         ///< as given on the command line
    std::string method_name;  ///< "kivi", "patternkv-table", ...
    KvMethod method = KvMethod::fp16;
    bool table = false;  ///< patternkv-table (patterns from a calibrated table)
    /// patternkv-table:auto: the widths come from the table (bits is set from it when it is read).
    bool table_auto = false;
    std::string table_path;
    int bits = 16;  ///< code width (fixed methods: their nominal width)
    int group = 128;
    int window = 128;
    int patterns = 32;
    int pattern_cap = 0;
    bool decode_l2 = false;
    int sinks = 0;     ///< sinkN: prompt tokens kept exact at the start of each sequence
    int outliers = 0;  ///< outN: elements per quantizer group kept exact
    bool rotate = false;
    /// With rotate: values are rotated in blocks of this many elements (0: the whole head).
    int rotate_v_block = 0;
    bool keys_pre = false;

    /// Canonical form: method, width, then only the fields that differ from their
    /// defaults in the grammar's order ("kivi:4:g32", "q8_0:rot").
    std::string label() const;
};

/// Parses one spec; throws invalid_argument naming the spec and the bad field.
KvSpec parse_kv_spec(const std::string& text);

/// Checks a parsed spec against a model's head_dim (group fit, ggml block size,
/// power-of-two rotation) and the methods this build has; throws naming the spec.
void check_kv_spec(const KvSpec& spec, int head_dim);

/// The simulation parameters of a spec (simulate.h), with the k-means seed.
SimParams kv_spec_sim_params(const KvSpec& spec, uint64_t seed);

}  // namespace pkv
