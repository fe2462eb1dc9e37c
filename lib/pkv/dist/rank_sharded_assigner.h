// pkv/dist/rank_sharded_assigner.h — one k-means problem data parallel over the ranks
// of an MPI job: every rank runs the same host Lloyd loop on the whole problem (the
// same data, seed and therefore the same initialisation, subsample and refills), but
// its local assigner (a GPU, or a ShardedAssigner over the host's GPUs) only sees the
// rank's shard of the rows (shard_row over the ranks). After each pass the ranks' sums,
// counts and objectives are added in rank order and every rank gets the same totals
// (dist::Comm::sum), labels and distances are exchanged (dist::Comm::allgather), so the
// centroids stay identical on all ranks.
//
// Equal to the single-process run to double rounding of the sums (as ShardedAssigner).
// Every rank must make the same sequence of calls (the Lloyd loop does).
//
// On the devices: when the local assigner is member `rank` of a sum group of exactly
// the job's ranks (a CudaAssigner that joined the ranks' NCCL group, one GPU a rank),
// the ranks begin with begin_group_batch() and the sums and counts are added on the
// devices (NCCL all-reduce of the int64 fixed-point sums): bitwise the single-GPU sums,
// as in ShardedAssigner. Objectives, labels and distances still go through Comm.
#pragma once

#include <vector>

#include "pkv/kmeans/assigner.h"

namespace pkv::dist {

class Comm;

class RankShardedAssigner final : public KMeansAssigner {
public:
    /// local: this rank's assigner (not owned; nullptr: the CPU).
    RankShardedAssigner(KMeansAssigner* local, const Comm& comm);
    const char* name() const override { return "ranks"; }
    void assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                float* dist2) override;
    void begin_batch(const std::vector<AssignData>& data, int d) override;
    void end_batch() noexcept override;
    void assign_batch(std::vector<AssignTask>& tasks, int k) override;
    /// The local assigner's sum group spans exactly the ranks (see the file comment).
    bool group_sums() const { return group_; }

private:
    std::vector<int64_t> counts_of(int64_t n) const;
    KMeansAssigner* local_;
    CpuAssigner cpu_;
    const Comm& comm_;
    std::vector<int> local_index_;  // per begin_batch() data set: its index in the local batch, or -1
    bool local_began_ = false;
    bool group_ = false;
};

}  // namespace pkv::dist
