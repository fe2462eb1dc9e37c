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

using detail::gate_passes;
using detail::nearest_pattern;
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

// Puts code q of channel d into a row of 32-bit words (zeroed first); a code may straddle two.
__device__ __forceinline__ void pack(uint32_t* w, int d, int bits, uint32_t q) {
    const int p = d * bits, wi = p >> 5, off = p & 31;
    w[wi] |= q << off;
    if (off + bits > 32) w[wi + 1] |= q >> (32 - off);
}

__device__ __forceinline__ void store_row(uint8_t* row, const uint32_t* w, int64_t row_bytes) {
    uint32_t* dst = reinterpret_cast<uint32_t*>(row);
    for (int64_t i = 0; i < row_bytes / 4; ++i) dst[i] = w[i];
}

__device__ void zero_block(uint8_t* blk, int64_t bytes) {
    uint4* p = reinterpret_cast<uint4*>(blk);
    for (int64_t i = threadIdx.x; i < bytes / 16; i += blockDim.x) p[i] = make_uint4(0u, 0u, 0u, 0u);
}

__device__ __forceinline__ const uint16_t* ring_row(const AppendGeo& g, int s, int h, int part, int64_t t) {
    const int64_t row = ((static_cast<int64_t>(g.layer) * g.n_seq + s) * g.H + h) * 2 + part;
    return g.ring + (row * g.W + t % g.W) * g.D;
}

// K tokens [t0, t0 + R) into block t0 / R: pattern and residual per token, a grid per
// (G-token group, channel), codes per token.
__device__ void flush_k(const AppendGeo& g, int s, int h, int64_t t0) {
    const pkv_rt::BlockLayout& L = g.layout[0];
    const int D = g.D, R = g.R, G = g.G;
    const int64_t lsh = (static_cast<int64_t>(g.layer) * g.n_seq + s) * g.H + h;
    uint8_t* blk = g.blocks[0] + (lsh * g.B + t0 / R) * L.bytes;
    float* r = g.scratch + (static_cast<int64_t>(s) * g.H + h) * 2 * g.scratch_per_head;  // [R, D]
    DevGrid* grids = reinterpret_cast<DevGrid*>(r + static_cast<int64_t>(R) * D);         // [R / G, D]
    const PackedHeadParams hp = g.params[static_cast<int64_t>(g.layer) * g.H + h];
    const float* P = g.method == 2 ? g.patterns[0] + (static_cast<int64_t>(g.layer) * g.H + h) * g.Mk * D : nullptr;
    zero_block(blk, L.bytes);
    __syncthreads();
    for (int i = threadIdx.x; i < R; i += blockDim.x) {
        const uint16_t* src = ring_row(g, s, h, 0, t0 + i);
        float* ri = r + static_cast<int64_t>(i) * D;
        for (int d = 0; d < D; ++d) ri[d] = from_half(src[d]);
        if (P) {
            const int idx = nearest_pattern(ri, P, g.Mk, hp.k_l2 != 0, D);
            blk[L.index + i] = static_cast<uint8_t>(idx);
            const float* c = P + static_cast<int64_t>(idx) * D;
            for (int d = 0; d < D; ++d) ri[d] = __fsub_rn(ri[d], c[d]);
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < (R / G) * D; e += blockDim.x) {
        const int gr = e / D, d = e % D;
        const float* col = r + static_cast<int64_t>(gr) * G * D + d;
        float mn = col[0], mx = col[0];
        for (int i = 0; i < G; ++i) {
            mn = smin(mn, col[static_cast<int64_t>(i) * D]);
            mx = smax(mx, col[static_cast<int64_t>(i) * D]);
        }
        grids[e] = make_grid(mn, mx, g.bits, hp.k_clip, g.fault);
        *reinterpret_cast<uint32_t*>(blk + L.params + static_cast<int64_t>(e) * pkv_rt::kParamBytes) = grids[e].bits16;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < R; i += blockDim.x) {
        const float* ri = r + static_cast<int64_t>(i) * D;
        const DevGrid* gg = grids + static_cast<int64_t>(i / G) * D;
        uint32_t w[kMaxRowWords] = {};
        for (int d = 0; d < D; ++d) pack(w, d, g.bits, code_of(ri[d], gg[d], g.bits));
        store_row(blk + L.codes + static_cast<int64_t>(i) * L.row_bytes, w, L.row_bytes);
    }
}

// V tokens [t0, t1), each on its own: pattern, gate and residual, a grid per group of Gv
// channels, codes; a block is zeroed when its first token is flushed.
__device__ void flush_v(const AppendGeo& g, int s, int h, int64_t t0, int64_t t1) {
    const pkv_rt::BlockLayout& L = g.layout[1];
    const int D = g.D, R = g.R, Gv = g.Gv;
    const int64_t lsh = (static_cast<int64_t>(g.layer) * g.n_seq + s) * g.H + h;
    float* scratch = g.scratch + ((static_cast<int64_t>(s) * g.H + h) * 2 + 1) * g.scratch_per_head;
    const PackedHeadParams hp = g.params[static_cast<int64_t>(g.layer) * g.H + h];
    const float* P = g.method == 2 ? g.patterns[1] + (static_cast<int64_t>(g.layer) * g.H + h) * g.Mv * D : nullptr;
    for (int64_t b = t0 / R; b <= (t1 - 1) / R; ++b)
        if (b * R >= t0) zero_block(g.blocks[1] + (lsh * g.B + b) * L.bytes, L.bytes);
    __syncthreads();
    for (int64_t t = t0 + threadIdx.x; t < t1; t += blockDim.x) {
        uint8_t* blk = g.blocks[1] + (lsh * g.B + t / R) * L.bytes;
        const int i = static_cast<int>(t % R);
        float* x = scratch + static_cast<int64_t>(t - t0) % R * D;
        const uint16_t* src = ring_row(g, s, h, 1, t);
        for (int d = 0; d < D; ++d) x[d] = from_half(src[d]);
        const float* c = nullptr;
        if (P) {
            const int idx = nearest_pattern(x, P, g.Mv, hp.v_l2 != 0, D);
            blk[L.index + i] = static_cast<uint8_t>(idx);
            if (gate_passes(x, P + static_cast<int64_t>(idx) * D, D, hp.gate_z)) {
                c = P + static_cast<int64_t>(idx) * D;
                // Gate bit i is bit i % 8 of byte i / 8: one 32-bit word serves 32 tokens.
                const int64_t byte = L.gate + i / 8;
                atomicOr(reinterpret_cast<unsigned*>(blk + (byte & ~int64_t{3})), 1u << ((byte & 3) * 8 + i % 8));
            }
        }
        if (c)
            for (int d = 0; d < D; ++d) x[d] = __fsub_rn(x[d], c[d]);
        uint32_t w[kMaxRowWords] = {};
        for (int gr = 0; gr < D / Gv; ++gr) {
            const float* grp = x + gr * Gv;
            float mn = grp[0], mx = grp[0];
            for (int e = 0; e < Gv; ++e) {
                mn = smin(mn, grp[e]);
                mx = smax(mx, grp[e]);
            }
            const DevGrid grid = make_grid(mn, mx, g.bits, hp.v_clip, g.fault);
            *reinterpret_cast<uint32_t*>(blk + L.params +
                                         (static_cast<int64_t>(i) * (D / Gv) + gr) * pkv_rt::kParamBytes) = grid.bits16;
            for (int e = 0; e < Gv; ++e) pack(w, gr * Gv + e, g.bits, code_of(grp[e], grid, g.bits));
        }
        store_row(blk + L.codes + static_cast<int64_t>(i) * L.row_bytes, w, L.row_bytes);
    }
}

// One block per (sequence, KV head, part): the flush the schedule says is due (before the
// new token, as PackedCache::flush_due), then the new token's ring row.
__global__ void append_kernel(AppendGeo g) {
    const int s = blockIdx.x / g.H, h = blockIdx.x % g.H, part = blockIdx.y;
    const int64_t* cnt = g.counts + (static_cast<int64_t>(g.layer) * g.n_seq + s) * 3;
    const int64_t n = cnt[0], q = cnt[1 + part];
    if (g.method != 0) {
        if (part == 0) {
            if (n - q >= g.R) flush_k(g, s, h, q);
        } else if (g.method == 1) {
            if (n - q > g.R) flush_v(g, s, h, q, n - g.R);
        } else if (n - q >= g.R) {
            flush_v(g, s, h, q, q + g.R);
        }
    }
    // The flushed tokens' ring slots are read above; KIVI V's oldest shares its slot with
    // the new token.
    __syncthreads();
    const float* src = (part ? g.v : g.k) + (static_cast<int64_t>(s) * g.H + h) * g.D;
    const int64_t row = ((static_cast<int64_t>(g.layer) * g.n_seq + s) * g.H + h) * 2 + part;
    uint16_t* dst = g.ring + (row * g.W + n % g.W) * g.D;
    for (int d = threadIdx.x; d < g.D; d += blockDim.x) {
        const float x = src[d];
        if (!isfinite(x) || fabsf(x) >= 65520.0f) atomicExch(g.fault, 1);
        dst[d] = to_half(x);
    }
}

// The counts after the step: one token more, and what append_kernel flushed.
__host__ __device__ inline void advance(int64_t* c, int R, int method) {
    const int64_t n = c[0];
    if (method != 0) {
        if (n - c[1] >= R) c[1] += R;
        if (method == 1) {
            if (n - c[2] > R) c[2] = n - R;
        } else if (n - c[2] >= R) {
            c[2] += R;
        }
    }
    c[0] = n + 1;
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
        g.scratch_per_head = int64_t{c.window} * c.head_dim + int64_t{c.window / c.group} * c.head_dim * 3;
        m.flush_scratch.reserve(static_cast<size_t>(int64_t{c.n_seq} * c.n_head_kv * 2 * g.scratch_per_head));
        g.scratch = m.flush_scratch.get();
    }
    PKV_CUDA_CHECK(cudaSetDevice(m.device));
    const cudaStream_t st = static_cast<cudaStream_t>(stream);
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
