// pkv/kmeans/assign_cpu_fused.cpp — AVX2/FMA fused dot-product + argmin (see
// assign_cpu_fused.h).
//
// The micro-kernel is the classic 6 x 16 register block of an AVX2 SGEMM: 6 points x
// 16 centroids = 12 ymm accumulators, 2 ymm for one [16] row of a centroid panel and
// one for a broadcast coordinate. Per coordinate it issues 12 FMAs against 8 loads,
// so it runs at the FMA ports' rate. Unlike a GEMM it needs no packed copy of the
// points (they are broadcast straight from the row-major input) and writes no score
// tile: the 6 x 16 scores are reduced to a running minimum per point in registers.
#include "pkv/kmeans/assign_cpu_fused.h"

#include <algorithm>
#include <limits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PKV_FUSED_AVX2 1
#endif

#include "pkv/core/error.h"

namespace pkv::detail {

namespace {

constexpr int kLanes = 16;   // centroids per panel
constexpr int kRowTile = 6;  // points per micro-kernel call
// Points whose running minima are kept while the centroid panels stream past: their
// coordinates (192 x d floats, 48 KiB at d = 64) stay in L1/L2 across panel chunks.
constexpr int64_t kRowBlock = 192;
// Centroid panels visited together per row block: about 128 KiB, so a chunk stays in
// a 512 KiB L2 next to the points while every micro-tile of the row block reuses it.
constexpr int64_t kChunkBytes = int64_t{128} << 10;

}  // namespace

PackedCentroids pack_centroids(const float* centroids, int k, int d) {
    PKV_CHECK(k >= 1 && d >= 1, internal, "pack_centroids: expected k >= 1 and d >= 1, got k = {}, d = {}", k, d);
    PackedCentroids p;
    p.k = k;
    p.d = d;
    p.n_panels = (k + kLanes - 1) / kLanes;
    p.panels.assign(static_cast<size_t>(p.n_panels) * d * kLanes, 0.0f);
    p.norm2.assign(static_cast<size_t>(p.n_panels) * kLanes, std::numeric_limits<float>::infinity());
    for (int j = 0; j < k; ++j) {
        const float* cj = centroids + int64_t{j} * d;
        float* dst = p.panels.data() + static_cast<size_t>(j / kLanes) * d * kLanes + j % kLanes;
        double n2 = 0.0;
        for (int t = 0; t < d; ++t) {
            dst[static_cast<size_t>(t) * kLanes] = cj[t];
            n2 += static_cast<double>(cj[t]) * cj[t];
        }
        p.norm2[j] = static_cast<float>(n2);
    }
    return p;
}

#ifdef PKV_FUSED_AVX2

namespace {

// All 8 lanes = the minimum of a and b's 16 lanes.
inline __m256 min_all_lanes(__m256 a, __m256 b) {
    __m256 m = _mm256_min_ps(a, b);
    m = _mm256_min_ps(m, _mm256_permute2f128_ps(m, m, 1));
    m = _mm256_min_ps(m, _mm256_shuffle_ps(m, m, 0x4E));
    return _mm256_min_ps(m, _mm256_shuffle_ps(m, m, 0xB1));
}

// Scores of R points (rows of x, stride d) against one panel; each point's running
// (best, idx) is replaced when the panel holds a strictly smaller score, by the
// lowest lane holding it. Panels are visited in increasing order, so ties resolve to
// the lowest centroid index overall.
template <int R>
inline void micro_tile(const float* x, int d, const float* panel, const float* norm2, int32_t base, float* best,
                       int32_t* idx) {
    __m256 acc[R][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const float* xr[R];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) xr[r] = x + static_cast<int64_t>(r) * d;
    for (int t = 0; t < d; ++t) {
        const __m256 c0 = _mm256_loadu_ps(panel + t * kLanes);
        const __m256 c1 = _mm256_loadu_ps(panel + t * kLanes + 8);
#pragma GCC unroll 6
        for (int r = 0; r < R; ++r) {
            const __m256 xv = _mm256_broadcast_ss(xr[r] + t);
            acc[r][0] = _mm256_fmadd_ps(xv, c0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(xv, c1, acc[r][1]);
        }
    }
    const __m256 n0 = _mm256_loadu_ps(norm2);
    const __m256 n1 = _mm256_loadu_ps(norm2 + 8);
    const __m256 minus2 = _mm256_set1_ps(-2.0f);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
        const __m256 s0 = _mm256_fmadd_ps(minus2, acc[r][0], n0);
        const __m256 s1 = _mm256_fmadd_ps(minus2, acc[r][1], n1);
        const __m256 m = min_all_lanes(s0, s1);
        const float mv = _mm256_cvtss_f32(m);
        if (mv < best[r]) {
            const unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(s0, m, _CMP_EQ_OQ))) |
                                  (static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(s1, m, _CMP_EQ_OQ))) << 8);
            best[r] = mv;
            idx[r] = base + __builtin_ctz(mask);
        }
    }
}

template <int R>
void rows_against_panels(const float* x, int d, const PackedCentroids& c, int p0, int p1, float* best, int32_t* idx) {
    const size_t panel_floats = static_cast<size_t>(d) * kLanes;
    for (int p = p0; p < p1; ++p)
        micro_tile<R>(x, d, c.panels.data() + p * panel_floats, c.norm2.data() + p * kLanes, p * kLanes, best, idx);
}

// The next micro-tile's points (n_rows <= 6 rows from `from`) into L1 while the
// current one computes. With few centroids a micro-tile is only a few hundred cycles
// of FMAs per point row, and the hardware prefetchers, which see 6 interleaved
// streams of broadcasts, fall behind DRAM latency; at d = 128, k = 16 this was the
// difference between streaming and stalling.
inline void prefetch_rows(const float* from, int64_t n_rows, int d) {
    const char* p = reinterpret_cast<const char*>(from);
    const char* stop = reinterpret_cast<const char*>(from + n_rows * d);
    for (; p < stop; p += 64) _mm_prefetch(p, _MM_HINT_T0);
}

}  // namespace

bool fused_assign_available() { return true; }

void fused_argmin(const float* x, int64_t rows, const PackedCentroids& c, const float* centroids, int32_t* labels,
                  float* dist2) {
    const int d = c.d;
    const int chunk = static_cast<int>(std::max<int64_t>(1, kChunkBytes / (int64_t{d} * kLanes * 4)));
    float best[kRowBlock];
    int32_t idx[kRowBlock];
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
        const int64_t rb = std::min(kRowBlock, rows - r0);
        const float* xb = x + r0 * d;
        std::fill(best, best + rb, std::numeric_limits<float>::infinity());
        std::fill(idx, idx + rb, 0);
        for (int p0 = 0; p0 < c.n_panels; p0 += chunk) {
            const int p1 = std::min(c.n_panels, p0 + chunk);
            int64_t i = 0;
            for (; i + kRowTile <= rb; i += kRowTile) {
                const int64_t next = r0 + i + kRowTile;
                if (p0 == 0 && next < rows) prefetch_rows(x + next * d, std::min<int64_t>(kRowTile, rows - next), d);
                rows_against_panels<kRowTile>(xb + i * d, d, c, p0, p1, best + i, idx + i);
            }
            switch (rb - i) {
                case 5: rows_against_panels<5>(xb + i * d, d, c, p0, p1, best + i, idx + i); break;
                case 4: rows_against_panels<4>(xb + i * d, d, c, p0, p1, best + i, idx + i); break;
                case 3: rows_against_panels<3>(xb + i * d, d, c, p0, p1, best + i, idx + i); break;
                case 2: rows_against_panels<2>(xb + i * d, d, c, p0, p1, best + i, idx + i); break;
                case 1: rows_against_panels<1>(xb + i * d, d, c, p0, p1, best + i, idx + i); break;
                default: break;
            }
        }
        // The block's points are still in L1/L2: recompute the distances now.
        for (int64_t i = 0; i < rb; ++i) {
            labels[r0 + i] = idx[i];
            dist2[r0 + i] = exact_dist2(xb + i * d, centroids + int64_t{idx[i]} * d, d);
        }
    }
}

float exact_dist2(const float* x, const float* c, int d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int t = 0;
    for (; t + 16 <= d; t += 16) {
        const __m256 e0 = _mm256_sub_ps(_mm256_loadu_ps(x + t), _mm256_loadu_ps(c + t));
        const __m256 e1 = _mm256_sub_ps(_mm256_loadu_ps(x + t + 8), _mm256_loadu_ps(c + t + 8));
        a0 = _mm256_fmadd_ps(e0, e0, a0);
        a1 = _mm256_fmadd_ps(e1, e1, a1);
    }
    const __m256 a = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float sum = _mm_cvtss_f32(h);
    for (; t < d; ++t) {
        const float e = x[t] - c[t];
        sum += e * e;
    }
    return sum;
}

#else  // no AVX2/FMA in this build

bool fused_assign_available() { return false; }

void fused_argmin(const float*, int64_t, const PackedCentroids&, const float*, int32_t*, float*) {
    fail(ErrorCode::internal, "fused k-means assignment: this build has no AVX2/FMA kernel");
}

float exact_dist2(const float* x, const float* c, int d) {
    float sum = 0.0f;
    for (int t = 0; t < d; ++t) {
        const float e = x[t] - c[t];
        sum += e * e;
    }
    return sum;
}

#endif

}  // namespace pkv::detail
