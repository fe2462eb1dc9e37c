// pkv/runtime/pattern_table_reader.h — load a pkv pattern table ("pkv.pattern_table",
// format major 1) into an inference runtime. One header, C++17, standard library only:
// copy it into a runtime's tree as is.
//
// A pattern table (written by `pkv calibrate` / `pkv export`; spec docs/formats/pattern_table.md,
// names in pkv/table/pattern_table.h) is a safetensors file holding, per calibrated layer and
// KV head, Mk key patterns and Mv value patterns of head_dim D channels, the clip ratios of
// the key / value residual quantizers and the z of the value gate. docs/runtime.md explains
// how a runtime applies it.
//
// Usage:
//   pkv_rt::RuntimeDecl decl;                        // what this runtime runs
//   decl.model_sha256 = sha256_of_gguf;              // "" skips the fingerprint check
//   decl.n_layer = 30; decl.n_head = 9; decl.n_head_kv = 3; decl.head_dim = 64;
//   decl.key_basis = pkv_rt::KeyBasis::post_rope;    // the cache holds RoPE'd keys
//   decl.key_dim_order = pkv_rt::DimOrder::gguf_interleaved;
//   decl.bits = 2;                                   // 0 = take the table's bits
//   pkv_rt::PatternTable t = pkv_rt::PatternTable::open("smollm2.ptable.safetensors", decl);
//   // Format 1.1 records each calibrated layer's sliding window (0: global) and RoPE base
//   // (0: not recorded); compare them with the model's before using a layer's patterns.
//   if (t.has_layer(il) && t.has_layer_geometry() && t.layer_window(il) != my_window(il)) ...
//   if (t.has_layer(il)) {                           // uncalibrated layers: plain quantization
//       pkv_rt::HeadView h = t.head(il, kv_head);
//       int ik = h.nearest_k(k_row);                 // k_row, v_row: D floats of one token
//       int iv = h.nearest_v(v_row);
//       bool sub_v = h.v_gate(v_row, iv);            // store v - pattern only when true
//       // quantize k_row - h.k_pattern(ik) with clip ratio h.k_clip, keep ik (and iv, sub_v)
//   }
//
// Tables with a per-head width allocation (format 1.2, pkv.quant.allocation, written by
// `pkv calibrate --bits-budget`) give each KV head's K and V its own code width
// (HeadView::k_bits / v_bits; 16 keeps that tensor of the head in fp16), with its clip
// ratios and gate fitted at that width: declare bits = 0 for them (a fixed width is refused,
// since it would pair those parameters with another width).
//
// Errors: every problem throws pkv_rt::TableError (a std::runtime_error) whose what() is
// one line "pattern table <label>: <what>", naming the field, the table's value and the
// expected or declared value. open()/parse() either return a fully checked table or throw;
// nothing is ever half-loaded. head() throws std::out_of_range for a layer or head the
// table does not hold. The nearest/gate helpers do not throw.
//
// Ownership and lifetime: a PatternTable owns copies of all its numbers (converted to
// float; F16 patterns are widened exactly) and does not keep the file open. A HeadView holds
// raw pointers into the table that produced it: valid while that table object (or the
// object it is moved into) lives and is not assigned to. Copies of a table own new buffers.
// Thread-safety: a PatternTable is immutable once constructed; any number of threads may
// call its const members and use HeadViews concurrently without locking.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <locale>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace pkv_rt {

/// Thrown for every unreadable, malformed or mismatching table.
class TableError : public std::runtime_error {
public:
    explicit TableError(const std::string& message) : std::runtime_error(message) {}
};

enum class KeyBasis { pre_rope, post_rope };              ///< keys before / after RoPE
enum class DimOrder { gguf_interleaved, hf_half_split };  ///< per-head key channel order
enum class Rotation { none, hadamard };                   ///< applied to K and V before patterns
enum class Assign { l2, minmax };                         ///< how a token picks its pattern

inline const char* to_string(KeyBasis b) { return b == KeyBasis::pre_rope ? "pre_rope" : "post_rope"; }
inline const char* to_string(DimOrder o) {
    return o == DimOrder::gguf_interleaved ? "gguf_interleaved" : "hf_half_split";
}
inline const char* to_string(Rotation r) { return r == Rotation::none ? "none" : "hadamard"; }
inline const char* to_string(Assign a) { return a == Assign::l2 ? "l2" : "minmax"; }

/// What the runtime runs. Every field is compared with the table; any difference refuses
/// the table. Optional checks: model_sha256 "" (any model), bits/group/window 0 (take the
/// table's), rotation_seed empty (take the table's).
struct RuntimeDecl {
    std::string model_sha256;  ///< hex SHA-256 of the GGUF file (case-insensitive)
    std::string arch = "llama";
    int n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
    KeyBasis key_basis = KeyBasis::post_rope;
    DimOrder key_dim_order = DimOrder::gguf_interleaved;
    Rotation rotation = Rotation::none;
    std::optional<uint64_t> rotation_seed;
    int bits = 0;    ///< residual code width the runtime quantizes with
    int group = 0;   ///< K tokens per channel group / V channels per group
    int window = 0;  ///< fp16 window (flush block) length
    /// Elements of each quantizer group the runtime keeps exact (dense-and-sparse); must
    /// equal the table's pkv.quant.outliers (absent: 0), whose clip ratios assume them.
    int outliers = 0;
};

// ---- numeric helpers (no allocation, no exceptions) ----------------------------------

/// Exact IEEE binary16 -> binary32 (subnormals, infinities and NaN included).
inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu, bits = sign;  // +-0 stays as is
    if (exp == 0x1f) {
        bits |= 0x7f800000u | man << 13;
    } else if (exp != 0) {
        bits |= (exp + 112u) << 23 | man << 13;
    } else if (man != 0) {  // subnormal, man * 2^-24: renormalise
        uint32_t e = 113;
        for (; (man & 0x400u) == 0; --e) man <<= 1;
        bits |= e << 23 | (man & 0x3ffu) << 13;
    }
    float f;
    static_assert(sizeof(f) == sizeof(bits), "binary32 float expected");
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

/// sum_d (x_d - c_d)^2, accumulated in double.
inline double l2_distance2(const float* x, const float* c, int d) {
    double s = 0.0;
    for (int i = 0; i < d; ++i) {
        const double e = static_cast<double>(x[i]) - static_cast<double>(c[i]);
        s += e * e;
    }
    return s;
}

/// max_d (x_d - c_d) - min_d (x_d - c_d), in double (0 for d < 1). Ignores a constant
/// offset between x and c, so distinct patterns can tie.
inline double minmax_distance(const float* x, const float* c, int d) {
    if (d < 1) return 0.0;
    double lo = static_cast<double>(x[0]) - static_cast<double>(c[0]), hi = lo;
    for (int i = 1; i < d; ++i) {
        const double e = static_cast<double>(x[i]) - static_cast<double>(c[i]);
        lo = std::min(lo, e);
        hi = std::max(hi, e);
    }
    return hi - lo;
}

/// Index in [0, m) of the pattern (rows of `patterns`, [m, d] row-major) nearest to the
/// d-vector x under `how`; the lowest index on ties; 0 when m < 1 or x holds NaN.
inline int nearest_pattern(const float* x, const float* patterns, int m, int d, Assign how) {
    int best = 0;
    double best_d = std::numeric_limits<double>::infinity();
    for (int j = 0; j < m; ++j) {
        const float* c = patterns + static_cast<size_t>(j) * static_cast<size_t>(d);
        const double dist = how == Assign::l2 ? l2_distance2(x, c, d) : minmax_distance(x, c, d);
        if (dist < best_d) {
            best_d = dist;
            best = j;
        }
    }
    return best;
}

/// rho = R(v - c) / R(v) with R = max - min over the d channels; +infinity when R(v) = 0
/// (a flat value vector: nothing to flatten). pkv's arithmetic, bit for bit: the
/// differences v - c, minima and maxima in float, the two ranges and their ratio in double.
inline double gate_rho(const float* v, const float* c, int d) {
    if (d < 1) return std::numeric_limits<double>::infinity();
    float vmin = v[0], vmax = v[0], rmin = v[0] - c[0], rmax = rmin;
    for (int i = 1; i < d; ++i) {
        vmin = std::min(vmin, v[i]);
        vmax = std::max(vmax, v[i]);
        const float e = v[i] - c[i];
        rmin = std::min(rmin, e);
        rmax = std::max(rmax, e);
    }
    const double rv = static_cast<double>(vmax) - static_cast<double>(vmin);
    if (!(rv > 0.0)) return std::numeric_limits<double>::infinity();
    return (static_cast<double>(rmax) - static_cast<double>(rmin)) / rv;
}

/// The value gate: true iff 1 - rho^2 >= (2 z / sqrt(5 d)) sqrt(1 + rho^4); false for a
/// non-finite rho (R(v) = 0), d < 1, or a NaN z. z = 0 subtracts whenever rho <= 1.
inline bool gate_passes(double rho, double z, int d) {
    if (!std::isfinite(rho) || d < 1 || std::isnan(z)) return false;
    const double rho2 = rho * rho;
    return 1.0 - rho2 >= (2.0 * z / std::sqrt(5.0 * d)) * std::sqrt(1.0 + rho2 * rho2);
}

/// gate_passes(gate_rho(v, c, d), z, d): store v - c (true) or v itself (false).
inline bool gate_subtract(const float* v, const float* c, int d, double z) {
    return gate_passes(gate_rho(v, c, d), z, d);
}

/// The interval a residual quantizer group with observed range [mn, mx] quantizes over
/// under clip ratio a in (0, 1]: [m - a h, m + a h], m = (mn + mx) / 2, h = (mx - mn) / 2.
/// Residual values outside it are clamped to it; a = 1 is plain min-max, [mn, mx] exactly.
/// pkv's arithmetic, bit for bit: m = mn/2 + mx/2 and h = mx/2 - mn/2 in float (no
/// overflow near FLT_MAX), then m -/+ a h in float.
struct ClipRange {
    float lo = 0.0f, hi = 0.0f;
};
inline ClipRange clip_range(float mn, float mx, float a) {
    if (!(a < 1.0f)) return {mn, mx};
    const float m = 0.5f * mn + 0.5f * mx, h = 0.5f * mx - 0.5f * mn;
    return {m - a * h, m + a * h};
}

/// One (layer, KV head) of a table; D = head_dim, Mk / Mv = key / value patterns.
/// Non-owning: see "Ownership" at the top.
struct HeadView {
    int layer = 0, head = 0;            ///< model layer, KV head
    int head_dim = 0;                   ///< D
    int n_k_patterns = 0;               ///< Mk
    int n_v_patterns = 0;               ///< Mv
    const float* k_patterns = nullptr;  ///< [Mk, D] in the table's key basis, dim order, rotation
    const float* v_patterns = nullptr;  ///< [Mv, D]
    const int64_t* k_counts = nullptr;  ///< [Mk] calibration tokens per key pattern
    const int64_t* v_counts = nullptr;  ///< [Mv]
    float k_clip = 1.0f;                ///< clip ratio of the key residual quantizer, (0, 1]
    float v_clip = 1.0f;                ///< clip ratio of the value residual quantizer, (0, 1]
    float v_gate_z = 0.0f;              ///< z of the value gate, >= 0
    Assign assign = Assign::minmax;     ///< the table's pkv.assign
    /// Code widths of this head's K and V residuals: the table's bits, or with a width
    /// allocation (format 1.2) the head's own: 2, 3, 4, 8, or 16 = keep that tensor of the
    /// head in fp16 (no pattern, no quantizer). k_clip / v_clip / v_gate_z were fitted at it.
    int k_bits = 0, v_bits = 0;

    const float* k_pattern(int i) const { return k_patterns + row(i); }  ///< [D] key pattern i
    const float* v_pattern(int i) const { return v_patterns + row(i); }  ///< [D] value pattern i
    /// Nearest key / value pattern of one token's D-vector under the table's assignment.
    int nearest_k(const float* k) const { return nearest_pattern(k, k_patterns, n_k_patterns, head_dim, assign); }
    int nearest_v(const float* v) const { return nearest_pattern(v, v_patterns, n_v_patterns, head_dim, assign); }
    /// Whether value vector v should have value pattern i subtracted (the gate, with v_gate_z).
    bool v_gate(const float* v, int i) const {
        return gate_subtract(v, v_pattern(i), head_dim, static_cast<double>(v_gate_z));
    }
    size_t row(int i) const { return static_cast<size_t>(i) * static_cast<size_t>(head_dim); }
};

namespace detail {

// ---- strict JSON (RFC 8259 without fractions and exponents) ---------------------------

struct Json {
    enum class Kind { null, boolean, integer, number, string, array, object } kind = Kind::null;
    bool flag = false;              // boolean value; integer: negative
    uint64_t magnitude = 0;         // integer
    std::string text;               // string; number: its JSON text
    std::vector<Json> items;        // array elements / object values
    std::vector<std::string> keys;  // object keys, parallel to items
};

class JsonParser {
public:
    /// fractions: also accept numbers with a fraction or exponent (Kind::number, kept as
    /// text); a safetensors header has none, pkv.quant.allocation's "bits" does.
    JsonParser(const char* s, size_t n, std::string where, bool fractions = false, const char* noun = "header JSON")
        : s_(s), n_(n), where_(std::move(where)), fractions_(fractions), noun_(noun) {}
    Json document() {
        Json v = value(0);
        ws();
        if (p_ != n_) fail("unexpected characters after the top-level value");
        return v;
    }

private:
    const char* s_;
    size_t n_, p_ = 0;
    std::string where_;
    bool fractions_;
    const char* noun_;

    [[noreturn]] void fail(const std::string& what) const {
        throw TableError(where_ + ": malformed " + noun_ + " at byte " + std::to_string(p_) + ": " + what);
    }
    unsigned char peek() const { return p_ < n_ ? static_cast<unsigned char>(s_[p_]) : 0; }
    bool digit() const { return peek() >= '0' && peek() <= '9'; }
    void ws() {
        while (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r') ++p_;
    }
    void expect(char c) {
        if (peek() != static_cast<unsigned char>(c)) fail(std::string("expected '") + c + "'");
        ++p_;
    }
    Json value(int depth) {
        ws();
        if (depth > 64) fail("nesting deeper than 64");
        Json v;
        const unsigned char c = peek();
        if (c == '{' || c == '[') {  // objects and arrays share one loop
            const bool obj = c == '{';
            v.kind = obj ? Json::Kind::object : Json::Kind::array;
            ++p_;
            ws();
            if (peek() == (obj ? '}' : ']')) {
                ++p_;
                return v;
            }
            std::set<std::string> seen;
            for (;;) {
                if (obj) {
                    ws();
                    if (peek() != '"') fail("expected a string key");
                    v.keys.push_back(string());
                    if (!seen.insert(v.keys.back()).second) fail("duplicate key \"" + v.keys.back() + "\"");
                    ws();
                    expect(':');
                }
                v.items.push_back(value(depth + 1));
                ws();
                if (peek() != ',') break;
                ++p_;
            }
            expect(obj ? '}' : ']');
        } else if (c == '"') {
            v.kind = Json::Kind::string;
            v.text = string();
        } else if (c == '-' || digit()) {
            const size_t start = p_;
            v.kind = Json::Kind::integer;
            v.flag = c == '-';
            if (v.flag) ++p_;
            if (!digit()) fail("expected a digit");
            if (peek() == '0' && p_ + 1 < n_ && s_[p_ + 1] >= '0' && s_[p_ + 1] <= '9') fail("leading zero");
            for (; digit(); ++p_) {
                const uint64_t d = static_cast<uint64_t>(peek() - '0');
                if (v.magnitude > (std::numeric_limits<uint64_t>::max() - d) / 10) fail("integer out of range");
                v.magnitude = v.magnitude * 10 + d;
            }
            if ((peek() == '.' || peek() == 'e' || peek() == 'E') && !fractions_) fail("non-integer number");
            if (peek() == '.') {
                ++p_;
                if (!digit()) fail("expected a digit after '.'");
                while (digit()) ++p_;
                v.kind = Json::Kind::number;
            }
            if (peek() == 'e' || peek() == 'E') {
                ++p_;
                if (peek() == '+' || peek() == '-') ++p_;
                if (!digit()) fail("expected a digit in the exponent");
                while (digit()) ++p_;
                v.kind = Json::Kind::number;
            }
            if (v.kind == Json::Kind::number) v.text.assign(s_ + start, p_ - start);
        } else {
            for (const char* lit : {"true", "false", "null"}) {
                const size_t len = std::char_traits<char>::length(lit);
                if (n_ - p_ >= len && std::char_traits<char>::compare(s_ + p_, lit, len) == 0) {
                    p_ += len;
                    v.kind = lit[0] == 'n' ? Json::Kind::null : Json::Kind::boolean;
                    v.flag = lit[0] == 't';
                    return v;
                }
            }
            fail(p_ < n_ ? "unexpected character" : "unexpected end");
        }
        return v;
    }
    unsigned hex4() {
        unsigned u = 0;
        for (int i = 0; i < 4; ++i, ++p_) {
            const char h = static_cast<char>(peek());
            const char* digits = "0123456789abcdef0123456789ABCDEF";
            const char* at = h ? std::char_traits<char>::find(digits, 32, h) : nullptr;
            if (!at) fail("bad \\u escape");
            u = u << 4 | static_cast<unsigned>((at - digits) % 16);
        }
        return u;
    }
    std::string string() {
        expect('"');
        std::string out;
        for (;;) {
            const unsigned char c = peek();
            if (p_ >= n_) fail("unterminated string");
            if (c == '"') {
                ++p_;
                return out;
            }
            if (c < 0x20) fail("control character in string");
            if (c >= 0x80) {  // copy one well-formed UTF-8 sequence (no overlongs or surrogates)
                const int extra = c < 0xc2 ? 0 : c <= 0xdf ? 1 : c <= 0xef ? 2 : c <= 0xf4 ? 3 : 0;
                const unsigned lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
                const unsigned hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
                if (extra == 0 || n_ - p_ <= static_cast<size_t>(extra)) fail("invalid UTF-8");
                for (int i = 1; i <= extra; ++i) {
                    const unsigned b = static_cast<unsigned char>(s_[p_ + static_cast<size_t>(i)]);
                    if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xbf)) fail("invalid UTF-8");
                }
                out.append(s_ + p_, static_cast<size_t>(extra) + 1);
                p_ += static_cast<size_t>(extra) + 1;
                continue;
            }
            ++p_;
            if (c != '\\') {
                out += static_cast<char>(c);
                continue;
            }
            const char* from = "\"\\/bfnrt";
            const char* to = "\"\\/\b\f\n\r\t";
            const char e = static_cast<char>(peek());
            const char* at = e ? std::char_traits<char>::find(from, 8, e) : nullptr;
            ++p_;
            if (at) {
                out += to[at - from];
                continue;
            }
            if (e != 'u') fail(std::string("bad escape \\") + (e ? e : '?'));
            unsigned cp = hex4();
            if (cp >= 0xdc00 && cp <= 0xdfff) fail("unpaired low surrogate");
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (peek() != '\\' || p_ + 1 >= n_ || s_[p_ + 1] != 'u') fail("unpaired high surrogate");
                p_ += 2;
                const unsigned low = hex4();
                if (low < 0xdc00 || low > 0xdfff) fail("unpaired high surrogate");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            }
            const int n = cp < 0x80 ? 0 : cp < 0x800 ? 1 : cp < 0x10000 ? 2 : 3;  // continuation bytes
            out += static_cast<char>(n == 0 ? cp : ((0xffu << (7 - n)) & 0xffu) | (cp >> (6 * n)));
            for (int i = n - 1; i >= 0; --i) out += static_cast<char>(0x80 | ((cp >> (6 * i)) & 0x3f));
        }
    }
};

// ---- safetensors container ------------------------------------------------------------

struct RawTensor {
    std::string dtype;
    std::vector<uint64_t> shape;
    uint64_t begin = 0, end = 0;  // in the data buffer
};

struct Container {
    std::map<std::string, std::string> metadata;
    std::map<std::string, RawTensor> tensors;
    const uint8_t* data = nullptr;  // the data buffer (borrowed)
};

inline uint64_t dtype_size(const std::string& t) {
    if (t == "BOOL" || t == "U8" || t == "I8" || t == "F8_E4M3" || t == "F8_E5M2") return 1;
    if (t == "U16" || t == "I16" || t == "F16" || t == "BF16") return 2;
    if (t == "U32" || t == "I32" || t == "F32") return 4;
    if (t == "U64" || t == "I64" || t == "F64") return 8;
    return 0;
}

inline std::string shape_str(const std::vector<uint64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

// A non-negative number as JSON spells it: "10000", "0.5", "1e+06" (no sign, no leading
// zeros, no "inf" or "nan").
inline bool plain_number(const std::string& s) {
    size_t i = 0;
    const auto digits = [&s, &i]() {
        const size_t from = i;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
        return i - from;
    };
    const size_t whole = digits();
    if (whole == 0 || (whole > 1 && s[0] == '0')) return false;
    if (i < s.size() && s[i] == '.' && (++i, digits() == 0)) return false;
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
        ++i;
        if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
        if (digits() == 0) return false;
    }
    return i == s.size();
}

/// Compact JSON text of a number or a list of them, for messages.
inline std::string json_text(const Json& v) {
    if (v.kind == Json::Kind::integer) return (v.flag ? "-" : "") + std::to_string(v.magnitude);
    if (v.kind == Json::Kind::number) return v.text;
    if (v.kind != Json::Kind::array) return "a non-number";
    std::string out = "[";
    for (size_t i = 0; i < v.items.size(); ++i) out += (i ? "," : "") + json_text(v.items[i]);
    return out + "]";
}

inline uint64_t unsigned_of(const Json& j, const std::string& where) {
    if (j.kind != Json::Kind::integer || j.flag) throw TableError(where + ": expected an unsigned integer");
    return j.magnitude;
}

constexpr uint64_t kMaxHeader = 100'000'000;

/// Validates a whole safetensors file in memory (pkv's rules, pkv/table/safetensors.h).
inline Container parse_container(const uint8_t* bytes, size_t size, const std::string& w) {
    if (size < 8)
        throw TableError(w + ": file of " + std::to_string(size) + " bytes is shorter than the 8-byte header length");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
    if (n > kMaxHeader) throw TableError(w + ": header length " + std::to_string(n) + " exceeds the 100 MB limit");
    if (n > size - 8)
        throw TableError(w + ": header length " + std::to_string(n) + " exceeds the " + std::to_string(size - 8) +
                         " bytes after the length (truncated file?)");
    const Json root = JsonParser(reinterpret_cast<const char*>(bytes + 8), static_cast<size_t>(n), w).document();
    if (root.kind != Json::Kind::object) throw TableError(w + ": header is not a JSON object");
    Container c;
    c.data = bytes + 8 + n;
    const uint64_t data_size = size - 8 - n;
    for (size_t i = 0; i < root.keys.size(); ++i) {
        const std::string& name = root.keys[i];
        const Json& e = root.items[i];
        const std::string at = w + ": " + name;
        if (name == "__metadata__") {
            if (e.kind != Json::Kind::object) throw TableError(at + ": expected an object of strings");
            for (size_t k = 0; k < e.keys.size(); ++k) {
                if (e.items[k].kind != Json::Kind::string)
                    throw TableError(at + "." + e.keys[k] + ": expected a string value");
                c.metadata[e.keys[k]] = e.items[k].text;
            }
            continue;
        }
        if (e.kind != Json::Kind::object) throw TableError(at + ": expected a tensor entry object");
        const Json *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
        for (size_t k = 0; k < e.keys.size(); ++k) {
            if (e.keys[k] == "dtype") dtype = &e.items[k];
            if (e.keys[k] == "shape") shape = &e.items[k];
            if (e.keys[k] == "data_offsets") offsets = &e.items[k];
        }
        if (!dtype || dtype->kind != Json::Kind::string) throw TableError(at + ": expected a string dtype");
        if (!shape || shape->kind != Json::Kind::array) throw TableError(at + ": expected a shape array");
        if (!offsets || offsets->kind != Json::Kind::array || offsets->items.size() != 2)
            throw TableError(at + ": expected data_offsets [begin, end]");
        RawTensor t;
        t.dtype = dtype->text;
        const uint64_t esize = dtype_size(t.dtype);
        if (esize == 0) throw TableError(at + ": unknown dtype " + t.dtype);
        uint64_t numel = 1;
        bool overflow = false;
        for (const Json& d : shape->items) {
            t.shape.push_back(unsigned_of(d, at + ": shape"));
            if (t.shape.back() != 0 && numel > std::numeric_limits<uint64_t>::max() / t.shape.back()) overflow = true;
            numel *= t.shape.back();
        }
        t.begin = unsigned_of(offsets->items[0], at + ": data_offsets");
        t.end = unsigned_of(offsets->items[1], at + ": data_offsets");
        if (t.end < t.begin)
            throw TableError(at + ": data_offsets end " + std::to_string(t.end) + " < begin " +
                             std::to_string(t.begin));
        if (overflow || numel > std::numeric_limits<uint64_t>::max() / esize || t.end - t.begin != numel * esize)
            throw TableError(at + ": expected " + shape_str(t.shape) + " x " + t.dtype + " = " +
                             (overflow ? std::string("too many") : std::to_string(numel * esize)) + " bytes, got " +
                             std::to_string(t.end - t.begin));
        c.tensors.emplace(name, std::move(t));
    }
    // The tensors must tile the data buffer: no gaps, no overlaps, nothing left over.
    std::vector<std::pair<const std::string*, const RawTensor*>> order;
    for (const auto& kv : c.tensors) order.emplace_back(&kv.first, &kv.second);
    std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
        return a.second->begin != b.second->begin ? a.second->begin < b.second->begin : a.second->end < b.second->end;
    });
    uint64_t pos = 0;
    for (const auto& o : order) {
        const uint64_t begin = o.second->begin;
        if (begin != pos)
            throw TableError(w + ": " + *o.first + ": data_offsets begin " + std::to_string(begin) +
                             (begin < pos ? " overlaps the previous tensor ending at " : " leaves a gap after ") +
                             std::to_string(pos));
        pos = o.second->end;
    }
    if (pos != data_size)
        throw TableError(w + ": tensors cover " + std::to_string(pos) + " bytes of a " + std::to_string(data_size) +
                         "-byte data buffer");
    return c;
}

}  // namespace detail

// ---- the table ----------------------------------------------------------------------

/// A loaded, checked table. Copyable and movable; a default-constructed one is empty
/// (no calibrated layer), a placeholder for "run without patterns".
class PatternTable {
public:
    /// Reads, validates and checks `path` against `decl`; throws TableError (see top).
    static PatternTable open(const std::string& path, const RuntimeDecl& decl) {
        std::ifstream in(path, std::ios::binary);
        if (!in) throw TableError("pattern table " + path + ": cannot open the file");
        const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (in.bad()) throw TableError("pattern table " + path + ": read failed");
        return parse(bytes.data(), bytes.size(), path, decl);
    }
    /// The same for a file already in memory (not retained); `label` names it in errors.
    static PatternTable parse(const uint8_t* bytes, size_t size, const std::string& label, const RuntimeDecl& decl) {
        PatternTable t;
        t.label_ = label;
        t.load(detail::parse_container(bytes, size, "pattern table " + label), decl);
        return t;
    }

    const std::string& label() const { return label_; }
    /// Every __metadata__ entry, pkv.calibration (a JSON object, as text) included.
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const std::string& model_name() const { return model_name_; }      ///< "" when absent
    const std::string& model_sha256() const { return model_sha256_; }  ///< lower-case hex, may be ""
    const std::string& arch() const { return arch_; }
    int n_layer() const { return n_layer_; }
    int n_head() const { return n_head_; }
    int n_head_kv() const { return n_head_kv_; }
    int head_dim() const { return head_dim_; }
    int format_minor() const { return minor_; }  ///< the major is always 1
    /// Whether the table records each layer's sliding window and RoPE base (always from
    /// format 1.1 on; a 1.0 table only when it carries pkv.layers.window). Without it
    /// layer_window and layer_rope_base return 0 for every layer: unknown, not "global".
    bool has_layer_geometry() const { return geometry_; }
    /// A calibrated layer's sliding window in tokens (0: a global layer) and the RoPE
    /// frequency base of its keys (0: not recorded); std::out_of_range for an uncalibrated layer.
    int layer_window(int layer) const { return calibrated(layer).window; }
    double layer_rope_base(int layer) const { return calibrated(layer).rope_base; }
    KeyBasis key_basis() const { return basis_; }
    DimOrder key_dim_order() const { return order_; }
    Rotation rotation() const { return rotation_; }
    uint64_t rotation_seed() const { return seed_; }  ///< 0 = plain Sylvester H_D
    int bits() const { return bits_; }                ///< pkv.quant.bits; with an allocation see HeadView's widths
    /// Whether the table allocates a width per KV head (format 1.2, pkv.quant.allocation).
    bool has_allocation() const { return alloc_; }
    double allocation_budget() const { return alloc_budget_; }  ///< mean bits per element allowed
    double allocation_bits() const { return alloc_bits_; }      ///< mean bits per element reached
    int group() const { return group_; }
    int window() const { return window_; }
    /// pkv.quant.outliers (format 1.3; 0 when absent): exact elements per quantizer group
    /// the fit held out (the range-stretching ones; docs/numerics.md).
    int outliers() const { return outliers_; }
    Assign assign() const { return assign_; }
    int n_k_patterns() const { return mk_; }  ///< Mk, the same for every layer and head
    int n_v_patterns() const { return mv_; }  ///< Mv
    /// Calibrated model layers, ascending. Other layers run without patterns.
    std::vector<int> layers() const {
        std::vector<int> out;
        for (const Layer& l : layers_) out.push_back(l.layer);
        return out;
    }
    bool has_layer(int layer) const { return find(layer) != nullptr; }
    /// Throws std::out_of_range for an uncalibrated layer or a head outside [0, n_head_kv).
    HeadView head(int layer, int kv_head) const {
        const Layer* l = &calibrated(layer);
        if (kv_head < 0 || kv_head >= n_head_kv_)
            throw std::out_of_range(label_ + ": KV head " + std::to_string(kv_head) + " outside [0, " +
                                    std::to_string(n_head_kv_) + ")");
        const size_t h = static_cast<size_t>(kv_head), D = static_cast<size_t>(head_dim_);
        const size_t mk = static_cast<size_t>(mk_), mv = static_cast<size_t>(mv_);
        return HeadView{layer,
                        kv_head,
                        head_dim_,
                        mk_,
                        mv_,
                        l->k_patterns.data() + h * mk * D,
                        l->v_patterns.data() + h * mv * D,
                        l->k_counts.data() + h * mk,
                        l->v_counts.data() + h * mv,
                        l->k_clip[h],
                        l->v_clip[h],
                        l->v_gate_z[h],
                        assign_,
                        l->k_bits[h],
                        l->v_bits[h]};
    }

private:
    struct Layer {
        int layer = 0;
        std::vector<float> k_patterns, v_patterns, k_clip, v_clip, v_gate_z;
        std::vector<int64_t> k_counts, v_counts;
        std::vector<int> k_bits, v_bits;  // [H] code widths (all bits() without an allocation)
        int window = 0;                   // sliding window in tokens; 0: global (or unknown without geometry)
        double rope_base = 0.0;           // RoPE base of the layer's keys; 0: not recorded
    };

    std::string label_, model_name_, model_sha256_, arch_;
    std::map<std::string, std::string> metadata_;
    int minor_ = 0, n_layer_ = 0, n_head_ = 0, n_head_kv_ = 0, head_dim_ = 0;
    int bits_ = 0, group_ = 0, window_ = 0, outliers_ = 0, mk_ = 0, mv_ = 0;
    uint64_t seed_ = 0;
    bool geometry_ = false, alloc_ = false;
    double alloc_budget_ = 0.0, alloc_bits_ = 0.0;
    KeyBasis basis_ = KeyBasis::post_rope;
    DimOrder order_ = DimOrder::gguf_interleaved;
    Rotation rotation_ = Rotation::none;
    Assign assign_ = Assign::minmax;
    std::vector<Layer> layers_;

    const Layer* find(int layer) const {
        for (const Layer& l : layers_)
            if (l.layer == layer) return &l;
        return nullptr;
    }
    const Layer& calibrated(int layer) const {
        const Layer* l = find(layer);
        if (!l) throw std::out_of_range(label_ + ": layer " + std::to_string(layer) + " is not calibrated");
        return *l;
    }
    [[noreturn]] void fail(const std::string& what) const { throw TableError("pattern table " + label_ + ": " + what); }
    // By value: a reference tied to the key argument would trip GCC 13's -Wdangling-reference.
    std::string meta(const std::string& key) const {
        const auto it = metadata_.find(key);
        if (it == metadata_.end()) fail("missing metadata " + key);
        return it->second;
    }
    // Digits only (no sign, blanks or leading zeros), value <= hi.
    static bool decimal(const std::string& s, uint64_t hi, uint64_t& out) {
        if (s.empty() || s.size() > 20 || (s.size() > 1 && s[0] == '0')) return false;
        out = 0;
        for (const char c : s) {
            const uint64_t d = static_cast<uint64_t>(c - '0');
            if (c < '0' || c > '9' || d > hi || out > (hi - d) / 10) return false;
            out = out * 10 + d;
        }
        return true;
    }
    int meta_int(const std::string& key, int lo, int hi) const {
        const std::string s = meta(key);
        uint64_t v = 0;
        if (!decimal(s, static_cast<uint64_t>(hi), v) || v < static_cast<uint64_t>(lo))
            fail("metadata " + key + ": expected a decimal integer in [" + std::to_string(lo) + ", " +
                 std::to_string(hi) + "], got \"" + s + "\"");
        return static_cast<int>(v);
    }
    template <typename E>
    E meta_enum(const std::string& key, std::initializer_list<E> values) const {
        const std::string s = meta(key);
        std::string allowed;
        for (const E v : values) {
            if (s == to_string(v)) return v;
            allowed += std::string(allowed.empty() ? "" : " | ") + to_string(v);
        }
        fail("metadata " + key + ": expected " + allowed + ", got \"" + s + "\"");
    }
    // "<field> is <table> but the runtime declares <declared>; <consequence>".
    [[noreturn]] void refuse(const std::string& field, const std::string& table, const std::string& declared,
                             const char* consequence) const {
        fail(field + " is " + table + " but the runtime declares " + declared + "; " + consequence);
    }
    void check_int(const char* field, int table, int declared, const char* consequence) const {
        if (table != declared) refuse(field, std::to_string(table), std::to_string(declared), consequence);
    }
    // A tensor's elements as T, after checking its shape and dtype: F32 (or F16 when
    // f16_ok) for float, non-finite values refused; I64 for int64_t, negative values refused.
    template <typename T>
    std::vector<T> read(const detail::Container& c, const std::string& name, const std::vector<uint64_t>& shape,
                        bool f16_ok = false) const {
        const auto it = c.tensors.find(name);
        if (it == c.tensors.end()) fail("missing tensor " + name);
        const detail::RawTensor& t = it->second;
        if (t.shape != shape)
            fail(name + ": expected shape " + detail::shape_str(shape) + ", got " + detail::shape_str(t.shape));
        const bool is_float = std::is_same<T, float>::value;
        if (is_float ? t.dtype != "F32" && (!f16_ok || t.dtype != "F16") : t.dtype != "I64")
            fail(name + ": expected dtype " + (!is_float ? "I64" : f16_ok ? "F32 or F16" : "F32") + ", got " + t.dtype);
        const size_t es = static_cast<size_t>(detail::dtype_size(t.dtype));
        std::vector<T> out(static_cast<size_t>(t.end - t.begin) / es);
        for (size_t i = 0; i < out.size(); ++i) {
            uint64_t u = 0;  // little-endian bytes, whatever the host order
            for (size_t b = es; b-- > 0;) u = u << 8 | c.data[t.begin + i * es + b];
            if (es == 2) {
                out[i] = static_cast<T>(f16_to_f32(static_cast<uint16_t>(u)));
            } else if (es == 4) {
                const uint32_t u32 = static_cast<uint32_t>(u);
                std::memcpy(&out[i], &u32, 4);
            } else {
                std::memcpy(&out[i], &u, 8);
            }
            if (is_float && !std::isfinite(static_cast<double>(out[i])))
                fail(name + ": element " + std::to_string(i) + " is not finite");
            if (out[i] < 0 && !is_float) fail(name + ": element " + std::to_string(i) + " is negative");
        }
        return out;
    }
    // load() in steps, in the order a table's fields are checked.
    static constexpr int kBig = 1 << 30;  // bound of the counts that have no tighter one
    void load(detail::Container c, const RuntimeDecl& decl);
    void load_format();
    void load_model();
    void load_settings();
    std::vector<int> layer_ids(const std::string& list) const;
    void check_decl(const RuntimeDecl& decl) const;
    void load_allocation();
    void load_layers(const detail::Container& c, const std::vector<int>& ids);
    void load_geometry();
    void check_layer_tensors(const detail::Container& c, const std::string& list) const;
};

// pkv.format and a "<major>.<minor>" pkv.format_version of major 1.
inline void PatternTable::load_format() {
    const std::string format = meta("pkv.format");
    if (format != "pkv.pattern_table") fail("format is \"" + format + "\", expected \"pkv.pattern_table\"");
    const std::string ver = meta("pkv.format_version");
    const size_t dot = ver.find('.');
    uint64_t major = 0, minor = 0;
    if (dot == std::string::npos || !decimal(ver.substr(0, dot), 1u << 30, major) ||
        !decimal(ver.substr(dot + 1), 1u << 30, minor))
        fail("metadata pkv.format_version: expected \"<major>.<minor>\", got \"" + ver + "\"");
    if (major != 1) fail("format version " + ver + " is not supported (this reader reads major version 1)");
    minor_ = static_cast<int>(minor);
}

// The pkv.model.* entries: name, arch, fingerprint and the attention geometry.
inline void PatternTable::load_model() {
    const auto name = metadata_.find("pkv.model.name");
    model_name_ = name == metadata_.end() ? "" : name->second;
    arch_ = meta("pkv.model.arch");
    model_sha256_ = meta("pkv.model.sha256");
    if (!model_sha256_.empty() &&
        (model_sha256_.size() != 64 || model_sha256_.find_first_not_of("0123456789abcdef") != std::string::npos))
        fail("metadata pkv.model.sha256: expected 64 lower-case hex digits or \"\", got \"" + model_sha256_ + "\"");
    n_layer_ = meta_int("pkv.model.n_layer", 1, kBig);
    n_head_ = meta_int("pkv.model.n_head", 1, kBig);
    n_head_kv_ = meta_int("pkv.model.n_head_kv", 1, n_head_);
    if (n_head_ % n_head_kv_ != 0)
        fail("metadata pkv.model.n_head_kv: " + std::to_string(n_head_kv_) + " does not divide n_head " +
             std::to_string(n_head_));
    head_dim_ = meta_int("pkv.model.head_dim", 1, 1 << 16);
    if (head_dim_ % 2 != 0) fail("metadata pkv.model.head_dim: expected an even D, got " + std::to_string(head_dim_));
}

// Key basis and order, rotation, quantizer and pattern counts (after load_model: the
// hadamard rotation needs a power-of-two head_dim).
inline void PatternTable::load_settings() {
    basis_ = meta_enum("pkv.key.basis", {KeyBasis::pre_rope, KeyBasis::post_rope});
    order_ = meta_enum("pkv.key.dim_order", {DimOrder::gguf_interleaved, DimOrder::hf_half_split});
    rotation_ = meta_enum("pkv.rotation", {Rotation::none, Rotation::hadamard});
    const std::string seed = meta("pkv.rotation.seed");
    if (!decimal(seed, std::numeric_limits<uint64_t>::max(), seed_))
        fail("metadata pkv.rotation.seed: expected a decimal integer, got \"" + seed + "\"");
    if (rotation_ == Rotation::none && seed_ != 0)
        fail("metadata pkv.rotation.seed: expected 0 with pkv.rotation none, got " + seed);
    if (rotation_ == Rotation::hadamard && (head_dim_ & (head_dim_ - 1)) != 0)
        fail("metadata pkv.model.head_dim: expected a power of two with pkv.rotation hadamard, got " +
             std::to_string(head_dim_));
    bits_ = meta_int("pkv.quant.bits", 2, 8);
    if (bits_ != 2 && bits_ != 3 && bits_ != 4 && bits_ != 8)
        fail("metadata pkv.quant.bits: expected 2, 3, 4 or 8, got " + std::to_string(bits_));
    group_ = meta_int("pkv.quant.group", 1, kBig);
    window_ = meta_int("pkv.quant.window", 1, kBig);
    if (metadata_.count("pkv.quant.outliers") != 0) outliers_ = meta_int("pkv.quant.outliers", 1, 8);
    assign_ = meta_enum("pkv.assign", {Assign::l2, Assign::minmax});
    mk_ = meta_int("pkv.k_patterns", 1, 1 << 24);
    mv_ = meta_int("pkv.v_patterns", 1, 1 << 24);
}

// pkv.layers: ascending layer indices below n_layer, separated by commas.
inline std::vector<int> PatternTable::layer_ids(const std::string& list) const {
    std::vector<int> ids;
    for (size_t pos = 0; pos <= list.size();) {
        const size_t comma = std::min(list.find(',', pos), list.size());
        uint64_t l = 0;
        if (!decimal(list.substr(pos, comma - pos), static_cast<uint64_t>(n_layer_) - 1, l) ||
            (!ids.empty() && static_cast<int>(l) <= ids.back()))
            fail("metadata pkv.layers: expected ascending layer indices in [0, " + std::to_string(n_layer_) +
                 ") separated by commas, got \"" + list + "\"");
        ids.push_back(static_cast<int>(l));
        pos = comma + 1;
    }
    return ids;
}

// Refuses a table that does not fit what the runtime declares, saying what would go wrong.
inline void PatternTable::check_decl(const RuntimeDecl& decl) const {
    const char* wrong_model = "the patterns were mined on another model";
    const char* wrong_shape = "the table's shapes do not fit this model";
    const char* wrong_space = "patterns and cache vectors would live in different coordinates";
    const char* wrong_quant = "the clip ratios were fitted for the table's quantizer";
    std::string want_sha = decl.model_sha256;
    for (char& ch : want_sha) ch = static_cast<char>(ch >= 'A' && ch <= 'F' ? ch - 'A' + 'a' : ch);
    if (!want_sha.empty() && want_sha != model_sha256_)
        refuse("model sha256", model_sha256_.empty() ? "empty (a synthetic-data table)" : model_sha256_, want_sha,
               wrong_model);
    if (decl.arch != arch_) refuse("model arch", arch_, decl.arch, wrong_model);
    check_int("model n_layer", n_layer_, decl.n_layer, wrong_shape);
    check_int("model n_head", n_head_, decl.n_head, wrong_shape);
    check_int("model n_head_kv", n_head_kv_, decl.n_head_kv, wrong_shape);
    check_int("model head_dim", head_dim_, decl.head_dim, wrong_shape);
    if (decl.key_basis != basis_)
        refuse("key basis", to_string(basis_), to_string(decl.key_basis), "applying it would corrupt attention");
    if (decl.key_dim_order != order_)
        refuse("key dim order", to_string(order_), to_string(decl.key_dim_order),
               "key channels would be matched with the wrong pattern channels");
    if (decl.rotation != rotation_) refuse("rotation", to_string(rotation_), to_string(decl.rotation), wrong_space);
    if (decl.rotation_seed && *decl.rotation_seed != seed_)
        refuse("rotation seed", std::to_string(seed_), std::to_string(*decl.rotation_seed), wrong_space);
    if (decl.bits && alloc_)
        refuse("quant bits", "allocated per KV head (pkv.quant.allocation)", std::to_string(decl.bits),
               "each head's clip ratios were fitted at its own width (declare bits = 0 and quantize each head at "
               "HeadView::k_bits / v_bits)");
    if (decl.bits) check_int("quant bits", bits_, decl.bits, wrong_quant);
    if (decl.group) check_int("quant group", group_, decl.group, wrong_quant);
    if (decl.window) check_int("quant window", window_, decl.window, wrong_quant);
    check_int("quant outliers per group", outliers_, decl.outliers, wrong_quant);
}

// The seven tensors of each listed layer, shapes and dtypes checked, clip ratios in
// (0, 1] and gate z >= 0.
inline void PatternTable::load_layers(const detail::Container& c, const std::vector<int>& ids) {
    const uint64_t H = static_cast<uint64_t>(n_head_kv_), D = static_cast<uint64_t>(head_dim_);
    const uint64_t Mk = static_cast<uint64_t>(mk_), Mv = static_cast<uint64_t>(mv_);
    for (const int l : ids) {
        const std::string p = "layers." + std::to_string(l) + ".";
        Layer L{l,
                read<float>(c, p + "k_patterns", {H, Mk, D}, true),
                read<float>(c, p + "v_patterns", {H, Mv, D}, true),
                read<float>(c, p + "k_clip", {H}),
                read<float>(c, p + "v_clip", {H}),
                read<float>(c, p + "v_gate_z", {H}),
                read<int64_t>(c, p + "k_counts", {H, Mk}),
                read<int64_t>(c, p + "v_counts", {H, Mv}),
                {},
                {}};
        L.k_bits.assign(static_cast<size_t>(H), bits_);
        L.v_bits.assign(static_cast<size_t>(H), bits_);
        for (size_t h = 0; h < H; ++h) {
            const std::string at = " of KV head " + std::to_string(h);
            for (const auto& clip : {std::make_pair("k_clip", L.k_clip[h]), std::make_pair("v_clip", L.v_clip[h])})
                if (!(clip.second > 0.0f && clip.second <= 1.0f))
                    fail(p + clip.first + ": " + std::to_string(clip.second) + at + " is outside (0, 1]");
            if (L.v_gate_z[h] < 0.0f) fail(p + "v_gate_z: " + std::to_string(L.v_gate_z[h]) + at + " is negative");
        }
        layers_.push_back(std::move(L));
    }
}

// pkv.layers.window / pkv.layers.rope_base: one entry per calibrated layer, in pkv.layers
// order; both required from format 1.1 on. A 1.0 table records geometry only when it has
// the window list (its rope bases then optional).
inline void PatternTable::load_geometry() {
    geometry_ = minor_ >= 1 || metadata_.count("pkv.layers.window") != 0;
    if (!geometry_) return;
    for (const bool window : {true, false}) {
        const std::string key = window ? "pkv.layers.window" : "pkv.layers.rope_base";
        if (minor_ < 1 && metadata_.count(key) == 0) continue;
        const std::string list = meta(key);
        std::vector<std::string> items;
        for (size_t pos = 0; pos <= list.size();) {
            const size_t comma = std::min(list.find(',', pos), list.size());
            items.push_back(list.substr(pos, comma - pos));
            pos = comma + 1;
        }
        if (items.size() != layers_.size())
            fail("metadata " + key + ": expected " + std::to_string(layers_.size()) +
                 " values (one per entry of pkv.layers), got " + std::to_string(items.size()));
        for (size_t i = 0; i < items.size(); ++i) {
            const std::string& s = items[i];
            const std::string at = "metadata " + key + ": layer " + std::to_string(layers_[i].layer) + ": ";
            if (window) {
                uint64_t w = 0;
                if (!decimal(s, kBig, w))
                    fail(at + "expected a window in [0, " + std::to_string(kBig) + "] tokens, got \"" + s + "\"");
                layers_[i].window = static_cast<int>(w);
                continue;
            }
            // Read in the classic locale so that a host's decimal comma cannot change it.
            double b = -1.0;
            if (detail::plain_number(s)) {
                std::istringstream in(s);
                in.imbue(std::locale::classic());
                if (!(in >> b) || in.peek() != std::char_traits<char>::eof()) b = -1.0;
            }
            if (!(std::isfinite(b) && b >= 0.0)) fail(at + "expected a finite RoPE base >= 0, got \"" + s + "\"");
            layers_[i].rope_base = b;
        }
    }
}

// A per-layer tensor of a layer missing from pkv.layers means the two disagree.
inline void PatternTable::check_layer_tensors(const detail::Container& c, const std::string& list) const {
    for (const auto& kv : c.tensors) {
        const std::string& n = kv.first;
        if (n.compare(0, 7, "layers.") != 0) continue;
        const size_t end = n.find('.', 7);
        uint64_t l = 0;
        if (end == std::string::npos || !decimal(n.substr(7, end - 7), kBig, l) || !has_layer(static_cast<int>(l)))
            fail("tensor " + n + " belongs to no layer of pkv.layers \"" + list + "\"");
    }
}

inline void PatternTable::load(detail::Container c, const RuntimeDecl& decl) {
    metadata_ = std::move(c.metadata);
    load_format();
    alloc_ = metadata_.count("pkv.quant.allocation") != 0;
    load_model();
    load_settings();
    const std::string list = meta("pkv.layers");
    const std::vector<int> ids = layer_ids(list);
    check_decl(decl);
    load_layers(c, ids);
    load_geometry();
    if (alloc_) load_allocation();
    check_layer_tensors(c, list);
}

// pkv.quant.allocation: {"bits", "budget", "k": [H widths per entry of pkv.layers], "v": ...}.
inline void PatternTable::load_allocation() {
    using detail::Json;
    const std::string key = "metadata pkv.quant.allocation";
    const std::string text = meta("pkv.quant.allocation");
    const Json j =
        detail::JsonParser(text.data(), text.size(), "pattern table " + label_ + ": " + key, true, "JSON").document();
    if (j.kind != Json::Kind::object) fail(key + ": expected a JSON object");
    const auto field = [&](const std::string& name) -> const Json& {
        for (size_t i = 0; i < j.keys.size(); ++i)
            if (j.keys[i] == name) return j.items[i];
        fail(key + ": missing \"" + name + "\"");
    };
    for (const bool budget : {true, false}) {
        const Json& v = field(budget ? "budget" : "bits");
        double x = -1.0;
        if (v.kind == Json::Kind::integer && !v.flag) x = static_cast<double>(v.magnitude);
        if (v.kind == Json::Kind::number) {
            std::istringstream in(v.text);
            in.imbue(std::locale::classic());
            if (!(in >> x)) x = -1.0;
        }
        if (!(x > 0.0 && x <= 16.0))
            fail(key + "." + (budget ? "budget" : "bits") + ": expected a number in (0, 16], got " +
                 detail::json_text(v));
        (budget ? alloc_budget_ : alloc_bits_) = x;
    }
    for (const bool value : {false, true}) {
        const std::string at = key + "." + (value ? "v" : "k");
        const Json& a = field(value ? "v" : "k");
        if (a.kind != Json::Kind::array || a.items.size() != layers_.size())
            fail(at + ": expected " + std::to_string(layers_.size()) + " lists (one per entry of pkv.layers), got " +
                 detail::json_text(a));
        for (size_t i = 0; i < layers_.size(); ++i) {
            const Json& row = a.items[i];
            bool ok = row.kind == Json::Kind::array && row.items.size() == static_cast<size_t>(n_head_kv_);
            for (size_t h = 0; ok && h < row.items.size(); ++h) {
                const Json& w = row.items[h];
                const uint64_t b = w.kind == Json::Kind::integer && !w.flag ? w.magnitude : 0;
                ok = b == 2 || b == 3 || b == 4 || b == 8 || b == 16;
                if (ok) (value ? layers_[i].v_bits : layers_[i].k_bits)[h] = static_cast<int>(b);
            }
            if (!ok)
                fail(at + ": layer " + std::to_string(layers_[i].layer) + ": expected " + std::to_string(n_head_kv_) +
                     " widths of 2, 3, 4, 8 or 16, got " + detail::json_text(row));
        }
    }
}

}  // namespace pkv_rt
