// Attention metrics of `pkv analyze` on the GPU (analyze_attention.h): one kernel scores a
// job, every (query row tile, query head, cache) a block, and the per-row figures are added
// on the host in a fixed order.
#include "pkv/cuda/analyze_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "pkv/core/error.h"
#include "pkv/cuda/check.cuh"
#include "pkv/cuda/cuda_buffer.cuh"
#include "pkv/cuda/device.h"

namespace pkv::cuda {

namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kTileKeys = 32;   // keys per tile: one per lane
constexpr int kTileOut = 2048;  // query rows x head_dim of one block's outputs
constexpr int kMaxRowTile = 32;
constexpr int kSlots = kMaxRowTile / kWarps;  // rows a warp owns (row r: warp r % 8, slot r / 8)
constexpr int kOutPerThread = kTileOut / kThreads;
constexpr int kMaxHeadDim = 256;

// Query rows per block: the outputs (rows x D floats, twice) stay at 8 per thread.
int row_tile(int D) { return std::min(kMaxRowTile, kTileOut / D); }

struct Params {
    const float* q;        // [G, n, D]
    const float* k;        // [n, D]
    const float* v;        // [n, D]
    const float* k_hat;    // [C, n, D]
    const float* v_hat;    // [C, n, D]
    const int32_t* flush;  // [2, C, n]: keys, then values
    int64_t n, m;          // tokens; query rows (t = i * stride)
    int D, stride, G, C, rows;
    int64_t window;
    float scale;
    double* out;  // [2, C, G, m]: KL, then ||o_hat - o|| / ||o|| (-1: o = 0)
};

size_t shared_bytes(int D, int rows) {
    const size_t floats =
        size_t(rows) * D + 2 * size_t(kTileKeys) * (D + 1) + 2 * size_t(kTileKeys) * D + 3 * size_t(rows) * kTileKeys;
    return 2 * size_t(rows) * sizeof(double) + floats * sizeof(float);
}

__device__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ double warp_max(double v) {
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Adds exp(x) to a lane's running softmax normalizer exp(m) · z (m: the largest x seen).
__device__ void online_add(double& m, double& z, double x) {
    if (x > m) {
        z = z * exp(m - x) + 1.0;
        m = x;
    } else {
        z += exp(x - m);
    }
}

// log Σ over the warp's lanes of exp(m) · z: the row's log-normalizer.
__device__ double warp_log_sum(double m, double z) {
    const double M = warp_max(m);
    return M + log(warp_sum(m == -INFINITY ? 0.0 : z * exp(m - M)));
}

// Keys j0 .. j0 + 31 (zero past `last`) into shared memory; k rows padded to D + 1 so that
// the 32 lanes, one key each, read distinct banks.
__device__ void load_tile(const Params& p, const float* k_hat, const float* v_hat, int64_t j0, int64_t last,
                          bool values, float* sK, float* sKh, float* sV, float* sVh) {
    const int D = p.D;
    for (int e = threadIdx.x; e < kTileKeys * D; e += blockDim.x) {
        const int jj = e / D, d = e % D;
        const int64_t j = j0 + jj;
        const bool in = j <= last;
        sK[jj * (D + 1) + d] = in ? p.k[j * D + d] : 0.0f;
        sKh[jj * (D + 1) + d] = in ? k_hat[j * D + d] : 0.0f;
        if (values) {
            sV[e] = in ? p.v[j * D + d] : 0.0f;
            sVh[e] = in ? v_hat[j * D + d] : 0.0f;
        }
    }
}

// Scores of this lane's key against the warp's rows: exact s and the cache's s_hat (s
// itself while the key is not flushed for that row). Float products summed over d in
// order, then scaled, as the CPU forms (Q Kᵀ) · scale.
__device__ void row_scores(const Params& p, const float* sQ, const float* sK, const float* sKh, int warp, int lane,
                           int64_t i0, int32_t flush_k, float (&s)[kSlots], float (&sh)[kSlots]) {
    const int D = p.D;
    float a[kSlots], b[kSlots];
#pragma unroll
    for (int u = 0; u < kSlots; ++u) a[u] = b[u] = 0.0f;
    for (int d = 0; d < D; ++d) {
        const float kd = sK[lane * (D + 1) + d], khd = sKh[lane * (D + 1) + d];
#pragma unroll
        for (int u = 0; u < kSlots; ++u) {
            const int r = warp + kWarps * u;
            if (r < p.rows) {
                const float qd = sQ[r * D + d];
                a[u] = fmaf(qd, kd, a[u]);
                b[u] = fmaf(qd, khd, b[u]);
            }
        }
    }
#pragma unroll
    for (int u = 0; u < kSlots; ++u) {
        const int64_t t = (i0 + warp + kWarps * u) * p.stride;
        s[u] = a[u] * p.scale;
        sh[u] = static_cast<int64_t>(flush_k) > t ? s[u] : b[u] * p.scale;
    }
}

// Block (row tile x, query head y, cache z). Pass 1: the log-normalizers of the exact and
// the cached softmax of each row (each lane keeps a running max and sum over its keys in
// double; the warp merges them once at the end). Pass 2: per row KL(p || p_hat)
// = Σ p (log p - log p_hat), and o_hat - o = Σ (p_hat - p) v + Σ_{flushed values} p_hat
// (v_hat - v) formed directly (no cancellation; exactly 0 for an unchanged cache), with p
// and p_hat rounded to float before the products as the CPU does.
__global__ void __launch_bounds__(kThreads) attention_metrics_kernel(Params p) {
    extern __shared__ double smem[];
    const int D = p.D, R = p.rows;
    double* lse = smem;  // [R] exact
    double* lse_h = lse + R;
    float* sQ = reinterpret_cast<float*>(lse_h + R);
    float* sK = sQ + R * D;
    float* sKh = sK + kTileKeys * (D + 1);
    float* sV = sKh + kTileKeys * (D + 1);
    float* sVh = sV + kTileKeys * D;
    float* sW0 = sVh + kTileKeys * D;  // [R, 32] p
    float* sW1 = sW0 + R * kTileKeys;  // p_hat - p
    float* sW2 = sW1 + R * kTileKeys;  // p_hat where the value is flushed, else 0

    const int c = blockIdx.z, g = blockIdx.y;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t n = p.n, i0 = int64_t{blockIdx.x} * R;
    const int64_t i_last = min(p.m - 1, i0 + R - 1);
    const int64_t t_first = i0 * p.stride, t_last = i_last * p.stride;
    auto first_key = [&](int64_t t) { return p.window > 0 ? max(int64_t{0}, t - p.window + 1) : int64_t{0}; };
    const int64_t j_begin = first_key(t_first);
    const float* k_hat = p.k_hat + int64_t{c} * n * D;
    const float* v_hat = p.v_hat + int64_t{c} * n * D;
    const int32_t* flush_k = p.flush + int64_t{c} * n;
    const int32_t* flush_v = p.flush + (int64_t{p.C} + c) * n;
    const float* q = p.q + int64_t{g} * n * D;

    for (int e = threadIdx.x; e < R * D; e += blockDim.x) {
        const int64_t i = i0 + e / D;
        sQ[e] = i <= i_last ? q[i * p.stride * D + e % D] : 0.0f;
    }
    // A key counts for row u when it is causal, inside the window and the row exists.
    auto valid = [&](int u, int64_t j) {
        const int64_t i = i0 + warp + kWarps * u;
        const int64_t t = i * p.stride;
        return warp + kWarps * u < R && i <= i_last && j <= t && j >= first_key(t);
    };

    double me[kSlots], ze[kSlots], mh[kSlots], zh[kSlots];
#pragma unroll
    for (int u = 0; u < kSlots; ++u) me[u] = mh[u] = -INFINITY, ze[u] = zh[u] = 0.0;
    float s[kSlots], sh[kSlots];
    for (int64_t j0 = j_begin; j0 <= t_last; j0 += kTileKeys) {
        __syncthreads();
        load_tile(p, k_hat, v_hat, j0, t_last, false, sK, sKh, sV, sVh);
        __syncthreads();
        const int64_t j = j0 + lane;
        row_scores(p, sQ, sK, sKh, warp, lane, i0, j <= t_last ? flush_k[j] : 0, s, sh);
#pragma unroll
        for (int u = 0; u < kSlots; ++u)
            if (valid(u, j)) {
                online_add(me[u], ze[u], s[u]);
                online_add(mh[u], zh[u], sh[u]);
            }
    }
#pragma unroll
    for (int u = 0; u < kSlots; ++u) {
        if (warp + kWarps * u >= R) continue;  // warp-uniform
        const double l = warp_log_sum(me[u], ze[u]), lh = warp_log_sum(mh[u], zh[u]);
        if (lane == 0) lse[warp + kWarps * u] = l, lse_h[warp + kWarps * u] = lh;
    }
    __syncthreads();

    double kl[kSlots];
    float acc_o[kOutPerThread], acc_d[kOutPerThread];
#pragma unroll
    for (int u = 0; u < kSlots; ++u) kl[u] = 0.0;
#pragma unroll
    for (int u = 0; u < kOutPerThread; ++u) acc_o[u] = acc_d[u] = 0.0f;
    for (int64_t j0 = j_begin; j0 <= t_last; j0 += kTileKeys) {
        __syncthreads();
        load_tile(p, k_hat, v_hat, j0, t_last, true, sK, sKh, sV, sVh);
        __syncthreads();
        const int64_t j = j0 + lane;
        row_scores(p, sQ, sK, sKh, warp, lane, i0, j <= t_last ? flush_k[j] : 0, s, sh);
        const int32_t fv = j <= t_last ? flush_v[j] : 0;
#pragma unroll
        for (int u = 0; u < kSlots; ++u) {
            const int r = warp + kWarps * u;
            if (r >= R) continue;
            float w0 = 0.0f, w1 = 0.0f, w2 = 0.0f;
            if (valid(u, j)) {
                const double lp = double(s[u]) - lse[r], lph = double(sh[u]) - lse_h[r];
                const double pe = exp(lp), ph = exp(lph);
                kl[u] += pe * (lp - lph);
                const float pf = static_cast<float>(pe), phf = static_cast<float>(ph);
                w0 = pf;
                w1 = phf - pf;
                w2 = static_cast<int64_t>(fv) <= (i0 + r) * p.stride ? phf : 0.0f;
            }
            sW0[r * kTileKeys + lane] = w0;
            sW1[r * kTileKeys + lane] = w1;
            sW2[r * kTileKeys + lane] = w2;
        }
        __syncthreads();
#pragma unroll
        for (int u = 0; u < kOutPerThread; ++u) {
            const int o = threadIdx.x + kThreads * u;
            if (o >= R * D) continue;
            const int r = o / D, d = o % D;
            for (int jj = 0; jj < kTileKeys; ++jj) {
                const float vv = sV[jj * D + d], dv = sVh[jj * D + d] - vv;
                acc_o[u] = fmaf(sW0[r * kTileKeys + jj], vv, acc_o[u]);
                acc_d[u] = fmaf(sW1[r * kTileKeys + jj], vv, acc_d[u]);
                acc_d[u] = fmaf(sW2[r * kTileKeys + jj], dv, acc_d[u]);
            }
        }
    }

    double* out_kl = p.out + (int64_t{c} * p.G + g) * p.m;
    double* out_rel = p.out + (int64_t{p.C + c} * p.G + g) * p.m;
#pragma unroll
    for (int u = 0; u < kSlots; ++u) {
        const int r = warp + kWarps * u;
        if (r >= R) continue;
        const double row_kl = warp_sum(kl[u]);
        if (lane == 0 && i0 + r <= i_last) out_kl[i0 + r] = fmax(0.0, row_kl);
    }
    // o and o_hat - o of each row into the (now free) key tiles, then one warp per row.
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kOutPerThread; ++u) {
        const int o = threadIdx.x + kThreads * u;
        if (o < R * D) sK[o] = acc_d[u], sKh[o] = acc_o[u];
    }
    __syncthreads();
    for (int r = warp; r < R; r += kWarps) {
        double dd = 0.0, oo = 0.0;
        for (int d = lane; d < D; d += 32) {
            dd += double(sK[r * D + d]) * sK[r * D + d];
            oo += double(sKh[r * D + d]) * sKh[r * D + d];
        }
        dd = warp_sum(dd), oo = warp_sum(oo);
        if (lane == 0 && i0 + r <= i_last) out_rel[i0 + r] = oo > 0.0 ? sqrt(dd) / sqrt(oo) : -1.0;
    }
}

class CudaAttentionScorer final : public AttentionScorer {
public:
    explicit CudaAttentionScorer(int device) : device_(device) {
        const std::vector<DeviceInfo> devs = devices();
        PKV_CHECK(device >= 0 && device < static_cast<int>(devs.size()), invalid_argument,
                  "cuda attention scorer: no CUDA device {} ({} found)", device, devs.size());
        description_ = "cuda:" + std::to_string(device) + " " + devs[static_cast<size_t>(device)].name;
        PKV_CUDA_CHECK(cudaSetDevice(device_));
        PKV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        PKV_CUDA_CHECK(cudaDeviceGetAttribute(&max_shared_, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_));
    }
    ~CudaAttentionScorer() override {
        cudaSetDevice(device_);
        cudaStreamSynchronize(stream_);
        cudaStreamDestroy(stream_);
    }
    std::string description() const override { return description_; }

    void submit(const AttentionJob& job) override {
        collect();
        if (job.n <= 0 || job.caches.empty() || job.q.empty()) return;
        const int D = job.D, G = static_cast<int>(job.q.size()), C = static_cast<int>(job.caches.size());
        PKV_CHECK(D >= 1 && D <= kMaxHeadDim, unsupported,
                  "--device cuda: attention metrics of head_dim {}: expected at most {} (use --device cpu)", D,
                  kMaxHeadDim);
        PKV_CHECK(job.stride >= 1, invalid_argument, "attention stride {}: expected at least 1", job.stride);
        const int rows = row_tile(D);
        const size_t smem = shared_bytes(D, rows);
        PKV_CHECK(static_cast<int64_t>(smem) <= max_shared_, unsupported,
                  "--device cuda: head_dim {} needs {} bytes of shared memory per block, {} has {} (use --device cpu)",
                  D, smem, description_, max_shared_);
        PKV_CUDA_CHECK(cudaSetDevice(device_));

        // Stage everything in page-locked memory: the copies then run asynchronously and the
        // caller may free its arrays as soon as this returns.
        const int64_t n = job.n, nD = n * D, m = (n - 1) / job.stride + 1;
        const size_t floats = size_t(G + 2 + 2 * C) * nD, flushes = size_t(2 * C) * n;
        staging_.reserve(floats * sizeof(float) + flushes * sizeof(int32_t));
        float* h = reinterpret_cast<float*>(staging_.get());
        auto put = [&](size_t slot, const float* src) { std::memcpy(h + slot * nD, src, nD * sizeof(float)); };
        for (int gi = 0; gi < G; ++gi) put(gi, job.q[gi]);
        put(G, job.k);
        put(G + 1, job.v);
        for (int ci = 0; ci < C; ++ci) {
            put(G + 2 + ci, job.caches[ci].k_hat);
            put(G + 2 + C + ci, job.caches[ci].v_hat);
        }
        int32_t* hf = reinterpret_cast<int32_t*>(h + floats);
        for (int ci = 0; ci < C; ++ci) {
            std::memcpy(hf + size_t(ci) * n, job.caches[ci].flush_k, n * sizeof(int32_t));
            std::memcpy(hf + size_t(C + ci) * n, job.caches[ci].flush_v, n * sizeof(int32_t));
        }
        inputs_.reserve(floats + flushes);  // int32 flushes fit float slots
        PKV_CUDA_CHECK(cudaMemcpyAsync(inputs_.get(), h, floats * sizeof(float) + flushes * sizeof(int32_t),
                                       cudaMemcpyHostToDevice, stream_));
        const size_t outs = size_t(2) * C * G * m;
        out_.reserve(outs);
        host_out_.reserve(outs);

        Params p{};
        const float* base = inputs_.get();
        p.q = base;
        p.k = base + size_t(G) * nD;
        p.v = base + size_t(G + 1) * nD;
        p.k_hat = base + size_t(G + 2) * nD;
        p.v_hat = base + size_t(G + 2 + C) * nD;
        p.flush = reinterpret_cast<const int32_t*>(base + floats);
        p.n = n, p.m = m, p.D = D, p.stride = job.stride, p.G = G, p.C = C, p.rows = rows;
        p.window = job.window;
        p.scale = job.kq_scale > 0.0f ? job.kq_scale : 1.0f / std::sqrt(static_cast<float>(D));
        p.out = out_.get();
        PKV_CUDA_CHECK(cudaFuncSetAttribute(attention_metrics_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
        const dim3 grid(static_cast<unsigned>((m + rows - 1) / rows), static_cast<unsigned>(G),
                        static_cast<unsigned>(C));
        attention_metrics_kernel<<<grid, kThreads, smem, stream_>>>(p);
        PKV_CUDA_CHECK(cudaGetLastError());
        PKV_CUDA_CHECK(
            cudaMemcpyAsync(host_out_.get(), out_.get(), outs * sizeof(double), cudaMemcpyDeviceToHost, stream_));
        pending_.clear();
        for (const AttnCache& ca : job.caches) pending_.push_back(ca.acc);
        pending_G_ = G;
        pending_m_ = m;
    }

    void finish() override { collect(); }

private:
    // Adds the pending job's rows, (query head, row) order per cache, as the CPU would.
    void collect() {
        if (pending_.empty()) return;
        PKV_CUDA_CHECK(cudaSetDevice(device_));
        PKV_CUDA_CHECK(cudaStreamSynchronize(stream_));
        const int C = static_cast<int>(pending_.size());
        const double* o = host_out_.get();
        for (int c = 0; c < C; ++c) {
            AttnAccum& a = *pending_[static_cast<size_t>(c)];
            for (int g = 0; g < pending_G_; ++g) {
                const double* kl = o + (int64_t{c} * pending_G_ + g) * pending_m_;
                const double* rel = o + (int64_t{C + c} * pending_G_ + g) * pending_m_;
                double kl_sum = 0.0, rel_sum = 0.0;
                int64_t rel_rows = 0;
                for (int64_t i = 0; i < pending_m_; ++i) {
                    kl_sum += kl[i];
                    if (rel[i] >= 0.0) rel_sum += rel[i], ++rel_rows;
                }
                a.kl_sum += kl_sum;
                a.kl_rows += pending_m_;
                a.rel_sum += rel_sum;
                a.rel_rows += rel_rows;
            }
        }
        pending_.clear();
    }

    int device_ = 0;
    int max_shared_ = 0;
    std::string description_;
    cudaStream_t stream_ = nullptr;
    PinnedBuffer<unsigned char> staging_;
    DeviceBuffer<float> inputs_;
    DeviceBuffer<double> out_;
    PinnedBuffer<double> host_out_;
    std::vector<AttnAccum*> pending_;
    int pending_G_ = 0;
    int64_t pending_m_ = 0;
};

}  // namespace

std::unique_ptr<AttentionScorer> make_attention_scorer(int device) {
    return std::make_unique<CudaAttentionScorer>(device);
}

void accumulate_attention(const std::vector<const float*>& q, const float* k, const float* v, int64_t n, int D,
                          int stride, const std::vector<AttnCache>& caches, int64_t window, float kq_scale,
                          int device) {
    CudaAttentionScorer scorer(device);
    AttentionJob job;
    job.q = q;
    job.k = k;
    job.v = v;
    job.n = n;
    job.D = D;
    job.stride = stride;
    job.window = window;
    job.kq_scale = kq_scale;
    job.caches = caches;
    scorer.submit(job);
    scorer.finish();
}

}  // namespace pkv::cuda
