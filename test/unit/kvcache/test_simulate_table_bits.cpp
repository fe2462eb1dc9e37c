// patternkv-table heads at their own widths (TableHeadView::bits, a table's allocation):
// the simulation quantizes at that width, keeps a 16-bit head exact, and stores what
// table_element_bits says once every token is flushed.
#include <random>
#include <vector>

#include "catch.h"
#include "pkv/kvcache/simulate.h"

using namespace pkv;

namespace {

std::vector<float> noise(int64_t n, int D, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n * D));
    for (float& v : x) v = nd(rng);
    return x;
}

double sq_error(const SimResult& r, const std::vector<float>& x) {
    double e = 0.0;
    for (size_t i = 0; i < x.size(); ++i) e += (r.recon[i] - x[i]) * (r.recon[i] - x[i]);
    return e;
}

}  // namespace

TEST_CASE("patternkv-table: a head's own width, its storage as table_element_bits counts it", "[simulate][table]") {
    const int D = 16, M = 5;
    const std::vector<float> patterns = noise(M, D, 3);
    const int64_t n = 96;
    const std::vector<float> x = noise(n, D, 4);
    const int out = GENERATE(0, 1, 2);  // exact outliers per group, paid per element
    for (auto [G, R] : {std::pair<int, int>{8, 16}, {16, 16}, {4, 16}, {8, 8}})
        for (KvTensor tensor : {KvTensor::k, KvTensor::v}) {
            double prev = 1e300;
            for (int w : {2, 3, 4, 8, 16}) {
                INFO("outliers " << out << ", G " << G << " R " << R << " tensor "
                                 << (tensor == KvTensor::k ? "k" : "v") << " width " << w);
                TableHeadView view{patterns.data(), M, 0.9f, 1.0, false, w};
                SimParams p;
                p.method = KvMethod::patternkv_table;
                p.bits = 2;  // the table's pkv.quant.bits; the view's width wins
                p.group = G;
                p.window = R;
                p.outliers = out;
                p.table_k = p.table_v = &view;
                const SimResult r = simulate_cache(p, tensor, x.data(), n, D, 32);  // P, n - P multiples of R
                CHECK(r.bits.total() / static_cast<double>(n * D) ==
                      Approx(table_element_bits(tensor, w, D, M, G, R, out)).epsilon(1e-12));
                const double e = sq_error(r, x);
                // Wider codes, smaller error (with outliers a group of 4 keeps just 2 elements,
                // exact at any width).
                if (out == 0) CHECK(e < prev);
                prev = e;
                if (w == 16) CHECK(e == 0.0);
                if (w == 2) {  // 0 means the spec's width: the same as 2 here
                    TableHeadView spec_width = view;
                    spec_width.bits = 0;
                    p.table_k = p.table_v = &spec_width;
                    CHECK(simulate_cache(p, tensor, x.data(), n, D, 32).recon == r.recon);
                }
            }
        }
}
