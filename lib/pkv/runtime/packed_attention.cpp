// Reading a packed cache (packed_cache.h): dequantization, the reference decode attention
// that works on the packed codes as the CUDA kernel will, and the storage accounting.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "packed_cache.h"

namespace pkv_rt {

namespace {

[[noreturn]] void fail(const std::string& what) { throw CacheError("packed cache: " + what); }

std::string str(int64_t v) { return std::to_string(v); }

float half_at(const uint8_t* p) { return f16_to_f32(static_cast<uint16_t>(p[0] | p[1] << 8)); }

// A token's place in its block.
struct Slot {
    int64_t block;
    int i;
};
Slot slot_of(int64_t j, int R) { return {j / R, static_cast<int>(j % R)}; }

bool gate_bit(const uint8_t* blk, const BlockLayout& L, int i) { return (blk[L.gate + i / 8] >> (i % 8)) & 1u; }

}  // namespace

void PackedCache::dequantize(int layer, int seq, int head, KvPart part, float* out) const {
    check_layer_seq("dequantize", layer, seq);
    if (head < 0 || head >= cfg_.n_head_kv)
        fail("dequantize: KV head " + str(head) + " is outside [0, " + str(cfg_.n_head_kv) + ")");
    const int D = cfg_.head_dim, R = cfg_.window, bits = cfg_.bits;
    const size_t ix = ls(layer, seq);
    const int64_t n = tokens_[ix], nq = quantized_[static_cast<int>(part)][ix];
    const BlockLayout& L = layout(part);
    const bool table = cfg_.method == CacheMethod::patternkv_table;
    for (int64_t j = 0; j < n; ++j) {
        float* o = out + j * D;
        if (j >= nq) {
            const uint16_t* src = ring_row(layer, seq, head, part, j);
            for (int d = 0; d < D; ++d) o[d] = f16_to_f32(src[d]);
            continue;
        }
        const Slot s = slot_of(j, R);
        const uint8_t* blk = block(layer, seq, head, part, s.block);
        const uint8_t* row = blk + L.codes + s.i * L.row_bytes;
        const float* c = nullptr;
        if (table) {
            const int idx = blk[L.index + s.i];
            const bool add = part == KvPart::k || gate_bit(blk, L, s.i);
            c = add ? patterns(layer, head, part) + static_cast<int64_t>(idx) * D : nullptr;
        }
        const int Gv = value_group(cfg_);
        for (int d = 0; d < D; ++d) {
            const int64_t g = part == KvPart::k ? (s.i / cfg_.group) * D + d : int64_t{s.i} * (D / Gv) + d / Gv;
            const uint8_t* pp = blk + L.params + g * kParamBytes;
            const float sc = half_at(pp), z = half_at(pp + 2);
            const float r = static_cast<float>(
                static_cast<double>(packed_code(row, d, bits)) * static_cast<double>(sc) + static_cast<double>(z));
            // pkv's reconstruction: r̂ + c for keys, r̂ + (gate ? c : 0) for values.
            o[d] = table ? r + (c ? c[d] : 0.0f) : r;
        }
    }
}

// One split of tokens [j0, j1) for query head qh of sequence seq: its running maximum m,
// the sum l of exp(score - m), acc = Σ a r̂ (values' residuals and ring values) and, per value
// pattern p, Σ a over the tokens that add c_p. qc: q·c_p of every key pattern.
void PackedCache::split_attention(int layer, int seq, int qh, const float* q, const float* qc, int64_t j0, int64_t j1,
                                  float& m, float& l, float* acc, float* pattern_weight) const {
    const int D = cfg_.head_dim, R = cfg_.window, G = cfg_.group, bits = cfg_.bits;
    const int h = qh / (cfg_.n_head / cfg_.n_head_kv), Gv = value_group(cfg_);
    const size_t ix = ls(layer, seq);
    const int64_t nk = quantized_[0][ix], nv = quantized_[1][ix];
    const bool table = cfg_.method == CacheMethod::patternkv_table;
    const BlockLayout& LK = layout_[0];
    const BlockLayout& LV = layout_[1];
    const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(D));
    std::vector<float> score(static_cast<size_t>(j1 - j0)), qs(static_cast<size_t>(D));
    float qz = 0.0f;
    int64_t group_of_qs = -1;  // the K group (block * R / G + g) whose q·s and q·z are in qs, qz
    for (int64_t j = j0; j < j1; ++j) {
        float dot = 0.0f;
        if (j < nk) {
            const Slot s = slot_of(j, R);
            const uint8_t* blk = block(layer, seq, h, KvPart::k, s.block);
            // Per-channel groups: q_d s_d and Σ q_d z_d serve all G tokens of the group.
            const int64_t group = s.block * (R / G) + s.i / G;
            if (group != group_of_qs) {
                const uint8_t* pp = blk + LK.params + int64_t{s.i / G} * D * kParamBytes;
                qz = 0.0f;
                for (int d = 0; d < D; ++d) {
                    qs[static_cast<size_t>(d)] = q[d] * half_at(pp + d * kParamBytes);
                    qz += q[d] * half_at(pp + d * kParamBytes + 2);
                }
                group_of_qs = group;
            }
            const uint8_t* row = blk + LK.codes + s.i * LK.row_bytes;
            for (int d = 0; d < D; ++d)
                dot += qs[static_cast<size_t>(d)] * static_cast<float>(packed_code(row, d, bits));
            dot += qz;
            if (table) dot += qc[blk[LK.index + s.i]];
        } else {
            const uint16_t* k = ring_row(layer, seq, h, KvPart::k, j);
            for (int d = 0; d < D; ++d) dot += q[d] * f16_to_f32(k[d]);
        }
        score[static_cast<size_t>(j - j0)] = dot * inv_sqrt_d;
    }
    m = *std::max_element(score.begin(), score.end());
    l = 0.0f;
    for (int64_t j = j0; j < j1; ++j) {
        const float a = std::exp(score[static_cast<size_t>(j - j0)] - m);
        l += a;
        if (j < nv) {
            const Slot s = slot_of(j, R);
            const uint8_t* blk = block(layer, seq, h, KvPart::v, s.block);
            const uint8_t* row = blk + LV.codes + s.i * LV.row_bytes;
            // Per-token groups: a r̂_d = (a s) code_d + a z.
            for (int g = 0; g < D / Gv; ++g) {
                const uint8_t* pp = blk + LV.params + (int64_t{s.i} * (D / Gv) + g) * kParamBytes;
                const float as = a * half_at(pp), az = a * half_at(pp + 2);
                for (int d = g * Gv; d < (g + 1) * Gv; ++d)
                    acc[d] += as * static_cast<float>(packed_code(row, d, bits)) + az;
            }
            if (table && gate_bit(blk, LV, s.i)) pattern_weight[blk[LV.index + s.i]] += a;
        } else {
            const uint16_t* v = ring_row(layer, seq, h, KvPart::v, j);
            for (int d = 0; d < D; ++d) acc[d] += a * f16_to_f32(v[d]);
        }
    }
}

void PackedCache::decode_attention_ref(int layer, const float* q, int64_t n_q, float* out, int split_blocks) const {
    check_layer_seq("decode_attention_ref", layer, 0);
    if (n_q != cfg_.n_seq)
        fail("decode_attention_ref: a query batch of " + str(n_q) + " sequences, expected one query per sequence (" +
             str(cfg_.n_seq) + ")");
    for (const void* p : {static_cast<const void*>(q), static_cast<const void*>(out)})
        if (reinterpret_cast<uintptr_t>(p) % kPackedAlign != 0)
            fail(std::string("decode_attention_ref: the ") + (p == q ? "query" : "output") +
                 " array is not aligned to " + str(kPackedAlign) + " bytes");
    if (split_blocks < 0) fail("decode_attention_ref: split_blocks " + str(split_blocks) + ", expected >= 0");
    for (int s = 0; s < cfg_.n_seq; ++s) {
        if (prefill_[static_cast<size_t>(s)])
            fail("decode_attention_ref: sequence " + str(s) +
                 " is still in its prefill (attend over the prompt in full precision; call end_prefill first)");
        if (tokens_[ls(layer, s)] < 1)
            fail("decode_attention_ref: layer " + str(layer) + " of sequence " + str(s) + " holds no token");
    }
    const int D = cfg_.head_dim, H = cfg_.n_head;
    const bool table = cfg_.method == CacheMethod::patternkv_table;
    const int Mk = table ? cfg_.k_patterns : 0, Mv = table ? cfg_.v_patterns : 0;
    const int64_t span = split_blocks > 0 && cfg_.method != CacheMethod::fp16 ? int64_t{split_blocks} * cfg_.window
                                                                              : std::numeric_limits<int64_t>::max();
    std::vector<float> qc(static_cast<size_t>(Mk)), acc(static_cast<size_t>(D)), pw(static_cast<size_t>(Mv));
    std::vector<float> acc_s(static_cast<size_t>(D)), pw_s(static_cast<size_t>(Mv));
    for (int s = 0; s < cfg_.n_seq; ++s)
        for (int qh = 0; qh < H; ++qh) {
            const float* qv = q + (int64_t{s} * H + qh) * D;
            const int h = qh / (H / cfg_.n_head_kv);
            // q·c of every key pattern, once per query.
            for (int p = 0; p < Mk; ++p) {
                const float* c = patterns(layer, h, KvPart::k) + int64_t{p} * D;
                float dot = 0.0f;
                for (int d = 0; d < D; ++d) dot += qv[d] * c[d];
                qc[static_cast<size_t>(p)] = dot;
            }
            // Split-K: each split's (m, l, acc, pattern weights), merged by rescaling to the
            // largest m as the kernel's combine step does.
            const int64_t n = tokens_[ls(layer, s)];
            float M = -std::numeric_limits<float>::infinity(), L = 0.0f;
            std::fill(acc.begin(), acc.end(), 0.0f);
            std::fill(pw.begin(), pw.end(), 0.0f);
            for (int64_t j0 = 0; j0 < n; j0 += std::min(span, n - j0)) {
                const int64_t j1 = j0 + std::min(span, n - j0);
                float m = 0.0f, l = 0.0f;
                std::fill(acc_s.begin(), acc_s.end(), 0.0f);
                std::fill(pw_s.begin(), pw_s.end(), 0.0f);
                split_attention(layer, s, qh, qv, qc.data(), j0, j1, m, l, acc_s.data(), pw_s.data());
                const float M_new = std::max(M, m);
                const float old_scale = std::exp(M - M_new), new_scale = std::exp(m - M_new);
                L = L * old_scale + l * new_scale;
                for (int d = 0; d < D; ++d)
                    acc[static_cast<size_t>(d)] =
                        acc[static_cast<size_t>(d)] * old_scale + acc_s[static_cast<size_t>(d)] * new_scale;
                for (int p = 0; p < Mv; ++p)
                    pw[static_cast<size_t>(p)] =
                        pw[static_cast<size_t>(p)] * old_scale + pw_s[static_cast<size_t>(p)] * new_scale;
                M = M_new;
            }
            // Σ_p (Σ_{idx = p} a) c_p: each value pattern is read once per query.
            for (int p = 0; p < Mv; ++p) {
                const float w = pw[static_cast<size_t>(p)];
                if (w == 0.0f) continue;
                const float* c = patterns(layer, h, KvPart::v) + int64_t{p} * D;
                for (int d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += w * c[d];
            }
            float* o = out + (int64_t{s} * H + qh) * D;
            for (int d = 0; d < D; ++d) o[d] = acc[static_cast<size_t>(d)] / L;
        }
}

CacheBits PackedCache::counted_bits(int layer, int seq, int head, KvPart part) const {
    check_layer_seq("counted_bits", layer, seq);
    if (head < 0 || head >= cfg_.n_head_kv)
        fail("counted_bits: KV head " + str(head) + " is outside [0, " + str(cfg_.n_head_kv) + ")");
    const double D = cfg_.head_dim;
    const int64_t n = tokens_[ls(layer, seq)], nq = quantized_[static_cast<int>(part)][ls(layer, seq)];
    CacheBits b;
    b.window = 16.0 * D * static_cast<double>(n - nq);
    if (cfg_.method == CacheMethod::fp16) return b;
    const double q = static_cast<double>(nq);
    b.codes = cfg_.bits * D * q;
    // K: 32 bits per channel per G-token group (nq is whole blocks, G divides R); V: per
    // token, 32 bits per min(G, D) channels.
    b.params = part == KvPart::k ? 32.0 * D * static_cast<double>(nq / cfg_.group) : 32.0 * (D / value_group(cfg_)) * q;
    if (cfg_.method == CacheMethod::patternkv_table) {
        int ib = 0;
        while ((1 << ib) < M(part)) ++ib;
        b.index = ib * q;
        if (part == KvPart::v) b.gate = q;
    }
    return b;
}

int64_t PackedCache::packed_bytes(int layer, int seq, int head, KvPart part) const {
    check_layer_seq("packed_bytes", layer, seq);
    if (head < 0 || head >= cfg_.n_head_kv)
        fail("packed_bytes: KV head " + str(head) + " is outside [0, " + str(cfg_.n_head_kv) + ")");
    const int64_t n = tokens_[ls(layer, seq)], nq = quantized_[static_cast<int>(part)][ls(layer, seq)];
    const int64_t blocks = cfg_.method == CacheMethod::fp16 ? 0 : (nq + cfg_.window - 1) / cfg_.window;
    return blocks * layout(part).bytes + (n - nq) * cfg_.head_dim * kHalfBytes;
}

}  // namespace pkv_rt
