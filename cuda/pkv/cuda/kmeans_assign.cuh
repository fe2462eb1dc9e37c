// Internal: launchers of the k-means assignment kernels (kernels live in kmeans_assign.cu).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace pkv::cuda::detail {

/// One chunk of points against all centroids. Device pointers throughout.
struct AssignArgs {
    const void* x = nullptr;        ///< [rows x d], float or __half (see `half`)
    bool half = false;
    int64_t rows = 0;
    int d = 0;
    const float* centroids = nullptr;  ///< [k x d], already rounded to binary16 when `half`
    const float* c_norm2 = nullptr;    ///< [k], ||c_j||² of those values
    int k = 0;
    int32_t* labels = nullptr;         ///< [rows] out
    float* dist2 = nullptr;            ///< [rows] out
    /// Fused accumulation when non-null: [k x d] fixed-point sums and [k] counts,
    /// added to (not overwritten). A coordinate v adds llrint(v * scale).
    unsigned long long* sums = nullptr;
    unsigned long long* counts = nullptr;
    double scale = 1.0;
};

/// Labels/dist2 (and the sums when args.sums is set) for one chunk, on `stream`.
void launch_assign(const AssignArgs& args, int sm_count, cudaStream_t stream);

/// out[0] = max over n values of |v| as float bits (NaN sorts above +inf), combined
/// with the value already there.
void launch_max_abs(const void* x, bool half, int64_t n, unsigned int* out, cudaStream_t stream);

/// dst[i] = binary16(src[i]), round to nearest even.
void launch_to_half(const float* src, void* dst, int64_t n, cudaStream_t stream);

}  // namespace pkv::cuda::detail
