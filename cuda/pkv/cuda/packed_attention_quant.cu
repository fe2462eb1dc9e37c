// The quantized methods' split kernel of decode attention over a packed cache
// (packed_attention.h): KIVI and patternkv-table at 2 or 4 bits, read by each warp on its own,
// with its own running softmax, the block's warps merged once at the end. It writes the same
// per-split records as the general split kernel (packed_attention.cu), merged by its combine.
//
// Lane layout: a lane owns CL = 32 / BITS consecutive channels of a row, whose codes are one
// 32-bit word, so LR = D / CL lanes read a row and one warp-wide load reads TL = 32 / LR rows.
// Lane L reads channels (L mod LR)·CL .. + CL − 1 of token L / LR of each load. A round takes
// 32 / Q tokens in NR = LR / Q loads of K codes, V codes and V (scale, zero) pairs, all issued
// before any is used; each lane forms its NR·Q partial dot products (Σ_c (q s)_c code_c), a
// butterfly over the LR lanes of a row leaves each lane one (token, query head) total, and
// the running max and sum of each query head are taken over the lanes holding it. Values:
// acc += (a s) code per channel and Σ a z per lane (its CL channels share one V group).
// The K groups' q·s and Σ q z change only with the block or key group, once per round at most.
// Ring rows (tokens not yet flushed) are read as binary16 in the same lane layout.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/packed_device_impl.cuh"
#include "pkv/cuda/packed_mma.cuh"
#include "pkv/cuda/packed_warp.cuh"

namespace pkv::cuda {

namespace {

constexpr int kWarpsQ = 4;
using lanes::kFull;

__device__ __forceinline__ float half_lo(uint32_t w) { return __half2float(__ushort_as_half(w & 0xffffu)); }
__device__ __forceinline__ float half_hi(uint32_t w) { return __half2float(__ushort_as_half(w >> 16)); }
__device__ __forceinline__ uint32_t load32(const uint8_t* p) { return __ldg(reinterpret_cast<const uint32_t*>(p)); }

// Shared memory of the kernel, in this order: q [Q, D], q·c [Q, Mk], pattern weights
// [warps, Q, Mv] (floats), then from a 16-byte boundary acc [warps, Q, D], running max and
// sum [warps, Q] each; the tensor-core path stages its rounds there first (packed_mma.cuh).
__host__ __device__ constexpr int quant_acc_offset(int D, int Q, int Mk, int Mv) {
    return (Q * D + Q * Mk + kWarpsQ * Q * Mv + 3) / 4 * 4;
}
int quant_smem_bytes(int D, int Q, int Mk, int Mv, int ng, bool mma) {
    const int recs = 4 * (kWarpsQ * Q * D + 2 * kWarpsQ * Q);
    const int tail = mma ? std::max(recs, mma2::mma_stage_bytes(D, ng, kWarpsQ)) : recs;
    return 4 * quant_acc_offset(D, Q, Mk, Mv) + tail;
}

// Merges the block's warps under their own maxima into the split's records: warp w's
// output for head a at acc_s[(w Q + a) D ..], its pattern weights at pw_s[(w Q + a) Mv ..],
// its max and sum at m_s[w Q + a], l_s[w Q + a].
template <int D, int Q>
__device__ __forceinline__ void write_records(const SplitGeo& g, const SplitArrays& ar, int64_t qrow, int split, int Mv,
                                              const float* acc_s, const float* pw_s, const float* m_s,
                                              const float* l_s) {
    const int64_t rec_len = 2 + D + Mv;
    for (int i = threadIdx.x; i < Q * (D + Mv); i += kWarpsQ * 32) {
        const int a = i / (D + Mv), e = i % (D + Mv);
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarpsQ; ++w) M = fmaxf(M, m_s[w * Q + a]);
        float L = 0.0f, A = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarpsQ; ++w) {
            if (m_s[w * Q + a] == -INFINITY) continue;  // a warp without tokens
            const float f = expf(m_s[w * Q + a] - M);
            L += l_s[w * Q + a] * f;
            A += (e < D ? acc_s[(w * Q + a) * D + e] : pw_s[(w * Q + a) * Mv + e - D]) * f;
        }
        float* rec = ar.part + ((qrow + a) * g.splits + split) * rec_len;
        if (e == 0) rec[0] = M, rec[1] = L;  // -inf, 0 for an empty split
        rec[2 + e] = A;
    }
}

template <int D, int BITS, int Q, bool TABLE>
__global__ void __launch_bounds__(kWarpsQ * 32) quant_split_kernel(SplitGeo g, SplitArrays ar) {
    constexpr int CL = 32 / BITS;
    constexpr int LR = D / CL;
    constexpr int TL = 32 / LR;
    constexpr int NR = LR / Q;
    constexpr int RS = NR * TL;  // tokens per round: 32 / Q
    static_assert(LR >= Q && LR <= 32 && NR * Q == LR, "a row's lanes must hold every (load, head) total once");
    extern __shared__ __align__(16) float smq[];
    const int Mk = TABLE ? g.Mk : 0, Mv = TABLE ? g.Mv : 0;
    float* q_s = smq;
    float* qc_s = q_s + Q * D;
    float* pw_s = qc_s + Q * Mk;
    float* acc_s = smq + quant_acc_offset(D, Q, Mk, Mv);
    float* m_s = acc_s + kWarpsQ * Q * D;
    float* l_s = m_s + kWarpsQ * Q;

    const int split = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int cw = lane % LR, u = lane / LR;
    const int my_a = lane % Q, my_r = cw / Q;  // the (load, head) total this lane ends a round with
    const int64_t ls = g.layer * g.S + s;
    const int64_t n = ar.counts[ls * 3], nk = ar.counts[ls * 3 + 1], nv = ar.counts[ls * 3 + 2];
    const int64_t j_begin = int64_t{split} * g.tiles_per_split * g.R;
    const int64_t j_end = min(n, j_begin + int64_t{g.tiles_per_split} * g.R);
    const int64_t head = ls * g.H + h;
    const int64_t qrow = int64_t{s} * g.Hq + int64_t{h} * Q;
    for (int i = threadIdx.x; i < Q * D; i += kWarpsQ * 32) q_s[i] = ar.q[qrow * D + i];
    for (int i = threadIdx.x; i < Q * Mk; i += kWarpsQ * 32) qc_s[i] = ar.qc[qrow * Mk + i];
    for (int i = threadIdx.x; i < kWarpsQ * Q * Mv; i += kWarpsQ * 32) pw_s[i] = 0.0f;
    __syncthreads();

    const uint8_t* kblocks = ar.kblocks + head * g.B * g.kbytes;
    const uint8_t* vblocks = ar.vblocks + head * g.B * g.vbytes;
    const uint16_t* kring = ar.ring + head * 2 * g.W * D + cw * CL;
    const uint16_t* vring = kring + g.W * D;
    const int vpair = 4 * (cw * CL / g.Gv);  // byte offset of this lane's V group within a token's pairs
    const int vpairs_per_token = D / g.Gv;
    float* pw_w = pw_s + wid * Q * Mv;
    const float inv_sqrt_d = 1.0f / sqrtf(static_cast<float>(D));

    float qs[Q][CL], qz[Q], acc[Q][CL], zacc[Q];
#pragma unroll
    for (int a = 0; a < Q; ++a) {
        qz[a] = 0.0f, zacc[a] = 0.0f;
#pragma unroll
        for (int c = 0; c < CL; ++c) qs[a][c] = 0.0f, acc[a][c] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    int64_t lanes_begin = j_begin;  // where the lanes' path takes over
    if constexpr (BITS == 2) {
        // The split's flushed tokens (whole blocks) take the tensor-core path in rounds of 32;
        // ring tokens after them continue each warp's softmax on the lanes' path below, so a
        // split that holds the ring costs a block of ring tokens more than the others, not a
        // whole split on the slower path.
        // Whole blocks only where ring tokens follow (KIVI flushes V a token at a time), so that
        // the lanes' rounds start on a block.
        const int64_t flushed = min(j_end, min(nk, nv));
        const int64_t fl = flushed == j_end ? j_end : j_begin + (flushed - j_begin) / g.R * g.R;
        if (g.mma && fl > j_begin) {
            const int64_t flen = fl - j_begin;
            const int64_t mchunk = ((flen + kWarpsQ - 1) / kWarpsQ + mma2::kRound - 1) / mma2::kRound * mma2::kRound;
            const int64_t mb = j_begin + wid * mchunk, me = min(fl, mb + mchunk);
            uint8_t* stage = reinterpret_cast<uint8_t*>(acc_s) + wid * 2 * mma2::stage_bytes(D, D / g.Gv);
            float mw, lw;
            mma2::warp_run<D, Q, TABLE>(g, kblocks, vblocks, mb, me, q_s, qc_s, pw_w, stage, acc_s + wid * Q * D, mw,
                                        lw);
            if (fl == j_end) {
                if (lane < Q) m_s[wid * Q + lane] = mw, l_s[wid * Q + lane] = lw;
                __syncthreads();
                write_records<D, Q>(g, ar, qrow, split, Mv, acc_s, pw_s, m_s, l_s);
                return;
            }
            // Lane a < Q holds head a's max and sum; acc_s + wid Q D the warp's output (with
            // its Σ p z folded in), which the lanes of token bits u = 0 carry on.
            __syncwarp();
            m = __shfl_sync(kFull, mw, my_a);
            l = __shfl_sync(kFull, lw, my_a);
            if (u == 0)
#pragma unroll
                for (int a = 0; a < Q; ++a)
#pragma unroll
                    for (int c = 0; c < CL; ++c) acc[a][c] = acc_s[(wid * Q + a) * D + cw * CL + c];
            lanes_begin = fl;
        }
    }

    // The warp's own run of rounds: a quarter of what is left of the split, whole rounds (so
    // no round crosses a block or a key group: R and G are multiples of 32).
    const int64_t len = max(int64_t{0}, j_end - lanes_begin);
    const int64_t chunk = ((len + kWarpsQ - 1) / kWarpsQ + RS - 1) / RS * RS;
    const int64_t w_begin = lanes_begin + wid * chunk, w_end = min(j_end, w_begin + chunk);
    int64_t cur = -2;  // the (block, key group) qs holds; -1: the plain query (ring keys)

    // A round's loads: K codes, V codes and V pairs of its tokens (zeros where absent).
    const auto load_round = [&](int64_t jb, uint32_t(&kw)[NR], uint32_t(&vw)[NR], uint32_t(&vp)[NR]) {
        const int64_t blk = jb / g.R;
        const int ib = static_cast<int>(jb - blk * g.R);
        const uint8_t* kb = kblocks + blk * g.kbytes;
        const uint8_t* vb = vblocks + blk * g.vbytes;
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            const int i = ib + r * TL + u;
            const int64_t tok = jb + r * TL + u;
            const bool valid = tok < w_end, vq = valid && tok < nv;
            kw[r] = valid && tok < nk ? load32(kb + i * g.row_bytes + cw * 4) : 0u;
            vw[r] = vq ? load32(vb + i * g.row_bytes + cw * 4) : 0u;
            vp[r] = vq ? load32(vb + g.v_params + 4 * int64_t{i} * vpairs_per_token + vpair) : 0u;
        }
    };
    // Each round's loads are issued a round ahead, so a warp always has loads in flight.
    uint32_t kw[NR], vw[NR], vp[NR];
    load_round(w_begin, kw, vw, vp);
    for (int64_t jb = w_begin; jb < w_end; jb += RS) {
        const int64_t blk = jb / g.R;
        const int ib = static_cast<int>(jb - blk * g.R);
        const bool kq = jb < nk;
        const int64_t key = kq ? blk * (g.R / g.G) + ib / g.G : -1;
        const uint8_t* kb = kblocks + blk * g.kbytes;
        const uint8_t* vb = vblocks + blk * g.vbytes;
        if (key != cur) {
            cur = key;
            if (kq) {
                const uint8_t* par = kb + g.k_params + 4 * (int64_t{ib / g.G} * D + cw * CL);
                float zp[Q];
#pragma unroll
                for (int a = 0; a < Q; ++a) zp[a] = 0.0f;
#pragma unroll
                for (int c = 0; c < CL; ++c) {
                    const uint32_t pz = load32(par + 4 * c);
                    const float sc = half_lo(pz), z = half_hi(pz);
#pragma unroll
                    for (int a = 0; a < Q; ++a) {
                        const float qv = q_s[a * D + cw * CL + c];
                        qs[a][c] = qv * sc;
                        zp[a] += qv * z;
                    }
                }
#pragma unroll
                for (int a = 0; a < Q; ++a) {
#pragma unroll
                    for (int o = 1; o < LR; o <<= 1) zp[a] += __shfl_xor_sync(kFull, zp[a], o);
                    qz[a] = zp[a];
                }
            } else {
#pragma unroll
                for (int a = 0; a < Q; ++a) {
                    qz[a] = 0.0f;
#pragma unroll
                    for (int c = 0; c < CL; ++c) qs[a][c] = q_s[a * D + cw * CL + c];
                }
            }
        }
        uint32_t nkw[NR], nvw[NR], nvp[NR];
        load_round(jb + RS, nkw, nvw, nvp);
        float vals[NR * Q];
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            float x[CL];
            if (kq) {
                lanes::decode_codes<BITS>(kw[r], x);
            } else {
                const int64_t tok = jb + r * TL + u;
                if (tok < w_end) {
                    lanes::load_halves<CL>(kring + (tok % g.W) * D, x);
                } else {
#pragma unroll
                    for (int c = 0; c < CL; ++c) x[c] = 0.0f;
                }
            }
            lanes::head_dots(qs, x, vals, r * Q);
        }
        lanes::reduce_scatter<LR, LR / 2>(vals, lane);
        // This lane's (token, query head) score, max and weight.
        const int il = ib + my_r * TL + u;
        const int64_t tok_l = jb + my_r * TL + u;
        const bool valid_l = tok_l < w_end;
        float sc = vals[0];
        if (kq) {
            float z = 0.0f;
#pragma unroll
            for (int a = 0; a < Q; ++a)
                if (a == my_a) z = qz[a];
            sc += z;
            if (TABLE && valid_l) sc += qc_s[my_a * Mk + kb[g.k_index + il]];
        }
        sc = valid_l ? sc * inv_sqrt_d : -INFINITY;
        const float m_new = fmaxf(m, lanes::max_over<Q>(sc));  // every round has a token for each head
        const float resc = expf(m - m_new);                    // 0 on the warp's first round
        const float p = expf(sc - m_new);                      // 0 past the warp's run
        l = l * resc + lanes::sum_over<Q>(p);
        m = m_new;
#pragma unroll
        for (int a = 0; a < Q; ++a) {
            const float r = __shfl_sync(kFull, resc, a);  // lane a holds query head a
            zacc[a] *= r;
#pragma unroll
            for (int c = 0; c < CL; ++c) acc[a][c] *= r;
            if (TABLE && r != 1.0f)
                for (int pi = lane; pi < Mv; pi += 32) pw_w[a * Mv + pi] *= r;
        }
        if (TABLE) {
            __syncwarp();
            if (valid_l && tok_l < nv && ((vb[g.v_gate + il / 8] >> (il % 8)) & 1u))
                atomicAdd(&pw_w[my_a * Mv + vb[g.v_index + il]], p);
            __syncwarp();
        }
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            float w[Q];
#pragma unroll
            for (int a = 0; a < Q; ++a) w[a] = __shfl_sync(kFull, p, u * LR + r * Q + a);
            const int64_t tok = jb + r * TL + u;
            float x[CL];
            if (tok < w_end && tok < nv) {
                lanes::decode_codes<BITS>(vw[r], x);
                const float sv = half_lo(vp[r]), zv = half_hi(vp[r]);
#pragma unroll
                for (int a = 0; a < Q; ++a) {
                    const float ws = w[a] * sv;
                    zacc[a] += w[a] * zv;
#pragma unroll
                    for (int c = 0; c < CL; ++c) acc[a][c] += ws * x[c];
                }
            } else if (tok < w_end) {
                lanes::load_halves<CL>(vring + (tok % g.W) * D, x);
#pragma unroll
                for (int a = 0; a < Q; ++a)
#pragma unroll
                    for (int c = 0; c < CL; ++c) acc[a][c] += w[a] * x[c];
            }
        }
#pragma unroll
        for (int r = 0; r < NR; ++r) kw[r] = nkw[r], vw[r] = nvw[r], vp[r] = nvp[r];
    }
    // The lanes of one channel word (they differ in their token bits) add up, then the
    // warps of the block merge under their own maxima.
#pragma unroll
    for (int a = 0; a < Q; ++a) {
        zacc[a] = lanes::sum_over<LR>(zacc[a]);
#pragma unroll
        for (int c = 0; c < CL; ++c) acc[a][c] = lanes::sum_over<LR>(acc[a][c]);
    }
    if (u == 0)
#pragma unroll
        for (int a = 0; a < Q; ++a)
#pragma unroll
            for (int c = 0; c < CL; ++c) acc_s[(wid * Q + a) * D + cw * CL + c] = acc[a][c] + zacc[a];
    if (lane < Q) m_s[wid * Q + lane] = m, l_s[wid * Q + lane] = l;
    __syncthreads();
    write_records<D, Q>(g, ar, qrow, split, Mv, acc_s, pw_s, m_s, l_s);
}

template <int D, int BITS, bool TABLE>
bool launch_q(const SplitGeo& g, const SplitArrays& ar, cudaStream_t st) {
    const dim3 grid(g.splits, g.H, g.S);
    const int Mk = TABLE ? g.Mk : 0, Mv = TABLE ? g.Mv : 0;
    const size_t smem = static_cast<size_t>(quant_smem_bytes(D, g.Q, Mk, Mv, D / g.Gv, quant_uses_mma(g)));
    if (smem > 48 * 1024) return false;
    switch (g.Q) {
        case 1: quant_split_kernel<D, BITS, 1, TABLE><<<grid, kWarpsQ * 32, smem, st>>>(g, ar); break;
        case 2: quant_split_kernel<D, BITS, 2, TABLE><<<grid, kWarpsQ * 32, smem, st>>>(g, ar); break;
        case 4: quant_split_kernel<D, BITS, 4, TABLE><<<grid, kWarpsQ * 32, smem, st>>>(g, ar); break;
        default: return false;
    }
    PKV_CUDA_CHECK(cudaGetLastError());
    return true;
}

template <int D, int BITS>
bool launch_bits(const SplitGeo& g, const SplitArrays& ar, cudaStream_t st) {
    return g.table ? launch_q<D, BITS, true>(g, ar, st) : launch_q<D, BITS, false>(g, ar, st);
}

}  // namespace

bool launch_quant_split(const SplitGeo& g, const SplitArrays& ar, cudaStream_t st) {
    const int cl = g.bits == 2 ? 16 : 8;
    if ((g.bits != 2 && g.bits != 4) || (g.D != 64 && g.D != 128) || g.R % 32 != 0 || g.G % 32 != 0 || g.Gv % cl != 0)
        return false;
    if (g.D == 64) return g.bits == 2 ? launch_bits<64, 2>(g, ar, st) : launch_bits<64, 4>(g, ar, st);
    return g.bits == 2 ? launch_bits<128, 2>(g, ar, st) : launch_bits<128, 4>(g, ar, st);
}

}  // namespace pkv::cuda
