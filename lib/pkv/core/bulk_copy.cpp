#include "pkv/core/bulk_copy.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "pkv/core/fixed_point.h"

namespace pkv {
namespace {

constexpr size_t kPieceBytes = size_t{1} << 20;

struct Piece {
    size_t run, first, count;  // elements [first, first + count) of run `run`
};

// Runs of elements of elem bytes cut into pieces; total bytes in *bytes.
template <typename Run, typename Len>
std::vector<Piece> pieces_of(const Run* runs, size_t count, size_t elem, Len len, size_t* bytes) {
    std::vector<Piece> out;
    const size_t per = std::max<size_t>(kPieceBytes / elem, 1);
    *bytes = 0;
    for (size_t r = 0; r < count; ++r) {
        const size_t n = len(runs[r]);
        *bytes += n * elem;
        for (size_t f = 0; f < n; f += per) out.push_back(Piece{r, f, std::min(per, n - f)});
    }
    return out;
}

}  // namespace

void copy_runs(const CopyRun* runs, size_t count) {
    size_t bytes = 0;
    const std::vector<Piece> ps = pieces_of(runs, count, 1, [](const CopyRun& r) { return r.bytes; }, &bytes);
    const int64_t np = static_cast<int64_t>(ps.size());
#pragma omp parallel for schedule(static) if (bytes >= kBulkParallelBytes)
    for (int64_t i = 0; i < np; ++i) {
        const Piece& p = ps[static_cast<size_t>(i)];
        const CopyRun& r = runs[p.run];
        std::memcpy(static_cast<unsigned char*>(r.dst) + p.first, static_cast<const unsigned char*>(r.src) + p.first,
                    p.count);
    }
}

void fixed_to_double_runs(const FixedRun* runs, size_t count) {
    size_t bytes = 0;
    const std::vector<Piece> ps = pieces_of(runs, count, 8, [](const FixedRun& r) { return r.n; }, &bytes);
    const int64_t np = static_cast<int64_t>(ps.size());
#pragma omp parallel for schedule(static) if (bytes >= kBulkParallelBytes)
    for (int64_t i = 0; i < np; ++i) {
        const Piece& p = ps[static_cast<size_t>(i)];
        const FixedRun& r = runs[p.run];
        fixed_to_double_n(r.src + p.first, r.unit, r.dst + p.first, p.count);
    }
}

}  // namespace pkv
