// Device decode steps of a packed cache (packed_attention.h, "Device appends"): the flush of
// a completed block or token and the new token's ring row, byte for byte what
// pkv_rt::PackedCache::append writes: the runtime's packed_cache.cpp repeats pkv's
// quantizer, pattern choice and gate, whose device twins (quant_device.cuh) the cache
// simulation's kernels use too.
#include <algorithm>
#include <cuda_fp16.h>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/packed_device_impl.cuh"
#include "pkv/cuda/quant_device.cuh"

namespace pkv::cuda {

using pkv_rt::CacheMethod;
using pkv_rt::KvPart;

namespace {

constexpr int kAppendThreads = 128;
constexpr int kFlushThreads = 512;
// Code words of one token's row at the largest head_dim (256) and width (4).
constexpr int kMaxRowWords = 256 * 4 / 32;

// What the append kernel of one layer needs; pointers are the device cache's arrays.
struct AppendGeo {
    uint8_t* blocks[2];
    uint16_t* ring;
    const float* patterns[2];
    const int64_t* counts;  // [L, S, 3]
    const PackedHeadParams* params;
    float* scratch;
    int* fault;
    const float* k;  // [S, H, D] new rows
    const float* v;
    pkv_rt::BlockLayout layout[2];
    int64_t B, W, scratch_per_head;
    int layer, n_seq, H, D, R, G, Gv, bits, Mk, Mv, method;  // method: 0 fp16, 1 kivi, 2 table
};

using detail::smax;
using detail::smin;

__device__ __forceinline__ float from_half(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint16_t to_half(float x) { return __half_as_ushort(__float2half_rn(x)); }

struct DevGrid {
    float s, z;
    uint32_t bits16;  // scale in bytes 0-1, zero in bytes 2-3 (little-endian)
};

// pkv_rt's make_grid (pkv::minmax_grid); a zero or scale beyond binary16 sets the fault.
__device__ DevGrid make_grid(float mn, float mx, int bits, float clip, int* fault) {
    uint16_t z16 = 0, s16 = 0;
    if (!detail::grid_bits(mn, mx, bits, clip, z16, s16)) atomicExch(fault, 1);
    DevGrid g;
    g.z = from_half(z16);
    g.s = from_half(s16);
    g.bits16 = static_cast<uint32_t>(s16) | (static_cast<uint32_t>(z16) << 16);
    return g;
}

__device__ __forceinline__ uint32_t code_of(float x, const DevGrid& g, int bits) {
    return static_cast<uint32_t>(detail::code_of(x, g.z, g.s, bits));
}

__device__ void zero_block(uint8_t* blk, int64_t bytes) {
    uint4* p = reinterpret_cast<uint4*>(blk);
    for (int64_t i = threadIdx.x; i < bytes / 16; i += blockDim.x) p[i] = make_uint4(0u, 0u, 0u, 0u);
}

__device__ __forceinline__ const uint16_t* ring_row(const AppendGeo& g, int s, int h, int part, int64_t t) {
    const int64_t row = ((static_cast<int64_t>(g.layer) * g.n_seq + s) * g.H + h) * 2 + part;
    return g.ring + (row * g.W + t % g.W) * g.D;
}

// A (min, max) scan over values in order, as std::min / std::max leave it (smin / smax):
// the first extreme in order, so even the sign of a zero extreme is the host's. Lanes that
// hold consecutive runs combine in a butterfly, the earlier run first; `has`: the run is
// not empty.
struct MinMax {
    float mn, mx;
    bool has;
};

__device__ __forceinline__ MinMax combine(MinMax a, MinMax b) {  // a: the earlier run
    if (!a.has) return b;
    if (!b.has) return a;
    return {smin(a.mn, b.mn), smax(a.mx, b.mx), true};
}

// The scan over a run of W consecutive lanes (W a power of two <= 32, runs aligned), lane
// order = value order; every lane of the run ends with the run's result.
__device__ __forceinline__ MinMax run_minmax(MinMax x, int lane, int W) {
    for (int o = 1; o < W; o <<= 1) {
        MinMax y;
        y.mn = __shfl_xor_sync(0xffffffffu, x.mn, o);
        y.mx = __shfl_xor_sync(0xffffffffu, x.mx, o);
        y.has = __shfl_xor_sync(0xffffffffu, x.has ? 1 : 0, o) != 0;
        x = (lane & o) ? combine(y, x) : combine(x, y);
    }
    return x;
}

// nearest_pattern with the warp's lanes over the patterns: each lane's distances are the
// serial function's, op for op, and the lowest index wins ties, so the choice is the same.
__device__ int nearest_pattern_warp(const float* v, const float* pat, int M, bool l2, int D, int lane) {
    int best = -1;
    double best_d = 0.0;
    for (int j = lane; j < M; j += 32) {
        const double d = detail::pattern_distance(v, pat + static_cast<int64_t>(j) * D, l2, D);
        if (best < 0 || d < best_d) best_d = d, best = j;
    }
    for (int o = 16; o > 0; o >>= 1) {
        const double od = __shfl_xor_sync(0xffffffffu, best_d, o);
        const int oj = __shfl_xor_sync(0xffffffffu, best, o);
        if (oj >= 0 && (best < 0 || od < best_d || (od == best_d && oj < best))) best_d = od, best = oj;
    }
    return best;
}

// Word wi of a row of codes: the codes of the channels whose bits fall in it (a code may
// straddle two words); code(d) gives channel d's code.
template <typename CodeOf>
__device__ __forceinline__ uint32_t row_word(int wi, int D, int bits, CodeOf code) {
    uint32_t w = 0;
    const int d_end = min(D, ((wi + 1) * 32 + bits - 1) / bits);
    for (int d = (wi * 32) / bits; d < d_end; ++d) {
        const int p = d * bits - wi * 32;
        const uint32_t q = code(d);
        w |= p >= 0 ? q << p : q >> (-p);
    }
    return w;
}

// K tokens [t0, t0 + R) into block t0 / R: a warp per token chooses its pattern and writes
// its residual; then a grid per (G-token group, channel), a run of lanes per grid; then the
// codes, a thread per row word.
__device__ void flush_k(const AppendGeo& g, int s, int h, int64_t t0) {
    const pkv_rt::BlockLayout& L = g.layout[0];
    const int D = g.D, R = g.R, G = g.G;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int64_t lsh = (static_cast<int64_t>(g.layer) * g.n_seq + s) * g.H + h;
    uint8_t* blk = g.blocks[0] + (lsh * g.B + t0 / R) * L.bytes;
    float* r = g.scratch + (static_cast<int64_t>(s) * g.H + h) * 2 * g.scratch_per_head;  // [R, D]
    DevGrid* grids = reinterpret_cast<DevGrid*>(r + static_cast<int64_t>(R) * D);         // [R / G, D]
    const PackedHeadParams hp = g.params[static_cast<int64_t>(g.layer) * g.H + h];
    const float* P = g.method == 2 ? g.patterns[0] + (static_cast<int64_t>(g.layer) * g.H + h) * g.Mk * D : nullptr;
    zero_block(blk, L.bytes);
    __syncthreads();
    for (int i = warp; i < R; i += nwarps) {
        const uint16_t* src = ring_row(g, s, h, 0, t0 + i);
        float* ri = r + static_cast<int64_t>(i) * D;
        for (int d = lane; d < D; d += 32) ri[d] = from_half(src[d]);
        __syncwarp();
        if (P) {
            const int idx = nearest_pattern_warp(ri, P, g.Mk, hp.k_l2 != 0, D, lane);
            if (lane == 0) blk[L.index + i] = static_cast<uint8_t>(idx);
            __syncwarp();  // every lane has read ri
            const float* c = P + static_cast<int64_t>(idx) * D;
            for (int d = lane; d < D; d += 32) ri[d] = __fsub_rn(ri[d], c[d]);
        }
    }
    __syncthreads();
    // W lanes per grid, each over a run of ceil(G / W) tokens.
    const int entries = (R / G) * D;
    int W = 1;
    while (W < 32 && W < G && entries * W * 2 <= static_cast<int>(blockDim.x)) W *= 2;
    const int run = (G + W - 1) / W;
    const int span = (entries * W + static_cast<int>(blockDim.x) - 1) / static_cast<int>(blockDim.x) * blockDim.x;
    for (int x = threadIdx.x; x < span; x += blockDim.x) {  // every thread of a warp runs the shuffles
        const int e = x / W, sub = x % W;
        MinMax mm{0.0f, 0.0f, false};
        if (e < entries) {
            const int gr = e / D, d = e % D;
            const float* col = r + static_cast<int64_t>(gr) * G * D + d;
#pragma unroll 8
            for (int i = sub * run; i < min(G, (sub + 1) * run); ++i) {
                const float v = col[static_cast<int64_t>(i) * D];
                mm = mm.has ? MinMax{smin(mm.mn, v), smax(mm.mx, v), true} : MinMax{v, v, true};
            }
        }
        mm = run_minmax(mm, lane, W);
        if (e < entries && sub == 0) {
            grids[e] = make_grid(mm.mn, mm.mx, g.bits, hp.k_clip, g.fault);
            *reinterpret_cast<uint32_t*>(blk + L.params + static_cast<int64_t>(e) * pkv_rt::kParamBytes) =
                grids[e].bits16;
        }
    }
    __syncthreads();
    const int words = static_cast<int>(L.row_bytes / 4);
    for (int x = threadIdx.x; x < R * words; x += blockDim.x) {
        const int i = x / words, wi = x % words;
        const float* ri = r + static_cast<int64_t>(i) * D;
        const DevGrid* gg = grids + static_cast<int64_t>(i / G) * D;
        reinterpret_cast<uint32_t*>(blk + L.codes + static_cast<int64_t>(i) * L.row_bytes)[wi] =
            row_word(wi, D, g.bits, [&](int d) { return code_of(ri[d], gg[d], g.bits); });
    }
}

// V tokens [t0, t1), a warp per token: pattern, gate and residual, a grid per group of Gv
// channels (the lanes over its channels), codes gathered in shared memory; a block is
// zeroed when its first token is flushed.
__device__ void flush_v(const AppendGeo& g, int s, int h, int64_t t0, int64_t t1) {
    __shared__ uint32_t rows[kFlushThreads / 32][kMaxRowWords];
    const pkv_rt::BlockLayout& L = g.layout[1];
    const int D = g.D, R = g.R, Gv = g.Gv;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int64_t lsh = (static_cast<int64_t>(g.layer) * g.n_seq + s) * g.H + h;
    float* x = g.scratch + ((static_cast<int64_t>(s) * g.H + h) * 2 + 1) * g.scratch_per_head +
               static_cast<int64_t>(warp) * D;  // this warp's row
    const PackedHeadParams hp = g.params[static_cast<int64_t>(g.layer) * g.H + h];
    const float* P = g.method == 2 ? g.patterns[1] + (static_cast<int64_t>(g.layer) * g.H + h) * g.Mv * D : nullptr;
    for (int64_t b = t0 / R; b <= (t1 - 1) / R; ++b)
        if (b * R >= t0) zero_block(g.blocks[1] + (lsh * g.B + b) * L.bytes, L.bytes);
    for (int wi = lane; wi < kMaxRowWords; wi += 32) rows[warp][wi] = 0u;
    __syncthreads();
    const int words = static_cast<int>(L.row_bytes / 4);
    const int run = (Gv + 31) / 32;  // channels of a group per lane
    for (int64_t t = t0 + warp; t < t1; t += nwarps) {
        uint8_t* blk = g.blocks[1] + (lsh * g.B + t / R) * L.bytes;
        const int i = static_cast<int>(t % R);
        const uint16_t* src = ring_row(g, s, h, 1, t);
        for (int d = lane; d < D; d += 32) x[d] = from_half(src[d]);
        __syncwarp();
        if (P) {
            const int idx = nearest_pattern_warp(x, P, g.Mv, hp.v_l2 != 0, D, lane);
            if (lane == 0) blk[L.index + i] = static_cast<uint8_t>(idx);
            const float* c = P + static_cast<int64_t>(idx) * D;
            // The gate's extremes of v and of v - c over the channels, in channel order.
            const int cr = (D + 31) / 32;
            MinMax vm{0.0f, 0.0f, false}, rm{0.0f, 0.0f, false};
            for (int d = lane * cr; d < min(D, (lane + 1) * cr); ++d) {
                const float e = __fsub_rn(x[d], c[d]);
                vm = vm.has ? MinMax{smin(vm.mn, x[d]), smax(vm.mx, x[d]), true} : MinMax{x[d], x[d], true};
                rm = rm.has ? MinMax{smin(rm.mn, e), smax(rm.mx, e), true} : MinMax{e, e, true};
            }
            vm = run_minmax(vm, lane, 32);
            rm = run_minmax(rm, lane, 32);
            __syncwarp();  // every lane has read x
            if (detail::gate_from_extremes(vm.mn, vm.mx, rm.mn, rm.mx, D, hp.gate_z)) {
                if (lane == 0) {
                    // Gate bit i is bit i % 8 of byte i / 8: one 32-bit word serves 32 tokens.
                    const int64_t byte = L.gate + i / 8;
                    atomicOr(reinterpret_cast<unsigned*>(blk + (byte & ~int64_t{3})), 1u << ((byte & 3) * 8 + i % 8));
                }
                for (int d = lane; d < D; d += 32) x[d] = __fsub_rn(x[d], c[d]);
                __syncwarp();
            }
        }
        for (int gr = 0; gr < D / Gv; ++gr) {
            const float* grp = x + gr * Gv;
            MinMax mm{0.0f, 0.0f, false};
            for (int e = lane * run; e < min(Gv, (lane + 1) * run); ++e)
                mm = mm.has ? MinMax{smin(mm.mn, grp[e]), smax(mm.mx, grp[e]), true} : MinMax{grp[e], grp[e], true};
            mm = run_minmax(mm, lane, 32);
            const DevGrid grid = make_grid(mm.mn, mm.mx, g.bits, hp.v_clip, g.fault);
            if (lane == 0)
                *reinterpret_cast<uint32_t*>(
                    blk + L.params + (static_cast<int64_t>(i) * (D / Gv) + gr) * pkv_rt::kParamBytes) = grid.bits16;
            for (int e = lane * run; e < min(Gv, (lane + 1) * run); ++e) {
                const int p = (gr * Gv + e) * g.bits, off = p & 31;
                const uint32_t q = code_of(grp[e], grid, g.bits);
                atomicOr(&rows[warp][p >> 5], q << off);
                if (off + g.bits > 32) atomicOr(&rows[warp][(p >> 5) + 1], q >> (32 - off));
            }
        }
        __syncwarp();
        uint32_t* row = reinterpret_cast<uint32_t*>(blk + L.codes + static_cast<int64_t>(i) * L.row_bytes);
        for (int wi = lane; wi < words; wi += 32) {
            row[wi] = rows[warp][wi];
            rows[warp][wi] = 0u;
        }
        __syncwarp();
    }
}

// Where the flushed count of `part` (0: K, 1: V) stands after the flush due before the
// new token (PackedCache::flush_due) of a sequence holding n tokens, q of them flushed:
// q + R when a K block or a table's V block is complete, n − R for KIVI's V (every token
// older than the window), q when nothing is due. method: 0 fp16, 1 kivi, 2 table.
__host__ __device__ inline int64_t flushed_to(int64_t n, int64_t q, int part, int R, int method) {
    if (method == 0) return q;
    if (part == 1 && method == 1) return n - q > R ? n - R : q;
    return n - q >= R ? q + R : q;
}

// The counts after the step: one token more, and what flush_kernel flushed.
__host__ __device__ inline void advance(int64_t* c, int R, int method) {
    const int64_t n = c[0];
    c[1] = flushed_to(n, c[1], 0, R, method);
    c[2] = flushed_to(n, c[2], 1, R, method);
    c[0] = n + 1;
}

// One block per (sequence, KV head, part): the flush the schedule says is due before the
// new token (PackedCache::flush_due); launched only on steps where one is due somewhere.
__global__ void __launch_bounds__(kFlushThreads) flush_kernel(AppendGeo g) {
    const int s = blockIdx.x / g.H, h = blockIdx.x % g.H, part = blockIdx.y;
    const int64_t* cnt = g.counts + (static_cast<int64_t>(g.layer) * g.n_seq + s) * 3;
    const int64_t n = cnt[0], q = cnt[1 + part];
    const int64_t to = flushed_to(n, q, part, g.R, g.method);
    if (to == q) return;
    if (part == 0) flush_k(g, s, h, q);
    else flush_v(g, s, h, q, to);
}

// One block per (sequence, KV head, part): the new token's ring row (after any flush of
// flush_kernel, which reads the ring slot KIVI V's new token shares with its oldest).
__global__ void append_kernel(AppendGeo g) {
    const int s = blockIdx.x / g.H, h = blockIdx.x % g.H, part = blockIdx.y;
    const int64_t n = g.counts[(static_cast<int64_t>(g.layer) * g.n_seq + s) * 3];
    const float* src = (part ? g.v : g.k) + (static_cast<int64_t>(s) * g.H + h) * g.D;
    const int64_t row = ((static_cast<int64_t>(g.layer) * g.n_seq + s) * g.H + h) * 2 + part;
    uint16_t* dst = g.ring + (row * g.W + n % g.W) * g.D;
    for (int d = threadIdx.x; d < g.D; d += blockDim.x) {
        const float x = src[d];
        if (!isfinite(x) || fabsf(x) >= 65520.0f) atomicExch(g.fault, 1);
        dst[d] = to_half(x);
    }
}

__global__ void advance_kernel(int64_t* counts, int layer, int n_seq, int R, int method) {
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s < n_seq) advance(counts + (static_cast<int64_t>(layer) * n_seq + s) * 3, R, method);
}

std::string str(int64_t v) { return std::to_string(v); }

}  // namespace

void PackedCacheDevice::append_device(int layer, const float* k_dev, const float* v_dev, void* stream) {
    Impl& m = *impl_;
    const pkv_rt::CacheConfig& c = m.cfg;
    if (layer < 0 || layer >= c.n_layer)
        packed_device_fail("append: layer " + str(layer) + " is outside [0, " + str(c.n_layer) + ")");
    for (int s = 0; s < c.n_seq; ++s) {
        if (m.prefill[static_cast<size_t>(s)])
            packed_device_fail("append: sequence " + str(s) +
                               " is still in its prefill (device appends are decode steps; append the prompt on the "
                               "host, end_prefill, then upload)");
        if (m.count(layer, s, 0) >= c.max_tokens)
            packed_device_fail("append: layer " + str(layer) + " sequence " + str(s) + ": " +
                               str(m.count(layer, s, 0)) + " + 1 tokens exceed the " + str(c.max_tokens) +
                               " allocated per sequence");
    }
    const int method = c.method == CacheMethod::fp16 ? 0 : c.method == CacheMethod::kivi ? 1 : 2;
    AppendGeo g{};
    for (int p = 0; p < 2; ++p) {
        g.blocks[p] = m.blocks[p].get();
        g.patterns[p] = m.patterns[p].get();
        g.layout[p] = m.layout[p];
    }
    g.ring = m.ring.get();
    g.counts = m.d_counts.get();
    g.params = m.head_params.get();
    g.fault = m.d_fault.get();
    g.k = k_dev, g.v = v_dev;
    g.B = m.B, g.W = m.W;
    g.layer = layer, g.n_seq = c.n_seq, g.H = c.n_head_kv, g.D = c.head_dim;
    g.R = c.window, g.G = c.group, g.Gv = pkv_rt::value_group(c), g.bits = c.bits;
    g.Mk = c.k_patterns, g.Mv = c.v_patterns, g.method = method;
    if (method != 0) {
        // Residual rows of R tokens, then the K block's grids (two floats and a word each).
        // (V: a row per flush warp.)
        g.scratch_per_head =
            int64_t{std::max(c.window, kFlushThreads / 32)} * c.head_dim + int64_t{c.window / c.group} * c.head_dim * 3;
        m.flush_scratch.reserve(static_cast<size_t>(int64_t{c.n_seq} * c.n_head_kv * 2 * g.scratch_per_head));
        g.scratch = m.flush_scratch.get();
    }
    PKV_CUDA_CHECK(cudaSetDevice(m.device));
    const cudaStream_t st = static_cast<cudaStream_t>(stream);
    // The host's copy of the counts says whether any sequence flushes at this step.
    bool due = false;
    for (int s = 0; s < c.n_seq; ++s)
        for (int part = 0; part < 2; ++part) {
            const int64_t q = m.count(layer, s, 1 + part);
            due = due || flushed_to(m.count(layer, s, 0), q, part, c.window, method) != q;
        }
    if (due) {
        flush_kernel<<<dim3(c.n_seq * c.n_head_kv, 2), kFlushThreads, 0, st>>>(g);
        PKV_CUDA_CHECK(cudaGetLastError());
    }
    append_kernel<<<dim3(c.n_seq * c.n_head_kv, 2), kAppendThreads, 0, st>>>(g);
    PKV_CUDA_CHECK(cudaGetLastError());
    advance_kernel<<<(c.n_seq + 127) / 128, 128, 0, st>>>(m.d_counts.get(), layer, c.n_seq, c.window, method);
    PKV_CUDA_CHECK(cudaGetLastError());
    for (int s = 0; s < c.n_seq; ++s)
        advance(
            m.counts.data() + (static_cast<size_t>(layer) * static_cast<size_t>(c.n_seq) + static_cast<size_t>(s)) * 3,
            c.window, method);
}

void PackedCacheDevice::append(int layer, const float* k, const float* v) {
    Impl& m = *impl_;
    const pkv_rt::CacheConfig& c = m.cfg;
    const size_t elems = static_cast<size_t>(c.n_seq) * c.n_head_kv * c.head_dim;
    PKV_CUDA_CHECK(cudaSetDevice(m.device));
    // The query/output staging buffers hold n_head >= n_head_kv rows per sequence.
    m.q.reserve(static_cast<size_t>(c.n_seq) * c.n_head * c.head_dim);
    m.out.reserve(static_cast<size_t>(c.n_seq) * c.n_head * c.head_dim);
    PKV_CUDA_CHECK(cudaMemcpy(m.q.get(), k, elems * 4, cudaMemcpyHostToDevice));
    PKV_CUDA_CHECK(cudaMemcpy(m.out.get(), v, elems * 4, cudaMemcpyHostToDevice));
    append_device(layer, m.q.get(), m.out.get(), nullptr);
    if (fault())
        packed_device_fail("append: layer " + str(layer) +
                           ": a new row is not a finite binary16 value, or a quantizer group's zero or scale is "
                           "beyond the binary16 range (upload the cache again before using it)");
}

bool PackedCacheDevice::fault() const {
    const Impl& m = *impl_;
    int f = 0;
    PKV_CUDA_CHECK(cudaSetDevice(m.device));
    PKV_CUDA_CHECK(cudaMemcpy(&f, m.d_fault.get(), sizeof(int), cudaMemcpyDeviceToHost));
    return f != 0;
}

std::vector<uint8_t> PackedCacheDevice::download(PackedArray a) const {
    int64_t bytes = 0;
    const void* p = device_array(a, &bytes);
    std::vector<uint8_t> out(static_cast<size_t>(bytes));
    if (bytes > 0) {
        PKV_CUDA_CHECK(cudaSetDevice(impl_->device));
        PKV_CUDA_CHECK(cudaMemcpy(out.data(), p, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost));
    }
    return out;
}

}  // namespace pkv::cuda
