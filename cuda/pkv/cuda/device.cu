#include "pkv/cuda/device.h"

#include <cuda_fp16.h>

#include "pkv/cuda/check.cuh"

namespace pkv::cuda {

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

std::vector<DeviceInfo> devices() {
    std::vector<DeviceInfo> out;
    const int n = device_count();
    for (int i = 0; i < n; ++i) {
        cudaDeviceProp p{};
        PKV_CUDA_CHECK(cudaGetDeviceProperties(&p, i));
        char bus[32] = {};
        PKV_CUDA_CHECK(cudaDeviceGetPCIBusId(bus, sizeof(bus), i));
        out.push_back({i, p.name, p.major, p.minor, p.totalGlobalMem, p.multiProcessorCount, bus});
    }
    return out;
}

namespace {
// src: n floats; dst: n binary16 values. __float2half_rn rounds to nearest even,
// the same rule as the CPU reference.
__global__ void float_to_half_kernel(const float* __restrict__ src, __half* __restrict__ dst, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        dst[i] = __float2half_rn(src[i]);
}
}  // namespace

void float_to_half_n(const float* src, uint16_t* dst, size_t n, int device) {
    if (n == 0) return;
    PKV_CUDA_CHECK(cudaSetDevice(device));
    float* d_src = nullptr;
    __half* d_dst = nullptr;
    PKV_CUDA_CHECK(cudaMalloc(&d_src, n * sizeof(float)));
    cudaError_t err = cudaMalloc(&d_dst, n * sizeof(__half));
    if (err == cudaSuccess) err = cudaMemcpy(d_src, src, n * sizeof(float), cudaMemcpyHostToDevice);
    if (err == cudaSuccess) {
        const int threads = 256;
        const int blocks = static_cast<int>(std::min<size_t>((n + threads - 1) / threads, 65535));
        float_to_half_kernel<<<blocks, threads>>>(d_src, d_dst, n);
        err = cudaGetLastError();
    }
    if (err == cudaSuccess) err = cudaMemcpy(dst, d_dst, n * sizeof(__half), cudaMemcpyDeviceToHost);
    cudaFree(d_src);
    cudaFree(d_dst);
    PKV_CUDA_CHECK(err);
}

}  // namespace pkv::cuda
