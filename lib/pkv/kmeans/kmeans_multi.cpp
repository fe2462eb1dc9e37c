#include "pkv/kmeans/kmeans_multi.h"

#include <algorithm>
#include <cstdint>
#include <exception>
#include <numeric>
#include <thread>

#include "pkv/core/error.h"
#include "pkv/kmeans/sharded_assigner.h"

namespace pkv {

std::vector<int> deal_problems(const std::vector<KMeansProblem>& problems, int assigners) {
    PKV_CHECK(assigners >= 1, invalid_argument, "k-means: expected at least one assigner, got {}", assigners);
    std::vector<size_t> order(problems.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return problems[a].n > problems[b].n; });
    std::vector<int64_t> load(static_cast<size_t>(assigners), 0);
    std::vector<int> owner(problems.size(), 0);
    for (size_t i : order) {
        const auto it = std::min_element(load.begin(), load.end());
        owner[i] = static_cast<int>(it - load.begin());
        *it += problems[i].n;
    }
    return owner;
}

std::vector<KMeansResult> kmeans_batch_multi(const std::vector<KMeansProblem>& problems, int d,
                                             const KMeansParams& params,
                                             const std::vector<KMeansAssigner*>& assigners, int64_t shard_above) {
    PKV_CHECK(!assigners.empty(), invalid_argument, "k-means: expected at least one assigner");
    if (assigners.size() == 1 || problems.size() <= 1) return kmeans_batch(problems, d, params, assigners.front());
    check_kmeans_problems(problems, d, params);  // here, so that errors name the caller's problem index
    // Problems larger than one assigner holds run data parallel over all of them.
    int64_t fits = INT64_MAX;
    for (KMeansAssigner* a : assigners)
        if (a) fits = std::min(fits, a->max_resident_rows(d));
    if (shard_above > 0) fits = shard_above;
    std::vector<KMeansProblem> dealt;
    std::vector<size_t> dealt_index, big;
    for (size_t i = 0; i < problems.size(); ++i) {
        if (problems[i].n > fits && std::find(assigners.begin(), assigners.end(), nullptr) == assigners.end()) {
            big.push_back(i);
        } else {
            dealt.push_back(problems[i]);
            dealt_index.push_back(i);
        }
    }
    std::vector<KMeansResult> out(problems.size());
    if (!big.empty()) {
        ShardedAssigner sharded(assigners);
        for (size_t i : big) {
            KMeansParams pi = params;
            pi.seed = problems[i].seed;
            out[i] = kmeans(problems[i].x, problems[i].n, d, pi, &sharded);
        }
        if (dealt.empty()) return out;
        std::vector<KMeansResult> rest = kmeans_batch_multi(dealt, d, params, assigners, shard_above);
        for (size_t j = 0; j < dealt.size(); ++j) out[dealt_index[j]] = std::move(rest[j]);
        return out;
    }
    const std::vector<int> owner = deal_problems(problems, static_cast<int>(assigners.size()));
    std::vector<std::exception_ptr> errors(assigners.size());
    std::vector<std::thread> threads;
    for (size_t a = 0; a < assigners.size(); ++a) {
        std::vector<size_t> mine;
        for (size_t i = 0; i < problems.size(); ++i)
            if (owner[i] == static_cast<int>(a)) mine.push_back(i);
        if (mine.empty()) continue;
        threads.emplace_back([&, a, mine]() {
            try {
                std::vector<KMeansProblem> share;
                for (size_t i : mine) share.push_back(problems[i]);
                std::vector<KMeansResult> res = kmeans_batch(share, d, params, assigners[a]);
                for (size_t j = 0; j < mine.size(); ++j) out[mine[j]] = std::move(res[j]);
            } catch (...) {
                errors[a] = std::current_exception();
            }
        });
    }
    for (std::thread& t : threads) t.join();
    for (const std::exception_ptr& e : errors)
        if (e) std::rethrow_exception(e);
    return out;
}

}  // namespace pkv
