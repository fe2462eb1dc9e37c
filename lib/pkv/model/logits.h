// pkv/model/logits.h — internal to model/: the output projection, reduced chunk by chunk.
//
// The output matrix ([n_vocab, E], possibly tied to token_embd) is dequantized in chunks of
// vocabulary rows (about 4 MiB of fp32 each), once per call, and each chunk meets the hidden
// rows in tiles of 256; threads take whole chunks and merge their per-row statistics at the
// end, so neither the fp32 output matrix nor [n, n_vocab] logits are ever held.
#pragma once

#include <cstdint>
#include <vector>

#include "pkv/model/llama.h"
#include "pkv/model/ops.h"

namespace pkv {

struct GgufTensorInfo;

/// Vocabulary rows per chunk of the output matrix for hidden size E.
int64_t output_chunk_rows(int64_t n_vocab, int E);

/// Next-token statistics of rows [0, n_targets) of xn ([n, E]) against tokens[i + 1], and
/// the last row's n_vocab logits into `last_logits` when it is non-empty.
std::vector<ops::LogitRowStats> output_logit_stats(const GgufFile& f, const GgufTensorInfo& output,
                                                   const ops::RowMatrix& xn, const std::vector<int32_t>& tokens,
                                                   int n_targets, int64_t n_vocab, std::vector<float>& last_logits);

/// LlamaModel::compare_next_token after its argument checks: hidden[a] is [tokens.size(), E].
/// Same chunking and row tiles as output_logit_stats, so variant 0 reproduces its NLL.
std::vector<NextTokenStats> next_token_stats(const GgufFile& f, const GgufTensorInfo& output, int64_t n_vocab, int E,
                                             const std::vector<int32_t>& tokens,
                                             const std::vector<const float*>& hidden);

}  // namespace pkv
