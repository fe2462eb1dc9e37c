#include "pkv/kmeans/kmeans_multi.h"

#include <algorithm>
#include <cstdint>
#include <numeric>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pkv/core/error.h"
#include "pkv/core/threads.h"
#include "pkv/kmeans/sharded_assigner.h"

namespace pkv {

std::vector<int> deal_problems(const std::vector<KMeansProblem>& problems, int assigners) {
    PKV_CHECK(assigners >= 1, invalid_argument, "k-means: expected at least one assigner, got {}", assigners);
    std::vector<size_t> order(problems.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return problems[a].n > problems[b].n; });
    std::vector<int64_t> load(static_cast<size_t>(assigners), 0);
    std::vector<int> owner(problems.size(), 0);
    for (size_t i : order) {
        const auto it = std::min_element(load.begin(), load.end());
        owner[i] = static_cast<int>(it - load.begin());
        *it += problems[i].n;
    }
    return owner;
}

int64_t shard_limit(const std::vector<KMeansAssigner*>& assigners, int d, int64_t shard_above) {
    if (shard_above > 0) return shard_above;
    int64_t fits = INT64_MAX;
    for (KMeansAssigner* a : assigners)
        if (a) fits = std::min(fits, a->max_resident_rows(d));
    return fits;
}

bool can_shard(const std::vector<KMeansAssigner*>& assigners) {
    return assigners.size() > 1 && std::find(assigners.begin(), assigners.end(), nullptr) == assigners.end();
}

std::vector<KMeansResult> kmeans_batch_multi(const std::vector<KMeansProblem>& problems, int d,
                                             const KMeansParams& params, const std::vector<KMeansAssigner*>& assigners,
                                             int64_t shard_above) {
    PKV_CHECK(!assigners.empty(), invalid_argument, "k-means: expected at least one assigner");
    if (assigners.size() == 1 || problems.empty()) return kmeans_batch(problems, d, params, assigners.front());
    check_kmeans_problems(problems, d, params);  // here, so that errors name the caller's problem index
    // Problems larger than one assigner holds run together, data parallel over all of
    // them; the others are dealt, one share per assigner and thread.
    const int64_t limit = can_shard(assigners) ? shard_limit(assigners, d, shard_above) : INT64_MAX;
    std::vector<size_t> big, rest;
    for (size_t i = 0; i < problems.size(); ++i) (problems[i].n > limit ? big : rest).push_back(i);
    std::vector<KMeansResult> out(problems.size());
    auto run = [&](const std::vector<size_t>& idx, KMeansAssigner* a) {
        std::vector<KMeansProblem> share;
        for (size_t i : idx) share.push_back(problems[i]);
        std::vector<KMeansResult> res = kmeans_batch(share, d, params, a);
        for (size_t j = 0; j < idx.size(); ++j) out[idx[j]] = std::move(res[j]);
    };
    if (!big.empty()) {
        ShardedAssigner sharded(assigners);
        run(big, &sharded);
    }
    if (rest.empty()) return out;
    std::vector<KMeansProblem> dealt;
    for (size_t i : rest) dealt.push_back(problems[i]);
    const std::vector<int> owner = deal_problems(dealt, static_cast<int>(assigners.size()));
    std::vector<std::vector<size_t>> shares(assigners.size());
    for (size_t j = 0; j < rest.size(); ++j) shares[static_cast<size_t>(owner[j])].push_back(rest[j]);
#ifdef _OPENMP
    // Every worker's host work (centroid updates; a CPU worker's passes) in its share of
    // the cores: all workers at full width would oversubscribe them. Results do not
    // depend on thread counts.
    const int threads = std::max(1, omp_get_max_threads() / static_cast<int>(assigners.size()));
#endif
    each_in_thread(assigners.size(), [&](size_t a) {
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
        if (!shares[a].empty()) run(shares[a], assigners[a]);
    });
    return out;
}

}  // namespace pkv
