// pkv/cuda/kmeans_cuda_data.cu — CudaAssigner's data sets: their upload (or the plan of
// chunks streamed every pass), each set's fixed-point scale, and their release (see
// kmeans_assign.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "pkv/core/half.h"
#include "pkv/cuda/kmeans_cuda_assigner_impl.cuh"

namespace pkv::cuda {
namespace {

constexpr size_t kStagingValues = size_t{8} << 20;  // 16 MiB a page-locked fp16/bf16 upload buffer

}  // namespace

void CudaAssigner::Impl::upload(const Piece& p) {
    const float* src = sets[p.set].hx + p.r0 * d;
    char* dst = rows_at(p.buf_row);
    const size_t count = static_cast<size_t>(p.rows) * d;
    if (!rounded()) {
        PKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, count * 4, cudaMemcpyHostToDevice, stream));
        return;
    }
    // Rounded on the host (threaded; to nearest even, as the device rounds centroids)
    // into two page-locked buffers in turn, each sent while the other fills: half the
    // bytes of the fp32 values cross the bus, at page-locked speed, which a device
    // staging buffer fed from pageable memory does not reach.
    for (int i = 0; i < 2; ++i)
        if (host_half[i].capacity() < std::min(count, kStagingValues)) {
            PKV_CUDA_CHECK(cudaEventSynchronize(half_sent[i]));  // not freed under a copy
            host_half[i].reserve(std::min(count, kStagingValues));
        }
    int b = 0;
    for (size_t off = 0; off < count; off += kStagingValues, b ^= 1) {
        const size_t m = std::min(kStagingValues, count - off);
        PKV_CUDA_CHECK(cudaEventSynchronize(half_sent[b]));  // its previous copy is done
        if (bf16()) pkv::float_to_bf16_n(src + off, host_half[b].get(), m);
        else pkv::float_to_half_n(src + off, host_half[b].get(), m);
        PKV_CUDA_CHECK(cudaMemcpyAsync(dst + off * 2, host_half[b].get(), m * 2, cudaMemcpyHostToDevice, stream));
        PKV_CUDA_CHECK(cudaEventRecord(half_sent[b], stream));
    }
}

// Uploads (or plans) the data sets and fixes every set's fixed-point scale; with
// `in_group`, from max|x| and n over the whole group (collective).
void CudaAssigner::Impl::prepare(const std::vector<AssignData>& data, int d_in, bool in_group) {
    PKV_CHECK(d_in >= 1, invalid_argument, "cuda assigner: expected d >= 1, got {}", d_in);
    PKV_CHECK(!bf16() || d_in <= detail::kMmaMaxDim, invalid_argument,
              "cuda assigner: bf16 input needs d <= {} (tensor-core kernel), got d = {}", detail::kMmaMaxDim, d_in);
    release_data();
    d = d_in;
    int64_t total = 0;
    for (size_t i = 0; i < data.size(); ++i) {
        PKV_CHECK(data[i].n >= 0, invalid_argument, "cuda assigner: data set {}: expected n >= 0, got {}", i,
                  data[i].n);
        PKV_CHECK(data[i].x != nullptr || data[i].n == 0, invalid_argument,
                  "cuda assigner: data set {}: null points with n = {}", i, data[i].n);
        SetInfo s;
        s.hx = data[i].x;
        s.n = data[i].n;
        sets.push_back(s);
        total += data[i].n;
    }
    plan_pieces(total);
    fix_scales(in_group);
    active = true;
}

// Resident when the budget holds all `total` rows, else streamed in chunks.
void CudaAssigner::Impl::plan_pieces(int64_t total) {
    const int64_t fit = resident_rows(d);
    streaming = total > fit;
    // Streamed chunks of whole tiles keep the objective's summation order of the
    // resident pass; chunks of whole one-hot groups (at most 32 tiles) keep its sums.
    const int64_t group_rows = int64_t{32} * detail::kTile;
    chunk_rows = !streaming             ? std::max<int64_t>(total, 1)
                 : fit >= group_rows    ? fit / group_rows * group_rows
                 : fit >= detail::kTile ? fit / detail::kTile * detail::kTile
                                        : fit;
    points.reserve(static_cast<size_t>(chunk_rows) * d * elem());

    // Pieces: whole sets when resident; else pieces of <= chunk_rows rows starting
    // at multiples of chunk_rows of their set, packed greedily into chunks.
    chunks.assign(1, {});
    int64_t used = 0;
    for (int si = 0; si < static_cast<int>(sets.size()); ++si) {
        SetInfo& s = sets[static_cast<size_t>(si)];
        for (int64_t r0 = 0; r0 < s.n; r0 += chunk_rows) {
            Piece p;
            p.set = si;
            p.r0 = r0;
            p.rows = std::min(chunk_rows, s.n - r0);
            if (used + p.rows > chunk_rows) {
                chunks.emplace_back();
                used = 0;
            }
            p.buf_row = used;
            p.slot = s.slots;
            s.slots += detail::slots_of(p.rows);
            used += p.rows;
            chunks.back().push_back(p);
        }
    }
}

// Uploads every piece (resident data stays) and fixes every set's fixed-point scale;
// with `in_group`, from max|x| and n over the whole group (collective).
void CudaAssigner::Impl::fix_scales(bool in_group) {
    // max|x| of every set (of the rounded values for fp16/bf16); resident data stays.
    const size_t ns = std::max<size_t>(sets.size(), 1);
    max_bits.reserve(ns);
    PKV_CUDA_CHECK(cudaMemsetAsync(max_bits.get(), 0, ns * sizeof(unsigned int), stream));
    for (const auto& chunk : chunks)
        for (const Piece& p : chunk) {
            upload(p);
            if (bf16()) detail::launch_max_abs_bf16(rows_at(p.buf_row), p.rows * d, max_bits.get() + p.set, stream);
            else detail::launch_max_abs(rows_at(p.buf_row), rounded(), p.rows * d, max_bits.get() + p.set, stream);
        }
    std::vector<unsigned int> bits(ns);
    std::vector<unsigned long long> n_scale(ns, 0);
    for (size_t i = 0; i < sets.size(); ++i) n_scale[i] = static_cast<unsigned long long>(sets[i].n);
    grouped = in_group;
    if (in_group) {
        // The bits of non-negative floats order as the floats do (a NaN or inf above
        // every finite value), so the integer maximum is max|x| over the group.
        group_n.reserve(ns);
        PKV_CUDA_CHECK(cudaMemcpyAsync(group_n.get(), n_scale.data(), ns * 8, cudaMemcpyHostToDevice, stream));
        nccl_group().max_u32(opt.nccl.rank, max_bits.get(), ns, stream);
        nccl_group().sum_u64(opt.nccl.rank, group_n.get(), ns, stream);
        PKV_CUDA_CHECK(cudaMemcpyAsync(n_scale.data(), group_n.get(), ns * 8, cudaMemcpyDeviceToHost, stream));
    }
    PKV_CUDA_CHECK(
        cudaMemcpyAsync(bits.data(), max_bits.get(), ns * sizeof(unsigned int), cudaMemcpyDeviceToHost, stream));
    wait();
    for (size_t i = 0; i < sets.size(); ++i) {
        float max_abs = 0.0f;
        std::memcpy(&max_abs, &bits[i], sizeof(max_abs));
        PKV_CHECK(std::isfinite(max_abs), invalid_argument,
                  "cuda assigner: data set {}: points have a non-finite coordinate{}", i,
                  rounded() ? " (or one beyond the binary16/bf16 range; use fp32 input)" : "");
        SetInfo& s = sets[i];
        s.scale = 1.0;
        const double n = static_cast<double>(n_scale[i]);  // the group's n in a group
        if (max_abs > 0.0f && n > 0) {
            // Largest 2^e with n * max|x| * 2^e <= 2^61 (no partial sum can overflow
            // int64) and max|x| * 2^e <= 2^39 (one coordinate fits the shared-memory
            // partials of the tensor-core kernel). Kept inside the float exponent
            // range (the kernel scales in fp32).
            const double e = std::min(std::floor(std::log2(std::ldexp(1.0, 61) / (n * max_abs))),
                                      std::floor(std::log2(std::ldexp(1.0, 39) / static_cast<double>(max_abs))));
            s.scale = std::ldexp(1.0, static_cast<int>(std::clamp(e, -120.0, 120.0)));
        }
    }
}

void CudaAssigner::Impl::release_data() noexcept {
    if (stream) cudaStreamSynchronize(stream);  // no pass still reads what goes below
    for (Slot& sl : slot) sl.tasks = nullptr;
    active = false;
    grouped = false;
    d = 0;
    sets.clear();
    chunks.clear();
    points.release();
    out_labels.release();
    out_dist2.release();
}

}  // namespace pkv::cuda
