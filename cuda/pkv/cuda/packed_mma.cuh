// Internal: the tensor-core path of the quantized split kernel (packed_attention_quant.cu)
// for 2-bit KIVI and patternkv-table splits whose every token is flushed. A warp takes rounds
// of 32 tokens, staged in shared memory with cp.async a round ahead, and computes
//   scores  S[t][a] = Σ_c code_t[c] (q_a s)[c]                   (mma: tokens × channels · channels × heads)
//   values  O[c][a] = Σ_t code_t[c] (p_a sv)[t]                   (mma: channels × tokens · tokens × heads)
// with m16n8k16 binary16 products and fp32 sums. The products are exact, so the result has
// fp32 grade when each fp32 operand x on the other side is split into binary16 hi + lo
// (hi = fp16(x), lo = fp16(x − hi): 22 significant bits): the eight columns of the
// mma's n are (query head a, hi or lo), 2a + hl, which fits GQA 4 exactly.
//
// Codes enter as the binary16 1 + code/4 (the code in the two top mantissa bits: a shift
// and one lop3 per pair of codes), so Σ code x = 4 Σ (1 + code/4) x − 4 Σ x. Each side of
// an mma may permute its contraction index freely as long as both sides agree; the channel
// and token orders below are chosen so that a register's two codes sit 16 bits apart in
// one word (scores) or at the same place of two words (values, after one byte permute).
//
// Scaling: the hi/lo split of x keeps 22 bits only above binary16's normal range, so each
// side is multiplied by a power of two that brings its largest magnitude to [2^14, 2^15)
// (q·s once per key group, p·sv once per round) and the sums are scaled back.
#pragma once

#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "pkv/cuda/packed_device_impl.cuh"
#include "pkv/cuda/packed_warp.cuh"

namespace pkv::cuda::mma2 {

using lanes::kFull;

constexpr int kRound = 32;  // tokens a warp takes at a time
constexpr uint32_t kCodeMask = 0x03000300u, kOne = 0x3C003C00u;

__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// (w & 0x03000300) | 0x3C003C00 in one instruction.
__device__ __forceinline__ uint32_t as_codes(uint32_t w) {
    uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(r) : "r"(w), "n"(kCodeMask), "n"(kOne));
    return r;
}

// The binary16 pair (lo, hi) of fp32 values, each rounded to nearest.
__device__ __forceinline__ uint32_t pack_halves(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
}
// The hi part (part 0) or the lo part (part 1) of x's binary16 split.
__device__ __forceinline__ float split_part(float x, int part) {
    const float hi = __half2float(__float2half_rn(x));
    return part ? x - hi : x;
}

// 2^(14 − floor(log2 m)) for m > 0 (1 for m = 0 or not finite), clamped to normal floats.
__device__ __forceinline__ float up_scale(float m) {
    const int e = (__float_as_int(m) >> 23) & 0xff;
    if (e == 0 || e == 0xff) return 1.0f;
    const int b = min(254, max(1, 127 + 14 - (e - 127)));
    return __int_as_float(b << 23);
}

// Bytes of one warp's staging buffer for a round: K rows, V rows, V (scale, zero) pairs,
// K and V pattern indices, the V gate word (16 bytes, 4 used).
__host__ __device__ constexpr int stage_bytes(int D, int ng) { return 2 * kRound * (D / 4) + kRound * ng * 4 + 80; }

/// Shared bytes of the mma path's staging: two buffers per warp (the kernel's acc, max and
/// sum records reuse them at the end).
inline int mma_stage_bytes(int D, int ng, int warps) { return 2 * warps * stage_bytes(D, ng); }

// The warp's run [w_begin, w_end) of one split over flushed tokens only, in rounds of 32.
// q_s [Q, D] and qc_s [Q, Mk] hold the block's queries and pattern scores; pw_w [Q, Mv] are
// this warp's pattern weights (zeroed). Leaves the warp's unnormalised output for head a at
// acc_out[a * D + ..] (fp32), and returns m (the running max) and l (sum) for head lane % 4
// in lanes 0..Q−1 through m_out, l_out; stage is this warp's two staging buffers. Every
// warp of the block must call it (it waits for all before writing acc_out, which may lie
// over other warps' staging buffers).
template <int D, int Q, bool TABLE>
__device__ __forceinline__ void warp_run(const SplitGeo& g, const uint8_t* kblocks, const uint8_t* vblocks,
                                         int64_t w_begin, int64_t w_end, const float* q_s, const float* qc_s,
                                         float* pw_w, uint8_t* stage, float* acc_out, float& m_out, float& l_out) {
    constexpr int KS = D / 16;  // k-steps of the scores = m-tiles of the values = code words per row
    constexpr int RB = D / 4;   // bytes of a 2-bit code row
    static_assert(Q == 1 || Q == 2 || Q == 4, "GQA 1, 2 or 4");
    const int lane = threadIdx.x & 31;
    const int gq = lane >> 2, t = lane & 3;  // the mma's groupID and thread in group
    const int bh = gq >> 1, hl = gq & 1;     // the (head, hi/lo) column this lane feeds as B
    const int ng = D / g.Gv;
    const int Mk = TABLE ? g.Mk : 0, Mv = TABLE ? g.Mv : 0;
    const int sbytes = stage_bytes(D, ng);
    const float inv_sqrt_d = 1.0f / sqrtf(static_cast<float>(D));
    // Value rows: row gq of an m-tile is channel vp(gq) = 8 (gq / 4) + gq % 4, row gq + 8 is
    // vp + 4; both from byte vb and vb + 1 of a word, at code vk of the byte.
    const int vbyte = 2 * (gq >> 2), vk = gq & 3;
    const uint32_t vsel = (vbyte + 1) | (vbyte << 4) | ((vbyte + 5) << 8) | ((vbyte + 4) << 12);

    // Issues the copies of the round starting at jb into buffer buf.
    const auto stage_round = [&](int64_t jb, int buf) {
        uint8_t* sb = stage + buf * sbytes;
        const int64_t blk = jb / g.R;
        const int ib = static_cast<int>(jb - blk * g.R);
        const uint8_t* kb = kblocks + blk * g.kbytes;
        const uint8_t* vb = vblocks + blk * g.vbytes;
        for (int c = lane; c < 2 * RB; c += 32) {  // kRound * RB / 16 chunks
            cp_async16(sb + 16 * c, kb + ib * g.row_bytes + 16 * c);
            cp_async16(sb + kRound * RB + 16 * c, vb + ib * g.row_bytes + 16 * c);
        }
        uint8_t* par = sb + 2 * kRound * RB;
        for (int c = lane; c < 8 * ng; c += 32)
            cp_async16(par + 16 * c, vb + g.v_params + 4 * int64_t{ib} * ng + 16 * c);
        if (TABLE) {
            uint8_t* ix = par + kRound * ng * 4;
            if (lane < 2) cp_async16(ix + 16 * lane, kb + g.k_index + ib + 16 * lane);
            else if (lane < 4) cp_async16(ix + 32 + 16 * (lane - 2), vb + g.v_index + ib + 16 * (lane - 2));
            else if (lane == 4) cp_async4(ix + 64, vb + g.v_gate + ib / 8);
        }
    };

    uint32_t bk[KS][2];  // the scores' B: (q_a s)[c] split, for the current key group
    float kfac = 0.0f, kconst = 0.0f;
    int64_t cur = -1;
    float m = -INFINITY, l = 0.0f;
    float acc[KS][2];
    float zacc[D / 16];  // Σ p (zv − 4 sv) per V group, for head bh (lanes with hl = 0)
#pragma unroll
    for (int i = 0; i < KS; ++i) acc[i][0] = acc[i][1] = 0.0f;
#pragma unroll
    for (int i = 0; i < D / 16; ++i) zacc[i] = 0.0f;

    if (w_begin < w_end) stage_round(w_begin, 0);
    cp_commit();
    int buf = 0;
    for (int64_t jb = w_begin; jb < w_end; jb += kRound, buf ^= 1) {
        if (jb + kRound < w_end) stage_round(jb + kRound, buf ^ 1);
        cp_commit();
        const int64_t blk = jb / g.R;
        const int ib = static_cast<int>(jb - blk * g.R);
        const int64_t key = blk * (g.R / g.G) + ib / g.G;
        if (key != cur) {  // warp-uniform: a new key group's (q s) split and constant terms
            cur = key;
            const uint8_t* par = kblocks + blk * g.kbytes + g.k_params + 4 * (int64_t{ib / g.G} * D);
            float x[KS][4];
            float mx = 0.0f, part = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ++ks)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    // B rows 2t, 2t+1, 2t+8, 2t+9 of k-step ks are channels t, t+8, t+4, t+12.
                    const int ch = 16 * ks + t + (j == 1 ? 8 : j == 2 ? 4 : j == 3 ? 12 : 0);
                    const uint32_t pz = __ldg(reinterpret_cast<const uint32_t*>(par + 4 * ch));
                    const float sc = __half2float(__ushort_as_half(pz & 0xffffu));
                    const float z = __half2float(__ushort_as_half(pz >> 16));
                    const float qv = bh < Q ? q_s[bh * D + ch] : 0.0f;
                    x[ks][j] = qv * sc;
                    mx = fmaxf(mx, fabsf(x[ks][j]));
                    part += qv * z - 4.0f * x[ks][j];
                }
            mx = lanes::max_over<1>(mx);
            const float f = up_scale(mx);
            kfac = 4.0f / f;
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                bk[ks][0] = pack_halves(split_part(x[ks][0] * f, hl), split_part(x[ks][1] * f, hl));
                bk[ks][1] = pack_halves(split_part(x[ks][2] * f, hl), split_part(x[ks][3] * f, hl));
            }
            // Lanes 4 gq .. 4 gq + 3 cover all channels of head bh; lane 8 a (hl = 0) ends with head a's.
            part = hl == 0 ? part : 0.0f;
            part += __shfl_xor_sync(kFull, part, 1);
            part += __shfl_xor_sync(kFull, part, 2);
            kconst = __shfl_sync(kFull, part, 8 * t);
        }
        cp_wait<1>();
        __syncwarp();
        const uint8_t* sb = stage + buf * sbytes;
        const uint8_t* krow = sb;
        const uint8_t* vrow = sb + kRound * RB;
        const uint8_t* vpar = sb + 2 * kRound * RB;
        const uint8_t* kix = vpar + kRound * ng * 4;
        const uint8_t* vix = kix + 32;
        const uint32_t gate = TABLE ? *reinterpret_cast<const uint32_t*>(kix + 64) : 0u;
        const int nvalid = static_cast<int>(min(int64_t{kRound}, w_end - jb));

        // Scores of tokens gq, gq + 8, gq + 16, gq + 24 for head t.
        float s[4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
            uint32_t w0[KS], w1[KS];
            const uint4* r0 = reinterpret_cast<const uint4*>(krow + (16 * mt + gq) * RB);
            const uint4* r1 = reinterpret_cast<const uint4*>(krow + (16 * mt + gq + 8) * RB);
#pragma unroll
            for (int i = 0; i < KS / 4; ++i) {
                const uint4 a = r0[i], b = r1[i];
                w0[4 * i] = a.x, w0[4 * i + 1] = a.y, w0[4 * i + 2] = a.z, w0[4 * i + 3] = a.w;
                w1[4 * i] = b.x, w1[4 * i + 1] = b.y, w1[4 * i + 2] = b.z, w1[4 * i + 3] = b.w;
            }
            float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                const uint32_t a[4] = {as_codes(w0[ks] << (8 - 2 * t)), as_codes(w1[ks] << (8 - 2 * t)),
                                       as_codes(w0[ks] >> (2 * t)), as_codes(w1[ks] >> (2 * t))};
                mma16816(c, a, bk[ks][0], bk[ks][1]);
            }
            s[2 * mt] = kfac * (c[0] + c[1]) + kconst;
            s[2 * mt + 1] = kfac * (c[2] + c[3]) + kconst;
        }
        float rmax = -INFINITY;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int tok = 16 * (i >> 1) + gq + 8 * (i & 1);
            if (TABLE && tok < nvalid && t < Q) s[i] += qc_s[t * Mk + kix[tok]];
            s[i] = t >= Q ? 0.0f : tok < nvalid ? s[i] * inv_sqrt_d : -INFINITY;
            rmax = fmaxf(rmax, s[i]);
        }
        rmax = lanes::max_over<4>(rmax);  // over the lanes of head t: every round has a valid token
        const float m_new = fmaxf(m, rmax);
        const float resc = expf(m - m_new);  // 0 on the warp's first round
        float p[4], psum = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i) p[i] = expf(s[i] - m_new), psum += p[i];
        l = l * resc + lanes::sum_over<4>(psum);
        m = m_new;
        if (TABLE) {
            const bool any = __any_sync(kFull, resc != 1.0f);
            if (any) {
#pragma unroll
                for (int a = 0; a < Q; ++a) {
                    const float r = __shfl_sync(kFull, resc, a);
                    if (r != 1.0f)
                        for (int pi = lane; pi < Mv; pi += 32) pw_w[a * Mv + pi] *= r;
                }
            }
            __syncwarp();
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int tok = 16 * (i >> 1) + gq + 8 * (i & 1);
                if (t < Q && tok < nvalid && ((gate >> tok) & 1u)) atomicAdd(&pw_w[t * Mv + vix[tok]], p[i]);
            }
            __syncwarp();
        }
        // The round's largest |sv| sets the scale of the values' B.
        float smax = 0.0f;
        if (lane < nvalid)
            for (int gi = 0; gi < ng; ++gi) {
                const uint32_t pz = *reinterpret_cast<const uint32_t*>(vpar + 4 * (lane * ng + gi));
                smax = fmaxf(smax, fabsf(__half2float(__ushort_as_half(pz & 0xffffu))));
            }
        smax = lanes::max_over<1>(smax);
        const float fv = up_scale(smax);
        const float vfac = 4.0f / fv;
        const float rz = __shfl_sync(kFull, resc, bh < Q ? bh : 0);
#pragma unroll
        for (int i = 0; i < D / 16; ++i) zacc[i] *= rz;
        float cv[KS][4];
#pragma unroll
        for (int i = 0; i < KS; ++i) cv[i][0] = cv[i][1] = cv[i][2] = cv[i][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
            // B rows 2t, 2t+1, 2t+8, 2t+9 are tokens 16 kk + those; their scores sit in slot
            // 2 kk (tokens < 8) or 2 kk + 1 of lanes 8t + bh (even tokens) and 8t + 4 + bh.
            const int src = 8 * t + (bh < Q ? bh : 0);
            float pj[4] = {__shfl_sync(kFull, p[2 * kk], src), __shfl_sync(kFull, p[2 * kk], src + 4),
                           __shfl_sync(kFull, p[2 * kk + 1], src), __shfl_sync(kFull, p[2 * kk + 1], src + 4)};
            int tk[4] = {16 * kk + 2 * t, 16 * kk + 2 * t + 1, 16 * kk + 2 * t + 8, 16 * kk + 2 * t + 9};
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (bh >= Q || tk[j] >= nvalid) pj[j] = 0.0f;
            uint32_t wv[4][KS];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const uint4* r = reinterpret_cast<const uint4*>(vrow + tk[j] * RB);
#pragma unroll
                for (int i = 0; i < KS / 4; ++i) {
                    const uint4 a = r[i];
                    wv[j][4 * i] = a.x, wv[j][4 * i + 1] = a.y, wv[j][4 * i + 2] = a.z, wv[j][4 * i + 3] = a.w;
                }
            }
            uint32_t b0 = 0, b1 = 0;
            int gcur = -1;
#pragma unroll
            for (int mt = 0; mt < KS; ++mt) {
                const int gi = 16 * mt / g.Gv;
                if (gi != gcur) {
                    gcur = gi;
                    float ws[4];
                    float zpart = 0.0f;
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const uint32_t pz = *reinterpret_cast<const uint32_t*>(vpar + 4 * (tk[j] * ng + gi));
                        const float sv = __half2float(__ushort_as_half(pz & 0xffffu));
                        const float zv = __half2float(__ushort_as_half(pz >> 16));
                        ws[j] = pj[j] == 0.0f ? 0.0f : pj[j] * sv;
                        zpart += pj[j] == 0.0f ? 0.0f : pj[j] * (zv - 4.0f * sv);
                    }
                    b0 = pack_halves(split_part(ws[0] * fv, hl), split_part(ws[1] * fv, hl));
                    b1 = pack_halves(split_part(ws[2] * fv, hl), split_part(ws[3] * fv, hl));
#pragma unroll
                    for (int i = 0; i < D / 16; ++i)
                        if (i == gi && hl == 0) zacc[i] += zpart;
                }
                const uint32_t z0 = __byte_perm(wv[0][mt], wv[1][mt], vsel);
                const uint32_t z1 = __byte_perm(wv[2][mt], wv[3][mt], vsel);
                const uint32_t a[4] = {as_codes(z0 >> (2 * vk)), as_codes(z0 << (8 - 2 * vk)), as_codes(z1 >> (2 * vk)),
                                       as_codes(z1 << (8 - 2 * vk))};
                mma16816(cv[mt], a, b0, b1);
            }
        }
#pragma unroll
        for (int mt = 0; mt < KS; ++mt) {
            acc[mt][0] = fmaf(acc[mt][0], resc, vfac * (cv[mt][0] + cv[mt][1]));
            acc[mt][1] = fmaf(acc[mt][1], resc, vfac * (cv[mt][2] + cv[mt][3]));
        }
        __syncwarp();  // every lane is done with this buffer before the next round refills it
    }
    cp_wait<0>();
    __syncwarp();
    // zacc: lanes 4 gq .. + 3 hold parts of head bh's; lane 8a then holds head a's total.
#pragma unroll
    for (int i = 0; i < D / 16; ++i) {
        zacc[i] += __shfl_xor_sync(kFull, zacc[i], 1);
        zacc[i] += __shfl_xor_sync(kFull, zacc[i], 2);
    }
    float zt[D / 16];
#pragma unroll
    for (int i = 0; i < D / 16; ++i) zt[i] = __shfl_sync(kFull, zacc[i], 8 * t);
    __syncthreads();  // acc_out lies over the block's staging buffers
    if (t < Q) {
#pragma unroll
        for (int mt = 0; mt < KS; ++mt) {
            const int ch = 16 * mt + 8 * (gq >> 2) + (gq & 3);
            const int gi = 16 * mt / g.Gv;
            float z = 0.0f;
#pragma unroll
            for (int i = 0; i < D / 16; ++i)
                if (i == gi) z = zt[i];
            acc_out[t * D + ch] = acc[mt][0] + z;
            acc_out[t * D + ch + 4] = acc[mt][1] + z;
        }
    }
    m_out = m, l_out = l;
}

}  // namespace pkv::cuda::mma2
