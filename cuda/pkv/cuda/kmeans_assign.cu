// pkv/cuda/kmeans_assign.cu — nearest-centroid assignment and fused centroid sums on
// one GPU (see kmeans_assign.h for the semantics and the fixed-point sums).
#include "pkv/cuda/kmeans_assign.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include <cuda_fp16.h>

#include "pkv/core/half.h"
#include "pkv/cuda/check.cuh"
#include "pkv/cuda/device.h"
#include "pkv/cuda/kmeans_assign.cuh"

namespace pkv::cuda {
namespace detail {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunkDims = 32;  // dimensions staged per shared-memory step
// Private per-block sums live in shared memory up to this size; beyond it every
// coordinate goes straight to a global atomic (then k is large, so contention is low).
constexpr size_t kSmemAccMax = 96 * 1024;

__device__ __forceinline__ float load_f(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }

// One persistent block walks tiles of BN = (kThreads / (BK / 4)) * TM points. For
// each tile it loops over centroid tiles of BK and dimension chunks of kChunkDims;
// thread (ty, tx) owns points ty + TY*i (i < TM) and centroids tx + TX*j (j < 4) of
// the tile, so one step costs TM + 4 shared loads for 4*TM FMAs. The TX threads that
// share points sit in consecutive lanes and merge their (score, index) minima with
// shuffles; the lower index wins equal scores, as in the CPU assigner. A warp per
// point then recomputes ||x - c||² directly and, when ACC, adds the point to its
// cluster's fixed-point sums (shared-memory partials flushed once per block when
// smem_acc, else global atomics).
// x: [rows x d] T; centroids [k x d] float; labels/dist2 [rows]; sums [k x d], counts [k].
template <typename T, int BK, int TM, bool ACC>
__global__ void __launch_bounds__(kThreads) assign_kernel(AssignArgs a, bool smem_acc) {
    constexpr int TX = BK / 4;
    constexpr int TY = kThreads / TX;
    constexpr int BN = TY * TM;
    __shared__ float xs[kChunkDims][BN + 1];  // +1: conflict-free transposed stores
    __shared__ float cs[kChunkDims][BK + 1];
    __shared__ int s_labels[BN];
    extern __shared__ unsigned long long s_acc[];

    const T* __restrict__ x = static_cast<const T*>(a.x);
    const float* __restrict__ cent = a.centroids;
    const int d = a.d;
    const int k = a.k;
    const int64_t rows = a.rows;
    const int tid = threadIdx.x;
    const int tx = tid % TX;
    const int ty = tid / TX;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int64_t kd = int64_t{k} * d;

    unsigned long long* sums = a.sums;
    unsigned long long* counts = a.counts;
    if (ACC && smem_acc) {
        for (int64_t i = tid; i < kd + k; i += kThreads) s_acc[i] = 0ull;
        sums = s_acc;
        counts = s_acc + kd;
        __syncthreads();
    }

    const int64_t n_tiles = (rows + BN - 1) / BN;
    for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const int64_t p0 = tile * BN;
        float best_d[TM];
        int best_i[TM];
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            best_d[i] = INFINITY;
            best_i[i] = INT_MAX;
        }
        for (int c0 = 0; c0 < k; c0 += BK) {
            float acc[TM][4];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
            for (int d0 = 0; d0 < d; d0 += kChunkDims) {
                __syncthreads();  // previous step's readers are done
                for (int e = tid; e < BN * kChunkDims; e += kThreads) {
                    const int p = e / kChunkDims, t = e % kChunkDims;
                    const int64_t row = p0 + p;
                    const int col = d0 + t;
                    xs[t][p] = (row < rows && col < d) ? load_f(x + row * d + col) : 0.0f;
                }
                for (int e = tid; e < BK * kChunkDims; e += kThreads) {
                    const int j = e / kChunkDims, t = e % kChunkDims;
                    const int cj = c0 + j, col = d0 + t;
                    cs[t][j] = (cj < k && col < d) ? __ldg(cent + int64_t{cj} * d + col) : 0.0f;
                }
                __syncthreads();
#pragma unroll 8
                for (int t = 0; t < kChunkDims; ++t) {
                    float xv[TM], cv[4];
#pragma unroll
                    for (int i = 0; i < TM; ++i) xv[i] = xs[t][ty + TY * i];
#pragma unroll
                    for (int j = 0; j < 4; ++j) cv[j] = cs[t][tx + TX * j];
#pragma unroll
                    for (int i = 0; i < TM; ++i)
#pragma unroll
                        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(xv[i], cv[j], acc[i][j]);
                }
            }
            // This thread's centroid indices grow with j and c0, so strict '<' keeps
            // the lowest index among its own equal scores.
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int cj = c0 + tx + TX * j;
                if (cj >= k) continue;
                const float cn = __ldg(a.c_norm2 + cj);
#pragma unroll
                for (int i = 0; i < TM; ++i) {
                    const float s = cn - 2.0f * acc[i][j];
                    if (s < best_d[i]) {
                        best_d[i] = s;
                        best_i[i] = cj;
                    }
                }
            }
        }
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            float bd = best_d[i];
            int bi = best_i[i];
#pragma unroll
            for (int off = TX / 2; off > 0; off >>= 1) {
                const float od = __shfl_xor_sync(0xffffffffu, bd, off);
                const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
                if (od < bd || (od == bd && oi < bi)) {
                    bd = od;
                    bi = oi;
                }
            }
            // All scores NaN or +inf: fall back to centroid 0, as a scalar loop would.
            if (tx == 0) s_labels[ty + TY * i] = bi == INT_MAX ? 0 : bi;
        }
        __syncthreads();

        for (int p = warp; p < BN; p += kWarps) {
            const int64_t row = p0 + p;
            if (row >= rows) break;
            const int l = s_labels[p];
            const T* xr = x + row * d;
            const float* cr = cent + int64_t{l} * d;
            float s = 0.0f;
            for (int t = lane; t < d; t += 32) {
                const float xv = load_f(xr + t);
                const float diff = xv - __ldg(cr + t);
                s = fmaf(diff, diff, s);
                if (ACC) {
                    const long long q = __double2ll_rn(static_cast<double>(xv) * a.scale);
                    atomicAdd(sums + int64_t{l} * d + t, static_cast<unsigned long long>(q));
                }
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
            if (lane == 0) {
                a.labels[row] = l;
                a.dist2[row] = s;
                if (ACC) atomicAdd(counts + l, 1ull);
            }
        }
    }

    if (ACC && smem_acc) {
        __syncthreads();
        for (int64_t i = tid; i < kd + k; i += kThreads) {
            const unsigned long long v = s_acc[i];
            if (v != 0ull) atomicAdd(i < kd ? a.sums + i : a.counts + (i - kd), v);
        }
    }
}

template <typename T, int BK, int TM, bool ACC>
void launch_tiled(const AssignArgs& a, int sm_count, cudaStream_t stream) {
    constexpr int BN = (kThreads / (BK / 4)) * TM;
    auto kernel = assign_kernel<T, BK, TM, ACC>;
    const size_t acc_bytes = (static_cast<size_t>(a.k) * a.d + a.k) * sizeof(unsigned long long);
    bool smem_acc = ACC && acc_bytes <= kSmemAccMax;
    size_t dyn = smem_acc ? acc_bytes : 0;
    // The kernel's static tiles plus the dynamic accumulator can pass the 48 KiB a
    // launch gets by default, so the opt-in limit is always raised; if the block
    // still does not fit, the sums go straight to global atomics instead.
    int per_sm = 0;
    if (dyn > 0) {
        if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn)) ==
            cudaSuccess)
            PKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, dyn));
        else
            cudaGetLastError();
        if (per_sm == 0) smem_acc = false, dyn = 0;
    }
    if (dyn == 0) PKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
    PKV_CHECK(per_sm > 0, cuda, "cuda assigner: kernel for k = {}, d = {} does not fit on the device", a.k, a.d);
    const int64_t n_tiles = (a.rows + BN - 1) / BN;
    const int grid = static_cast<int>(std::min<int64_t>(n_tiles, int64_t{per_sm} * sm_count));
    kernel<<<grid, kThreads, dyn, stream>>>(a, smem_acc);
    PKV_CUDA_CHECK(cudaGetLastError());
}

template <typename T, bool ACC>
void launch_by_k(const AssignArgs& a, int sm_count, cudaStream_t stream) {
    // Narrow centroid tiles for small k keep the FMAs on real centroids.
    if (a.k <= 16)
        launch_tiled<T, 16, 2, ACC>(a, sm_count, stream);
    else if (a.k <= 32)
        launch_tiled<T, 32, 4, ACC>(a, sm_count, stream);
    else
        launch_tiled<T, 64, 8, ACC>(a, sm_count, stream);
}

// out[0] = max(out[0], max_i bits(|x_i|)); non-negative floats order like their bits.
template <typename T>
__global__ void max_abs_kernel(const T* __restrict__ x, int64_t n, unsigned int* out) {
    unsigned int m = 0;
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        m = max(m, __float_as_uint(fabsf(load_f(x + i))));
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, off));
    if ((threadIdx.x & 31) == 0) atomicMax(out, m);
}

__global__ void to_half_kernel(const float* __restrict__ src, __half* __restrict__ dst, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
        dst[i] = __float2half_rn(src[i]);
}

int grid_for(int64_t n) { return static_cast<int>(std::clamp<int64_t>((n + 255) / 256, 1, 4096)); }

}  // namespace

void launch_assign(const AssignArgs& a, int sm_count, cudaStream_t stream) {
    PKV_ASSERT(a.rows > 0 && a.d > 0 && a.k > 0 && a.x && a.centroids && a.c_norm2 && a.labels && a.dist2);
    PKV_ASSERT((a.sums == nullptr) == (a.counts == nullptr));
    if (a.half) {
        if (a.sums) launch_by_k<__half, true>(a, sm_count, stream);
        else launch_by_k<__half, false>(a, sm_count, stream);
    } else {
        if (a.sums) launch_by_k<float, true>(a, sm_count, stream);
        else launch_by_k<float, false>(a, sm_count, stream);
    }
}

void launch_max_abs(const void* x, bool half, int64_t n, unsigned int* out, cudaStream_t stream) {
    if (n <= 0) return;
    if (half)
        max_abs_kernel<<<grid_for(n), 256, 0, stream>>>(static_cast<const __half*>(x), n, out);
    else
        max_abs_kernel<<<grid_for(n), 256, 0, stream>>>(static_cast<const float*>(x), n, out);
    PKV_CUDA_CHECK(cudaGetLastError());
}

void launch_to_half(const float* src, void* dst, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    to_half_kernel<<<grid_for(n), 256, 0, stream>>>(src, static_cast<__half*>(dst), n);
    PKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace detail

namespace {

// Grow-only device buffer; frees on destruction.
template <typename T>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    ~DeviceBuffer() { release(); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    void reserve(size_t n) {
        if (n <= cap_) return;
        release();
        PKV_CUDA_CHECK(cudaMalloc(&ptr_, std::max<size_t>(n, 1) * sizeof(T)));
        cap_ = n;
    }
    void release() noexcept {
        if (ptr_) cudaFree(ptr_);
        ptr_ = nullptr;
        cap_ = 0;
    }
    T* get() const { return ptr_; }

private:
    T* ptr_ = nullptr;
    size_t cap_ = 0;
};

constexpr size_t kStagingFloats = size_t{8} << 20;  // 32 MiB of fp32 for fp16 uploads
constexpr size_t kAutoHeadroom = size_t{1} << 30;

}  // namespace

const char* input_precision_name(InputPrecision p) {
    switch (p) {
        case InputPrecision::fp32: return "fp32";
        case InputPrecision::fp16: return "fp16";
    }
    return "unknown";
}

struct CudaAssigner::Impl {
    CudaAssignerOptions opt;
    int sm_count = 0;
    cudaStream_t stream = nullptr;
    cudaEvent_t ev_start = nullptr, ev_stop = nullptr;

    // The current data set (begin() or a one-call upload).
    bool active = false;
    const float* hx = nullptr;
    int64_t n = 0;
    int d = 0;
    bool streaming = false;
    int64_t chunk_rows = 0;
    double scale = 1.0;  // fixed-point scale of the sums, a power of two

    DeviceBuffer<char> points;  // [chunk_rows x d] float or __half
    DeviceBuffer<int32_t> labels;
    DeviceBuffer<float> dist2;
    DeviceBuffer<float> staging;
    DeviceBuffer<float> cent, c_norm2;
    DeviceBuffer<unsigned long long> sums, counts;
    DeviceBuffer<unsigned int> max_bits;
    std::vector<float> host_cent;
    std::vector<unsigned long long> host_sums;
    CudaPassTiming timing;

    bool half() const { return opt.precision == InputPrecision::fp16; }
    size_t elem() const { return half() ? 2 : 4; }

    // Rows [r0, r0 + rows) of hx into the point buffer (converted for fp16).
    void upload_rows(int64_t r0, int64_t rows) {
        const float* src = hx + r0 * d;
        const size_t count = static_cast<size_t>(rows) * d;
        if (!half()) {
            PKV_CUDA_CHECK(cudaMemcpyAsync(points.get(), src, count * 4, cudaMemcpyHostToDevice, stream));
            return;
        }
        staging.reserve(std::min(count, kStagingFloats));
        for (size_t off = 0; off < count; off += kStagingFloats) {
            const size_t m = std::min(kStagingFloats, count - off);
            PKV_CUDA_CHECK(cudaMemcpyAsync(staging.get(), src + off, m * 4, cudaMemcpyHostToDevice, stream));
            detail::launch_to_half(staging.get(), points.get() + off * 2, static_cast<int64_t>(m), stream);
        }
    }

    void prepare(const float* x, int64_t n_in, int d_in) {
        PKV_CHECK(n_in >= 0, invalid_argument, "cuda assigner: expected n >= 0, got {}", n_in);
        PKV_CHECK(d_in >= 1, invalid_argument, "cuda assigner: expected d >= 1, got {}", d_in);
        PKV_CHECK(x != nullptr || n_in == 0, invalid_argument, "cuda assigner: null points with n = {}", n_in);
        active = false;
        hx = x;
        n = n_in;
        d = d_in;
        const size_t row_bytes = static_cast<size_t>(d) * elem() + 8;
        size_t budget = opt.max_point_bytes;
        if (budget == 0) {
            size_t free_b = 0, total_b = 0;
            PKV_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
            budget = free_b > kAutoHeadroom ? free_b - kAutoHeadroom : row_bytes;
        }
        const int64_t fit = static_cast<int64_t>(std::max<size_t>(1, budget / row_bytes));
        streaming = n > fit;
        chunk_rows = streaming ? fit : std::max<int64_t>(n, 1);
        const size_t chunk_vals = static_cast<size_t>(chunk_rows) * d;
        points.reserve(chunk_vals * elem());
        labels.reserve(static_cast<size_t>(chunk_rows));
        dist2.reserve(static_cast<size_t>(chunk_rows));

        // One scan for max|x| (of the rounded values for fp16); resident data stays.
        max_bits.reserve(1);
        PKV_CUDA_CHECK(cudaMemsetAsync(max_bits.get(), 0, sizeof(unsigned int), stream));
        for (int64_t r0 = 0; r0 < n; r0 += chunk_rows) {
            const int64_t rows = std::min(chunk_rows, n - r0);
            upload_rows(r0, rows);
            detail::launch_max_abs(points.get(), half(), rows * d, max_bits.get(), stream);
        }
        unsigned int bits = 0;
        PKV_CUDA_CHECK(cudaMemcpyAsync(&bits, max_bits.get(), sizeof(bits), cudaMemcpyDeviceToHost, stream));
        PKV_CUDA_CHECK(cudaStreamSynchronize(stream));
        float max_abs = 0.0f;
        std::memcpy(&max_abs, &bits, sizeof(max_abs));
        PKV_CHECK(std::isfinite(max_abs), invalid_argument,
                  "cuda assigner: points have a non-finite coordinate{}",
                  half() ? " (or one beyond the binary16 range +-65504; use fp32 input)" : "");
        scale = 1.0;
        if (max_abs > 0.0f && n > 0) {
            // Largest 2^e with n * max|x| * 2^e <= 2^61: no partial sum can overflow int64.
            const double e = std::floor(std::log2(std::ldexp(1.0, 61) / (static_cast<double>(n) * max_abs)));
            scale = std::ldexp(1.0, static_cast<int>(std::clamp(e, -1000.0, 1000.0)));
        }
        active = true;
    }

    void pass(const float* x, int64_t n_in, int d_in, const float* centroids, int k, int32_t* out_labels,
              float* out_dist2, double* out_sums, int64_t* out_counts) {
        const auto wall0 = std::chrono::steady_clock::now();
        PKV_CUDA_CHECK(cudaSetDevice(opt.device));
        PKV_CHECK(k >= 1, invalid_argument, "cuda assigner: expected k >= 1, got {}", k);
        PKV_CHECK(centroids != nullptr, invalid_argument, "cuda assigner: null centroids");
        const bool transient = !(active && x == hx && n_in == n && d_in == d);
        if (transient) prepare(x, n_in, d_in);
        const size_t kd = static_cast<size_t>(k) * d;
        const bool acc = out_sums != nullptr;

        // Centroids as the kernel sees them, and their norms from those values.
        host_cent.assign(centroids, centroids + kd);
        if (half())
            for (float& v : host_cent) v = half_to_float(float_to_half(v));
        std::vector<float> norms(static_cast<size_t>(k));
        for (int j = 0; j < k; ++j) {
            double s = 0.0;
            for (int t = 0; t < d; ++t) s += static_cast<double>(host_cent[j * size_t(d) + t]) * host_cent[j * size_t(d) + t];
            norms[j] = static_cast<float>(s);
        }
        for (float v : norms)
            PKV_CHECK(std::isfinite(v), invalid_argument,
                      "cuda assigner: centroids have a non-finite coordinate{}",
                      half() ? " (or one beyond the binary16 range)" : "");
        cent.reserve(kd);
        c_norm2.reserve(static_cast<size_t>(k));
        PKV_CUDA_CHECK(cudaEventRecord(ev_start, stream));
        PKV_CUDA_CHECK(cudaMemcpyAsync(cent.get(), host_cent.data(), kd * 4, cudaMemcpyHostToDevice, stream));
        PKV_CUDA_CHECK(cudaMemcpyAsync(c_norm2.get(), norms.data(), k * 4, cudaMemcpyHostToDevice, stream));
        if (acc) {
            sums.reserve(kd);
            counts.reserve(static_cast<size_t>(k));
            PKV_CUDA_CHECK(cudaMemsetAsync(sums.get(), 0, kd * 8, stream));
            PKV_CUDA_CHECK(cudaMemsetAsync(counts.get(), 0, static_cast<size_t>(k) * 8, stream));
        }
        detail::AssignArgs args;
        args.half = half();
        args.d = d;
        args.centroids = cent.get();
        args.c_norm2 = c_norm2.get();
        args.k = k;
        args.labels = labels.get();
        args.dist2 = dist2.get();
        args.sums = acc ? sums.get() : nullptr;
        args.counts = acc ? counts.get() : nullptr;
        args.scale = scale;
        args.x = points.get();
        int64_t chunks = 0;
        for (int64_t r0 = 0; r0 < n; r0 += chunk_rows) {
            const int64_t rows = std::min(chunk_rows, n - r0);
            if (streaming) upload_rows(r0, rows);
            args.rows = rows;
            detail::launch_assign(args, sm_count, stream);
            ++chunks;
            if (r0 + rows >= n) PKV_CUDA_CHECK(cudaEventRecord(ev_stop, stream));
            PKV_CUDA_CHECK(cudaMemcpyAsync(out_labels + r0, labels.get(), rows * 4, cudaMemcpyDeviceToHost, stream));
            PKV_CUDA_CHECK(cudaMemcpyAsync(out_dist2 + r0, dist2.get(), rows * 4, cudaMemcpyDeviceToHost, stream));
        }
        if (n == 0) PKV_CUDA_CHECK(cudaEventRecord(ev_stop, stream));
        if (acc) {
            host_sums.resize(kd + k);
            PKV_CUDA_CHECK(cudaMemcpyAsync(host_sums.data(), sums.get(), kd * 8, cudaMemcpyDeviceToHost, stream));
            PKV_CUDA_CHECK(cudaMemcpyAsync(host_sums.data() + kd, counts.get(), static_cast<size_t>(k) * 8,
                                           cudaMemcpyDeviceToHost, stream));
        }
        PKV_CUDA_CHECK(cudaStreamSynchronize(stream));
        if (acc) {
            const double inv = 1.0 / scale;  // a power of two: exact
            for (size_t i = 0; i < kd; ++i) out_sums[i] = static_cast<double>(static_cast<long long>(host_sums[i])) * inv;
            for (int j = 0; j < k; ++j) out_counts[j] = static_cast<int64_t>(host_sums[kd + j]);
        }
        float ms = 0.0f;
        PKV_CUDA_CHECK(cudaEventElapsedTime(&ms, ev_start, ev_stop));
        timing.device_ms = ms;
        timing.chunks = chunks;
        if (transient) release_data();
        timing.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - wall0).count();
    }

    void release_data() noexcept {
        active = false;
        hx = nullptr;
        n = 0;
        d = 0;
        points.release();
        labels.release();
        dist2.release();
        staging.release();
    }
};

CudaAssigner::CudaAssigner(const CudaAssignerOptions& options) : impl_(std::make_unique<Impl>()) {
    const int n_dev = device_count();
    PKV_CHECK(options.device >= 0 && options.device < n_dev, invalid_argument,
              "cuda assigner: device {} out of range, {} CUDA device(s) present", options.device, n_dev);
    impl_->opt = options;
    PKV_CUDA_CHECK(cudaSetDevice(options.device));
    PKV_CUDA_CHECK(cudaDeviceGetAttribute(&impl_->sm_count, cudaDevAttrMultiProcessorCount, options.device));
    PKV_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
    PKV_CUDA_CHECK(cudaEventCreate(&impl_->ev_start));
    PKV_CUDA_CHECK(cudaEventCreate(&impl_->ev_stop));
}

CudaAssigner::~CudaAssigner() {
    if (!impl_) return;
    cudaSetDevice(impl_->opt.device);
    impl_->release_data();
    if (impl_->ev_start) cudaEventDestroy(impl_->ev_start);
    if (impl_->ev_stop) cudaEventDestroy(impl_->ev_stop);
    if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

void CudaAssigner::begin(const float* x, int64_t n, int d) {
    PKV_CUDA_CHECK(cudaSetDevice(impl_->opt.device));
    impl_->prepare(x, n, d);
}

void CudaAssigner::end() noexcept {
    cudaSetDevice(impl_->opt.device);
    impl_->release_data();
}

void CudaAssigner::assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                          float* dist2) {
    impl_->pass(x, n, d, centroids, k, labels, dist2, nullptr, nullptr);
}

void CudaAssigner::assign_accumulate(const float* x, int64_t n, int d, const float* centroids, int k,
                                     int32_t* labels, float* dist2, double* sums, int64_t* counts) {
    PKV_CHECK(sums != nullptr && counts != nullptr, invalid_argument, "cuda assigner: null sums or counts");
    impl_->pass(x, n, d, centroids, k, labels, dist2, sums, counts);
}

const CudaAssignerOptions& CudaAssigner::options() const { return impl_->opt; }
bool CudaAssigner::streaming() const { return impl_->active && impl_->streaming; }
CudaPassTiming CudaAssigner::last_timing() const { return impl_->timing; }

std::unique_ptr<KMeansAssigner> make_cuda_assigner(const CudaAssignerOptions& options) {
    return std::make_unique<CudaAssigner>(options);
}

}  // namespace pkv::cuda
