#include "pkv/dist/rank_sharded_assigner.h"

#include <algorithm>

#include "pkv/core/error.h"
#include "pkv/dist/comm.h"
#include "pkv/kmeans/sharded_assigner.h"

namespace pkv::dist {

RankShardedAssigner::RankShardedAssigner(KMeansAssigner* local, const Comm& comm)
    : local_(local ? local : &cpu_), comm_(comm) {
    const SumGroup g = local_->sum_group();
    group_ = g.id != nullptr && g.size == comm_.size() && g.rank == comm_.rank() && comm_.size() > 1;
}

std::vector<int64_t> RankShardedAssigner::counts_of(int64_t n) const {
    std::vector<int64_t> c(static_cast<size_t>(comm_.size()));
    for (int r = 0; r < comm_.size(); ++r) c[static_cast<size_t>(r)] = shard_row(n, r + 1, comm_.size()) - shard_row(n, r, comm_.size());
    return c;
}

void RankShardedAssigner::assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                                 float* dist2) {
    const int64_t b = shard_row(n, comm_.rank(), comm_.size()), e = shard_row(n, comm_.rank() + 1, comm_.size());
    if (e > b) local_->assign(x + b * d, e - b, d, centroids, k, labels + b, dist2 + b);
    const std::vector<int64_t> counts = counts_of(n);
    comm_.allgather(labels, counts);
    comm_.allgather(dist2, counts);
}

void RankShardedAssigner::begin_batch(const std::vector<AssignData>& data, int d) {
    batch_data_ = data;
    batch_d_ = d;
    const std::vector<AssignData> mine = shard_slices(data, d, comm_.rank(), comm_.size(), local_index_, group_);
    local_began_ = group_ || !mine.empty();
    if (group_) local_->begin_group_batch(mine, d);
    else if (local_began_) local_->begin_batch(mine, d);
}

void RankShardedAssigner::end_batch() noexcept {
    if (local_began_) local_->end_batch();
    local_began_ = false;
    local_index_.clear();
    batch_data_.clear();
}

void RankShardedAssigner::assign_batch(std::vector<AssignTask>& tasks, int k) {
    const int d = batch_d_;
    const size_t kd = static_cast<size_t>(k) * static_cast<size_t>(d);
    std::vector<AssignTask> mine;
    std::vector<size_t> which;
    for (size_t ti = 0; ti < tasks.size(); ++ti) {
        AssignTask& t = tasks[ti];
        PKV_CHECK(t.data >= 0 && static_cast<size_t>(t.data) < local_index_.size(), internal,
                  "rank-sharded assigner: task {} names data set {}", ti, t.data);
        t.objective = 0.0;
        if (t.sums) {
            std::fill(t.sums, t.sums + kd, 0.0);
            std::fill(t.counts, t.counts + k, int64_t{0});
        }
        const int local = local_index_[static_cast<size_t>(t.data)];
        if (local < 0) continue;  // no rows of this data set on this rank: zeros go into the sums
        const int64_t b = shard_row(batch_data_[static_cast<size_t>(t.data)].n, comm_.rank(), comm_.size());
        AssignTask u = t;
        u.data = local;
        if (t.labels) u.labels = t.labels + b;
        if (t.dist2) u.dist2 = t.dist2 + b;
        mine.push_back(u);
        which.push_back(ti);
    }
    if (!mine.empty()) local_->assign_batch(mine, k);
    for (size_t i = 0; i < mine.size(); ++i) tasks[which[i]].objective = mine[i].objective;
    // Every rank walks the same tasks in the same order: the collectives match.
    for (AssignTask& t : tasks) {
        comm_.sum(&t.objective, 1);
        if (t.sums && !group_) {  // a group's ranks already hold the totals
            comm_.sum(t.sums, kd);
            comm_.sum(t.counts, static_cast<size_t>(k));
        }
        const int64_t n = batch_data_[static_cast<size_t>(t.data)].n;
        if (t.labels) comm_.allgather(t.labels, counts_of(n));
        if (t.dist2) comm_.allgather(t.dist2, counts_of(n));
    }
}

}  // namespace pkv::dist
