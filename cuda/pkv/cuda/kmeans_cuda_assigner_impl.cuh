// Internal: CudaAssigner's state (kmeans_assign.h), shared by kmeans_cuda_assigner.cu
// (a pass: centroids up, kernels, sums back, two slots in flight) and
// kmeans_cuda_data.cu (the data sets: upload or streaming plan, fixed-point scales).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/cuda_buffer.cuh"
#include "pkv/cuda/kmeans_assign.cuh"
#include "pkv/cuda/kmeans_assign.h"

namespace pkv::cuda {
namespace detail {

constexpr size_t kAutoHeadroom = size_t{1} << 30;  // left free when max_point_bytes is 0
constexpr int64_t kTile = kBlockRows;

inline int64_t tiles_of(int64_t rows) { return (rows + kTile - 1) / kTile; }
inline int64_t slots_of(int64_t rows) { return (rows + kObjSlotRows - 1) / kObjSlotRows; }

// Rows [r0, r0 + rows) of one data set, placed at row `buf_row` of the point buffer.
struct Piece {
    int set = 0;
    int64_t r0 = 0, rows = 0, buf_row = 0;
    int64_t slot = 0;  // first objective slot of the piece within its set
};

// What issue() fixes for a pass before it queues anything.
struct PassPlan {
    int nt = 0;  // tasks
    int k = 0, kpad = 0, dpad = 0;
    size_t kd = 0;     // k * d
    bool acc = false;  // some task asks for sums
    kmeans_gpu::Choice kernel;
    // Rows of every task's pieces whose labels and distances go through the device's
    // label buffers (the caller wants them, the FMA kernel always writes them, the
    // sorted sums read them).
    bool rows_out(const AssignTask& t) const { return t.labels || t.dist2 || !kernel.tensor_cores || kernel.sorted; }
};

// Rows [r0, r0 + rows) of a task's labels and distances, at row `out` of the label
// buffers of a chunk.
struct RowCopy {
    int task = 0;
    int64_t r0 = 0, rows = 0, out = 0;
};

struct SetInfo {
    const float* hx = nullptr;
    int64_t n = 0;
    double scale = 1.0;  // fixed-point scale of the sums, a power of two
    int64_t slots = 0;   // objective slots of the set (tiles of its pieces)
};

}  // namespace detail

struct CudaAssigner::Impl {
    using Piece = detail::Piece;
    using SetInfo = detail::SetInfo;

    CudaAssignerOptions opt;
    int sm_count = 0;
    int cc_major = 0, cc_minor = 0;  // the device's compute capability
    cudaStream_t stream = nullptr;

    bool active = false;
    int d = 0;
    std::vector<SetInfo> sets;
    std::vector<std::vector<Piece>> chunks;  // one entry when resident
    bool streaming = false;
    int64_t chunk_rows = 0;

    DeviceBuffer<char> points;
    DeviceBuffer<unsigned int> max_bits;
    DeviceBuffer<char> cent, cent_image;  // cent_image: the wgmma kernel's copy
    DeviceBuffer<float> cnorm, scales, cent32;
    DeviceBuffer<unsigned int> bad_cent;
    PinnedBuffer<uint16_t> host_half[2];            // fp16/bf16 points on their way up, in turn
    cudaEvent_t half_sent[2] = {nullptr, nullptr};  // recorded after each one's last copy
    // A pass from issue() to collect(). Its page-locked buffers are read or written by
    // its asynchronous copies, so each pass in flight has its own; the device buffers
    // below are shared, since every pass runs on `stream`, in order. The scales, slot
    // starts and segments are staged in page-locked memory too: a copy from pageable
    // memory first waits for the stream, which would serialise the pass's launches with
    // the host.
    struct Slot {
        PinnedBuffer<float> pinned;  // the fp32 centroids on their way up
        PinnedBuffer<float> host_scale;
        PinnedBuffer<int64_t> host_slot0;
        PinnedBuffer<detail::MmaSegment> host_segs;
        PinnedBuffer<unsigned long long> host_out;  // sums and counts
        PinnedBuffer<double> host_obj;
        PinnedBuffer<unsigned int> host_bad;                // the centroid check's result
        cudaEvent_t ev_start = nullptr, ev_stop = nullptr;  // device time of the pass
        cudaEvent_t ev_done = nullptr;                      // after its last copy to the host
        std::vector<AssignTask>* tasks = nullptr;           // set while in flight
        // Where this pass's fp32 centroids go up from and its sums and counts come back
        // to: pinned / host_out, or one of the points' upload buffers (see staging()).
        float* cent_up = nullptr;
        unsigned long long* out = nullptr;
        int k = 0;
        bool acc = false;
        CudaPassTiming timing;
        std::chrono::steady_clock::time_point wall0, wall1;  // issue() began / ended
    };
    static constexpr int kSlots = 2;
    static_assert(kSlots == 2, "slot si borrows upload buffer si (staging())");
    Slot slot[kSlots];
    // A pass's sums [tasks][k][d] then counts [tasks][k], one buffer: one memset and one
    // copy back (each small copy or memset has a fixed cost, not small beside a pass).
    DeviceBuffer<unsigned long long> acc_out;
    unsigned long long* sums_d = nullptr;      // into acc_out
    unsigned long long* counts_d = nullptr;    // into acc_out
    DeviceBuffer<unsigned long long> group_n;  // every set's n, summed over the group
    bool grouped = false;                      // inside begin_group_batch() ... end_batch()
    DeviceBuffer<double> slots, objs, obj_scratch;
    DeviceBuffer<int64_t> slot0;
    DeviceBuffer<detail::MmaSegment> segs;
    DeviceBuffer<int32_t> out_labels;
    DeviceBuffer<float> out_dist2;
    DeviceBuffer<unsigned long long> hist;
    DeviceBuffer<unsigned int> cursor, idx;
    DeviceBuffer<detail::SumItem> items;
    CudaPassTiming timing;

    bool rounded() const { return opt.precision != InputPrecision::fp32; }
    // Points of dimension dim the budget holds (at least 1).
    int64_t resident_rows(int dim) const {
        const size_t row_bytes = static_cast<size_t>(dim) * elem() + 8;
        size_t budget = opt.max_point_bytes;
        if (budget == 0) {
            PKV_CUDA_CHECK(cudaSetDevice(opt.device));
            size_t free_b = 0, total_b = 0;
            PKV_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
            budget = free_b > detail::kAutoHeadroom ? free_b - detail::kAutoHeadroom : row_bytes;
        }
        return static_cast<int64_t>(std::max<size_t>(1, budget / row_bytes));
    }
    bool bf16() const { return opt.precision == InputPrecision::bf16; }
    size_t elem() const { return rounded() ? 2 : 4; }
    bool mma() const { return kmeans_gpu::tensor_cores(rounded(), d); }
    char* rows_at(int64_t buf_row) const { return points.get() + static_cast<size_t>(buf_row) * d * elem(); }

    void upload(const Piece& p);

    NcclGroup& nccl_group() const { return *opt.nccl.group; }
    // Waits for the stream; inside a group, polled so that a failed member ends the wait.
    void wait() {
        if (grouped) nccl_group().wait(opt.nccl.rank, stream);
        else PKV_CUDA_CHECK(cudaStreamSynchronize(stream));
    }

    // Uploads (or plans) the data sets and fixes every set's fixed-point scale; with
    // `in_group`, from max|x| and n over the whole group (collective).
    void prepare(const std::vector<AssignData>& data, int d_in, bool in_group = false);
    // prepare()'s stages: the chunks and pieces of `total` rows, then every piece up
    // and the sets' scales.
    void plan_pieces(int64_t total);
    void fix_scales(bool in_group);

    // Centroids as the kernels read them: rounded and padded for the tensor-core
    // kernel ([tasks][kpad][dpad], -||c||²/2), fp32 (rounded for fp16) with ||c||² for
    // the FMA kernel ([tasks][k][d]).
    void upload_centroids(const std::vector<AssignTask>& tasks, int k, int kpad, int dpad, Slot& S);

    // The slot's host staging: page-locked memory is slow to allocate, and a whole-model
    // batch at large k needs megabytes of it a slot. When the points are resident, the
    // two 16 MiB upload buffers sit idle after begin_batch(): slot si takes buffer si
    // where its sums, counts and centroids fit, else buffers of its own.
    void staging(Slot& S, int si, size_t nt, size_t kd, int k, bool acc);

    // One pass: issue() queues it in slot si and returns, collect() waits for it and
    // fills in the tasks' outputs.
    void pass(std::vector<AssignTask>& tasks, int k);

    void issue(std::vector<AssignTask>& tasks, int k, int si);
    // issue()'s stages: the tasks' checks (returns whether any asks for sums), the
    // kernel, the tasks' scales and objective slots (into the slot's page-locked
    // buffers, then up; tasks_of_set lists each set's tasks), every chunk's segments
    // and launches, and the pass's objectives, all-reduce and copies back.
    bool check_tasks(const std::vector<AssignTask>& tasks, int k, int si) const;
    kmeans_gpu::Choice choose_kernel(int k, bool acc) const;
    void stage_tasks(const std::vector<AssignTask>& tasks, const detail::PassPlan& P, Slot& S,
                     std::vector<std::vector<int>>& tasks_of_set);
    int64_t plan_chunk(const std::vector<Piece>& chunk, const std::vector<AssignTask>& tasks,
                       const std::vector<std::vector<int>>& tasks_of_set, const detail::PassPlan& P,
                       const int64_t* hslot0, std::vector<detail::MmaSegment>& hsegs,
                       std::vector<detail::RowCopy>& copies, int64_t& out_rows);
    void launch_mma_chunk(const std::vector<detail::MmaSegment>& hsegs, int64_t tiles, int64_t out_rows,
                          const detail::PassPlan& P, Slot& S);
    void launch_fma_chunk(const std::vector<AssignTask>& tasks, const std::vector<detail::MmaSegment>& hsegs,
                          const detail::PassPlan& P);
    void copy_rows_back(const std::vector<AssignTask>& tasks, const std::vector<detail::RowCopy>& copies);
    void finish_pass(const detail::PassPlan& P, Slot& S);

    void collect(int si);

    // Sums of one chunk from its labels (written by the kernel into the segments'
    // label buffers), all on the device: histogram (also added to the pass's counts),
    // offsets and runs of at most kItemRows rows of one cluster, scatter of row
    // indices, then one warp a run summing exact fixed-point coordinates.
    void sorted_sums(const detail::MmaArgs& a, int64_t tiles, int64_t rows, int nt, int k);

    // The single-problem API: the current data set when it is this one, else a
    // one-call upload.
    void single(const float* x, int64_t n, int d_in, const float* centroids, int k, int32_t* labels, float* dist2,
                double* out_sums, int64_t* out_counts);

    void release_data() noexcept;
};

}  // namespace pkv::cuda
