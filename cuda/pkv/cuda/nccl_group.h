// pkv/cuda/nccl_group.h — NCCL communicators for data-parallel k-means: the GPUs that
// hold the shards of one problem add their sums and counts on the devices, with an
// all-reduce each pass, instead of sending them to the host to be added there.
//
// Two ways to make a group:
//   nccl_local_group({0, 1, ...}): one member per GPU of this process (ncclCommInitAll);
//     each member is driven by its own thread (ShardedAssigner runs one per shard).
//   nccl_join(id, ranks, rank, device): one member per MPI rank; rank 0 makes the id
//     (nccl_unique_id()) and the caller sends it to every rank (dist::Comm::broadcast),
//     then every rank joins (ncclCommInitRank).
// A member goes into CudaAssignerOptions::nccl; the assigner then reports the group as
// its sum_group() (lib/pkv/kmeans/assigner.h) and adds sums with it inside a
// begin_group_batch() ... end_batch() bracket only.
// The devices of one group must be distinct (NCCL refuses two members on one GPU).
//
// Sums are the 64-bit fixed-point integers of the assigner, so the all-reduce is exact
// and its order does not matter: every member gets the same bits.
//
// Failure: a member whose pass throws marks the group failed (fail()); the other
// members of this process stop waiting for it (wait() aborts their communicators and
// throws), so no thread hangs on a peer that will never arrive. Across processes the
// caller ends the job (dist::Comm::abort, MPI_Abort). A failed group stays failed.
//
// No CUDA or NCCL types here: apps and tests include it with the host compiler.
// Without NCCL (built_with_nccl() false) making a group throws unsupported.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pkv::cuda {

/// True when pkv_cuda was built with NCCL.
bool built_with_nccl();
/// "NCCL 2.28.9" (the library loaded at run time), or "" without NCCL.
std::string nccl_version();

class NcclGroup;

/// A member of a group: which group and which of its members (NCCL rank).
struct NcclMember {
    std::shared_ptr<NcclGroup> group;  ///< null: no group
    int rank = -1;
};

/// One member per device of `devices` (at least two, all distinct), in that order.
/// Throws unsupported without NCCL, invalid_argument on repeated devices.
std::vector<NcclMember> nccl_local_group(const std::vector<int>& devices);

/// A fresh unique id (opaque bytes) for nccl_join; made once, on one rank.
std::string nccl_unique_id();

/// Joins the group of `ranks` members named by id as member `rank`, on GPU `device`
/// (collective: every rank must call it).
NcclMember nccl_join(const std::string& id, int ranks, int rank, int device);

class NcclGroup {
public:
    ~NcclGroup();
    NcclGroup(const NcclGroup&) = delete;
    NcclGroup& operator=(const NcclGroup&) = delete;

    /// Members of the whole group (all processes).
    int size() const;
    /// "NCCL 2.28.9, 2 GPUs in one process" / "NCCL 2.28.9, 4 ranks".
    const std::string& description() const;

    // Collectives of member `member` (a rank this process holds) on its CUDA stream
    // (cudaStream_t passed as void*), in place, enqueued asynchronously; every member
    // must make the same calls in the same order. Used by the CUDA assigner.
    void sum_u64(int member, unsigned long long* device_data, size_t count, void* stream);
    void max_u32(int member, unsigned int* device_data, size_t count, void* stream);
    /// Waits for the stream of `member`; throws Error(cuda) when another member of
    /// this process failed (after aborting this member's communicator) or NCCL reports
    /// an asynchronous error.
    void wait(int member, void* stream);
    /// Marks the group failed (this member's pass threw). Never throws.
    void fail(int member) noexcept;

private:
    struct Impl;
    explicit NcclGroup(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
    friend std::vector<NcclMember> nccl_local_group(const std::vector<int>& devices);
    friend NcclMember nccl_join(const std::string& id, int ranks, int rank, int device);
};

}  // namespace pkv::cuda
