// pkv/cuda/device.h — GPU discovery and the half-precision conversion twin.
// No CUDA types here: apps and tests include it with the host compiler.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pkv::cuda {

struct DeviceInfo {
    int index = 0;
    std::string name;
    int cc_major = 0, cc_minor = 0;  ///< compute capability
    size_t total_memory = 0;         ///< bytes
    int multiprocessors = 0;
    std::string pci_bus_id;  ///< "0000:1b:00.0": tells GPUs of one host apart
};

/// Number of usable CUDA devices; 0 when there is no driver or no GPU (never throws).
int device_count();
/// Every usable device; empty when device_count() is 0.
std::vector<DeviceInfo> devices();

/// GPU twin of pkv::float_to_half_n (lib/pkv/core/half.h): n floats from host
/// memory to binary16 bits in host memory, converted on device `device` with
/// round-to-nearest-even. Throws Error(cuda) naming the failing call.
void float_to_half_n(const float* src, uint16_t* dst, size_t n, int device = 0);

}  // namespace pkv::cuda
