// pkv/cuda/kmeans_cuda_assigner.cu — CudaAssigner: the batched pass over (task, row
// tile), in two slots (issue, collect), and the copies back (see kmeans_assign.h). The
// data sets' upload is in kmeans_cuda_data.cu.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "pkv/core/bulk_copy.h"
#include "pkv/core/half.h"
#include "pkv/cuda/device.h"
#include "pkv/cuda/kmeans_cuda_assigner_impl.cuh"

namespace pkv::cuda {

const char* input_precision_name(InputPrecision p) {
    switch (p) {
        case InputPrecision::fp32: return "fp32";
        case InputPrecision::fp16: return "fp16";
        case InputPrecision::bf16: return "bf16";
    }
    return "unknown";
}

// Centroids as the kernels read them: rounded and padded for the tensor-core
// kernel ([tasks][kpad][dpad], -||c||²/2), fp32 (rounded for fp16) with ||c||² for
// the FMA kernel ([tasks][k][d]).
void CudaAssigner::Impl::upload_centroids(const std::vector<AssignTask>& tasks, int k, int kpad, int dpad, Slot& S) {
    const size_t nt = tasks.size();
    const auto round = [&](float v) -> uint16_t { return bf16() ? float_to_bf16(v) : float_to_half(v); };
    const auto back = [&](uint16_t h) -> float { return bf16() ? bf16_to_float(h) : half_to_float(h); };
    const char* bad = "cuda assigner: task {}: centroid {} has a non-finite coordinate{}";
    const char* why = rounded() ? " (or one beyond the binary16/bf16 range)" : "";
    if (mma()) {
        // fp32 centroids packed into pinned memory, rounded and padded on the device.
        // The slot's previous pass, whose copy read this buffer, has been collected.
        const size_t kd = static_cast<size_t>(k) * d;
        float* const up = S.cent_up;
        std::vector<CopyRun> runs(nt);
        for (size_t ti = 0; ti < nt; ++ti) runs[ti] = CopyRun{tasks[ti].centroids, up + ti * kd, kd * 4};
        copy_runs(runs.data(), nt);
        cent32.reserve(nt * kd);
        cent.reserve(nt * kpad * dpad * 2);
        cnorm.reserve(nt * kpad);
        bad_cent.reserve(1);
        PKV_CUDA_CHECK(cudaMemcpyAsync(cent32.get(), up, nt * kd * 4, cudaMemcpyHostToDevice, stream));
        PKV_CUDA_CHECK(cudaMemsetAsync(bad_cent.get(), 0xff, sizeof(unsigned int), stream));
        detail::launch_prep_centroids(cent32.get(), static_cast<int>(nt), k, d, kpad, dpad, bf16(), cent.get(),
                                      cnorm.get(), bad_cent.get(), stream);
        return;
    }
    const size_t kd = static_cast<size_t>(k) * d;
    std::vector<float> hc(nt * kd);
    std::vector<float> hn(nt * k);
    for (size_t ti = 0; ti < nt; ++ti)
        for (int j = 0; j < k; ++j) {
            double s = 0.0;
            for (int t = 0; t < d; ++t) {
                float v = tasks[ti].centroids[size_t(j) * d + t];
                if (rounded()) v = back(round(v));
                hc[ti * kd + size_t(j) * d + t] = v;
                s += static_cast<double>(v) * v;
            }
            PKV_CHECK(std::isfinite(s), invalid_argument, bad, ti, j, why);
            hn[ti * k + j] = static_cast<float>(s);
        }
    cent.reserve(hc.size() * 4);
    cnorm.reserve(hn.size());
    PKV_CUDA_CHECK(cudaMemcpyAsync(cent.get(), hc.data(), hc.size() * 4, cudaMemcpyHostToDevice, stream));
    PKV_CUDA_CHECK(cudaMemcpyAsync(cnorm.get(), hn.data(), hn.size() * 4, cudaMemcpyHostToDevice, stream));
    PKV_CUDA_CHECK(cudaStreamSynchronize(stream));
}

// The slot's host staging: page-locked memory is slow to allocate, and a whole-model
// batch at large k needs megabytes of it a slot. When the points are resident, the
// two 16 MiB upload buffers sit idle after begin_batch(): slot si takes buffer si
// where its sums, counts and centroids fit, else buffers of its own.
void CudaAssigner::Impl::staging(Slot& S, int si, size_t nt, size_t kd, int k, bool acc) {
    const size_t out_n = acc ? nt * kd + nt * static_cast<size_t>(k) : 0;
    const size_t up_n = mma() ? nt * kd : 0;
    const size_t bytes = out_n * 8 + up_n * 4;
    if (!streaming && host_half[si].capacity() * sizeof(uint16_t) >= bytes) {
        PKV_CUDA_CHECK(cudaEventSynchronize(half_sent[si]));  // its last upload is done
        auto* base = reinterpret_cast<unsigned char*>(host_half[si].get());
        S.out = reinterpret_cast<unsigned long long*>(base);
        S.cent_up = reinterpret_cast<float*>(base + out_n * 8);
        return;
    }
    S.host_out.reserve(std::max<size_t>(out_n, 1));
    S.pinned.reserve(std::max<size_t>(up_n, 1));
    S.out = S.host_out.get();
    S.cent_up = S.pinned.get();
}

// One pass: issue() queues it in slot si and returns, collect() waits for it and
// fills in the tasks' outputs.
void CudaAssigner::Impl::pass(std::vector<AssignTask>& tasks, int k) {
    issue(tasks, k, 0);
    collect(0);
}

void CudaAssigner::Impl::issue(std::vector<AssignTask>& tasks, int k, int si) {
    const auto wall0 = std::chrono::steady_clock::now();
    PKV_CUDA_CHECK(cudaSetDevice(opt.device));
    const bool acc = check_tasks(tasks, k, si);
    Slot& S = slot[si];
    CudaPassTiming& timing = S.timing;
    timing = CudaPassTiming{};
    timing.tensor_cores = mma();
    S.k = k;
    S.acc = acc;
    S.wall0 = wall0;
    if (tasks.empty()) {
        S.wall1 = std::chrono::steady_clock::now();
        S.tasks = &tasks;
        return;
    }
    detail::PassPlan P;
    P.nt = static_cast<int>(tasks.size());
    P.k = k;
    P.kpad = (k + 7) / 8 * 8;
    P.dpad = mma() ? detail::mma_row_stride(d) : d;
    P.kd = static_cast<size_t>(k) * d;
    P.acc = acc;
    P.kernel = choose_kernel(k, acc);
    timing.kernel = P.kernel.name;

    staging(S, si, static_cast<size_t>(P.nt), P.kd, k, acc);
    PKV_CUDA_CHECK(cudaEventRecord(S.ev_start, stream));
    upload_centroids(tasks, k, P.kpad, P.dpad, S);
    std::vector<std::vector<int>> tasks_of_set(sets.size());
    stage_tasks(tasks, P, S, tasks_of_set);
    std::vector<detail::MmaSegment> hsegs;
    std::vector<detail::RowCopy> copies;
    for (const auto& chunk : chunks) {
        if (streaming)
            for (const Piece& p : chunk) upload(p);
        int64_t out_rows = 0;
        const int64_t tiles = plan_chunk(chunk, tasks, tasks_of_set, P, S.host_slot0.get(), hsegs, copies, out_rows);
        ++timing.chunks;
        if (mma()) launch_mma_chunk(hsegs, tiles, out_rows, P, S);
        else launch_fma_chunk(tasks, hsegs, P);
        copy_rows_back(tasks, copies);
    }
    finish_pass(P, S);
    S.wall1 = std::chrono::steady_clock::now();
    S.tasks = &tasks;
}

bool CudaAssigner::Impl::check_tasks(const std::vector<AssignTask>& tasks, int k, int si) const {
    PKV_CHECK(si >= 0 && si < kSlots, internal, "cuda assigner: slot {} of {}", si, kSlots);
    PKV_CHECK(slot[si].tasks == nullptr, internal, "cuda assigner: slot {} already has a pass in flight", si);
    PKV_CHECK(active, internal, "cuda assigner: assign_batch() outside begin_batch()/end_batch()");
    PKV_CHECK(k >= 1, invalid_argument, "cuda assigner: expected k >= 1, got {}", k);
    bool acc = false;
    for (size_t ti = 0; ti < tasks.size(); ++ti) {
        const AssignTask& t = tasks[ti];
        PKV_CHECK(t.data >= 0 && static_cast<size_t>(t.data) < sets.size(), internal,
                  "cuda assigner: task {} names data set {}, {} announced", ti, t.data, sets.size());
        PKV_CHECK(t.centroids != nullptr, invalid_argument, "cuda assigner: task {}: null centroids", ti);
        PKV_CHECK((t.sums == nullptr) == (t.counts == nullptr), internal,
                  "cuda assigner: task {}: sums and counts must both be given or both be null", ti);
        acc = acc || t.sums != nullptr;
    }
    return acc;
}

// The choice itself is a plain function (pkv/kmeans/kernel_choice.h), tested without
// a device.
kmeans_gpu::Choice CudaAssigner::Impl::choose_kernel(int k, bool acc) const {
    kmeans_gpu::PassShape s;
    s.d = d;
    s.k = k;
    s.rounded = rounded();
    s.sums = acc;
    s.smem_sums = detail::mma_smem_sums(k, d);
    s.cc_major = cc_major;
    s.cc_minor = cc_minor;
#if defined(PKV_HAVE_SM90A)
    s.sm90a_built = true;
#endif
    s.onehot_sums = opt.onehot_sums;
    s.fused_small_k = opt.fused_small_k;
    s.wide_assign = opt.wide_assign;
    s.wgmma = opt.wgmma;
    s.wide_min_k = opt.wide_min_k;
    s.wide_chunk = opt.wide_chunk;
    return kmeans_gpu::choose_kernel(s);
}

void CudaAssigner::Impl::stage_tasks(const std::vector<AssignTask>& tasks, const detail::PassPlan& P, Slot& S,
                                     std::vector<std::vector<int>>& tasks_of_set) {
    const int nt = P.nt;
    // Written straight into the page-locked buffers the copies below read; they stay
    // untouched until the next pass, which starts after this one's wait().
    S.host_scale.reserve(static_cast<size_t>(nt));
    S.host_slot0.reserve(static_cast<size_t>(nt) + 1);
    float* const hscale = S.host_scale.get();
    int64_t* const hslot0 = S.host_slot0.get();
    hslot0[0] = 0;
    for (int ti = 0; ti < nt; ++ti) {
        const SetInfo& s = sets[static_cast<size_t>(tasks[static_cast<size_t>(ti)].data)];
        hscale[static_cast<size_t>(ti)] = static_cast<float>(s.scale);
        hslot0[static_cast<size_t>(ti) + 1] = hslot0[static_cast<size_t>(ti)] + s.slots;
        tasks_of_set[static_cast<size_t>(tasks[static_cast<size_t>(ti)].data)].push_back(ti);
    }
    scales.reserve(static_cast<size_t>(nt));
    slot0.reserve(static_cast<size_t>(nt) + 1);
    slots.reserve(static_cast<size_t>(std::max<int64_t>(hslot0[nt], 1)));
    objs.reserve(static_cast<size_t>(nt));
    PKV_CUDA_CHECK(cudaMemcpyAsync(scales.get(), hscale, nt * 4, cudaMemcpyHostToDevice, stream));
    PKV_CUDA_CHECK(cudaMemcpyAsync(slot0.get(), hslot0, (nt + 1) * 8, cudaMemcpyHostToDevice, stream));
    if (P.acc) {
        const size_t kd = P.kd;
        acc_out.reserve(nt * kd + static_cast<size_t>(nt) * P.k);
        sums_d = acc_out.get();
        counts_d = sums_d + nt * kd;
        PKV_CUDA_CHECK(cudaMemsetAsync(sums_d, 0, (nt * kd + static_cast<size_t>(nt) * P.k) * 8, stream));
    }
}

// One segment a (piece, task), each starting on a whole group of tiles; returns the
// chunk's tiles (rounded up to a group) and sets out_rows to the rows whose labels and
// distances go through the label buffers (copies lists them).
int64_t CudaAssigner::Impl::plan_chunk(const std::vector<Piece>& chunk, const std::vector<AssignTask>& tasks,
                                       const std::vector<std::vector<int>>& tasks_of_set, const detail::PassPlan& P,
                                       const int64_t* hslot0, std::vector<detail::MmaSegment>& hsegs,
                                       std::vector<detail::RowCopy>& copies, int64_t& out_rows) {
    const int group = P.kernel.group_tiles;
    hsegs.clear();
    copies.clear();
    int64_t tiles = 0;
    out_rows = 0;
    for (const Piece& p : chunk)
        for (int ti : tasks_of_set[static_cast<size_t>(p.set)]) {
            detail::MmaSegment sg;
            sg.x = rows_at(p.buf_row);
            sg.rows = p.rows;
            tiles = (tiles + group - 1) / group * group;
            sg.tile0 = tiles;
            sg.slot0 = hslot0[static_cast<size_t>(ti)] + p.slot;
            sg.task = ti;
            sg.xrow = p.buf_row;
            tiles += detail::tiles_of(p.rows);
            if (P.rows_out(tasks[static_cast<size_t>(ti)])) {
                copies.push_back(detail::RowCopy{ti, p.r0, p.rows, out_rows});
                out_rows += p.rows;
            }
            hsegs.push_back(sg);
        }
    tiles = (tiles + group - 1) / group * group;
    out_labels.reserve(static_cast<size_t>(std::max<int64_t>(out_rows, 1)));
    out_dist2.reserve(static_cast<size_t>(std::max<int64_t>(out_rows, 1)));
    size_t ci = 0;
    for (auto& sg : hsegs) {
        if (P.rows_out(tasks[static_cast<size_t>(sg.task)])) {
            const detail::RowCopy& c = copies[ci++];
            sg.labels = out_labels.get() + c.out;
            sg.dist2 = out_dist2.get() + c.out;
        }
    }
    return tiles;
}

// The chunk's segments up, then the chosen tensor-core kernel over all of them (and the
// sorted sums after it).
void CudaAssigner::Impl::launch_mma_chunk(const std::vector<detail::MmaSegment>& hsegs, int64_t tiles, int64_t out_rows,
                                          const detail::PassPlan& P, Slot& S) {
    const kmeans_gpu::Choice& c = P.kernel;
    segs.reserve(hsegs.size());
    S.host_segs.reserve(hsegs.size());
    std::memcpy(S.host_segs.get(), hsegs.data(), hsegs.size() * sizeof(detail::MmaSegment));
    PKV_CUDA_CHECK(cudaMemcpyAsync(segs.get(), S.host_segs.get(), hsegs.size() * sizeof(detail::MmaSegment),
                                   cudaMemcpyHostToDevice, stream));
    detail::MmaArgs a;
    a.segs = segs.get();
    a.n_segs = static_cast<int>(hsegs.size());
    a.n_tiles = tiles;
    a.d = d;
    a.k = P.k;
    a.kpad = P.kpad;
    a.dpad = P.dpad;
    a.bf16 = bf16();
    a.cent = cent.get();
    a.cnh = cnorm.get();
    a.sums = P.acc && !c.sorted ? sums_d : nullptr;  // else sorted_sums() below
    a.counts = P.acc && !c.sorted ? counts_d : nullptr;
    a.scale = scales.get();
    a.slots = slots.get();
    switch (c.kernel) {
        case kmeans_gpu::Kernel::fused: detail::launch_mma_fused(a, c.group_tiles, sm_count, stream); break;
        case kmeans_gpu::Kernel::onehot_wgmma:
            cent_image.reserve(detail::wgmma_onehot_image_bytes(P.nt, P.kpad, d));
            detail::launch_wgmma_onehot(a, c.group_tiles, P.nt, cent_image.get(), sm_count, stream);
            break;
        case kmeans_gpu::Kernel::onehot: detail::launch_mma_onehot(a, c.group_tiles, sm_count, stream); break;
        case kmeans_gpu::Kernel::wgmma:
            cent_image.reserve(detail::wgmma_image_bytes(P.nt, P.kpad, d, c.wide_chunk));
            detail::launch_wgmma_wide(a, c.wide_chunk, P.nt, cent_image.get(), sm_count, stream);
            break;
        case kmeans_gpu::Kernel::wide: detail::launch_mma_wide(a, c.wide_chunk, sm_count, stream); break;
        case kmeans_gpu::Kernel::mma: detail::launch_mma_assign(a, sm_count, stream); break;
        case kmeans_gpu::Kernel::fma:
            ::pkv::fail(::pkv::ErrorCode::internal, "cuda assigner: the FMA kernel in a tensor-core pass");
    }
    if (c.sorted) sorted_sums(a, tiles, out_rows, P.nt, P.k);
    // host_segs and segs are refilled for the next chunk.
    if (chunks.size() > 1) PKV_CUDA_CHECK(cudaStreamSynchronize(stream));
}

// The FMA kernel: one launch a segment, plus its objective slots.
void CudaAssigner::Impl::launch_fma_chunk(const std::vector<AssignTask>& tasks,
                                          const std::vector<detail::MmaSegment>& hsegs, const detail::PassPlan& P) {
    const size_t kd = P.kd;
    for (const auto& sg : hsegs) {
        detail::AssignArgs a;
        a.x = sg.x;
        a.half = rounded();
        a.rows = sg.rows;
        a.d = d;
        a.centroids = reinterpret_cast<const float*>(cent.get()) + sg.task * kd;
        a.c_norm2 = cnorm.get() + static_cast<size_t>(sg.task) * P.k;
        a.k = P.k;
        a.labels = sg.labels;
        a.dist2 = sg.dist2;
        a.sums = P.acc ? sums_d + sg.task * kd : nullptr;
        a.counts = P.acc ? counts_d + static_cast<size_t>(sg.task) * P.k : nullptr;
        a.scale = sets[static_cast<size_t>(tasks[static_cast<size_t>(sg.task)].data)].scale;
        if (sg.rows > 0) detail::launch_assign(a, sm_count, stream);
        detail::launch_tile_objective(sg.dist2, sg.rows, slots.get() + sg.slot0, stream);
    }
}

void CudaAssigner::Impl::copy_rows_back(const std::vector<AssignTask>& tasks,
                                        const std::vector<detail::RowCopy>& copies) {
    for (const detail::RowCopy& c : copies) {
        const AssignTask& t = tasks[static_cast<size_t>(c.task)];
        if (t.labels && c.rows > 0)
            PKV_CUDA_CHECK(
                cudaMemcpyAsync(t.labels + c.r0, out_labels.get() + c.out, c.rows * 4, cudaMemcpyDeviceToHost, stream));
        if (t.dist2 && c.rows > 0)
            PKV_CUDA_CHECK(
                cudaMemcpyAsync(t.dist2 + c.r0, out_dist2.get() + c.out, c.rows * 4, cudaMemcpyDeviceToHost, stream));
    }
}

// The tasks' objectives from their slots, the group's all-reduce of the sums, and the
// copies back that collect() reads.
void CudaAssigner::Impl::finish_pass(const detail::PassPlan& P, Slot& S) {
    const int nt = P.nt;
    const size_t kd = P.kd;
    const int64_t* const hslot0 = S.host_slot0.get();
    int64_t max_slots = 0;
    for (int ti = 0; ti < nt; ++ti)
        max_slots = std::max(max_slots, hslot0[static_cast<size_t>(ti) + 1] - hslot0[static_cast<size_t>(ti)]);
    obj_scratch.reserve(static_cast<size_t>(nt) * detail::reduce_objective_chunks(max_slots));
    detail::launch_reduce_objective(slots.get(), slot0.get(), nt, max_slots, obj_scratch.get(), objs.get(), stream);
    // Integer sums: the all-reduce is exact and every member gets the same bits.
    if (grouped && P.acc) nccl_group().sum_u64(opt.nccl.rank, sums_d, nt * kd + static_cast<size_t>(nt) * P.k, stream);
    PKV_CUDA_CHECK(cudaEventRecord(S.ev_stop, stream));
    S.host_obj.reserve(static_cast<size_t>(nt));
    PKV_CUDA_CHECK(cudaMemcpyAsync(S.host_obj.get(), objs.get(), nt * 8, cudaMemcpyDeviceToHost, stream));
    if (P.acc) {
        PKV_CUDA_CHECK(cudaMemcpyAsync(S.out, sums_d, (nt * kd + static_cast<size_t>(nt) * P.k) * 8,
                                       cudaMemcpyDeviceToHost, stream));
    }
    S.host_bad.reserve(1);
    S.host_bad.get()[0] = 0xffffffffu;
    if (mma())
        PKV_CUDA_CHECK(
            cudaMemcpyAsync(S.host_bad.get(), bad_cent.get(), sizeof(unsigned int), cudaMemcpyDeviceToHost, stream));
    PKV_CUDA_CHECK(cudaEventRecord(S.ev_done, stream));
}

void CudaAssigner::Impl::collect(int si) {
    PKV_CHECK(si >= 0 && si < kSlots && slot[si].tasks != nullptr, internal,
              "cuda assigner: no pass in flight in slot {}", si);
    Slot& S = slot[si];
    std::vector<AssignTask>& tasks = *S.tasks;
    S.tasks = nullptr;
    PKV_CUDA_CHECK(cudaSetDevice(opt.device));
    const int nt = static_cast<int>(tasks.size());
    const int k = S.k;
    const size_t kd = static_cast<size_t>(k) * d;
    CudaPassTiming& timing = S.timing;
    using ms_t = std::chrono::duration<double, std::milli>;
    timing.issue_ms = ms_t(S.wall1 - S.wall0).count();
    if (nt == 0) {
        timing.wall_ms = timing.issue_ms;
        this->timing = timing;
        return;
    }
    const auto wall1 = std::chrono::steady_clock::now();
    if (grouped) wait();
    else PKV_CUDA_CHECK(cudaEventSynchronize(S.ev_done));
    const auto wall2 = std::chrono::steady_clock::now();
    const unsigned int bad = S.host_bad.get()[0];
    PKV_CHECK(bad == 0xffffffffu, invalid_argument,
              "cuda assigner: task {}: centroid {} has a non-finite coordinate (or one beyond the binary16/bf16 "
              "range)",
              bad / static_cast<unsigned int>(k), bad % static_cast<unsigned int>(k));
    const double* hobj = S.host_obj.get();
    const unsigned long long* hsum = S.acc ? S.out : nullptr;
    const unsigned long long* hcnt = S.acc ? S.out + nt * kd : nullptr;
    // In lib (vectorised there, and threaded for large batches; nvcc's host code here
    // is compiled without the host's vector extensions).
    std::vector<FixedRun> runs;
    for (int ti = 0; ti < nt; ++ti) {
        AssignTask& t = tasks[static_cast<size_t>(ti)];
        t.objective = hobj[static_cast<size_t>(ti)];
        if (!t.sums) continue;
        const double inv = 1.0 / sets[static_cast<size_t>(t.data)].scale;  // a power of two: exact
        runs.push_back(FixedRun{reinterpret_cast<const int64_t*>(hsum + ti * kd), inv, t.sums, kd});
        for (int j = 0; j < k; ++j) t.counts[j] = static_cast<int64_t>(hcnt[static_cast<size_t>(ti) * k + j]);
    }
    fixed_to_double_runs(runs.data(), runs.size());
    float ms = 0.0f;
    PKV_CUDA_CHECK(cudaEventElapsedTime(&ms, S.ev_start, S.ev_stop));
    timing.device_ms = ms;
    const auto wall3 = std::chrono::steady_clock::now();
    timing.wait_ms = ms_t(wall2 - wall1).count();
    timing.finish_ms = ms_t(wall3 - wall2).count();
    timing.wall_ms = timing.issue_ms + timing.wait_ms + timing.finish_ms;
    this->timing = timing;
}

// Sums of one chunk from its labels (written by the kernel into the segments'
// label buffers), all on the device: histogram (also added to the pass's counts),
// offsets and runs of at most kItemRows rows of one cluster, scatter of row
// indices, then one warp a run summing exact fixed-point coordinates.
void CudaAssigner::Impl::sorted_sums(const detail::MmaArgs& a, int64_t tiles, int64_t rows, int nt, int k) {
    constexpr unsigned int kItemRows = 512;
    PKV_CHECK(rows < (int64_t{1} << 32), internal, "cuda assigner: {} rows in one chunk exceed the sorted sums' index",
              rows);
    const size_t slots_n = static_cast<size_t>(nt) * k;
    const int64_t max_items = detail::max_sum_items(rows, static_cast<int64_t>(slots_n), kItemRows);
    // [slots_n counts][the item count][build_items' block totals]
    hist.reserve(slots_n + 1 + static_cast<size_t>(detail::build_items_scratch(static_cast<int>(slots_n))));
    PKV_CUDA_CHECK(cudaMemsetAsync(hist.get(), 0, slots_n * 8, stream));
    detail::launch_label_histogram(a.segs, a.n_segs, tiles, k, hist.get(), counts_d, stream);
    cursor.reserve(slots_n);
    idx.reserve(static_cast<size_t>(std::max<int64_t>(rows, 1)));
    items.reserve(static_cast<size_t>(std::max<int64_t>(max_items, 1)));
    detail::launch_build_items(hist.get(), static_cast<int>(slots_n), k, kItemRows, hist.get() + slots_n + 1,
                               cursor.get(), items.get(), hist.get() + slots_n, stream);
    detail::launch_label_scatter(a.segs, a.n_segs, tiles, k, cursor.get(), idx.get(), stream);
    detail::launch_segment_sums(points.get(), bf16(), d, idx.get(), items.get(), hist.get() + slots_n, max_items,
                                scales.get(), sums_d, stream);
}

// The single-problem API: the current data set when it is this one, else a
// one-call upload.
void CudaAssigner::Impl::single(const float* x, int64_t n, int d_in, const float* centroids, int k, int32_t* labels,
                                float* dist2, double* out_sums, int64_t* out_counts) {
    PKV_CUDA_CHECK(cudaSetDevice(opt.device));
    PKV_CHECK(labels != nullptr && dist2 != nullptr, invalid_argument, "cuda assigner: null labels or dist2");
    PKV_CHECK(k >= 1, invalid_argument, "cuda assigner: expected k >= 1, got {}", k);
    PKV_CHECK(centroids != nullptr, invalid_argument, "cuda assigner: null centroids");
    const bool transient = !(active && sets.size() == 1 && sets[0].hx == x && sets[0].n == n && d == d_in);
    if (transient) prepare({AssignData{x, n}}, d_in);
    std::vector<AssignTask> tasks(1);
    tasks[0].centroids = centroids;
    tasks[0].labels = labels;
    tasks[0].dist2 = dist2;
    tasks[0].sums = out_sums;
    tasks[0].counts = out_counts;
    try {
        pass(tasks, k);
    } catch (...) {
        if (transient) release_data();
        throw;
    }
    if (transient) release_data();
}

bool wgmma_supported(int device) { return detail::wgmma_device(device); }

CudaAssigner::CudaAssigner(const CudaAssignerOptions& options) : impl_(std::make_unique<Impl>()) {
    const int n_dev = device_count();
    PKV_CHECK(options.device >= 0 && options.device < n_dev, invalid_argument,
              "cuda assigner: device {} out of range, {} CUDA device(s) present", options.device, n_dev);
    PKV_CHECK(options.wide_chunk == 0 || options.wide_chunk == 64 || options.wide_chunk == 128, invalid_argument,
              "cuda assigner: wide_chunk must be 0, 64 or 128, got {}", options.wide_chunk);
    PKV_CHECK(!options.nccl.group || (options.nccl.rank >= 0 && options.nccl.rank < options.nccl.group->size()),
              invalid_argument, "cuda assigner: NCCL member {} of a group of {}", options.nccl.rank,
              options.nccl.group->size());
    impl_->opt = options;
    PKV_CUDA_CHECK(cudaSetDevice(options.device));
    PKV_CUDA_CHECK(cudaDeviceGetAttribute(&impl_->sm_count, cudaDevAttrMultiProcessorCount, options.device));
    PKV_CUDA_CHECK(cudaDeviceGetAttribute(&impl_->cc_major, cudaDevAttrComputeCapabilityMajor, options.device));
    PKV_CUDA_CHECK(cudaDeviceGetAttribute(&impl_->cc_minor, cudaDevAttrComputeCapabilityMinor, options.device));
    PKV_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
    for (Impl::Slot& sl : impl_->slot) {
        PKV_CUDA_CHECK(cudaEventCreate(&sl.ev_start));
        PKV_CUDA_CHECK(cudaEventCreate(&sl.ev_stop));
        PKV_CUDA_CHECK(cudaEventCreateWithFlags(&sl.ev_done, cudaEventDisableTiming));
    }
    for (cudaEvent_t& e : impl_->half_sent) PKV_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
}

CudaAssigner::~CudaAssigner() {
    if (!impl_) return;
    cudaSetDevice(impl_->opt.device);
    impl_->release_data();
    for (Impl::Slot& sl : impl_->slot)
        for (cudaEvent_t e : {sl.ev_start, sl.ev_stop, sl.ev_done})
            if (e) cudaEventDestroy(e);
    for (cudaEvent_t e : impl_->half_sent)
        if (e) cudaEventDestroy(e);
    if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

void CudaAssigner::begin(const float* x, int64_t n, int d) {
    PKV_CUDA_CHECK(cudaSetDevice(impl_->opt.device));
    impl_->prepare({AssignData{x, n}}, d);
}

void CudaAssigner::end() noexcept {
    cudaSetDevice(impl_->opt.device);
    impl_->release_data();
}

void CudaAssigner::begin_batch(const std::vector<AssignData>& data, int d) {
    PKV_CUDA_CHECK(cudaSetDevice(impl_->opt.device));
    impl_->prepare(data, d);
}

void CudaAssigner::begin_group_batch(const std::vector<AssignData>& data, int d) {
    PKV_CHECK(impl_->opt.nccl.group != nullptr, internal, "cuda assigner: begin_group_batch() without an NCCL group");
    try {
        PKV_CUDA_CHECK(cudaSetDevice(impl_->opt.device));
        impl_->prepare(data, d, true);
    } catch (...) {
        impl_->nccl_group().fail(impl_->opt.nccl.rank);  // the other members stop waiting
        impl_->release_data();
        throw;
    }
}

SumGroup CudaAssigner::sum_group() const {
    const NcclMember& m = impl_->opt.nccl;
    if (!m.group) return {};
    return SumGroup{m.group.get(), m.group->size(), m.rank, m.group->description().c_str()};
}

void CudaAssigner::end_batch() noexcept { end(); }

void CudaAssigner::assign_batch(std::vector<AssignTask>& tasks, int k) {
    if (!impl_->grouped) return impl_->pass(tasks, k);
    try {
        impl_->pass(tasks, k);
    } catch (...) {
        impl_->nccl_group().fail(impl_->opt.nccl.rank);
        throw;
    }
}

int CudaAssigner::pipeline_depth() const { return impl_->opt.pipeline && !impl_->grouped ? Impl::kSlots : 1; }

void CudaAssigner::submit_batch(std::vector<AssignTask>& tasks, int k, int slot) {
    if (pipeline_depth() == 1) {  // the default's contract: done when this returns
        PKV_CHECK(slot == 0, internal, "cuda assigner: slot {} of 1", slot);
        return assign_batch(tasks, k);
    }
    impl_->issue(tasks, k, slot);
}

void CudaAssigner::collect_batch(int slot) {
    if (pipeline_depth() > 1) impl_->collect(slot);
}

void CudaAssigner::assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                          float* dist2) {
    impl_->single(x, n, d, centroids, k, labels, dist2, nullptr, nullptr);
}

void CudaAssigner::assign_accumulate(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                                     float* dist2, double* sums, int64_t* counts) {
    PKV_CHECK(sums != nullptr && counts != nullptr, invalid_argument, "cuda assigner: null sums or counts");
    impl_->single(x, n, d, centroids, k, labels, dist2, sums, counts);
}

int64_t CudaAssigner::max_resident_rows(int d) const { return impl_->resident_rows(d); }

const CudaAssignerOptions& CudaAssigner::options() const { return impl_->opt; }
bool CudaAssigner::streaming() const { return impl_->active && impl_->streaming; }
CudaPassTiming CudaAssigner::last_timing() const { return impl_->timing; }

std::unique_ptr<KMeansAssigner> make_cuda_assigner(const CudaAssignerOptions& options) {
    return std::make_unique<CudaAssigner>(options);
}

}  // namespace pkv::cuda
