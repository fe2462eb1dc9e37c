#include "pkv/kmeans/sharded_assigner.h"

#include <algorithm>

#include "pkv/core/error.h"
#include "pkv/core/threads.h"

namespace pkv {

namespace {
constexpr int64_t kShardAlign = 8192;
}  // namespace

ShardedAssigner::ShardedAssigner(std::vector<KMeansAssigner*> shards) : shards_(std::move(shards)) {
    PKV_CHECK(!shards_.empty(), invalid_argument, "sharded assigner: expected at least one shard");
    for (KMeansAssigner* a : shards_) PKV_CHECK(a != nullptr, invalid_argument, "sharded assigner: null shard");
    group_ = is_sum_group(shards_);
}

bool is_sum_group(const std::vector<KMeansAssigner*>& members) {
    if (members.size() < 2) return false;
    const SumGroup g0 = members.front() ? members.front()->sum_group() : SumGroup{};
    if (g0.id == nullptr || g0.size != static_cast<int>(members.size())) return false;
    for (size_t i = 0; i < members.size(); ++i) {
        const SumGroup g = members[i] ? members[i]->sum_group() : SumGroup{};
        if (g.id != g0.id || g.rank != static_cast<int>(i)) return false;
    }
    return true;
}

int64_t shard_row(int64_t n, int s, int shards) {
    const int64_t S = shards;
    if (s >= S) return n;
    // n * s can overflow int64 only beyond 2^63 / S rows.
    const int64_t b = static_cast<int64_t>(static_cast<__int128>(n) * s / S);
    if (n / S >= kShardAlign) return b / kShardAlign * kShardAlign;
    return b;
}

std::vector<AssignData> shard_slices(const std::vector<AssignData>& data, int d, int s, int shards,
                                     std::vector<int>& local_index, bool keep_empty) {
    std::vector<AssignData> out;
    local_index.assign(data.size(), -1);
    for (size_t i = 0; i < data.size(); ++i) {
        const int64_t b = shard_row(data[i].n, s, shards), e = shard_row(data[i].n, s + 1, shards);
        if (e <= b && !keep_empty) continue;
        local_index[i] = static_cast<int>(out.size());
        out.push_back(AssignData{data[i].x + b * d, e - b});
    }
    return out;
}

int64_t ShardedAssigner::shard_begin(int64_t n, int s) const {
    return shard_row(n, s, static_cast<int>(shards_.size()));
}

void ShardedAssigner::assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                             float* dist2) {
    each_in_thread(shards_.size(), [&](size_t s) {
        const int64_t b = shard_begin(n, static_cast<int>(s)), e = shard_begin(n, static_cast<int>(s) + 1);
        if (e > b) shards_[s]->assign(x + b * d, e - b, d, centroids, k, labels + b, dist2 + b);
    });
}

void ShardedAssigner::begin_batch(const std::vector<AssignData>& data, int d) {
    batch_data_ = data;
    batch_d_ = d;
    const int S = static_cast<int>(shards_.size());
    local_index_.assign(shards_.size(), {});
    std::vector<std::vector<AssignData>> mine(shards_.size());
    for (int s = 0; s < S; ++s) mine[s] = shard_slices(data, d, s, S, local_index_[s], group_);
    began_.assign(shards_.size(), 0);
    for (size_t s = 0; s < shards_.size(); ++s) began_[s] = group_ || !mine[s].empty();
    each_in_thread(shards_.size(), [&](size_t s) {
        if (group_) shards_[s]->begin_group_batch(mine[s], d);
        else if (!mine[s].empty()) shards_[s]->begin_batch(mine[s], d);
    });
}

void ShardedAssigner::end_batch() noexcept {
    for (size_t s = 0; s < began_.size(); ++s)
        if (began_[s]) shards_[s]->end_batch();
    began_.clear();
    local_index_.clear();
    batch_data_.clear();
}

void ShardedAssigner::assign_batch(std::vector<AssignTask>& tasks, int k) {
    PKV_CHECK(!local_index_.empty(), internal, "sharded assigner: assign_batch() outside begin_batch()/end_batch()");
    const int d = batch_d_;
    const size_t kd = static_cast<size_t>(k) * static_cast<size_t>(d);
    // Per shard: its tasks (data index remapped, outputs at the shard's rows, own sums).
    std::vector<std::vector<AssignTask>> st(shards_.size());
    std::vector<std::vector<size_t>> which(shards_.size());
    std::vector<std::vector<std::vector<double>>> sums(shards_.size());
    std::vector<std::vector<std::vector<int64_t>>> counts(shards_.size());
    for (size_t s = 0; s < shards_.size(); ++s)
        for (size_t ti = 0; ti < tasks.size(); ++ti) {
            const AssignTask& t = tasks[ti];
            const int local = local_index_[s][static_cast<size_t>(t.data)];
            if (local < 0) continue;  // no rows of this data set here
            const int64_t b = shard_begin(batch_data_[static_cast<size_t>(t.data)].n, static_cast<int>(s));
            AssignTask u = t;
            u.data = local;
            if (t.labels) u.labels = t.labels + b;
            if (t.dist2) u.dist2 = t.dist2 + b;
            if (t.sums) {
                sums[s].emplace_back(kd);
                counts[s].emplace_back(static_cast<size_t>(k));
            }
            st[s].push_back(u);
            which[s].push_back(ti);
        }
    for (size_t s = 0; s < shards_.size(); ++s) {  // buffers are final now: point at them
        size_t acc = 0;
        for (AssignTask& u : st[s])
            if (u.sums) {
                u.sums = sums[s][acc].data();
                u.counts = counts[s][acc].data();
                ++acc;
            }
    }
    each_in_thread(shards_.size(), [&](size_t s) {
        if (!st[s].empty()) shards_[s]->assign_batch(st[s], k);
    });
    for (AssignTask& t : tasks) {
        t.objective = 0.0;
        if (t.sums) {
            std::fill(t.sums, t.sums + kd, 0.0);
            std::fill(t.counts, t.counts + k, int64_t{0});
        }
    }
    for (size_t s = 0; s < shards_.size(); ++s)
        for (size_t i = 0; i < st[s].size(); ++i) {
            AssignTask& t = tasks[which[s][i]];
            t.objective += st[s][i].objective;
            if (!t.sums || (group_ && s > 0)) continue;  // a group's shards all hold the totals
            for (size_t e = 0; e < kd; ++e) t.sums[e] += st[s][i].sums[e];
            for (int j = 0; j < k; ++j) t.counts[j] += st[s][i].counts[j];
        }
}

}  // namespace pkv
