// pkv/core/bulk_copy.h — many runs of host memory copied, or of 64-bit fixed-point values
// converted to double, in one call: over the OpenMP threads when they are large, on the
// calling thread when not.
//
// Why: the GPU k-means packs every task's centroids into one page-locked buffer before a
// pass and turns every task's fixed-point sums into doubles after it. A whole-model
// calibration batch (90 tasks x k = 256 x d = 64) moves 5.9 MB and 1.5 M sums a pass that
// way; on one thread each took about 1.5 ms of a 5.4 ms Lloyd iteration on an H200 host,
// over its 16 threads 0.03-0.2 ms. From 512 KiB on, the threads also paid at k = 32 of
// that shape (1.5 MB of sums: 0.16-0.20 -> 0.02-0.03 ms) and cost nothing measurable at
// k = 1024, d = 128, N = 10^7 (1 MiB of sums: 7.56-7.62 ms an iteration, 7.55-7.73 on one
// thread). Smaller batches stay on one thread.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pkv {

/// Total bytes (read) of a call from which its runs are spread over the OpenMP threads.
constexpr size_t kBulkParallelBytes = size_t{512} << 10;

/// bytes bytes from src to dst; the runs must not overlap one another.
struct CopyRun {
    const void* src = nullptr;
    void* dst = nullptr;
    size_t bytes = 0;
};

/// dst[i] = src[i] * unit for i in [0, n) (fixed_to_double_n of one run).
struct FixedRun {
    const int64_t* src = nullptr;
    double unit = 1.0;
    double* dst = nullptr;
    size_t n = 0;
};

/// Copies every run. Runs are cut into pieces of at most 1 MiB, and the pieces spread
/// over the threads when the runs hold at least kBulkParallelBytes in all.
void copy_runs(const CopyRun* runs, size_t count);

/// fixed_to_double_n on every run, with copy_runs' pieces and threshold (8 bytes a value).
/// The result does not depend on the threads: every value is converted on its own.
void fixed_to_double_runs(const FixedRun* runs, size_t count);

}  // namespace pkv
