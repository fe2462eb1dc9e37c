// pkv/distributed/rank_sharded_assigner.h — one k-means problem data parallel over the ranks
// of an MPI job, each rank holding only its shard of the rows.
//
// Rank 0, the leader, runs the host Lloyd loop (kmeans_batch with this assigner) on the
// whole problem: initialisation, subsample, refills and the update need all rows. The
// other ranks, the followers, hold only their shard of each problem (rows
// [shard_row(n, r, R), shard_row(n, r + 1, R)), read by their caller) and serve() the
// leader's passes until it release()s them. For every pass the leader broadcasts the
// tasks and their centroids; every rank runs its rows through its local assigner (a GPU,
// a ShardedAssigner over the host's GPUs, or the CPU); then
//   - sums and counts are added over the ranks: on the devices when the local assigners
//     form one sum group over exactly the ranks (CudaAssigners that joined the ranks'
//     NCCL group, one GPU a rank: bitwise the single-GPU sums, see assigner.h), else
//     gathered to rank 0 and added in rank order (dist::Comm::sum);
//   - objectives are added in rank order;
//   - labels and distances are gathered to the leader (the followers keep none).
// A data set of a batch that is not one of the leader's set_problems() (a training
// subsample) is scattered by the leader, each follower receiving its shard.
//
// Equal to the single-process run to double rounding of the sums (host combine), or
// bitwise in the sums (device group, shards of whole 8192-row groups). Failure: a rank
// that throws ends the job (the caller's dist::Comm::abort); the leader sends nothing
// more once an exception is under way.
#pragma once

#include <string>
#include <vector>

#include "pkv/kmeans/assigner.h"

namespace pkv::dist {

class Comm;

class RankShardedAssigner final : public KMeansAssigner {
public:
    /// local: this rank's assigner (not owned; nullptr: the CPU).
    RankShardedAssigner(KMeansAssigner* local, const Comm& comm);
    const char* name() const override { return "ranks"; }

    // Leader (rank 0) side: the KMeansAssigner interface, driven by kmeans_batch.
    /// The problems whose shards the followers hold, in the order of their serve() list.
    void set_problems(const std::vector<AssignData>& problems);
    void assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                float* dist2) override;
    void begin_batch(const std::vector<AssignData>& data, int d) override;
    void end_batch() noexcept override;
    void assign_batch(std::vector<AssignTask>& tasks, int k) override;
    /// Ends the followers' serve().
    void release();

    /// Follower (rank > 0) side: shards[i] = this rank's rows of problem i of the leader's
    /// set_problems(). Returns when the leader calls release().
    void serve(const std::vector<AssignData>& shards);

    /// The local assigner's sum group spans exactly the ranks (see the file comment).
    bool group_sums() const { return group_; }

private:
    void begin_local(const std::vector<AssignData>& mine, int d);
    void run_pass(std::vector<AssignTask>& tasks, int k);
    KMeansAssigner* local_;
    CpuAssigner cpu_;
    const Comm& comm_;
    std::vector<AssignData> problems_;
    std::vector<int> local_index_;  // per batch data set: its index in the local batch, or -1
    std::vector<int64_t> set_n_;    // per batch data set: its rows over all ranks
    bool local_began_ = false;
    bool group_ = false;
};

}  // namespace pkv::dist
