// The packed cache of packed_cache.h: configuration checks, the quantizer and pattern
// choice (pkv's arithmetic, docs/numerics.md, repeated here so that the runtime folder
// needs no other pkv library), the flush schedule and the reference decode attention.
#include "packed_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace pkv_rt {

namespace {

[[noreturn]] void fail(const std::string& what) { throw CacheError("packed cache: " + what); }

std::string str(int64_t v) { return std::to_string(v); }

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// One quantizer group's grid: pkv::minmax_grid (clip about the centre, binary16 zero and
// scale), as floats and as their binary16 bits.
struct Grid {
    uint16_t scale16 = 0, zero16 = 0;
    float s = 0.0f, z = 0.0f;
};

Grid make_grid(float mn, float mx, int bits, float clip) {
    if (clip < 1.0f) {
        const float c = 0.5f * mn + 0.5f * mx, h = 0.5f * mx - 0.5f * mn;
        mn = c - clip * h;
        mx = c + clip * h;
    }
    Grid g;
    g.zero16 = f32_to_f16(mn);
    g.scale16 = f32_to_f16((mx - mn) / static_cast<float>((1 << bits) - 1));
    g.z = f16_to_f32(g.zero16);
    g.s = f16_to_f32(g.scale16);
    if (!std::isfinite(g.z) || !std::isfinite(g.s))
        fail("quantizer group with min " + std::to_string(mn) + " and max " + std::to_string(mx) +
             " has a zero or scale beyond the binary16 range");
    return g;
}

// The code of x on grid g: round half to even of (x - z) / s, clamped; 0 on a flat grid.
unsigned code_of(float x, const Grid& g, int bits) {
    if (!(g.s > 0.0f)) return 0;
    const float t = std::nearbyint((x - g.z) / g.s);
    const float qmax = static_cast<float>((1 << bits) - 1);
    return static_cast<unsigned>(std::min(std::max(t, 0.0f), qmax));
}

// The pattern pkv assigns x to: min-max distance (max - min of x - c, in double) or squared
// L2 (double sum in channel order); strict '<', so the lowest index wins ties.
int nearest(const float* x, const float* P, int M, int D, Assign how) {
    int best = 0;
    double best_d = 0.0;
    for (int j = 0; j < M; ++j) {
        const float* c = P + static_cast<size_t>(j) * static_cast<size_t>(D);
        double dist = 0.0;
        if (how == Assign::l2) {
            for (int t = 0; t < D; ++t) {
                const double e = static_cast<double>(x[t]) - static_cast<double>(c[t]);
                dist += e * e;
            }
        } else {
            double lo = static_cast<double>(x[0]) - static_cast<double>(c[0]), hi = lo;
            for (int t = 1; t < D; ++t) {
                const double r = static_cast<double>(x[t]) - static_cast<double>(c[t]);
                lo = r < lo ? r : lo;
                hi = hi < r ? r : hi;
            }
            dist = hi - lo;
        }
        if (j == 0 || dist < best_d) {
            best_d = dist;
            best = j;
        }
    }
    return best;
}

// pkv's value gate: rho from float differences (pkv::v_gate_rho), then the z-test.
bool gate_passes(const float* v, const float* c, int D, double z) {
    float vmin = v[0], vmax = v[0], rmin = v[0] - c[0], rmax = rmin;
    for (int i = 1; i < D; ++i) {
        vmin = std::min(vmin, v[i]);
        vmax = std::max(vmax, v[i]);
        const float e = v[i] - c[i];
        rmin = std::min(rmin, e);
        rmax = std::max(rmax, e);
    }
    const double rv = static_cast<double>(vmax) - static_cast<double>(vmin);
    if (rv <= 0.0) return false;
    const double rho = (static_cast<double>(rmax) - static_cast<double>(rmin)) / rv;
    if (!std::isfinite(rho)) return false;
    const double rho2 = rho * rho;
    return 1.0 - rho2 >= (2.0 * z / std::sqrt(5.0 * D)) * std::sqrt(1.0 + rho2 * rho2);
}

void store_u16(uint8_t* p, uint16_t v) {
    p[0] = static_cast<uint8_t>(v & 0xffu);
    p[1] = static_cast<uint8_t>(v >> 8);
}

}  // namespace

uint16_t f32_to_f16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)  // inf, or NaN with its top payload bits kept
        return static_cast<uint16_t>(sign | (ax == 0x7f800000u ? 0x7c00u : 0x7e00u | ((ax >> 13) & 0x3ffu)));
    if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520
    if (ax < 0x38800000u) {                                               // subnormal or zero
        if (ax < 0x33000000u) return sign;
        const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - (ax >> 23);
        const uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        return static_cast<uint16_t>(sign | (q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u)));
    }
    uint32_t r = ax - 0x38000000u;  // rebias the exponent; a mantissa carry bumps it
    const uint32_t rem = r & 0x1fffu;
    r >>= 13;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
}

BlockLayout block_layout(const CacheConfig& c, KvPart part) {
    if (c.n_layer < 1) fail("n_layer: expected >= 1, got " + str(c.n_layer));
    if (c.n_head_kv < 1) fail("n_head_kv: expected >= 1, got " + str(c.n_head_kv));
    if (c.n_head < c.n_head_kv || c.n_head % c.n_head_kv != 0)
        fail("n_head: expected a multiple of n_head_kv " + str(c.n_head_kv) + ", got " + str(c.n_head));
    if (c.head_dim < 2 || c.head_dim % 2 != 0 || c.head_dim > 1 << 16)
        fail("head_dim: expected an even D in [2, 65536], got " + str(c.head_dim));
    if (c.n_seq < 1) fail("n_seq: expected >= 1, got " + str(c.n_seq));
    if (c.max_tokens < 1) fail("max_tokens: expected >= 1, got " + str(c.max_tokens));
    BlockLayout L;
    if (c.method == CacheMethod::fp16) return L;
    const int64_t R = c.window, D = c.head_dim;
    if (R < 1) fail("window R: expected >= 1, got " + str(R));
    if (c.bits != 2 && c.bits != 3 && c.bits != 4) fail("bits: expected 2, 3 or 4, got " + str(c.bits));
    if (c.group < 1 || R % c.group != 0)
        fail("group G " + str(c.group) + " does not divide window R " + str(R) +
             ": a K block must hold whole G-token groups");
    const int Gv = value_group(c);
    if (D % Gv != 0) fail("group " + str(Gv) + " does not divide head_dim " + str(D));
    if (c.method == CacheMethod::patternkv_table) {
        const int M = part == KvPart::k ? c.k_patterns : c.v_patterns;
        if (M < 1 || M > kMaxPackedPatterns)
            fail(std::string(part == KvPart::k ? "k_patterns" : "v_patterns") + ": expected 1.." +
                 str(kMaxPackedPatterns) + " (uint8 indices), got " + str(M));
    }
    L.row_bytes = (D * c.bits + 31) / 32 * kCodeWordBytes;
    L.codes = 0;
    int64_t at = round_up(R * L.row_bytes, kPackedAlign);
    L.params = at;
    L.param_groups = part == KvPart::k ? R / c.group * D : R * (D / Gv);
    at += round_up(L.param_groups * kParamBytes, kPackedAlign);
    if (c.method == CacheMethod::patternkv_table) {
        L.index = at;
        at += round_up(R, kPackedAlign);
        if (part == KvPart::v) {
            L.gate = at;
            at += round_up((R + 7) / 8, kPackedAlign);
        }
    }
    L.bytes = at;
    return L;
}

PackedCache::PackedCache(const CacheConfig& c) : cfg_(c) {
    layout_[0] = block_layout(c, KvPart::k);
    layout_[1] = block_layout(c, KvPart::v);
    const size_t heads =
        static_cast<size_t>(c.n_layer) * static_cast<size_t>(c.n_seq) * static_cast<size_t>(c.n_head_kv);
    const size_t D = static_cast<size_t>(c.head_dim);
    if (c.method == CacheMethod::fp16) {
        window_capacity_ = c.max_tokens;
    } else {
        window_capacity_ = c.window + kWindowSlack;
        max_blocks_ = (c.max_tokens + c.window - 1) / c.window;
        for (int p = 0; p < 2; ++p)
            blocks_[p].resize(heads * static_cast<size_t>(max_blocks_) * static_cast<size_t>(layout_[p].bytes) /
                              kPackedAlign);
    }
    ring_.assign(heads * 2 * static_cast<size_t>(window_capacity_) * D, 0);
    const size_t lh_count = static_cast<size_t>(c.n_layer) * static_cast<size_t>(c.n_head_kv);
    for (int p = 0; p < 2; ++p) {
        params_[p].assign(lh_count, HeadParams{});
        if (c.method == CacheMethod::patternkv_table)
            patterns_[p].assign(lh_count * static_cast<size_t>(M(static_cast<KvPart>(p))) * D, 0.0f);
        quantized_[p].assign(static_cast<size_t>(c.n_layer) * static_cast<size_t>(c.n_seq), 0);
    }
    tokens_.assign(static_cast<size_t>(c.n_layer) * static_cast<size_t>(c.n_seq), 0);
    prefill_.assign(static_cast<size_t>(c.n_seq), 1);
}

size_t PackedCache::ls(int layer, int seq) const {
    return static_cast<size_t>(layer) * static_cast<size_t>(cfg_.n_seq) + static_cast<size_t>(seq);
}
size_t PackedCache::lh(int layer, int head) const {
    return static_cast<size_t>(layer) * static_cast<size_t>(cfg_.n_head_kv) + static_cast<size_t>(head);
}

void PackedCache::check_layer_seq(const char* what, int layer, int seq) const {
    if (layer < 0 || layer >= cfg_.n_layer)
        fail(std::string(what) + ": layer " + str(layer) + " is outside [0, " + str(cfg_.n_layer) + ")");
    if (seq < 0 || seq >= cfg_.n_seq)
        fail(std::string(what) + ": sequence " + str(seq) + " is outside [0, " + str(cfg_.n_seq) + ")");
}

const uint8_t* PackedCache::block(int layer, int seq, int head, KvPart part, int64_t b) const {
    const int p = static_cast<int>(part);
    const size_t at = ((ls(layer, seq) * static_cast<size_t>(cfg_.n_head_kv) + static_cast<size_t>(head)) *
                           static_cast<size_t>(max_blocks_) +
                       static_cast<size_t>(b)) *
                      static_cast<size_t>(layout_[p].bytes);
    return blocks_[p].front().b + at;
}
uint8_t* PackedCache::block_mut(int layer, int seq, int head, KvPart part, int64_t b) {
    return const_cast<uint8_t*>(static_cast<const PackedCache*>(this)->block(layer, seq, head, part, b));
}

const uint16_t* PackedCache::ring_row(int layer, int seq, int head, KvPart part, int64_t token) const {
    const size_t slot = static_cast<size_t>(token % window_capacity_);
    const size_t hp = (ls(layer, seq) * static_cast<size_t>(cfg_.n_head_kv) + static_cast<size_t>(head)) * 2 +
                      static_cast<size_t>(part);
    return ring_.data() + (hp * static_cast<size_t>(window_capacity_) + slot) * static_cast<size_t>(cfg_.head_dim);
}
uint16_t* PackedCache::ring_mut(int layer, int seq, int head, KvPart part, int64_t token) {
    return const_cast<uint16_t*>(ring_row(layer, seq, head, part, token));
}

const float* PackedCache::patterns(int layer, int head, KvPart part) const {
    const int p = static_cast<int>(part);
    if (patterns_[p].empty()) return nullptr;
    return patterns_[p].data() + lh(layer, head) * static_cast<size_t>(M(part)) * static_cast<size_t>(cfg_.head_dim);
}
float PackedCache::clip(int layer, int head, KvPart part) const {
    return params_[static_cast<int>(part)][lh(layer, head)].clip;
}
double PackedCache::gate_z(int layer, int head) const { return params_[1][lh(layer, head)].gate_z; }
Assign PackedCache::assign(int layer, int head, KvPart part) const {
    return params_[static_cast<int>(part)][lh(layer, head)].assign;
}

int64_t PackedCache::tokens(int layer, int seq) const {
    check_layer_seq("tokens", layer, seq);
    return tokens_[ls(layer, seq)];
}
int64_t PackedCache::quantized(int layer, int seq, KvPart part) const {
    check_layer_seq("quantized", layer, seq);
    return quantized_[static_cast<int>(part)][ls(layer, seq)];
}
bool PackedCache::in_prefill(int seq) const {
    check_layer_seq("in_prefill", 0, seq);
    return prefill_[static_cast<size_t>(seq)] != 0;
}

void PackedCache::set_patterns(int layer, int head, KvPart part, const float* patterns, int M_in, float clip_ratio,
                               double z, Assign assign) {
    const std::string at =
        "set_patterns: layer " + str(layer) + " KV head " + str(head) + (part == KvPart::k ? " K" : " V");
    if (cfg_.method != CacheMethod::patternkv_table)
        fail(at + ": a " + to_string(cfg_.method) + " cache takes no patterns");
    if (layer < 0 || layer >= cfg_.n_layer || head < 0 || head >= cfg_.n_head_kv)
        fail(at + ": expected layer < " + str(cfg_.n_layer) + " and KV head < " + str(cfg_.n_head_kv));
    if (M_in != M(part)) fail(at + ": expected " + str(M(part)) + " patterns (the cache's), got " + str(M_in));
    if (!(clip_ratio > 0.0f && clip_ratio <= 1.0f))
        fail(at + ": clip ratio " + std::to_string(clip_ratio) + " is outside (0, 1]");
    if (!(z >= 0.0) || !std::isfinite(z)) fail(at + ": gate z " + std::to_string(z) + " is not a finite z >= 0");
    for (int64_t t = 0; t < cfg_.n_seq; ++t)
        if (tokens_[ls(layer, static_cast<int>(t))] != 0)
            fail(at + ": the layer already holds tokens; set patterns before the first append");
    const size_t n = static_cast<size_t>(M_in) * static_cast<size_t>(cfg_.head_dim);
    for (size_t i = 0; i < n; ++i)
        if (!std::isfinite(patterns[i]))
            fail(at + ": pattern element " + str(static_cast<int64_t>(i)) + " is not finite");
    std::copy(patterns, patterns + n, const_cast<float*>(this->patterns(layer, head, part)));
    params_[static_cast<int>(part)][lh(layer, head)] = HeadParams{clip_ratio, z, assign, true};
}

void PackedCache::set_table(const PatternTable& t) {
    auto check = [&](const char* field, int table, int cache) {
        if (table != cache)
            fail("pattern table " + std::string(field) + " is " + str(table) + " but the cache's is " + str(cache) +
                 ": the table belongs to another model or quantizer");
    };
    check("n_layer", t.n_layer(), cfg_.n_layer);
    check("n_head", t.n_head(), cfg_.n_head);
    check("n_head_kv", t.n_head_kv(), cfg_.n_head_kv);
    check("head_dim", t.head_dim(), cfg_.head_dim);
    check("bits", t.bits(), cfg_.bits);
    check("k_patterns", t.n_k_patterns(), cfg_.k_patterns);
    check("v_patterns", t.n_v_patterns(), cfg_.v_patterns);
    for (const int64_t n : tokens_)
        if (n != 0) fail("set_table: the cache already holds tokens; set the table before the first append");
    for (int l = 0; l < cfg_.n_layer; ++l)
        if (!t.has_layer(l))
            fail("pattern table has no patterns for layer " + str(l) +
                 ": a patternkv-table cache needs every layer (keep uncalibrated layers in an fp16 cache)");
    // A width allocation's heads are fitted each at its own width; this cache has one.
    for (int l = 0; l < cfg_.n_layer; ++l)
        for (int h = 0; h < cfg_.n_head_kv; ++h) {
            const HeadView hv = t.head(l, h);
            if (hv.k_bits != cfg_.bits || hv.v_bits != cfg_.bits)
                fail("set_table: the table allocates a width per KV head (layer " + str(l) + " KV head " + str(h) +
                     ": K " + str(hv.k_bits) + ", V " + str(hv.v_bits) + " bits) but a packed cache holds one width, " +
                     str(cfg_.bits) + " bits");
        }
    for (int l = 0; l < cfg_.n_layer; ++l)
        for (int h = 0; h < cfg_.n_head_kv; ++h) {
            const HeadView hv = t.head(l, h);
            set_patterns(l, h, KvPart::k, hv.k_patterns, hv.n_k_patterns, hv.k_clip, 0.0, hv.assign);
            set_patterns(l, h, KvPart::v, hv.v_patterns, hv.n_v_patterns, hv.v_clip, static_cast<double>(hv.v_gate_z),
                         hv.assign);
        }
}

void PackedCache::append(int layer, int seq, const float* k, const float* v, int64_t n) {
    check_layer_seq("append", layer, seq);
    const std::string at = "append: layer " + str(layer) + " sequence " + str(seq);
    const size_t ix = ls(layer, seq);
    if (n < 0) fail(at + ": expected a token count >= 0, got " + str(n));
    if (n > cfg_.max_tokens - tokens_[ix])
        fail(at + ": " + str(tokens_[ix]) + " + " + str(n) + " tokens exceed the " + str(cfg_.max_tokens) +
             " allocated per sequence");
    if (cfg_.method == CacheMethod::patternkv_table)
        for (int h = 0; h < cfg_.n_head_kv; ++h)
            for (int p = 0; p < 2; ++p)
                if (!params_[p][lh(layer, h)].set)
                    fail(at + ": KV head " + str(h) + " has no " + (p ? "V" : "K") +
                         " patterns; call set_table or set_patterns first");
    const int64_t row = static_cast<int64_t>(cfg_.n_head_kv) * cfg_.head_dim;
    for (int64_t i = 0; i < n * row; ++i)
        if (!std::isfinite(k[i]) || !std::isfinite(v[i]) || std::fabs(k[i]) >= 65520.0f || std::fabs(v[i]) >= 65520.0f)
            fail(at + ": element " + str(i) + " of the new rows is not a finite binary16 value (K " +
                 std::to_string(k[i]) + ", V " + std::to_string(v[i]) + ")");
    const bool prefill = prefill_[static_cast<size_t>(seq)] != 0;
    for (int64_t i = 0; i < n; ++i) {
        if (!prefill) flush_due(layer, seq);
        const int64_t j = tokens_[ix];
        for (int h = 0; h < cfg_.n_head_kv; ++h)
            for (int p = 0; p < 2; ++p) {
                const float* src = (p ? v : k) + i * row + static_cast<int64_t>(h) * cfg_.head_dim;
                uint16_t* dst = ring_mut(layer, seq, h, static_cast<KvPart>(p), j);
                for (int d = 0; d < cfg_.head_dim; ++d) dst[d] = f32_to_f16(src[d]);
            }
        tokens_[ix] = j + 1;
        // No query attends over a prefill from this cache, so its blocks can go at once.
        if (prefill) flush_due(layer, seq);
    }
}

// Flushes what is due: a block of R pending tokens; KIVI V: the tokens beyond the R most
// recent. Called after each prefill token and before each decode token, this is
// simulate_cache's schedule (a decode step attends first, then its block goes).
void PackedCache::flush_due(int layer, int seq) {
    if (cfg_.method == CacheMethod::fp16) return;
    const size_t ix = ls(layer, seq);
    const int64_t n = tokens_[ix], R = cfg_.window;
    if (n - quantized_[0][ix] >= R) flush_k_block(layer, seq, quantized_[0][ix]);
    if (cfg_.method == CacheMethod::kivi) {
        if (n - quantized_[1][ix] > R) flush_v_tokens(layer, seq, quantized_[1][ix], n - R);
    } else if (n - quantized_[1][ix] >= R) {
        flush_v_tokens(layer, seq, quantized_[1][ix], quantized_[1][ix] + R);
    }
}

// Quantizes K tokens [t0, t0 + R) from the ring into block t0 / R: pattern (table), residual
// per channel in G-token groups, codes packed per token.
void PackedCache::flush_k_block(int layer, int seq, int64_t t0) {
    const int D = cfg_.head_dim, R = cfg_.window, G = cfg_.group, bits = cfg_.bits;
    const bool table = cfg_.method == CacheMethod::patternkv_table;
    const BlockLayout& L = layout_[0];
    std::vector<float> r(static_cast<size_t>(R) * static_cast<size_t>(D));
    std::vector<float> x(static_cast<size_t>(D));
    for (int h = 0; h < cfg_.n_head_kv; ++h) {
        uint8_t* blk = block_mut(layer, seq, h, KvPart::k, t0 / R);
        std::memset(blk, 0, static_cast<size_t>(L.bytes));
        const float* P = table ? patterns(layer, h, KvPart::k) : nullptr;
        const HeadParams& hp = params_[0][lh(layer, h)];
        for (int i = 0; i < R; ++i) {
            const uint16_t* src = ring_row(layer, seq, h, KvPart::k, t0 + i);
            for (int d = 0; d < D; ++d) x[static_cast<size_t>(d)] = f16_to_f32(src[d]);
            float* ri = r.data() + static_cast<size_t>(i) * static_cast<size_t>(D);
            if (table) {
                const int idx = nearest(x.data(), P, cfg_.k_patterns, D, hp.assign);
                blk[L.index + i] = static_cast<uint8_t>(idx);
                const float* c = P + static_cast<size_t>(idx) * static_cast<size_t>(D);
                for (int d = 0; d < D; ++d) ri[d] = x[static_cast<size_t>(d)] - c[d];
            } else {
                std::copy(x.begin(), x.end(), ri);
            }
        }
        for (int g = 0; g < R / G; ++g)
            for (int d = 0; d < D; ++d) {
                const float* col = r.data() + static_cast<size_t>(g) * static_cast<size_t>(G) * static_cast<size_t>(D) +
                                   static_cast<size_t>(d);
                float mn = col[0], mx = col[0];
                for (int i = 0; i < G; ++i) {
                    mn = std::min(mn, col[static_cast<size_t>(i) * static_cast<size_t>(D)]);
                    mx = std::max(mx, col[static_cast<size_t>(i) * static_cast<size_t>(D)]);
                }
                const Grid grid = make_grid(mn, mx, bits, hp.clip);
                uint8_t* pp = blk + L.params + (static_cast<int64_t>(g) * D + d) * kParamBytes;
                store_u16(pp, grid.scale16);
                store_u16(pp + 2, grid.zero16);
                for (int i = 0; i < G; ++i)
                    pack_code(blk + L.codes + static_cast<int64_t>(g * G + i) * L.row_bytes, d, bits,
                              code_of(col[static_cast<size_t>(i) * static_cast<size_t>(D)], grid, bits));
            }
    }
    quantized_[0][ls(layer, seq)] = t0 + R;
}

// Quantizes V tokens [t0, t1) from the ring, each into slot t % R of block t / R: pattern and
// gate (table), residual per token in min(G, D)-channel groups.
void PackedCache::flush_v_tokens(int layer, int seq, int64_t t0, int64_t t1) {
    const int D = cfg_.head_dim, R = cfg_.window, Gv = value_group(cfg_), bits = cfg_.bits;
    const bool table = cfg_.method == CacheMethod::patternkv_table;
    const BlockLayout& L = layout_[1];
    std::vector<float> x(static_cast<size_t>(D)), r(static_cast<size_t>(D));
    for (int h = 0; h < cfg_.n_head_kv; ++h) {
        const float* P = table ? patterns(layer, h, KvPart::v) : nullptr;
        const HeadParams& hp = params_[1][lh(layer, h)];
        for (int64_t t = t0; t < t1; ++t) {
            uint8_t* blk = block_mut(layer, seq, h, KvPart::v, t / R);
            const int i = static_cast<int>(t % R);
            if (i == 0) std::memset(blk, 0, static_cast<size_t>(L.bytes));
            const uint16_t* src = ring_row(layer, seq, h, KvPart::v, t);
            for (int d = 0; d < D; ++d) x[static_cast<size_t>(d)] = f16_to_f32(src[d]);
            bool subtract = false;
            const float* c = nullptr;
            if (table) {
                const int idx = nearest(x.data(), P, cfg_.v_patterns, D, hp.assign);
                c = P + static_cast<size_t>(idx) * static_cast<size_t>(D);
                subtract = gate_passes(x.data(), c, D, hp.gate_z);
                blk[L.index + i] = static_cast<uint8_t>(idx);
                if (subtract) blk[L.gate + i / 8] = static_cast<uint8_t>(blk[L.gate + i / 8] | (1u << (i % 8)));
            }
            for (int d = 0; d < D; ++d)
                r[static_cast<size_t>(d)] = x[static_cast<size_t>(d)] - (subtract ? c[d] : 0.0f);
            uint8_t* row = blk + L.codes + static_cast<int64_t>(i) * L.row_bytes;
            for (int g = 0; g < D / Gv; ++g) {
                const float* grp = r.data() + static_cast<size_t>(g) * static_cast<size_t>(Gv);
                float mn = grp[0], mx = grp[0];
                for (int e = 0; e < Gv; ++e) {
                    mn = std::min(mn, grp[e]);
                    mx = std::max(mx, grp[e]);
                }
                const Grid grid = make_grid(mn, mx, bits, hp.clip);
                uint8_t* pp = blk + L.params + (static_cast<int64_t>(i) * (D / Gv) + g) * kParamBytes;
                store_u16(pp, grid.scale16);
                store_u16(pp + 2, grid.zero16);
                for (int e = 0; e < Gv; ++e) pack_code(row, g * Gv + e, bits, code_of(grp[e], grid, bits));
            }
        }
    }
    quantized_[1][ls(layer, seq)] = t1;
}

void PackedCache::end_prefill(int seq) {
    check_layer_seq("end_prefill", 0, seq);
    if (!prefill_[static_cast<size_t>(seq)])
        fail("end_prefill: sequence " + str(seq) + " has already left its prefill");
    for (int l = 1; l < cfg_.n_layer; ++l)
        if (tokens_[ls(l, seq)] != tokens_[ls(0, seq)])
            fail("end_prefill: sequence " + str(seq) + ": layer " + str(l) + " holds " + str(tokens_[ls(l, seq)]) +
                 " tokens, expected " + str(tokens_[ls(0, seq)]) + " as layer 0");
    // append() flushed every block the prompt completed; nothing else is due.
    prefill_[static_cast<size_t>(seq)] = 0;
}

void PackedCache::flush(int seq) {
    check_layer_seq("flush", 0, seq);
    for (int l = 0; l < cfg_.n_layer; ++l) flush_due(l, seq);
}

}  // namespace pkv_rt
