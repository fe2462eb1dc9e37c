// Split-K decode attention over a packed cache (packed_attention.h): q·c per key pattern,
// one thread block per (split, KV head, sequence) for every query head of the KV head, and
// the combine of the splits.
//
// Thread layout of the split kernel: kThreads threads; a token is served by D / 8 threads
// (a "slot"), each owning 8 consecutive channels: its 8 codes (16, 24 or 32 bits of the
// row), its 8 ring halves (one 128-bit load) and, for values, acc[Q][8] in registers. The
// slots of the block take the tile's tokens in turn. Keys: each thread's partial dot
// products are summed over the slot's threads with shuffles. Values: the slots' acc are
// added in shared memory at the end.
//
// Per tile (R tokens of a block; fp16: kFp16Tile tokens of the ring):
//   1. copy the K block and the V block (when quantized) to shared memory, 128-bit loads;
//   2. q_d s_d and Σ_d q_d z_d of each of the block's R / G key groups;
//   3. the tokens' scores (codes or ring rows), into shared memory;
//   4. per query head (one warp): the tile's max, the new running max, the rescale factor,
//      a = exp(score - max), the running sum, and pattern weights Σ_{idx=p, gate} a;
//   5. values: acc = acc · rescale + Σ (a s) code + a z, or + a v for ring rows.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/packed_device_impl.cuh"

namespace pkv::cuda {

using pkv_rt::CacheMethod;
using pkv_rt::KvPart;

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kCh = 8;         // channels per thread
constexpr int kMinBlocks = 4;  // resident split blocks per multiprocessor the registers must allow (choose_splits)

__device__ __forceinline__ float half_bits(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// The 8 codes of channels 8 t .. 8 t + 7 of a row (32-bit words): low 8 BITS bits.
template <int BITS>
__device__ __forceinline__ uint32_t lane_codes(const uint8_t* row, int t) {
    constexpr int kW = kCh * BITS;
    const int s = t * kW;
    const uint32_t* r32 = reinterpret_cast<const uint32_t*>(row);
    const uint32_t lo = r32[s >> 5];
    if constexpr (kW == 32) {
        return lo;
    } else {
        const int off = s & 31;
        uint64_t v = lo;
        if (off + kW > 32) v |= static_cast<uint64_t>(r32[(s >> 5) + 1]) << 32;
        return static_cast<uint32_t>(v >> off);
    }
}

template <int BITS>
__device__ __forceinline__ float code_at(uint32_t codes, int c) {
    return static_cast<float>((codes >> (c * BITS)) & ((1u << BITS) - 1u));
}

// 8 binary16 values (one 128-bit load) as floats.
__device__ __forceinline__ void load_halves(const uint16_t* p, float (&x)[kCh]) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        x[2 * i] = half_bits(static_cast<uint16_t>(w[i] & 0xffffu));
        x[2 * i + 1] = half_bits(static_cast<uint16_t>(w[i] >> 16));
    }
}

// 16-byte copies from global to shared memory that complete in the background (cp.async
// from sm_80 on): the next tile's blocks arrive while the current tile is computed.
__device__ __forceinline__ void copy16_async(void* dst, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
#else
    *reinterpret_cast<uint4*>(dst) = __ldg(reinterpret_cast<const uint4*>(src));
#endif
}

__device__ __forceinline__ void copy_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits for all but the newest group of this thread's copies.
__device__ __forceinline__ void copy_wait_all_but_newest() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group 1;\n" ::);
#endif
}

// q·c_p of every key pattern p: qc [S, Hq, Mk]; one block per (query head, sequence).
__global__ void pattern_scores_kernel(const float* __restrict__ q, const float* __restrict__ kpat,
                                      float* __restrict__ qc, int D, int Hq, int Q, int H, int Mk, int64_t layer) {
    const int qh = blockIdx.x, s = blockIdx.y, h = qh / Q;
    const float* qv = q + (int64_t{s} * Hq + qh) * D;
    const float* P = kpat + ((layer * H + h) * Mk) * D;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int p = warp; p < Mk; p += blockDim.x >> 5) {
        float dot = 0.0f;
        for (int d = lane; d < D; d += 32) dot += qv[d] * P[int64_t{p} * D + d];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (lane == 0) qc[(int64_t{s} * Hq + qh) * Mk + p] = dot;
    }
}

// One split of one (sequence, KV head) for its Q query heads. part: per (seq, query head,
// split) the record [m, l, acc[D], pw[Mv]].
template <int D, int BITS, int Q, bool FP16>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    split_kernel(SplitGeo g, const uint8_t* __restrict__ kblocks, const uint8_t* __restrict__ vblocks,
                 const uint16_t* __restrict__ ring, const int64_t* __restrict__ counts, const float* __restrict__ q,
                 const float* __restrict__ qc, float* __restrict__ part) {
    constexpr int kTpt = D / kCh;            // threads per token
    constexpr int kSlots = kThreads / kTpt;  // tokens in flight
    constexpr int kUnroll = Q >= 8 ? 2 : 4;  // tokens per slot whose loads are issued together (registers)
    extern __shared__ __align__(16) uint8_t sm[];
    float* q_s = reinterpret_cast<float*>(sm + g.sm_q);      // [Q, D]
    float* qc_s = reinterpret_cast<float*>(sm + g.sm_qc);    // [Q, Mk]
    uint8_t* kblk0 = sm + g.sm_kblk;                         // two K blocks, g.kbuf bytes apart
    uint8_t* vblk0 = sm + g.sm_vblk;                         // two V blocks, g.vbuf bytes apart
    float* qs_s = reinterpret_cast<float*>(sm + g.sm_qs);    // [groups, Q, D]
    float* qz_s = reinterpret_cast<float*>(sm + g.sm_qz);    // [groups, Q]
    float* sc_s = reinterpret_cast<float*>(sm + g.sm_sc);    // [Q, tile]: scores, then weights
    float* st_s = reinterpret_cast<float*>(sm + g.sm_stat);  // [3, Q]: running max, sum, rescale
    float* pw_s = reinterpret_cast<float*>(sm + g.sm_pw);    // [Q, Mv]
    float* acc_s = reinterpret_cast<float*>(sm + g.sm_acc);  // [Q, D]

    const int split = blockIdx.x, h = blockIdx.y, s = blockIdx.z, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, slot = tid / kTpt, t = tid % kTpt, c0 = t * kCh;
    const int64_t ls = g.layer * g.S + s;
    const int64_t n = counts[ls * 3], nk = counts[ls * 3 + 1], nv = counts[ls * 3 + 2];
    const int64_t j_begin = int64_t{split} * g.tiles_per_split * g.tile;
    const int64_t j_end = min(n, j_begin + int64_t{g.tiles_per_split} * g.tile);
    const int Mv = g.table ? g.Mv : 0;
    float* rec0 = part + ((int64_t{s} * g.Hq + int64_t{h} * Q) * g.splits + split) * (2 + D + Mv);
    const int64_t rec_stride = int64_t{g.splits} * (2 + D + Mv);  // next query head of this KV head

    for (int i = tid; i < Q * D; i += kThreads) {
        q_s[i] = q[(int64_t{s} * g.Hq + int64_t{h} * Q) * D + i];
        acc_s[i] = 0.0f;
    }
    if (g.table)
        for (int i = tid; i < Q * g.Mk; i += kThreads) qc_s[i] = qc[(int64_t{s} * g.Hq + int64_t{h} * Q) * g.Mk + i];
    for (int i = tid; i < Q * Mv; i += kThreads) pw_s[i] = 0.0f;
    if (tid < Q) st_s[tid] = -INFINITY, st_s[Q + tid] = 0.0f, st_s[2 * Q + tid] = 0.0f;

    float acc[Q][kCh];
#pragma unroll
    for (int a = 0; a < Q; ++a)
#pragma unroll
        for (int c = 0; c < kCh; ++c) acc[a][c] = 0.0f;

    const int64_t head = ls * g.H + h;
    const uint16_t* kring = ring + (head * 2) * g.W * D;
    const uint16_t* vring = ring + (head * 2 + 1) * g.W * D;
    const float inv_sqrt_d = 1.0f / sqrtf(static_cast<float>(D));

    // The quantized blocks of the tile at j go to buffer b (two of each): copies in flight
    // while the previous tile is computed. One commit per call on every thread.
    auto stage = [&](int64_t j, int b) {
        if (!FP16 && j < j_end && j < nk) {
            const uint8_t* src = kblocks + (head * g.B + j / g.R) * g.kbytes;
            for (int i = tid; i < g.kbytes / 16; i += kThreads) copy16_async(kblk0 + b * g.kbuf + i * 16, src + i * 16);
        }
        if (!FP16 && j < j_end && j < nv) {
            const uint8_t* src = vblocks + (head * g.B + j / g.R) * g.vbytes;
            for (int i = tid; i < g.vbytes / 16; i += kThreads) copy16_async(vblk0 + b * g.vbuf + i * 16, src + i * 16);
        }
        copy_commit();
    };
    stage(j_begin, 0);
    int buf = 0;
    for (int64_t j0 = j_begin; j0 < j_end; j0 += g.tile, buf ^= 1) {
        const int nt = static_cast<int>(min(int64_t{g.tile}, j_end - j0));
        const bool kq = !FP16 && j0 < nk, vq = !FP16 && j0 < nv;
        __syncthreads();  // the previous tile's readers of the other buffer and of the weights are done
        stage(j0 + g.tile, buf ^ 1);
        copy_wait_all_but_newest();
        __syncthreads();
        const uint8_t* kblk = kblk0 + buf * g.kbuf;
        const uint8_t* vblk = vblk0 + buf * g.vbuf;
        // Ring slot of the tile's token i without a 64-bit division per token: i < tile <= W.
        const int64_t ring0 = j0 % g.W;
        const auto ring_row = [&](int i) {
            const int64_t r = ring0 + i;
            return r >= g.W ? r - g.W : r;
        };
        if (kq) {
            // q_d s_d per key group and channel; Σ_d q_d z_d per key group (one warp each).
            const uint16_t* par = reinterpret_cast<const uint16_t*>(kblk + g.k_params);
            for (int i = tid; i < g.groups * D; i += kThreads) {
                const float sc = half_bits(par[2 * i]);
                const int gr = i / D, d = i % D;
#pragma unroll
                for (int a = 0; a < Q; ++a) qs_s[(gr * Q + a) * D + d] = q_s[a * D + d] * sc;
            }
            for (int ga = warp; ga < g.groups * Q; ga += kWarps) {
                const int gr = ga / Q, a = ga % Q;
                float z = 0.0f;
                for (int d = lane; d < D; d += 32) z += q_s[a * D + d] * half_bits(par[2 * (gr * D + d) + 1]);
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) z += __shfl_xor_sync(0xffffffffu, z, o);
                if (lane == 0) qz_s[gr * Q + a] = z;
            }
            __syncthreads();
        }
        // Scores. Every thread runs the same number of rounds (shuffles need the whole warp);
        // each round loads kUnroll tokens per slot before using any, to keep loads in flight.
        for (int base = 0; base < nt; base += kSlots * kUnroll) {
            float k[kUnroll][kCh];
            uint32_t codes[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const int i = base + u * kSlots + slot;
                codes[u] = 0;
#pragma unroll
                for (int c = 0; c < kCh; ++c) k[u][c] = 0.0f;
                if (i < nt && kq) codes[u] = lane_codes<BITS>(kblk + int64_t{i} * g.row_bytes, t);
                else if (i < nt) load_halves(kring + ring_row(i) * D + c0, k[u]);
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const int i = base + u * kSlots + slot;
                const bool valid = i < nt;
                float dot[Q];
#pragma unroll
                for (int a = 0; a < Q; ++a) dot[a] = 0.0f;
                const int gr = valid && kq ? i / g.G : 0;
                if (kq) {
#pragma unroll
                    for (int a = 0; a < Q; ++a) {
                        const float* qs = qs_s + (gr * Q + a) * D + c0;
#pragma unroll
                        for (int c = 0; c < kCh; ++c) dot[a] += qs[c] * code_at<BITS>(codes[u], c);
                    }
                } else {
#pragma unroll
                    for (int a = 0; a < Q; ++a)
#pragma unroll
                        for (int c = 0; c < kCh; ++c) dot[a] += q_s[a * D + c0 + c] * k[u][c];
                }
#pragma unroll
                for (int a = 0; a < Q; ++a)
#pragma unroll
                    for (int o = kTpt / 2; o > 0; o >>= 1) dot[a] += __shfl_xor_sync(0xffffffffu, dot[a], o);
                if (valid && t == 0)
#pragma unroll
                    for (int a = 0; a < Q; ++a) {
                        float x = dot[a];
                        if (kq) {
                            x += qz_s[gr * Q + a];
                            if (g.table) x += qc_s[a * g.Mk + kblk[g.k_index + i]];
                        }
                        sc_s[a * g.tile + i] = x * inv_sqrt_d;
                    }
            }
        }
        __syncthreads();
        // Running softmax per query head, and the value patterns' weights.
        for (int a = warp; a < Q; a += kWarps) {
            float mb = -INFINITY;
            for (int i = lane; i < nt; i += 32) mb = fmaxf(mb, sc_s[a * g.tile + i]);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) mb = fmaxf(mb, __shfl_xor_sync(0xffffffffu, mb, o));
            const float m_old = st_s[a], m_new = fmaxf(m_old, mb);
            const float scale = expf(m_old - m_new);  // 0 on the first tile (m_old = -inf)
            for (int p = lane; p < Mv; p += 32) pw_s[a * Mv + p] *= scale;
            __syncwarp();
            float sum = 0.0f;
            for (int i = lane; i < nt; i += 32) {
                const float w = expf(sc_s[a * g.tile + i] - m_new);
                sc_s[a * g.tile + i] = w;
                sum += w;
                if (g.table && vq && j0 + i < nv && ((vblk[g.v_gate + i / 8] >> (i % 8)) & 1u))
                    atomicAdd(&pw_s[a * Mv + vblk[g.v_index + i]], w);
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            if (lane == 0) {
                st_s[a] = m_new;
                st_s[Q + a] = st_s[Q + a] * scale + sum;
                st_s[2 * Q + a] = scale;
            }
        }
        __syncthreads();
        // Values.
#pragma unroll
        for (int a = 0; a < Q; ++a) {
            const float scale = st_s[2 * Q + a];
#pragma unroll
            for (int c = 0; c < kCh; ++c) acc[a][c] *= scale;
        }
        for (int i0 = slot; i0 < nt; i0 += kSlots * kUnroll) {
            float v[kUnroll][kCh];  // ring rows, loaded before any is used
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const int i = i0 + u * kSlots;
                if (i < nt && !(vq && j0 + i < nv)) load_halves(vring + ring_row(i) * D + c0, v[u]);
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const int i = i0 + u * kSlots;
                if (i >= nt) break;
                if (vq && j0 + i < nv) {
                    const uint32_t codes = lane_codes<BITS>(vblk + int64_t{i} * g.row_bytes, t);
                    const uint16_t* par = reinterpret_cast<const uint16_t*>(vblk + g.v_params);
                    const int per_token = D / g.Gv;
                    float sv[kCh], zv[kCh];
                    if (g.Gv >= kCh) {  // Gv is a power of two dividing D: the 8 channels share a group
                        const int e = i * per_token + c0 / g.Gv;
                        sv[0] = half_bits(par[2 * e]), zv[0] = half_bits(par[2 * e + 1]);
#pragma unroll
                        for (int c = 1; c < kCh; ++c) sv[c] = sv[0], zv[c] = zv[0];
                    } else {
#pragma unroll
                        for (int c = 0; c < kCh; ++c) {
                            const int e = i * per_token + (c0 + c) / g.Gv;
                            sv[c] = half_bits(par[2 * e]), zv[c] = half_bits(par[2 * e + 1]);
                        }
                    }
#pragma unroll
                    for (int a = 0; a < Q; ++a) {
                        const float w = sc_s[a * g.tile + i];
#pragma unroll
                        for (int c = 0; c < kCh; ++c) acc[a][c] += (w * sv[c]) * code_at<BITS>(codes, c) + w * zv[c];
                    }
                } else {
#pragma unroll
                    for (int a = 0; a < Q; ++a) {
                        const float w = sc_s[a * g.tile + i];
#pragma unroll
                        for (int c = 0; c < kCh; ++c) acc[a][c] += w * v[u][c];
                    }
                }
            }
        }
    }
    // The slots' acc into shared memory, then the split's record per query head. (The
    // barrier orders the zeroing of acc_s before the adds when the split had no tile.)
    __syncthreads();
#pragma unroll
    for (int a = 0; a < Q; ++a)
#pragma unroll
        for (int c = 0; c < kCh; ++c) atomicAdd(&acc_s[a * D + c0 + c], acc[a][c]);
    __syncthreads();
    for (int a = 0; a < Q; ++a) {
        float* rec = rec0 + a * rec_stride;
        if (tid == 0) rec[0] = st_s[a], rec[1] = st_s[Q + a];  // -inf, 0 for an empty split
        for (int d = tid; d < D; d += kThreads) rec[2 + d] = acc_s[a * D + d];
        for (int p = tid; p < Mv; p += kThreads) rec[2 + D + p] = pw_s[a * Mv + p];
    }
}

// Merges the splits of one (query head, sequence) and adds Σ_p w_p c_p: out [S, Hq, D].
// Each split's weight exp(m_k − M) is computed once, into shared memory.
__global__ void combine_kernel(const float* __restrict__ part, const float* __restrict__ vpat, float* __restrict__ out,
                               int D, int Hq, int Q, int H, int Mv, int splits, int64_t layer) {
    extern __shared__ float sm_c[];  // [splits] weights, then [Mv] pattern weights
    __shared__ float red[32];
    float* wk = sm_c;
    float* pw = sm_c + splits;
    const int qh = blockIdx.x, s = blockIdx.y, h = qh / Q, tid = threadIdx.x, nt = blockDim.x;
    const int64_t rec = 2 + D + Mv;
    const float* p0 = part + (int64_t{s} * Hq + qh) * splits * rec;
    float M = -INFINITY;
    for (int k = tid; k < splits; k += nt) M = fmaxf(M, p0[k * rec]);
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    if (tid % 32 == 0) red[tid / 32] = M;
    __syncthreads();
    M = red[0];
    for (int w = 1; w < (nt + 31) / 32; ++w) M = fmaxf(M, red[w]);
    __syncthreads();  // red is reused for the sum
    float L = 0.0f;
    for (int k = tid; k < splits; k += nt) {
        const float w = expf(p0[k * rec] - M);  // 0 for an empty split (m = -inf)
        wk[k] = w;
        L += p0[k * rec + 1] * w;
    }
    for (int o = 16; o > 0; o >>= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
    if (tid % 32 == 0) red[tid / 32] = L;
    __syncthreads();
    L = 0.0f;
    for (int w = 0; w < (nt + 31) / 32; ++w) L += red[w];
    for (int p = tid; p < Mv; p += nt) {
        float w = 0.0f;
        for (int k = 0; k < splits; ++k) w += p0[k * rec + 2 + D + p] * wk[k];
        pw[p] = w;
    }
    __syncthreads();
    for (int d = tid; d < D; d += nt) {
        float acc = 0.0f;
        for (int k = 0; k < splits; ++k) acc += p0[k * rec + 2 + d] * wk[k];
        const float* P = vpat + (layer * H + h) * int64_t{Mv} * D;
        for (int p = 0; p < Mv; ++p)
            if (pw[p] != 0.0f) acc += pw[p] * P[int64_t{p} * D + d];
        out[(int64_t{s} * Hq + qh) * D + d] = acc / L;
    }
}

int round16(int64_t v) { return static_cast<int>((v + 15) / 16 * 16); }

// The shared memory plan of the split kernel.
SplitGeo make_geo(const PackedCacheDevice::Impl& m, int layer, int splits, int tiles_per_split) {
    const pkv_rt::CacheConfig& c = m.cfg;
    SplitGeo g{};
    g.D = c.head_dim, g.R = c.window, g.G = c.group, g.Gv = pkv_rt::value_group(c), g.bits = c.bits;
    g.H = c.n_head_kv, g.Hq = c.n_head, g.Q = c.n_head / c.n_head_kv, g.S = c.n_seq;
    g.table = c.method == CacheMethod::patternkv_table;
    g.mma = m.use_mma;
    g.Mk = g.table ? c.k_patterns : 0, g.Mv = g.table ? c.v_patterns : 0;
    const bool fp16 = c.method == CacheMethod::fp16;
    g.tile = m.tile(), g.groups = fp16 ? 0 : c.window / c.group;
    g.tiles_per_split = tiles_per_split, g.splits = splits;
    g.B = m.B, g.W = m.W, g.layer = layer;
    const pkv_rt::BlockLayout &K = m.layout[0], &V = m.layout[1];
    g.kbytes = K.bytes, g.vbytes = V.bytes, g.row_bytes = K.row_bytes;
    g.k_params = K.params, g.v_params = V.params, g.k_index = K.index, g.v_index = V.index, g.v_gate = V.gate;
    int at = 0;
    auto take = [&at](int64_t bytes) {
        const int off = at;
        at += round16(bytes);
        return off;
    };
    g.sm_q = take(int64_t{g.Q} * g.D * 4);
    g.sm_qc = take(int64_t{g.Q} * g.Mk * 4);
    g.kbuf = fp16 ? 0 : round16(K.bytes);
    g.vbuf = fp16 ? 0 : round16(V.bytes);
    g.sm_kblk = take(2 * int64_t{g.kbuf});
    g.sm_vblk = take(2 * int64_t{g.vbuf});
    g.sm_qs = take(int64_t{g.groups} * g.Q * g.D * 4);
    g.sm_qz = take(int64_t{g.groups} * g.Q * 4);
    g.sm_sc = take(int64_t{g.Q} * g.tile * 4);
    g.sm_stat = take(3 * g.Q * 4);
    g.sm_pw = take(int64_t{g.Q} * g.Mv * 4);
    g.sm_acc = take(int64_t{g.Q} * g.D * 4);
    g.sm_total = at;
    return g;
}

using SplitFn = void (*)(SplitGeo, const uint8_t*, const uint8_t*, const uint16_t*, const int64_t*, const float*,
                         const float*, float*);

template <int D, int BITS, bool FP16>
SplitFn pick_q(int Q) {
    switch (Q) {
        case 1: return split_kernel<D, BITS, 1, FP16>;
        case 2: return split_kernel<D, BITS, 2, FP16>;
        case 4: return split_kernel<D, BITS, 4, FP16>;
        default: return split_kernel<D, BITS, 8, FP16>;
    }
}

template <int D>
SplitFn pick_bits(int bits, int Q, bool fp16) {
    if (fp16) return pick_q<D, 2, true>(Q);
    return bits == 2 ? pick_q<D, 2, false>(Q) : bits == 3 ? pick_q<D, 3, false>(Q) : pick_q<D, 4, false>(Q);
}

SplitFn pick(int D, int bits, int Q, bool fp16) {
    return D == 64    ? pick_bits<64>(bits, Q, fp16)
           : D == 128 ? pick_bits<128>(bits, Q, fp16)
                      : pick_bits<256>(bits, Q, fp16);
}

std::string str(int64_t v) { return std::to_string(v); }

}  // namespace

int PackedCacheDevice::choose_splits(int layer) const {
    const Impl& m = *impl_;
    if (layer < 0 || layer >= m.cfg.n_layer)
        packed_device_fail("choose_splits: layer " + str(layer) + " is outside [0, " + str(m.cfg.n_layer) + ")");
    int64_t n_max = 1;
    for (int s = 0; s < m.cfg.n_seq; ++s) n_max = std::max(n_max, m.count(layer, s, 0));
    const int64_t tiles = (n_max + m.tile() - 1) / m.tile();
    // Blocks for every multiprocessor's resident slots over the whole batch (each keeps
    // only a few tokens' loads in flight, so the GPU needs many); a split is at least one tile.
    const int64_t per_head = int64_t{m.cfg.n_seq} * m.cfg.n_head_kv;
    // Rounded down: a second, mostly empty wave of blocks would cost as much as the first.
    const int64_t want = std::max<int64_t>(1, kMinBlocks * int64_t{m.sms} / per_head);
    return static_cast<int>(std::max<int64_t>(1, std::min(want, tiles)));
}

const char* PackedCacheDevice::last_split_kernel() const { return impl_->last_kernel; }

int64_t PackedCacheDevice::bytes_read(int layer) const {
    const Impl& m = *impl_;
    const pkv_rt::CacheConfig& c = m.cfg;
    int64_t bytes = 0;
    for (int s = 0; s < c.n_seq; ++s) {
        const int64_t n = m.count(layer, s, 0), nk = m.count(layer, s, 1), nv = m.count(layer, s, 2);
        const int64_t R = c.window;
        const int64_t blk = c.method == CacheMethod::fp16
                                ? 0
                                : (nk + R - 1) / R * m.layout[0].bytes + (nv + R - 1) / R * m.layout[1].bytes;
        bytes += c.n_head_kv * (blk + (2 * n - nk - nv) * c.head_dim * 2);
    }
    if (c.method == CacheMethod::patternkv_table)
        bytes += int64_t{c.n_head_kv} * (c.k_patterns + c.v_patterns) * c.head_dim * 4;
    return bytes;
}

void PackedCacheDevice::decode_attention_device(int layer, const float* q_dev, int64_t n_q, float* out_dev, int splits,
                                                void* stream) {
    Impl& m = *impl_;
    const pkv_rt::CacheConfig& c = m.cfg;
    if (layer < 0 || layer >= c.n_layer)
        packed_device_fail("decode_attention: layer " + str(layer) + " is outside [0, " + str(c.n_layer) + ")");
    if (n_q != c.n_seq)
        packed_device_fail("decode_attention: a query batch of " + str(n_q) +
                           " sequences, expected one query per sequence (" + str(c.n_seq) + ")");
    for (const void* p : {static_cast<const void*>(q_dev), static_cast<const void*>(out_dev)})
        if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
            packed_device_fail(std::string("decode_attention: the ") + (p == q_dev ? "query" : "output") +
                               " array is not aligned to 16 bytes");
    for (int s = 0; s < c.n_seq; ++s) {
        if (m.prefill[static_cast<size_t>(s)])
            packed_device_fail("decode_attention: sequence " + str(s) +
                               " is still in its prefill (attend over the prompt in full precision; call end_prefill "
                               "first)");
        if (m.count(layer, s, 0) < 1)
            packed_device_fail("decode_attention: layer " + str(layer) + " of sequence " + str(s) + " holds no token");
    }
    if (splits <= 0) splits = choose_splits(layer);
    int64_t n_max = 1;
    for (int s = 0; s < c.n_seq; ++s) n_max = std::max(n_max, m.count(layer, s, 0));
    const int64_t tiles = (n_max + m.tile() - 1) / m.tile();
    const int tps = static_cast<int>((tiles + splits - 1) / splits);
    splits = static_cast<int>((tiles + tps - 1) / tps);  // no split past the longest sequence
    const SplitGeo g = make_geo(m, layer, splits, tps);
    if (static_cast<size_t>(g.sm_total) > m.smem_optin)
        packed_device_fail("decode_attention: one K and one V block plus " + str(g.groups) + " key groups need " +
                           str(g.sm_total) + " bytes of shared memory, the device has " +
                           str(static_cast<int64_t>(m.smem_optin)) + " (use a larger group G or a smaller window R)");
    const bool fp16 = c.method == CacheMethod::fp16;
    PKV_CUDA_CHECK(cudaSetDevice(m.device));
    const cudaStream_t st = static_cast<cudaStream_t>(stream);
    if (g.table) {
        m.qc.reserve(static_cast<size_t>(c.n_seq) * c.n_head * c.k_patterns);
        pattern_scores_kernel<<<dim3(c.n_head, c.n_seq), kThreads, 0, st>>>(
            q_dev, m.patterns[0].get(), m.qc.get(), c.head_dim, c.n_head, g.Q, c.n_head_kv, c.k_patterns, layer);
        PKV_CUDA_CHECK(cudaGetLastError());
    }
    m.part.reserve(static_cast<size_t>(c.n_seq) * c.n_head * splits * (2 + c.head_dim + g.Mv));
    const SplitArrays arr{m.blocks[0].get(), m.blocks[1].get(), m.ring.get(), m.d_counts.get(), q_dev,
                          m.qc.get(),        m.part.get()};
    // The warp kernels serve every geometry they support, unless the general one was asked for.
    if (!m.general_only && (fp16 ? launch_fp16_split(g, arr, st) : launch_quant_split(g, arr, st))) {
        m.last_kernel = fp16 ? "fp16-warp" : quant_uses_mma(g) ? "quant-mma" : "quant-warp";
    } else {
        m.last_kernel = "general";
        const SplitFn fn = pick(c.head_dim, c.bits, g.Q, fp16);
        if (g.sm_total > 48 * 1024)  // the default limit; above it a kernel must opt in
            PKV_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(fn),
                                                cudaFuncAttributeMaxDynamicSharedMemorySize, g.sm_total));
        fn<<<dim3(splits, c.n_head_kv, c.n_seq), kThreads, g.sm_total, st>>>(
            g, m.blocks[0].get(), m.blocks[1].get(), m.ring.get(), m.d_counts.get(), q_dev, m.qc.get(), m.part.get());
        PKV_CUDA_CHECK(cudaGetLastError());
    }
    combine_kernel<<<dim3(c.n_head, c.n_seq), c.head_dim, (splits + g.Mv) * sizeof(float), st>>>(
        m.part.get(), m.patterns[1].get(), out_dev, c.head_dim, c.n_head, g.Q, c.n_head_kv, g.Mv, splits, layer);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void PackedCacheDevice::decode_attention(int layer, const float* q, int64_t n_q, float* out, int splits) {
    Impl& m = *impl_;
    const pkv_rt::CacheConfig& c = m.cfg;
    for (const void* p : {static_cast<const void*>(q), static_cast<const void*>(out)})
        if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
            packed_device_fail(std::string("decode_attention: the ") + (p == q ? "query" : "output") +
                               " array is not aligned to 16 bytes");
    if (n_q != c.n_seq)
        packed_device_fail("decode_attention: a query batch of " + str(n_q) +
                           " sequences, expected one query per sequence (" + str(c.n_seq) + ")");
    const size_t elems = static_cast<size_t>(c.n_seq) * c.n_head * c.head_dim;
    PKV_CUDA_CHECK(cudaSetDevice(m.device));
    m.q.reserve(elems);
    m.out.reserve(elems);
    PKV_CUDA_CHECK(cudaMemcpy(m.q.get(), q, elems * 4, cudaMemcpyHostToDevice));
    decode_attention_device(layer, m.q.get(), n_q, m.out.get(), splits, nullptr);
    PKV_CUDA_CHECK(cudaMemcpy(out, m.out.get(), elems * 4, cudaMemcpyDeviceToHost));
}

}  // namespace pkv::cuda
