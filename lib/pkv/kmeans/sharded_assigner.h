// pkv/kmeans/sharded_assigner.h — one k-means problem over several assigners at once
// (data parallel): each assigner (e.g. one per GPU) holds a contiguous shard of every
// data set's rows, runs its part of each pass in its own thread, and the shards'
// sums, counts and objectives are added on the host.
//
// For a problem whose points do not fit one GPU: kmeans_batch_multi() runs such
// problems through a ShardedAssigner over all its assigners (see
// KMeansAssigner::max_resident_rows). The Lloyd loop itself (initialisation,
// subsample, empty-cluster refills, the update) stays on the host, unchanged, so the
// run is the single-assigner run except for the order in which partial sums are
// added: sums and objective equal it to double rounding (relative ~1e-16 of the sum
// of |x| per cluster), labels wherever no two centroids are that close to a tie.
//
// Shards: data set rows [n * s / S, n * (s + 1) / S) rounded down to a multiple of
// 8192 rows (the one-hot kernel's largest group) when every shard keeps at least that
// many, so a GPU's partials group rows as a single GPU would. A shard with no rows of
// a data set skips its tasks. Sums and counts of the shards are added in shard order
// (deterministic).
//
// On the devices: when the shards are exactly the members of one sum group (their
// sum_group(): e.g. CudaAssigners of one NCCL group, rank s = shard s), every shard
// begins the batch with begin_group_batch() (holding every data set, possibly 0 rows
// of one) and its pass returns the group's sums and counts, added on the devices (an
// NCCL all-reduce of the int64 fixed-point sums). Those are then exactly the sums of
// one device holding all rows (same scale, same row groups when the shards start on
// multiples of 8192 rows), so the run equals the single-assigner run bitwise except
// the objective, which is still added on the host in shard order. group_sums() tells
// which way the current batch runs.
#pragma once

#include <cstdint>
#include <vector>

#include "pkv/kmeans/assigner.h"

namespace pkv {

/// First row of shard s of S over n rows (s = S gives n): n * s / S, rounded down to a
/// multiple of 8192 when every shard keeps at least 8192 rows.
int64_t shard_row(int64_t n, int s, int shards);

/// Shard s of S of every data set: the non-empty row slices [shard_row(n, s),
/// shard_row(n, s + 1)) in data-set order; local_index[i] = data set i's position among
/// them, -1 when it has no rows in this shard.
/// keep_empty: every data set is kept (a slice of 0 rows where the shard has none), so
/// local_index[i] = i.
std::vector<AssignData> shard_slices(const std::vector<AssignData>& data, int d, int s, int shards,
                                     std::vector<int>& local_index, bool keep_empty = false);

/// True when `members` are exactly the members of one sum group, member i its rank i
/// (KMeansAssigner::sum_group()); needs at least two.
bool is_sum_group(const std::vector<KMeansAssigner*>& members);

class ShardedAssigner final : public KMeansAssigner {
public:
    /// shards: at least one; not owned; each is used by one thread at a time.
    explicit ShardedAssigner(std::vector<KMeansAssigner*> shards);
    const char* name() const override { return "sharded"; }
    void assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                float* dist2) override;
    void begin_batch(const std::vector<AssignData>& data, int d) override;
    void end_batch() noexcept override;
    void assign_batch(std::vector<AssignTask>& tasks, int k) override;

    /// First row of shard s of a data set of n rows (s in [0, shards]; s = shards gives n).
    int64_t shard_begin(int64_t n, int s) const;
    /// The shards add sums on their devices (is_sum_group(shards)): set at construction.
    bool group_sums() const { return group_; }
    /// Turns the device sums off (the host adds the shards' sums), e.g. to compare both.
    void set_group_sums(bool on) { group_ = on && is_sum_group(shards_); }

private:
    std::vector<KMeansAssigner*> shards_;
    // [shard][begin_batch() data set]: its index in the shard's own batch, -1 without rows.
    std::vector<std::vector<int>> local_index_;
    std::vector<char> began_;  // the shard's begin_batch() was called
    bool group_ = false;
};

}  // namespace pkv
