// pkv/cuda/kmeans_assign.h — the k-means assignment step on a CUDA device.
//
// A KMeansAssigner (lib/pkv/kmeans/assigner.h) whose data pass runs on one GPU, so
// the Lloyd loop in kmeans.h can be handed a GPU without changing. No CUDA types
// here: apps and tests include it with the host compiler.
//
// What it computes, per pass over the n x d points x:
//   labels[i] = argmin_j s_ij with s_ij = ||c_j||² - 2 x_i·c_j in fp32 (ties: lowest j),
//   dist2[i]  = ||x_i - c_label||² recomputed directly in fp32 (never negative),
// the same semantics as CpuAssigner: the argmin comes from the expanded form, so two
// centroids whose true distances differ by less than a few fp32 ulps of ||x||·||c||
// may be swapped relative to assign_ref. The N x k distance matrix is never formed:
// a tiled kernel stages points and centroids in shared memory and keeps a running
// (score, index) minimum per point. Plain fp32 FMA, no tensor cores (future work:
// TF32/3xTF32 or fp16 MMA operands for k >= 64, where this kernel is compute-bound).
//
// assign_accumulate() fuses the centroid sums into the same pass (x is read from
// device memory once per pass). Sums are accumulated exactly in 64-bit fixed point:
// each coordinate is rounded once to a multiple of 2^-e, where 2^e is the largest
// power of two with n * max|x| * 2^e <= 2^61 (so no partial sum can overflow), then
// added with integer atomics. Integer addition is associative, so the sums are
// bitwise deterministic whatever the thread schedule, and the only error is that one
// rounding: |error of a sum| <= count * 2^-(e+1) (about 2e-12 * max|x| per point at
// n = 1e7). Counts are 64-bit integers (a float count would stop at 2^24 points).
// The objective is left to the caller, who sums dist2 in double (kmeans.h does).
//
// Input precision:
//   fp32  points and centroids used as given.
//   fp16  points and centroids are rounded to binary16 (nearest even) when uploaded;
//         products and sums are still formed in fp32. This halves the device memory
//         and bandwidth per point. Labels, dist2 and the sums then describe the
//         rounded data: each coordinate moves by up to 2^-11 relative (about 5e-4),
//         so labels of points within that margin of a tie may flip and the objective
//         shifts by roughly 1e-3 relative or less on unit-scale data. Values with
//         |x| > 65504 (binary16 overflow) are refused.
//
// Memory: resident mode keeps all n points on the device between begin() and end()
// (n * d * 4 or 2 bytes, plus 8 bytes a point for labels and dist2). When that exceeds
// max_point_bytes, the points are streamed from host memory in chunks of at most that
// many bytes on every pass (synchronous copies, no overlap: future work). fp16 uploads
// also use a 32 MiB fp32 staging buffer. Centroid buffers are O(k * d).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "pkv/kmeans/assigner.h"

namespace pkv::cuda {

/// Precision of the points and centroids inside the kernel (accumulation is fp32).
enum class InputPrecision {
    fp32,
    fp16,
};

/// "fp32" or "fp16".
const char* input_precision_name(InputPrecision p);

struct CudaAssignerOptions {
    /// CUDA device index, in [0, device_count()).
    int device = 0;
    InputPrecision precision = InputPrecision::fp32;
    /// Most device bytes for points plus their labels and distances (n * (d * s + 8),
    /// s = 4 or 2). Larger data is streamed in chunks every pass; at least one point
    /// per chunk whatever the value. 0 picks the free device memory minus 1 GiB.
    size_t max_point_bytes = 0;
};

/// Timing of the most recent assign()/assign_accumulate() call.
struct CudaPassTiming {
    double device_ms = 0.0;  ///< device time (cudaEvent) of uploads of this pass plus kernels
    double wall_ms = 0.0;    ///< whole call, including copies of labels/dist2/sums to the host
    int64_t chunks = 0;      ///< kernel launches (1 when the points are resident)
};

/// The GPU assigner. Thread-compatible (one thread at a time), not copyable.
/// Every call throws pkv::Error(cuda) naming the failing CUDA call, or
/// Error(invalid_argument) for bad shapes / out-of-range fp16 input.
class CudaAssigner final : public KMeansAssigner {
public:
    /// Throws Error(invalid_argument) when options.device is not a usable device.
    explicit CudaAssigner(const CudaAssignerOptions& options);
    ~CudaAssigner() override;
    CudaAssigner(const CudaAssigner&) = delete;
    CudaAssigner& operator=(const CudaAssigner&) = delete;

    const char* name() const override { return "cuda"; }
    /// Uploads x (resident mode) or records it for streaming; also scans max|x| for
    /// the fixed-point sums. Calls outside begin()/end(), or with another x, n or d,
    /// still work: they upload the data for that call only.
    void begin(const float* x, int64_t n, int d) override;
    void end() noexcept override;
    void assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                float* dist2) override;
    void assign_accumulate(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                           float* dist2, double* sums, int64_t* counts) override;

    const CudaAssignerOptions& options() const;
    /// True when the data of the current begin() is streamed in chunks.
    bool streaming() const;
    CudaPassTiming last_timing() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// The same as std::make_unique<CudaAssigner>(options), typed for kmeans().
std::unique_ptr<KMeansAssigner> make_cuda_assigner(const CudaAssignerOptions& options);

}  // namespace pkv::cuda
