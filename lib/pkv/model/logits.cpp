// pkv/model/logits.cpp — the output projection with a streaming log-softmax (logits.h).
#include "pkv/model/logits.h"

#include <omp.h>

#include <algorithm>
#include <exception>

#include "pkv/gguf/gguf.h"
#include "pkv/model/region_errors.h"

namespace pkv {

using ops::RowMatrix;

// About 4 MiB of fp32 per chunk of the output matrix: in full (49152 x 576) it would be 113 MB.
int64_t output_chunk_rows(int64_t n_vocab, int E) {
    return std::min<int64_t>(n_vocab, std::max<int64_t>(64, (int64_t{1} << 20) / std::max(E, 1)));
}

// Streaming log-softmax, so neither the fp32 output matrix nor the [n, n_vocab] logits ever exist.
std::vector<ops::LogitRowStats> output_logit_stats(const GgufFile& f, const GgufTensorInfo& output, const RowMatrix& xn,
                                                   const std::vector<int32_t>& tokens, int n_targets, int64_t n_vocab,
                                                   std::vector<float>& last_logits) {
    // Statistics of rows [0, n_targets) against their next tokens, and the last row's
    // logits when `last_logits` is non-empty. The output matrix is dequantized in chunks
    // of vocabulary rows, once per call, and each chunk meets the needed rows in tiles of
    // kRowBlock. Threads take whole chunks and keep their own per-row statistics, merged
    // at the end: one barrier for the whole projection.
    constexpr int kRowBlock = 256;
    const int n = static_cast<int>(xn.rows()), E = static_cast<int>(xn.cols());
    const bool want_last = !last_logits.empty();
    // Rows of xn whose logits are needed: the n-1 rows with a next token, plus the
    // last row when its logits are wanted.
    const int row_begin = n_targets > 0 ? 0 : n - 1;
    const int row_end = want_last ? n : n_targets;
    const int64_t chunk = output_chunk_rows(n_vocab, E);
    const int64_t n_chunks = (n_vocab + chunk - 1) / chunk;
    std::vector<ops::LogitRowStats> stats(n_targets);
    RegionErrors errors;
    const int out_threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), n_chunks));
#pragma omp parallel num_threads(out_threads)
    {
        std::vector<ops::LogitRowStats> mine(n_targets);
        std::vector<float> wbuf(static_cast<size_t>(chunk) * E);
        RowMatrix logits;
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < n_chunks; ++c) {
            errors.guarded([&] {
                const int64_t v0 = c * chunk, nv = std::min(chunk, n_vocab - v0);
                f.dequantize_rows(output, static_cast<uint64_t>(v0), static_cast<uint64_t>(nv), wbuf.data());
                for (int r0 = row_begin; r0 < row_end; r0 += kRowBlock) {
                    const int nr = std::min(kRowBlock, row_end - r0);
                    logits.resize(nr, nv);
                    ops::matmul_wt(xn.row(r0).data(), nr, E, wbuf.data(), nv, logits.data());
                    for (int r = 0; r < nr; ++r) {
                        const int i = r0 + r;
                        if (i < n_targets) mine[i].add_block(logits.row(r).data(), nv, v0, tokens[i + 1]);
                    }
                    if (want_last && r0 + nr == n) std::copy_n(logits.row(nr - 1).data(), nv, last_logits.begin() + v0);
                }
            });
        }
#pragma omp critical(pkv_forward_merge)
        for (int i = 0; i < n_targets; ++i) stats[i].merge(mine[i]);
    }
    errors.rethrow();
    return stats;
}

std::vector<NextTokenStats> next_token_stats(const GgufFile& f, const GgufTensorInfo& output, int64_t n_vocab, int E,
                                             const std::vector<int32_t>& tokens,
                                             const std::vector<const float*>& hidden) {
    const int n = static_cast<int>(tokens.size());
    const int nv_var = static_cast<int>(hidden.size());
    std::vector<NextTokenStats> res(nv_var);
    const int n_targets = std::max(0, n - 1);
    if (n_targets == 0) return res;
    constexpr int kRowBlock = 256;
    const int64_t chunk = output_chunk_rows(n_vocab, E);
    const int64_t n_chunks = (n_vocab + chunk - 1) / chunk;
    std::vector<std::vector<ops::LogitRowStats>> stats(nv_var, std::vector<ops::LogitRowStats>(n_targets));
    std::vector<std::vector<ops::KlRowStats>> kl(nv_var, std::vector<ops::KlRowStats>(n_targets));
    std::exception_ptr error;
    const int out_threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), n_chunks));
#pragma omp parallel num_threads(out_threads)
    {
        std::vector<std::vector<ops::LogitRowStats>> mine(nv_var, std::vector<ops::LogitRowStats>(n_targets));
        std::vector<std::vector<ops::KlRowStats>> mine_kl(nv_var, std::vector<ops::KlRowStats>(n_targets));
        std::vector<float> wbuf(static_cast<size_t>(chunk) * E);
        std::vector<RowMatrix> logits(nv_var);
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < n_chunks; ++c) {
            try {
                const int64_t v0 = c * chunk, nv = std::min(chunk, n_vocab - v0);
                f.dequantize_rows(output, static_cast<uint64_t>(v0), static_cast<uint64_t>(nv), wbuf.data());
                for (int r0 = 0; r0 < n_targets; r0 += kRowBlock) {
                    const int nr = std::min(kRowBlock, n_targets - r0);
                    for (int a = 0; a < nv_var; ++a) {
                        logits[a].resize(nr, nv);
                        ops::matmul_wt(hidden[a] + static_cast<int64_t>(r0) * E, nr, E, wbuf.data(), nv,
                                       logits[a].data());
                        for (int r = 0; r < nr; ++r)
                            mine[a][r0 + r].add_block(logits[a].row(r).data(), nv, v0, tokens[r0 + r + 1]);
                        if (a > 0)
                            for (int r = 0; r < nr; ++r)
                                mine_kl[a][r0 + r].add_block(logits[0].row(r).data(), logits[a].row(r).data(), nv);
                    }
                }
            } catch (...) {
#pragma omp critical(pkv_compare_error)
                if (!error) error = std::current_exception();
            }
        }
#pragma omp critical(pkv_compare_merge)
        for (int a = 0; a < nv_var; ++a)
            for (int i = 0; i < n_targets; ++i) {
                stats[a][i].merge(mine[a][i]);
                kl[a][i].merge(mine_kl[a][i]);
            }
    }
    if (error) std::rethrow_exception(error);
    for (int a = 0; a < nv_var; ++a) {
        NextTokenStats& r = res[a];
        r.nll.resize(n_targets);
        r.argmax.resize(n_targets);
        if (a > 0) r.kl.resize(n_targets);
        for (int i = 0; i < n_targets; ++i) {
            r.nll[i] = static_cast<float>(stats[a][i].nll());
            r.argmax[i] = stats[a][i].argmax;
            if (a > 0) r.kl[i] = static_cast<float>(kl[a][i].kl(stats[0][i].lse(), stats[a][i].lse()));
        }
    }
    return res;
}

}  // namespace pkv
