#include "pkv/core/bulk_copy.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "pkv/core/fixed_point.h"

namespace pkv {
namespace {

constexpr size_t kPieceBytes = size_t{1} << 20;

// Calls body(run, first, count) for pieces [first, first + count) of at most 1 MiB of
// every run (len(run) elements of elem bytes), over the threads when the runs hold at
// least kBulkParallelBytes in all.
template <typename Run, typename Len, typename Body>
void over_pieces(const Run* runs, size_t count, size_t elem, Len len, Body body) {
    struct Piece {
        size_t run, first, count;
    };
    std::vector<Piece> ps;
    const size_t per = std::max<size_t>(kPieceBytes / elem, 1);
    size_t bytes = 0;
    for (size_t r = 0; r < count; ++r) {
        const size_t n = len(runs[r]);
        bytes += n * elem;
        for (size_t f = 0; f < n; f += per) ps.push_back(Piece{r, f, std::min(per, n - f)});
    }
    const int64_t np = static_cast<int64_t>(ps.size());
#pragma omp parallel for schedule(static) if (bytes >= kBulkParallelBytes)
    for (int64_t i = 0; i < np; ++i) {
        const Piece& p = ps[static_cast<size_t>(i)];
        body(runs[p.run], p.first, p.count);
    }
}

}  // namespace

void copy_runs(const CopyRun* runs, size_t count) {
    over_pieces(
        runs, count, 1, [](const CopyRun& r) { return r.bytes; },
        [](const CopyRun& r, size_t first, size_t n) {
            std::memcpy(static_cast<unsigned char*>(r.dst) + first, static_cast<const unsigned char*>(r.src) + first,
                        n);
        });
}

void fixed_to_double_runs(const FixedRun* runs, size_t count) {
    over_pieces(
        runs, count, 8, [](const FixedRun& r) { return r.n; },
        [](const FixedRun& r, size_t first, size_t n) { fixed_to_double_n(r.src + first, r.unit, r.dst + first, n); });
}

}  // namespace pkv
