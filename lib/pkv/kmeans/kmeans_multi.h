// pkv/kmeans/kmeans_multi.h — kmeans_batch() over several assigners at once (one per
// GPU of a host), each in its own thread.
#pragma once

#include <cstdint>
#include <vector>

#include "pkv/kmeans/kmeans.h"

namespace pkv {

class KMeansAssigner;

/// Which assigner each problem goes to: problems sorted by n (largest first, lower
/// index first on equal n), each given to the assigner with the fewest points so far
/// (the lowest index on a tie). result[i] in [0, assigners).
std::vector<int> deal_problems(const std::vector<KMeansProblem>& problems, int assigners);

/// The size (points) above which a problem runs data parallel: shard_above when > 0,
/// else the fewest points any non-null assigner keeps resident (INT64_MAX: no limit).
int64_t shard_limit(const std::vector<KMeansAssigner*>& assigners, int d, int64_t shard_above);

/// True when the assigners can share one problem's rows: two or more, none the
/// nullptr CPU default.
bool can_shard(const std::vector<KMeansAssigner*>& assigners);

/// kmeans_batch() with the problems dealt over `assigners` (deal_problems), every
/// assigner's share in its own thread. Results are in problem order and bitwise equal
/// to kmeans_batch() with one assigner of the same kind (kmeans_batch's per-problem
/// contract), except KMeansIterationStats::seconds. A nullptr entry is the CPU
/// assigner. The first exception of any thread is rethrown after all have ended.
/// When can_shard(assigners), the problems above shard_limit() run as one batch, data
/// parallel over all assigners (ShardedAssigner): equal to the single-assigner run to
/// double rounding of the sums (sharded_assigner.h), not bitwise.
std::vector<KMeansResult> kmeans_batch_multi(const std::vector<KMeansProblem>& problems, int d,
                                             const KMeansParams& params, const std::vector<KMeansAssigner*>& assigners,
                                             int64_t shard_above = 0);

}  // namespace pkv
