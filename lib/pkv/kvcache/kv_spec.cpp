// `--kv` spec parsing and checking; the grammar is in kv_spec.h and docs/eval.md.
#include "pkv/kvcache/kv_spec.h"

#include "pkv/core/error.h"
#include "pkv/kvcache/outliers.h"

namespace pkv {

namespace {

constexpr const char* kMethodList = "fp16, kivi, patternkv, patternkv-table, q4_0, q8_0, fp8";

// Non-negative decimal without sign or leading '+'; -1 when s is not one.
long parse_count(const std::string& s) {
    if (s.empty() || s.size() > 9) return -1;
    long v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return -1;
        v = v * 10 + (c - '0');
    }
    return v;
}

// "g32" with prefix "g" -> 32; -1 when the field is not prefix + count.
long prefixed(const std::string& field, const std::string& prefix) {
    if (field.size() <= prefix.size() || field.compare(0, prefix.size(), prefix) != 0) return -1;
    return parse_count(field.substr(prefix.size()));
}

bool minmax_method(const KvSpec& s) { return s.method == KvMethod::kivi || s.method == KvMethod::patternkv; }

// The spec's ':'-separated fields, with where each starts in text (a table path keeps its colons).
std::vector<std::string> split_fields(const std::string& text, std::vector<size_t>& offset) {
    std::vector<std::string> fields;
    size_t p = 0;
    while (true) {
        const size_t c = text.find(':', p);
        offset.push_back(p);
        fields.push_back(text.substr(p, c == std::string::npos ? std::string::npos : c - p));
        if (c == std::string::npos) break;
        p = c + 1;
    }
    return fields;
}

// The method decides which fields may follow, so it is resolved before any of them.
void set_method(KvSpec& s, const std::string& name) {
    s.method_name = name;
    if (name == "fp16") {
        s.method = KvMethod::fp16;
    } else if (name == "kivi") {
        s.method = KvMethod::kivi;
    } else if (name == "patternkv") {
        s.method = KvMethod::patternkv;
    } else if (name == "patternkv-table") {
        s.method = KvMethod::patternkv_table;
        s.table = true;
    } else if (name == "q4_0") {
        s.method = KvMethod::q4_0;
    } else if (name == "q8_0") {
        s.method = KvMethod::q8_0;
    } else if (name == "fp8") {
        s.method = KvMethod::fp8;
    } else {
        fail(ErrorCode::invalid_argument, "unknown method '{}' in --kv '{}': expected one of {}", name, s.text,
             kMethodList);
    }
}

// Fields already given: each may appear at most once.
struct SeenFields {
    bool bits = false, g = false, w = false, p = false, cap = false, l2 = false, rot = false, keys = false,
         sink = false, out = false;
};

// A repeated field is an error rather than a silent override.
void once(const KvSpec& s, bool& seen, const std::string& f) {
    PKV_CHECK(!seen, invalid_argument, "--kv '{}': '{}' is given twice", s.text, f);
    seen = true;
}

// A field the method ignores is an error, so a typo'd spec cannot pass unnoticed.
void only(const KvSpec& s, bool ok, const std::string& f, const char* what, const char* methods) {
    PKV_CHECK(ok, invalid_argument, "--kv '{}': '{}' ({}) applies to {} only", s.text, f, what, methods);
}

// A bare number is the code width: free for the min-max methods, fixed (only restated) for the others.
void parse_width(KvSpec& s, long v, bool takes_bits) {
    if (takes_bits) {
        PKV_CHECK(v == 2 || v == 3 || v == 4 || v == 8, invalid_argument,
                  "--kv '{}': {} bits is not supported by {}: expected 2, 3, 4 or 8", s.text, v, s.method_name);
        s.bits = static_cast<int>(v);
    } else {
        PKV_CHECK(v == s.bits, invalid_argument, "--kv '{}': {} has a fixed width of {} bits, got {}", s.text,
                  s.method_name, s.bits, v);
    }
}

// Numeric fields (N, gN, wN, capN, pN), tried before the flags; false when f is none of them.
bool parse_numeric_field(KvSpec& s, SeenFields& seen, const std::string& f, bool takes_bits) {
    long v = 0;
    if ((v = parse_count(f)) >= 0) {
        once(s, seen.bits, "bits");
        parse_width(s, v, takes_bits);
    } else if ((v = prefixed(f, "g")) >= 0) {
        once(s, seen.g, "g");
        only(s, minmax_method(s) || s.table, f, "group", "kivi and patternkv");
        PKV_CHECK(v >= 1, invalid_argument, "--kv '{}': group {} must be at least 1", s.text, v);
        s.group = static_cast<int>(v);
    } else if ((v = prefixed(f, "w")) >= 0) {
        once(s, seen.w, "w");
        only(s, minmax_method(s) || s.table, f, "window", "kivi and patternkv");
        PKV_CHECK(v >= 1, invalid_argument, "--kv '{}': window {} must be at least 1", s.text, v);
        s.window = static_cast<int>(v);
    } else if ((v = prefixed(f, "sink")) >= 0) {
        once(s, seen.sink, "sink");
        only(s, minmax_method(s) || s.table, f, "exact attention-sink tokens", "kivi, patternkv and patternkv-table");
        PKV_CHECK(v >= 1, invalid_argument, "--kv '{}': sink {} must be at least 1 token", s.text, v);
        s.sinks = static_cast<int>(v);
    } else if ((v = prefixed(f, "out")) >= 0) {
        once(s, seen.out, "out");
        only(s, minmax_method(s) || s.table, f, "exact outliers per group", "kivi, patternkv and patternkv-table");
        PKV_CHECK(v >= 1 && v <= kMaxOutliers, invalid_argument, "--kv '{}': out{} must be 1 to {} elements per group",
                  s.text, v, kMaxOutliers);
        s.outliers = static_cast<int>(v);
    } else if ((v = prefixed(f, "cap")) >= 0) {
        once(s, seen.cap, "cap");
        only(s, s.method == KvMethod::patternkv && !s.table, f, "pattern bank cap", "patternkv");
        s.pattern_cap = static_cast<int>(v);
    } else if ((v = prefixed(f, "p")) >= 0) {
        once(s, seen.p, "p");
        only(s, s.method == KvMethod::patternkv && !s.table, f, "prefill patterns", "patternkv");
        PKV_CHECK(v >= 1, invalid_argument, "--kv '{}': patterns {} must be at least 1", s.text, v);
        s.patterns = static_cast<int>(v);
    } else {
        return false;
    }
    return true;
}

// Word fields (l2, rot, pre/post); false when f is none of them (for patternkv-table: the path).
bool parse_flag_field(KvSpec& s, SeenFields& seen, const std::string& f) {
    if (f == "auto") {
        once(s, seen.bits, "bits");
        only(s, s.table, f, "the table's own widths", "patternkv-table");
        s.table_auto = true;
    } else if (f == "l2") {
        once(s, seen.l2, f);
        only(s, s.method == KvMethod::patternkv, f, "L2 decode assignment", "patternkv");
        s.decode_l2 = true;
    } else if (f == "rot" || f == "rotv64") {
        once(s, seen.rot, f == "rot" ? "rot" : "rot/rotv64");
        s.rotate = true;
        // A table's value patterns live in the whole-head basis.
        if (f == "rotv64")
            only(s, !s.table, f, "values rotated in 64-element blocks", "kivi, patternkv, q4_0, q8_0 and fp8");
        s.rotate_v_block = f == "rotv64" ? 64 : 0;
    } else if (f == "pre" || f == "post") {
        once(s, seen.keys, "pre/post");
        s.keys_pre = f == "pre";
    } else {
        return false;
    }
    return true;
}

// Rules that span fields can only be checked once every field is in.
void check_parsed(const KvSpec& s, bool takes_bits, bool seen_bits) {
    PKV_CHECK(!takes_bits || seen_bits, invalid_argument,
              "--kv '{}': {} needs a code width, e.g. {}:2 (2, 3, 4 or 8{})", s.text, s.method_name, s.method_name,
              s.table ? "; auto: the table's own" : "");
    PKV_CHECK(s.pattern_cap == 0 || s.pattern_cap >= s.patterns, invalid_argument,
              "--kv '{}': cap{} must be 0 (no cap) or at least the {} prefill patterns", s.text, s.pattern_cap,
              s.patterns);
    PKV_CHECK(!s.table || !s.table_path.empty(), invalid_argument,
              "--kv '{}': patternkv-table needs a table file: patternkv-table:BITS:TABLE.safetensors (BITS 2, 3, 4, 8 "
              "or auto)",
              s.text);
}

}  // namespace

std::string KvSpec::label() const {
    std::string s = method_name;
    if (table_auto) s += ":auto";
    else if (kv_method_takes_bits(method) || table) s += ":" + std::to_string(bits);
    if (group != 128) s += ":g" + std::to_string(group);
    if (window != 128) s += ":w" + std::to_string(window);
    if (patterns != 32) s += ":p" + std::to_string(patterns);
    if (pattern_cap != 0) s += ":cap" + std::to_string(pattern_cap);
    if (sinks != 0) s += ":sink" + std::to_string(sinks);
    if (outliers != 0) s += ":out" + std::to_string(outliers);
    if (decode_l2) s += ":l2";
    if (rotate) s += rotate_v_block == 64 ? ":rotv64" : ":rot";
    if (keys_pre) s += ":pre";
    if (table) s += ":" + table_path;
    return s;
}

KvSpec parse_kv_spec(const std::string& text) {
    KvSpec s;
    s.text = text;
    std::vector<size_t> offset;
    const std::vector<std::string> fields = split_fields(text, offset);
    set_method(s, fields[0]);
    const bool takes_bits = kv_method_takes_bits(s.method) || s.table;
    if (!takes_bits) s.bits = kv_method_fixed_bits(s.method);
    PKV_CHECK(s.method != KvMethod::fp16 || fields.size() == 1, invalid_argument,
              "--kv '{}': fp16 takes no options (it is the unquantized cache)", text);

    SeenFields seen;
    for (size_t i = 1; i < fields.size(); ++i) {
        const std::string& f = fields[i];
        PKV_CHECK(!f.empty(), invalid_argument, "--kv '{}': empty field after '{}'", text, fields[i - 1]);
        if (parse_numeric_field(s, seen, f, takes_bits) || parse_flag_field(s, seen, f)) continue;
        if (s.table) {
            // The rest of the spec is the table path (it may hold colons).
            s.table_path = text.substr(offset[i]);
            break;
        }
        fail(ErrorCode::invalid_argument,
             "--kv '{}': unknown field '{}': expected a width (2, 3, 4, 8), gN, wN, pN, capN, sinkN, outN, l2, rot, "
             "rotv64, pre or post",
             text, f);
    }
    check_parsed(s, takes_bits, seen.bits);
    return s;
}

void check_kv_spec(const KvSpec& s, int D) {
    if ((kv_method_takes_bits(s.method) || s.table) && s.group < D)
        PKV_CHECK(D % s.group == 0, invalid_argument,
                  "--kv '{}': group {} does not divide head_dim {} (value groups are min(group, head_dim) channels)",
                  s.text, s.group, D);
    if (s.method == KvMethod::q4_0 || s.method == KvMethod::q8_0)
        PKV_CHECK(D % 32 == 0, unsupported, "--kv '{}': head_dim {}: {} needs a multiple of 32", s.text, D,
                  s.method_name);
    if (s.rotate)
        PKV_CHECK(D > 0 && (D & (D - 1)) == 0, unsupported,
                  "--kv '{}': head_dim {}: hadamard rotation needs a power of two", s.text, D);
    if (s.rotate_v_block > 0)
        PKV_CHECK(D >= s.rotate_v_block, unsupported, "--kv '{}': head_dim {}: rotv64 needs at least 64", s.text, D);
}

SimParams kv_spec_sim_params(const KvSpec& s, uint64_t seed) {
    SimParams p;
    p.method = s.method;
    p.bits = s.bits;
    p.group = s.group;
    p.window = s.window;
    p.patterns = s.patterns;
    p.pattern_cap = s.pattern_cap;
    p.decode_l2 = s.decode_l2;
    p.sinks = s.sinks;
    p.outliers = s.outliers;
    p.seed = seed;
    return p;
}

}  // namespace pkv
