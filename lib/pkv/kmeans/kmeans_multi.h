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

/// kmeans_batch() with the problems dealt over `assigners` (deal_problems), every
/// assigner's share in its own thread. Results are in problem order and bitwise equal
/// to kmeans_batch() with one assigner of the same kind (kmeans_batch's per-problem
/// contract), except KMeansIterationStats::seconds. A nullptr entry is the CPU
/// assigner. The first exception of any thread is rethrown after all have ended.
/// With several (non-null) assigners, a problem of more points than one of them keeps
/// resident (KMeansAssigner::max_resident_rows) runs alone, data parallel over all of
/// them (ShardedAssigner): equal to the single-assigner run to double rounding of the
/// sums (sharded_assigner.h), not bitwise.
/// shard_above > 0 replaces max_resident_rows as the size above which a problem runs
/// data parallel.
std::vector<KMeansResult> kmeans_batch_multi(const std::vector<KMeansProblem>& problems, int d,
                                             const KMeansParams& params,
                                             const std::vector<KMeansAssigner*>& assigners,
                                             int64_t shard_above = 0);

}  // namespace pkv
