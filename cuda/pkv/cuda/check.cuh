// Internal: turns CUDA runtime failures into pkv::Error(cuda) naming the call.
#pragma once

#include <cuda_runtime.h>

#include "pkv/core/error.h"

#define PKV_CUDA_CHECK(call)                                                                                        \
    do {                                                                                                            \
        const cudaError_t pkv_err_ = (call);                                                                        \
        if (pkv_err_ != cudaSuccess)                                                                                \
            ::pkv::fail(::pkv::ErrorCode::cuda, "cuda: {} failed: {} ({}:{})", #call, cudaGetErrorString(pkv_err_), \
                        __FILE__, __LINE__);                                                                        \
    } while (0)
