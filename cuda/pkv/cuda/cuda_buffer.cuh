// Internal: grow-only device or page-locked host buffers (the CUDA assigner's).
#pragma once

#include <algorithm>
#include <cstddef>

#include <cuda_runtime.h>

#include "pkv/cuda/check.cuh"

namespace pkv::cuda {

// Device (kHost false: cudaMalloc) or page-locked host memory (kHost true:
// cudaMallocHost; copies to and from it run at full speed and truly asynchronously,
// where pageable memory goes through a driver buffer); grow-only, freed on destruction.
template <typename T, bool kHost = false>
class CudaBuffer {
public:
    CudaBuffer() = default;
    ~CudaBuffer() { release(); }
    CudaBuffer(const CudaBuffer&) = delete;
    CudaBuffer& operator=(const CudaBuffer&) = delete;
    void reserve(size_t n) {
        if (n <= cap_) return;
        release();
        const size_t bytes = std::max<size_t>(n, 1) * sizeof(T);
        if constexpr (kHost) PKV_CUDA_CHECK(cudaMallocHost(&ptr_, bytes));
        else PKV_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
        cap_ = n;
    }
    void release() noexcept {
        if (ptr_) {
            if constexpr (kHost) {
                cudaFreeHost(ptr_);
            } else {
                // Work queued earlier may still read it (the assigner keeps two passes in
                // flight): wait for the device before the memory goes. Buffers only grow,
                // so this is rare.
                cudaDeviceSynchronize();
                cudaFree(ptr_);
            }
        }
        ptr_ = nullptr;
        cap_ = 0;
    }
    T* get() const { return ptr_; }
    size_t capacity() const { return cap_; }

private:
    T* ptr_ = nullptr;
    size_t cap_ = 0;
};
template <typename T>
using DeviceBuffer = CudaBuffer<T>;
template <typename T>
using PinnedBuffer = CudaBuffer<T, true>;

}  // namespace pkv::cuda
