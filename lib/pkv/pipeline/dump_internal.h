// pkv/pipeline/dump_internal.h — what dump.cpp (one file) and dump_shards.cpp (a joined
// dump of several workers) share; not part of the public API.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pkv/gguf/gguf.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/model/engine.h"
#include "pkv/model/llama.h"
#include "pkv/pipeline/dump.h"

namespace pkv::dump_detail {

/// The validated inputs of a dump, the same on every worker and rank.
struct DumpJob {
    std::shared_ptr<GgufFile> file;
    std::unique_ptr<LlamaModel> model;
    std::vector<int> layers;  ///< model layers to store, ascending
    std::string model_sha;
    std::chrono::steady_clock::time_point t_start;
};

/// Loads and checks the model and layers against the configuration (nothing is written).
DumpJob prepare_dump(const DumpConfig& c);

/// The header of the whole dump (T = c.n_tokens tokens from `sources`), with `device`
/// recorded in the provenance.
KvDumpHeader dump_header(const DumpConfig& c, const DumpJob& job, const std::vector<TextSource>& sources,
                         const std::string& device);

/// What one worker dumped: its tokens' bookkeeping (seq counts its own sequences from 0)
/// and its share of the perplexity.
struct PartResult {
    std::vector<int32_t> id, pos, seq;
    std::vector<float> nll;  ///< NaN at position 0
    std::vector<int32_t> seq_length;
    double nll_sum = 0.0;  ///< added in token order
    int64_t n_predicted = 0;
    double seconds = 0.0;
    std::string device;
    double forward_seconds = 0.0, sink_seconds = 0.0;  ///< as in DumpSummary
    KvDumpWriterStats writer;
};

/// Adds b's figures to a's (seconds and bytes summed, peaks the larger).
void add_writer_stats(KvDumpWriterStats& a, const KvDumpWriterStats& b);

/// Runs `engine` over tokens [part.token_start, + part.n_tokens) of `stream` (whole
/// sequences of c.ctx tokens, the last possibly shorter) and writes them as a complete
/// dump with `header` (whose n_tokens is part.n_tokens) to `path`; `advance` is told of
/// every finished sequence's tokens. The file's summary is that of its tokens.
PartResult write_part(const DumpConfig& c, const DumpJob& job, ForwardEngine& engine,
                      const std::vector<int32_t>& stream, const DumpPart& part, const KvDumpHeader& header,
                      const KvDumpWriteOptions& write_options, const std::string& path,
                      const std::function<void(uint64_t)>& advance);

/// The "summary" record of a dump of `n_tokens` tokens in `n_sequences` sequences.
nlohmann::json summary_json(int64_t n_tokens, int64_t n_sequences, int64_t n_predicted, double nll_sum, double seconds,
                            const std::string& device);

/// The sequences of a dump of T tokens cut every ctx tokens.
std::vector<int64_t> sequence_lengths(int64_t T, int ctx);

/// The part of each source's tokens that falls in [t0, t0 + n) of their concatenation.
std::vector<TextSource> sources_in(const std::vector<TextSource>& sources, int64_t t0, int64_t n);

/// A dump written by several workers (engines of this process times MPI ranks).
DumpSummary run_joined_dump(const DumpConfig& c, DumpJob& job);

}  // namespace pkv::dump_detail
