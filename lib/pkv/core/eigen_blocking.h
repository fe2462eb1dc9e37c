// Eigen's matrix products split their loops into blocks sized from the CPU's cache sizes,
// which Eigen reads from the CPU at run time; the blocks decide the order of each product's
// sums and so its last bits, which a 4-bit or 2-bit quantizer downstream can turn into a
// different code and a visibly different figure. pkv fixes the sizes instead, so a build
// gives the same numbers on every machine (with the same compiler flags and thread count).
#pragma once

#include <Eigen/Core>

namespace pkv {

/// Cache sizes every Eigen product in pkv is blocked for, in bytes (L1, L2, L3).
constexpr std::ptrdiff_t kEigenL1 = 32 * 1024, kEigenL2 = 512 * 1024, kEigenL3 = 8 * 1024 * 1024;

/// Sets Eigen's cache sizes to the fixed ones, once per process; every function that runs
/// an Eigen matrix product calls it first (it costs one guarded load after the first call).
inline void fix_eigen_blocking() {
    static const bool done = [] {
        Eigen::setCpuCacheSizes(kEigenL1, kEigenL2, kEigenL3);
        return true;
    }();
    (void)done;
}

}  // namespace pkv
