// pkv/cuda/kmeans_assign.h — the k-means assignment step on a CUDA device.
//
// A KMeansAssigner (lib/pkv/kmeans/assigner.h) whose data pass runs on one GPU, so
// the Lloyd loop in kmeans.h can be handed a GPU without changing. No CUDA types
// here: apps and tests include it with the host compiler.
//
// Batched: begin_batch() uploads any number of data sets (e.g. every (layer, head) of
// a model) and assign_batch() runs every task (data set + its own centroids) of a
// Lloyd iteration in one launch sequence: one kernel launch covers all tasks (grid over
// (task, row tile)), one more reduces the objectives. Per iteration only the
// objectives (double), the sums and the counts come back to the host; labels and
// distances are copied back only for tasks that ask for them (the final pass).
//
// Five kernels (the one-hot and wide ones in two forms):
//   fused (fp16 / bf16, k <= 16, or k <= 32 where d <= 64; 32 < d <= 128, d a multiple
//     of 8; the default there):
//     the one-hot kernel's arithmetic (below) with every warp on its own pipeline: a
//     warp owns 32 rows of each tile and two staging buffers, loads its rows' fragments
//     and hands the buffer back to cp.async at once, and takes the sums' operand from
//     the fragments transposed in registers (movmatrix). Its fp32 partial covers its
//     32-row slices of one group of 4096 rows (fixed by row number within a data set),
//     is rounded once to the fixed point and added to the block's sums in shared
//     memory. Same determinism, streaming rule and tolerances as the one-hot kernel.
//     CudaAssignerOptions::fused_small_k = false turns it off.
//   one-hot (fp16 / bf16, 16 < k < wide_min_k = 96, same d; the default there): the
//     tensor-core assignment below, plus the centroid sums as one more matrix product
//     on the tensor cores, sums[k x d] += onehot(labels)^T * X, with fp32 partials in
//     registers per group of 2048 (k <= 32), 4096 (k <= 64) or 8192 rows of one data
//     set, each group's partial rounded once to the 64-bit fixed point below and added
//     as an integer (products of 0/1 and 16-bit values are exact; the fp32 accumulation
//     of a group rounds: measured |error| <= 1e-6 of the sum of |x| over the cluster).
//     Groups are fixed by row number within a data set and summed by one block each, so
//     the sums are deterministic and equal batched or alone (and streamed when chunks
//     are whole multiples of 8192 rows). The points pass through shared memory once
//     (cp.async, 2-3 tiles ahead). dist2 = ||x||² - 2 (x·c - ||c||²/2) with ||x||² from
//     the rows' Gram diagonal on the tensor cores (absolute error a few 2^-24 ||x||²);
//     a row with dist2 < ||x||² / 16 (and any NaN) gets the direct sum below instead,
//     so a point equal to its centroid has dist2 0. CudaAssignerOptions::onehot_sums =
//     false turns it and the fused kernel off (the kernel below, exact sums).
//     For k <= 64 with sums on compute capability 9.0 its products run on Hopper's
//     warpgroup MMA instead (kmeans_onehot_sm90a.cu, "onehot-wgmma": a warpgroup's sums
//     of 64 centroids x 64 columns stay in registers and read the staged points as the
//     B operand, one barrier a tile; groups of 4096 rows, the same determinism and
//     tolerances). CudaAssignerOptions::wgmma = false keeps mma.sync.
//   wide (fp16 / bf16, k >= wide_min_k, same d; the default there): the tensor-core
//     assignment below with the centroids streamed through shared memory in
//     double-buffered chunks of 64 (or 128) rows, each warp's next 32 rows fetched by
//     cp.async while the current ones are multiplied, 16 centroids a step (four
//     independent accumulator chains a warp), dist2 from the Gram diagonal as in the
//     one-hot kernel. No sums: the sorted reduction below follows. Unlike the general
//     kernel it keeps the tensor cores fed at large k. CudaAssignerOptions::wide_assign
//     = false turns it off.
//     For k >= kWgmmaMinK on compute capability 9.0 (Hopper) its products run on
//     Hopper's warpgroup MMA instead (kmeans_wgmma_sm90a.cu, the "wgmma" kernel: the
//     same rows, outputs and tolerances, centroid chunks of 128 in wgmma's swizzled
//     layout). CudaAssignerOptions::wgmma = false keeps mma.sync.
//   tensor-core (fp16 / bf16 input, d <= 128): the points are binary16 or bf16 on the
//     device; centroids are kept fp32 by the caller and rounded to the same format for
//     the MMA operand (mma.sync m16n8k16, fp32 accumulation); the score of centroid j
//     is x·c~_j - ||c~_j||²/2 with ||c~_j||² computed in double from the rounded values
//     (the MMA accumulator starts at -||c~_j||²/2); the maximum score wins (lowest j on
//     equal scores). The N x k score matrix is never written: every warp keeps an
//     online (max, index) per row in registers. dist2 = ||x - c~_label||² recomputed
//     directly in fp32 (never negative; 0 when x equals the rounded centroid).
//   fp32-FMA (fp32 input, and fp16 input with d > 128): scores ||c||² - 2 x·c in fp32
//     FMA, dist2 recomputed directly in fp32, as CpuAssigner. Batched passes launch it
//     once per task (plus one small objective kernel each); only the tensor-core
//     kernel covers a whole batch in one launch.
// Sums for large k: after the wide kernel, or when k * (d + 1) * 8 bytes of partial
// sums do not fit in shared memory beside the centroids, the pass writes labels to the
// device and sums by a sorted reduction, all on the device: label histogram (counts
// per block in shared memory, one device atomic per nonzero count), offsets and runs
// of <= 512 rows of one cluster (a scan over blocks of 1024 slots), counting-sort
// scatter of row indices (block-aggregated cursors; for k <= 256 each block sorts 4096
// rows by cluster in shared memory first, so a cluster's indices are written
// together), one warp per run adding int64 fixed point in registers. The points are
// read a second time.
// Label flips: the argmin comes from the expanded form in fp32 accumulation. With
// rounded inputs the labels and distances describe the rounded data and the rounded
// centroids: each coordinate moves by up to 2^-11 (fp16) or 2^-8 (bf16) relative, so a
// point whose two nearest centroids are within about that relative margin of a tie may
// take the other one (measured on Gaussian-mixture data, n = 20000, d = 64/128,
// k = 16..1000: 100% of labels equal to assign_ref on the rounded data).
// The objective is the distance to the rounded centroids; at a Lloyd fixed point the
// rounding's first-order effect cancels over each cluster (c is the cluster's mean).
//
// Centroid sums (kernels other than fused and one-hot) are exact 64-bit fixed point:
// each coordinate (of the rounded point for fp16/bf16) is rounded once to a multiple
// of 2^-e, where 2^e is the largest power of two with n * max|x| * 2^e <= 2^61 and
// max|x| * 2^e <= 2^39 for that data set (so no partial sum can overflow; binary16
// values are exact, e >= 24, whenever n * max|x| <= 2^37 and max|x| <= 2^15), then
// added as integers. The tensor-core kernel keeps per-block partials in shared memory
// as two 32-bit words (native shared atomics) flushed to int64 device sums every 2048
// rows, when k * (d + 1) * 8 bytes fit beside the centroids (k <= about 190 at d =
// 128, 380 at d = 64); otherwise it adds every coordinate with a 64-bit device atomic
// (slower: one atomic per coordinate).
// Integer addition is associative, so the sums are bitwise deterministic whatever the
// schedule. Counts are int64.
// The objective of a task is summed in double: per 256-row tile in a fixed order, then
// the tiles of a task in a fixed tree; a task's outputs never depend on the other tasks
// of the batch (kmeans_batch relies on this).
//
// Memory: resident mode keeps all points of all data sets on the device between
// begin_batch() and end_batch() (rows * d * 4 or 2 bytes), plus labels/dist2 only for
// tasks that ask for them (and 12 bytes a row of labels, distances and sort indices in
// the sorted-sums passes). When n * (d * s + 8) over all sets exceeds max_point_bytes,
// the points are streamed from host memory in chunks (a multiple of 256 rows when the
// budget allows; synchronous copies) on every pass; labels, distances and sums then
// equal the resident pass bitwise, and so does the objective when the chunk is at least
// 256 rows. fp16/bf16 points are rounded on the host into two 16 MiB page-locked
// buffers and sent from there; when the points are resident, a pass's centroids go up
// from and its sums come back to those buffers where they fit (page-locked memory is
// slow to allocate). Centroid buffers are O(tasks * k * d).
// Two passes in flight (CudaAssignerOptions::pipeline): submit_batch() queues a pass
// and returns, collect_batch() waits for it; each slot has its own page-locked
// buffers and events, the device buffers are shared (one stream, in order).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "pkv/cuda/nccl_group.h"
#include "pkv/kmeans/assigner.h"
#include "pkv/kmeans/kernel_choice.h"

namespace pkv::cuda {

/// Precision of the points and centroids inside the kernel (accumulation is fp32).
enum class InputPrecision {
    fp32,  ///< fp32 FMA kernel
    fp16,  ///< binary16 on tensor cores (d <= 128; the fp32 FMA kernel on rounded data above)
    bf16,  ///< bf16 on tensor cores (d <= 128 only)
};

/// "fp32", "fp16" or "bf16".
const char* input_precision_name(InputPrecision p);

/// The largest k the fused kernel takes at dimension d (CudaAssignerOptions::
/// fused_small_k): 32 where d <= 64 (two blocks of 16 centroids, whose sums then take the
/// registers a lane that 16 centroids x 128 columns take), else 16.
constexpr int fused_max_k(int d) { return kmeans_gpu::fused_max_k(d); }

/// The smallest k the wide kernel runs on wgmma (CudaAssignerOptions::wgmma): below it
/// the mma.sync form took no longer (docs/kmeans_gpu.md).
constexpr int kWgmmaMinK = kmeans_gpu::kWgmmaMinK;

struct CudaAssignerOptions {
    /// CUDA device index, in [0, device_count()).
    int device = 0;
    InputPrecision precision = InputPrecision::fp32;
    /// Most device bytes for points plus their labels and distances (n * (d * s + 8),
    /// s = 4 or 2). Larger data is streamed in chunks every pass; at least one point
    /// per chunk whatever the value. 0 picks the free device memory minus 1 GiB.
    size_t max_point_bytes = 0;
    /// k < wide_min_k (d a multiple of 8, 32 < d <= 128): centroid sums as a one-hot matrix
    /// product on tensor cores (fp32 partials per group of rows, see the file comment),
    /// by the fused kernel for k <= fused_max_k(d). false: the shared-memory fixed-point kernel,
    /// exact (for comparison and tests).
    bool onehot_sums = true;
    /// k <= fused_max_k(d) (same d; with onehot_sums): the fused kernel (kmeans_mma_fused.cu:
    /// every warp on its own cp.async pipeline, the sums' operand transposed in registers).
    /// false: the one-hot kernel there too (its wgmma form where that runs; for comparison).
    bool fused_small_k = true;
    /// k >= wide_min_k (d a multiple of 8, 32 < d <= 128): the assignment by the
    /// streaming kernel (kmeans_mma_wide.cu: centroid chunks double-buffered in shared
    /// memory), sums by the sorted reduction. false: the general tensor-core kernel (for
    /// comparison).
    bool wide_assign = true;
    /// The smallest k the streaming kernel takes (below it the one-hot kernel): where the
    /// streaming kernel overtook the one-hot one at d = 128 (docs/kmeans_gpu.md).
    int wide_min_k = 96;
    /// Centroids per shared-memory chunk of that kernel: 64 or 128; 0 picks 128 for its
    /// wgmma form where d > 64, else 64 (at d <= 64 the wgmma form with chunks of 64 needs
    /// 126 registers, so two blocks share an SM; docs/kmeans_gpu.md has the figures).
    int wide_chunk = 0;
    /// k >= kWgmmaMinK: that kernel's products by Hopper's warpgroup MMA
    /// (kmeans_wgmma_sm90a.cu), and the one-hot kernel's for k <= 64 when the pass has
    /// sums (kmeans_onehot_sm90a.cu), where the build has them and the device has compute
    /// capability 9.0 (wgmma_supported()); false, or elsewhere: by mma.sync.
    bool wgmma = true;
    /// Membership of an NCCL group (nccl_group.h; its device must be `device`): the
    /// assigner reports it as sum_group(), and inside begin_group_batch() ... end_batch()
    /// every pass all-reduces its int64 fixed-point sums and counts with the group on the
    /// device before copying them back, and begin_group_batch() agrees every set's scale
    /// (max|x| and n over the group). Unset: no group.
    NcclMember nccl;
    /// Two passes in flight (pipeline_depth() 2), so that kmeans_batch updates half of
    /// its runs on the host while the device runs the other half's pass. false: one
    /// pass at a time (for comparison).
    bool pipeline = true;
};

/// Timing of the most recent assign()/assign_accumulate() call.
struct CudaPassTiming {
    double device_ms = 0.0;  ///< device time (cudaEvent) of uploads of this pass plus kernels
    double wall_ms = 0.0;    ///< whole call, including copies of labels/dist2/sums to the host
    /// wall_ms in three: the host issuing the pass (centroids packed, segments planned,
    /// copies and kernels queued), waiting for the device, and turning the device's
    /// fixed-point sums and counts into the tasks' outputs.
    double issue_ms = 0.0, wait_ms = 0.0, finish_ms = 0.0;
    int64_t chunks = 0;         ///< chunks of points, one launch sequence each (1 when resident)
    bool tensor_cores = false;  ///< the tensor-core kernel ran
    /// "fused", "onehot", "onehot-wgmma", "wide", "wgmma", "mma", "wide+sorted" / "wgmma+sorted" /
    /// "mma+sorted" (sums by the sorted reduction) or "fma".
    const char* kernel = "";
};

/// The GPU assigner. Thread-compatible (one thread at a time), not copyable.
/// Every call throws pkv::Error(cuda) naming the failing CUDA call, or
/// Error(invalid_argument) for bad shapes / out-of-range fp16 input / bf16 with d > 128.
class CudaAssigner final : public KMeansAssigner {
public:
    /// Throws Error(invalid_argument) when options.device is not a usable device.
    explicit CudaAssigner(const CudaAssignerOptions& options);
    ~CudaAssigner() override;
    CudaAssigner(const CudaAssigner&) = delete;
    CudaAssigner& operator=(const CudaAssigner&) = delete;

    const char* name() const override { return "cuda"; }
    /// begin_batch() of the one data set x: uploads x (resident mode) or records it for
    /// streaming; also scans max|x| for the fixed-point sums. Calls outside
    /// begin()/end(), or with another x, n or d, still work: they upload the data for
    /// that call only.
    void begin(const float* x, int64_t n, int d);
    /// Releases what begin() prepared.
    void end() noexcept;
    void assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                float* dist2) override;
    void assign_accumulate(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                           float* dist2, double* sums, int64_t* counts) override;
    /// Uploads every data set (resident) or plans the chunks (streaming) and scans each
    /// set's max|x| for its fixed-point scale.
    void begin_batch(const std::vector<AssignData>& data, int d) override;
    /// begin_batch() as member options().nccl.rank of its NCCL group (see
    /// KMeansAssigner::begin_group_batch). Collective: every member must call it.
    void begin_group_batch(const std::vector<AssignData>& data, int d) override;
    SumGroup sum_group() const override;
    void end_batch() noexcept override;
    /// All tasks in one launch sequence per chunk (see the file comment). When any task
    /// asks for sums, all are computed (only the asked ones are copied out). Inside
    /// begin_group_batch() the sums and counts are the group's (one all-reduce a pass);
    /// a member that throws marks the group failed, so the others stop too.
    void assign_batch(std::vector<AssignTask>& tasks, int k) override;
    /// 2 with options().pipeline outside an NCCL group, else 1.
    int pipeline_depth() const override;
    /// With pipeline_depth() 2: queues the pass on the device and returns (the host has
    /// packed the centroids and queued the kernels and copies); collect_batch() waits for
    /// it and converts its sums. The two slots' passes share the device buffers and run
    /// one after the other, so a pass's results equal assign_batch()'s bitwise.
    void submit_batch(std::vector<AssignTask>& tasks, int k, int slot) override;
    void collect_batch(int slot) override;

    /// max_point_bytes (or the free device memory minus 1 GiB) / (d * s + 8).
    int64_t max_resident_rows(int d) const override;
    const CudaAssignerOptions& options() const;
    /// True when the data of the current begin()/begin_batch() is streamed in chunks.
    bool streaming() const;
    CudaPassTiming last_timing() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// True when CudaAssignerOptions::wgmma takes effect on `device`: this build has the
/// sm_90a kernel and the device has compute capability 9.0 (Hopper).
bool wgmma_supported(int device);

/// The same as std::make_unique<CudaAssigner>(options), typed for kmeans().
std::unique_ptr<KMeansAssigner> make_cuda_assigner(const CudaAssignerOptions& options);

}  // namespace pkv::cuda
