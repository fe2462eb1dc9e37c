// The CUDA forward engine's element-wise and row kernels (forward_ops.cuh) and their
// host-memory forms for the parity tests (forward_ops.h). Attention: forward_attention.cu
// (float) and forward_attention_mma.cu (tensor cores).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/cuda_buffer.cuh"
#include "pkv/cuda/forward_ops.cuh"
#include "pkv/cuda/forward_ops.h"

namespace pkv::cuda {

namespace fwd {

namespace {

constexpr int kThreads = 256;

int grid_for(int64_t n, int threads = kThreads) {
    return static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, int64_t{1} << 20));
}

// Block-wide sum of a double; every thread gets the result. blockDim.x a multiple of 32, <= 1024.
__device__ double block_sum(double v, double* shared32) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
    __syncthreads();  // shared32 may still be read by an earlier call
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    double t = 0.0;
    for (int w = 0; w < n_warps; ++w) t += shared32[w];
    return t;
}

// One block per row. The products are rounded one by one (no fused multiply-add), as the
// CPU computes (x · inv) · w.
__global__ void rms_norm_kernel(const float* x, int cols, const float* w, float eps, float* out) {
    __shared__ double part[32];
    const int64_t row = blockIdx.x;
    const float* xr = x + row * cols;
    double ss = 0.0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += static_cast<double>(xr[c]) * xr[c];
    ss = block_sum(ss, part);
    const auto inv = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(cols) + static_cast<double>(eps)));
    // Every thread has read its values (block_sum synchronizes), so out may be x.
    float* o = out + row * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = __fmul_rn(__fmul_rn(xr[c], inv), w[c]);
}

// One thread per (row, head, pair); the angle table row is the row's position.
__global__ void rope_kernel(float* x, int64_t rows, int heads, int head_dim, const float* cos_t, const float* sin_t,
                            int n_pairs, bool interleaved, const int32_t* pos) {
    const int64_t total = rows * heads * n_pairs;
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
        const int p = static_cast<int>(i % n_pairs);
        const int64_t rh = i / n_pairs;
        const int h = static_cast<int>(rh % heads);
        const int64_t r = rh / heads;
        const int64_t t = static_cast<int64_t>(pos[r]) * n_pairs + p;
        const float c = cos_t[t], s = sin_t[t];
        float* v = x + r * heads * head_dim + static_cast<int64_t>(h) * head_dim;
        const int a = interleaved ? 2 * p : p, b = interleaved ? a + 1 : p + n_pairs;
        const float x0 = v[a], x1 = v[b];
        v[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        v[b] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
}

// One expression per activation, shared by the float kernels and the ones that round for
// the next product, so both give the same float before rounding.
__device__ __forceinline__ float swiglu_value(float g, float u) { return g / (1.0f + expf(-g)) * u; }

__device__ __forceinline__ float geglu_tanh_value(float g, float u) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    return 0.5f * g * (1.0f + tanhf(kSqrt2OverPi * (g + 0.044715f * g * g * g))) * u;
}

__global__ void swiglu_kernel(float* gate, const float* up, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        gate[i] = swiglu_value(gate[i], up[i]);
}

__global__ void geglu_tanh_kernel(float* gate, const float* up, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        gate[i] = geglu_tanh_value(gate[i], up[i]);
}

__device__ __forceinline__ void round_to(float x, __nv_bfloat16* out) { *out = __float2bfloat16_rn(x); }
__device__ __forceinline__ void round_to(float x, __half* out) { *out = __float2half_rn(x); }

// The activation rounded straight into the down product's input: the float result is
// never stored, which saves two passes over [rows, n_ff] floats.
template <bool Gelu, typename Out>
__global__ void gated_to_kernel(const float* gate, const float* up, int64_t n, Out* out) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        round_to(Gelu ? geglu_tanh_value(gate[i], up[i]) : swiglu_value(gate[i], up[i]), out + i);
}

__global__ void add_bias_kernel(float* y, int64_t rows, int cols, const float* b) {
    const int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        y[i] += b[i % cols];
}

// One thread per value of the fused product's row: q | k | v, each plus its bias (if any).
__global__ void split_qkv_kernel(const float* qkv, int64_t rows, int qd, int kd, const float* bq, const float* bk,
                                 const float* bv, float* q, float* k, float* v) {
    const int w = qd + 2 * kd;
    const int64_t n = rows * w;
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
        const int64_t r = i / w;
        const int c = static_cast<int>(i - r * w);
        const float x = qkv[i];
        if (c < qd) q[r * qd + c] = bq ? x + bq[c] : x;
        else if (c < qd + kd) k[r * kd + (c - qd)] = bk ? x + bk[c - qd] : x;
        else v[r * kd + (c - qd - kd)] = bv ? x + bv[c - qd - kd] : x;
    }
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        x[i] += y[i];
}

__global__ void sub_kernel(float* x, const float* y, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        x[i] -= y[i];
}

__global__ void fill_kernel(int32_t* x, int32_t value, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        x[i] = value;
}

__global__ void to_bf16_kernel(const float* x, int64_t n, __nv_bfloat16* out) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        out[i] = __float2bfloat16_rn(x[i]);
}

__global__ void to_half_kernel(const float* x, int64_t n, __half* out) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        out[i] = __float2half_rn(x[i]);
}

__global__ void logit_reset_kernel(LogitStats st, int64_t rows) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows; i += int64_t{gridDim.x} * blockDim.x) {
        st.max[i] = -1e300;
        st.sum[i] = 0.0;
        st.argmax[i] = -1;
        st.target[i] = 0.0f;
    }
}

// One block per row: the chunk's maximum and its first column, then Σ exp(l - max) with
// max the new running maximum (each exponential in float as on the CPU, summed in double),
// then the running statistics of the row are updated as LogitRowStats::add_block does.
__global__ void logit_add_kernel(const float* logits, int64_t n_cols, int64_t col0, const int32_t* targets,
                                 LogitStats st) {
    __shared__ float best_v[32];
    __shared__ int64_t best_i[32];
    __shared__ double part[32];
    const int64_t row = blockIdx.x;
    const float* l = logits + row * n_cols;
    float bm = -INFINITY;
    int64_t bi = INT64_MAX;
    for (int64_t c = threadIdx.x; c < n_cols; c += blockDim.x)
        if (l[c] > bm) bm = l[c], bi = c;  // columns rise: strict > keeps the first
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bm, o);
        const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bm || (ov == bm && oi < bi)) bm = ov, bi = oi;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
    if (lane == 0) best_v[warp] = bm, best_i[warp] = bi;
    __syncthreads();
    bm = best_v[0], bi = best_i[0];
    for (int w = 1; w < n_warps; ++w)
        if (best_v[w] > bm || (best_v[w] == bm && best_i[w] < bi)) bm = best_v[w], bi = best_i[w];
    const double old_max = st.max[row];
    const double new_max = bm > old_max ? static_cast<double>(bm) : old_max;
    const auto mf = static_cast<float>(new_max);
    double s = 0.0;
    for (int64_t c = threadIdx.x; c < n_cols; c += blockDim.x) s += static_cast<double>(expf(l[c] - mf));
    s = block_sum(s, part);
    if (threadIdx.x == 0) {
        double sum = st.sum[row];
        if (bm > old_max) {
            sum *= exp(old_max - new_max);
            st.max[row] = new_max;
            st.argmax[row] = static_cast<int32_t>(col0 + bi);
        }
        st.sum[row] = sum + s;
        const int64_t t = targets[row];
        if (t >= col0 && t < col0 + n_cols) st.target[row] = l[t - col0];
    }
}

__global__ void logit_finish_kernel(LogitStats st, const int32_t* targets, int64_t rows, float* nll, int32_t* amax) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows; i += int64_t{gridDim.x} * blockDim.x) {
        if (targets[i] < 0) continue;
        nll[i] = static_cast<float>(st.max[i] + log(st.sum[i]) - static_cast<double>(st.target[i]));
        amax[i] = st.argmax[i];
    }
}

}  // namespace

void rms_norm(const float* x, int64_t rows, int cols, const float* w, float eps, float* out, cudaStream_t s) {
    if (rows <= 0) return;
    PKV_ASSERT(rows <= INT32_MAX);
    const int threads = cols <= 64 ? 32 : cols <= 512 ? 128 : 256;
    rms_norm_kernel<<<static_cast<unsigned>(rows), threads, 0, s>>>(x, cols, w, eps, out);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void rope(float* x, int64_t rows, int heads, int head_dim, const float* cos, const float* sin, int n_pairs,
          bool interleaved, const int32_t* pos, cudaStream_t s) {
    const int64_t n = rows * heads * n_pairs;
    if (n <= 0) return;
    rope_kernel<<<grid_for(n), kThreads, 0, s>>>(x, rows, heads, head_dim, cos, sin, n_pairs, interleaved, pos);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void swiglu(float* gate, const float* up, int64_t n, cudaStream_t s) {
    if (n <= 0) return;
    swiglu_kernel<<<grid_for(n), kThreads, 0, s>>>(gate, up, n);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void geglu_tanh(float* gate, const float* up, int64_t n, cudaStream_t s) {
    if (n <= 0) return;
    geglu_tanh_kernel<<<grid_for(n), kThreads, 0, s>>>(gate, up, n);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void gated_to(const float* gate, const float* up, int64_t n, bool gelu, WeightType type, void* out, cudaStream_t s) {
    PKV_ASSERT(type != WeightType::f32);
    if (n <= 0) return;
    const int g = grid_for(n);
    if (type == WeightType::bf16) {
        auto* o = static_cast<__nv_bfloat16*>(out);
        if (gelu) gated_to_kernel<true><<<g, kThreads, 0, s>>>(gate, up, n, o);
        else gated_to_kernel<false><<<g, kThreads, 0, s>>>(gate, up, n, o);
    } else {
        auto* o = static_cast<__half*>(out);
        if (gelu) gated_to_kernel<true><<<g, kThreads, 0, s>>>(gate, up, n, o);
        else gated_to_kernel<false><<<g, kThreads, 0, s>>>(gate, up, n, o);
    }
    PKV_CUDA_CHECK(cudaGetLastError());
}

void add_bias(float* y, int64_t rows, int cols, const float* b, cudaStream_t s) {
    if (rows <= 0 || b == nullptr) return;
    add_bias_kernel<<<grid_for(rows * cols), kThreads, 0, s>>>(y, rows, cols, b);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void split_qkv(const float* qkv, int64_t rows, int qd, int kd, const float* bq, const float* bk, const float* bv,
               float* q, float* k, float* v, cudaStream_t s) {
    if (rows <= 0) return;
    split_qkv_kernel<<<grid_for(rows * (qd + 2 * int64_t{kd})), kThreads, 0, s>>>(qkv, rows, qd, kd, bq, bk, bv, q, k,
                                                                                  v);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void add_inplace(float* x, const float* y, int64_t n, cudaStream_t s) {
    if (n <= 0) return;
    add_kernel<<<grid_for(n), kThreads, 0, s>>>(x, y, n);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void sub_inplace(float* x, const float* y, int64_t n, cudaStream_t s) {
    if (n <= 0) return;
    sub_kernel<<<grid_for(n), kThreads, 0, s>>>(x, y, n);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void fill(int32_t* x, int32_t value, int64_t n, cudaStream_t s) {
    if (n <= 0) return;
    fill_kernel<<<grid_for(n), kThreads, 0, s>>>(x, value, n);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void convert(const float* x, int64_t n, WeightType type, void* out, cudaStream_t s) {
    PKV_ASSERT(type != WeightType::f32);
    if (n <= 0) return;
    if (type == WeightType::bf16)
        to_bf16_kernel<<<grid_for(n), kThreads, 0, s>>>(x, n, static_cast<__nv_bfloat16*>(out));
    else to_half_kernel<<<grid_for(n), kThreads, 0, s>>>(x, n, static_cast<__half*>(out));
    PKV_CUDA_CHECK(cudaGetLastError());
}

void to_half(const float* x, int64_t n, uint16_t* out, cudaStream_t s) { convert(x, n, WeightType::fp16, out, s); }

void logit_stats_reset(const LogitStats& st, int64_t rows, cudaStream_t s) {
    if (rows <= 0) return;
    logit_reset_kernel<<<grid_for(rows), kThreads, 0, s>>>(st, rows);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void logit_stats_add(const float* logits, int64_t rows, int64_t n_cols, int64_t col0, const int32_t* targets,
                     const LogitStats& st, cudaStream_t s) {
    if (rows <= 0 || n_cols <= 0) return;
    PKV_ASSERT(rows <= INT32_MAX);
    // Block r is row r: the caller passes logits, targets and st offset to its first row.
    logit_add_kernel<<<static_cast<unsigned>(rows), 256, 0, s>>>(logits, n_cols, col0, targets, st);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void logit_stats_finish(const LogitStats& st, const int32_t* targets, int64_t rows, float* nll, int32_t* argmax,
                        cudaStream_t s) {
    if (rows <= 0) return;
    logit_finish_kernel<<<grid_for(rows), kThreads, 0, s>>>(st, targets, rows, nll, argmax);
    PKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fwd

// ---- host-memory forms for the parity tests ----

namespace {

template <typename T>
void upload(DeviceBuffer<T>& d, const T* h, size_t n) {
    d.reserve(n);
    if (n > 0) PKV_CUDA_CHECK(cudaMemcpy(d.get(), h, n * sizeof(T), cudaMemcpyHostToDevice));
}

template <typename T>
void download(T* h, const DeviceBuffer<T>& d, size_t n) {
    PKV_CUDA_CHECK(cudaDeviceSynchronize());
    if (n > 0) PKV_CUDA_CHECK(cudaMemcpy(h, d.get(), n * sizeof(T), cudaMemcpyDeviceToHost));
}

}  // namespace

void rms_norm(const float* x, int64_t rows, int cols, const float* w, float eps, float* out, int device) {
    PKV_CUDA_CHECK(cudaSetDevice(device));
    const size_t n = static_cast<size_t>(rows) * cols;
    DeviceBuffer<float> dx, dw;
    upload(dx, x, n);
    upload(dw, w, static_cast<size_t>(cols));
    fwd::rms_norm(dx.get(), rows, cols, dw.get(), eps, dx.get(), nullptr);
    download(out, dx, n);
}

void rope_apply(float* x, int64_t rows, int heads, int head_dim, const RopeTable& table, const int32_t* pos,
                int device) {
    PKV_CUDA_CHECK(cudaSetDevice(device));
    for (int64_t r = 0; r < rows; ++r)
        PKV_CHECK(pos[r] >= 0 && pos[r] < table.n_pos, invalid_argument,
                  "cuda rope_apply: row {} position {}: "
                  "expected 0 to {}",
                  r, pos[r], table.n_pos - 1);
    PKV_CHECK(2 * table.n_pairs <= head_dim, invalid_argument, "cuda rope_apply: {} pairs in head_dim {}",
              table.n_pairs, head_dim);
    const size_t n = static_cast<size_t>(rows) * heads * head_dim;
    DeviceBuffer<float> dx, dc, ds;
    DeviceBuffer<int32_t> dp;
    upload(dx, x, n);
    upload(dc, table.cos.data(), table.cos.size());
    upload(ds, table.sin.data(), table.sin.size());
    upload(dp, pos, static_cast<size_t>(rows));
    fwd::rope(dx.get(), rows, heads, head_dim, dc.get(), ds.get(), table.n_pairs,
              table.layout == RopeLayout::interleaved, dp.get(), nullptr);
    download(x, dx, n);
}

void split_qkv(const float* qkv, int64_t rows, int qd, int kd, const float* bq, const float* bk, const float* bv,
               float* q, float* k, float* v, int device) {
    PKV_CUDA_CHECK(cudaSetDevice(device));
    const auto R = static_cast<size_t>(rows);
    DeviceBuffer<float> dx, dq, dk, dv, b[3];
    upload(dx, qkv, R * (qd + 2 * static_cast<size_t>(kd)));
    const float* bias[3] = {bq, bk, bv};
    const float* db[3] = {nullptr, nullptr, nullptr};
    for (int i = 0; i < 3; ++i)
        if (bias[i] != nullptr) {
            upload(b[i], bias[i], static_cast<size_t>(i == 0 ? qd : kd));
            db[i] = b[i].get();
        }
    dq.reserve(R * qd), dk.reserve(R * kd), dv.reserve(R * kd);
    fwd::split_qkv(dx.get(), rows, qd, kd, db[0], db[1], db[2], dq.get(), dk.get(), dv.get(), nullptr);
    download(q, dq, R * qd);
    download(k, dk, R * kd);
    download(v, dv, R * kd);
}

void gated_activation_to(const float* gate, const float* up, int64_t n, bool gelu, WeightType type, uint16_t* out,
                         int device) {
    PKV_CUDA_CHECK(cudaSetDevice(device));
    DeviceBuffer<float> dg, du;
    DeviceBuffer<uint16_t> dout;
    upload(dg, gate, static_cast<size_t>(n));
    upload(du, up, static_cast<size_t>(n));
    dout.reserve(static_cast<size_t>(n));
    fwd::gated_to(dg.get(), du.get(), n, gelu, type, dout.get(), nullptr);
    download(out, dout, static_cast<size_t>(n));
}

void swiglu_inplace(float* gate, const float* up, int64_t n, int device) {
    PKV_CUDA_CHECK(cudaSetDevice(device));
    DeviceBuffer<float> dg, du;
    upload(dg, gate, static_cast<size_t>(n));
    upload(du, up, static_cast<size_t>(n));
    fwd::swiglu(dg.get(), du.get(), n, nullptr);
    download(gate, dg, static_cast<size_t>(n));
}

void geglu_tanh_inplace(float* gate, const float* up, int64_t n, int device) {
    PKV_CUDA_CHECK(cudaSetDevice(device));
    DeviceBuffer<float> dg, du;
    upload(dg, gate, static_cast<size_t>(n));
    upload(du, up, static_cast<size_t>(n));
    fwd::geglu_tanh(dg.get(), du.get(), n, nullptr);
    download(gate, dg, static_cast<size_t>(n));
}

void causal_attention(const float* q, const float* k, const float* v, const std::vector<int>& lengths, int n_head,
                      int n_head_kv, int head_dim, float* out, float kq_scale, int window, int device,
                      WeightType math) {
    PKV_CHECK(n_head_kv >= 1 && n_head % n_head_kv == 0 && head_dim >= 1 && head_dim <= fwd::kMaxHeadDim,
              invalid_argument,
              "cuda causal_attention: {} heads, {} KV heads, head_dim {}: expected a multiple and "
              "head_dim <= {}",
              n_head, n_head_kv, head_dim, fwd::kMaxHeadDim);
    PKV_CUDA_CHECK(cudaSetDevice(device));
    std::vector<std::vector<int32_t>> seqs;
    for (int n : lengths) seqs.emplace_back(static_cast<size_t>(n), 0);
    const PackedBatch b = pack_batch(seqs);
    const std::vector<AttentionTile> tiles = attention_tiles(b, fwd::kAttentionTileRows);
    const size_t rows = static_cast<size_t>(b.n_rows());
    const size_t nq = rows * n_head * head_dim, nk = rows * n_head_kv * head_dim;
    DeviceBuffer<float> dq, dk, dv, dout;
    DeviceBuffer<AttentionTile> dt;
    upload(dq, q, nq);
    upload(dk, k, nk);
    upload(dv, v, nk);
    upload(dt, tiles.data(), tiles.size());
    dout.reserve(nq);
    const float scale = kq_scale > 0.0f ? kq_scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
    fwd::attention(dq.get(), dk.get(), dv.get(), dt.get(), static_cast<int>(tiles.size()), n_head, n_head_kv, head_dim,
                   scale, window, math, dout.get(), nullptr);
    download(out, dout, nq);
}

void causal_attention_cached(const float* q, const float* k, const float* v, const float* k_hat, const float* v_hat,
                             const int32_t* k_flush, const int32_t* v_flush, const std::vector<int>& lengths,
                             int n_head, int n_head_kv, int head_dim, float* out, float kq_scale, int window,
                             int device, WeightType math) {
    PKV_CHECK(n_head_kv >= 1 && n_head % n_head_kv == 0 && head_dim >= 1 && head_dim <= fwd::kMaxHeadDim,
              invalid_argument,
              "cuda causal_attention_cached: {} heads, {} KV heads, head_dim {}: expected a multiple and "
              "head_dim <= {}",
              n_head, n_head_kv, head_dim, fwd::kMaxHeadDim);
    PKV_CUDA_CHECK(cudaSetDevice(device));
    std::vector<std::vector<int32_t>> seqs;
    for (int n : lengths) seqs.emplace_back(static_cast<size_t>(n), 0);
    const PackedBatch b = pack_batch(seqs);
    const std::vector<AttentionTile> tiles = attention_tiles(b, fwd::kAttentionTileRows);
    const size_t rows = static_cast<size_t>(b.n_rows());
    const size_t nq = rows * n_head * head_dim, nk = rows * n_head_kv * head_dim, nf = rows * n_head_kv;
    DeviceBuffer<float> dq, dk, dv, dkh, dvh, dout;
    DeviceBuffer<int32_t> dkf, dvf;
    DeviceBuffer<AttentionTile> dt;
    upload(dq, q, nq);
    upload(dk, k, nk);
    upload(dv, v, nk);
    upload(dkh, k_hat, nk);
    upload(dvh, v_hat, nk);
    upload(dkf, k_flush, nf);
    upload(dvf, v_flush, nf);
    upload(dt, tiles.data(), tiles.size());
    dout.reserve(nq);
    const float scale = kq_scale > 0.0f ? kq_scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
    fwd::attention_cached(dq.get(), dk.get(), dv.get(), dkh.get(), dvh.get(), dkf.get(), dvf.get(),
                          static_cast<int64_t>(rows), dt.get(), static_cast<int>(tiles.size()), n_head, n_head_kv,
                          head_dim, scale, window, math, dout.get(), nullptr);
    download(out, dout, nq);
}

void logit_row_stats(const float* logits, int64_t rows, int64_t n_vocab, int64_t chunk, const int32_t* targets,
                     float* nll, int32_t* argmax, int device) {
    PKV_CUDA_CHECK(cudaSetDevice(device));
    PKV_CHECK(chunk >= 1, invalid_argument, "cuda logit_row_stats: chunk {}: expected >= 1", chunk);
    const auto R = static_cast<size_t>(rows);
    DeviceBuffer<float> dl, dtgt_logit, dnll, dchunk;
    DeviceBuffer<double> dmax, dsum;
    DeviceBuffer<int32_t> damax, dt, dout_amax;
    upload(dt, targets, R);
    dmax.reserve(R), dsum.reserve(R), damax.reserve(R), dtgt_logit.reserve(R), dnll.reserve(R), dout_amax.reserve(R);
    const fwd::LogitStats st{dmax.get(), dsum.get(), damax.get(), dtgt_logit.get()};
    fwd::logit_stats_reset(st, rows, nullptr);
    // The engine's logits come chunk by chunk as [rows, chunk] matrices: so do they here.
    std::vector<float> block;
    for (int64_t v0 = 0; v0 < n_vocab; v0 += chunk) {
        const int64_t nv = std::min(chunk, n_vocab - v0);
        block.resize(R * static_cast<size_t>(nv));
        for (size_t r = 0; r < R; ++r)
            std::copy_n(logits + r * n_vocab + v0, nv, block.begin() + static_cast<std::ptrdiff_t>(r * nv));
        PKV_CUDA_CHECK(cudaDeviceSynchronize());  // the previous chunk is read before it is replaced
        upload(dchunk, block.data(), block.size());
        fwd::logit_stats_add(dchunk.get(), rows, nv, v0, dt.get(), st, nullptr);
    }
    fwd::logit_stats_finish(st, dt.get(), rows, dnll.get(), dout_amax.get(), nullptr);
    download(nll, dnll, R);
    download(argmax, dout_amax, R);
}

}  // namespace pkv::cuda
