// pkv/pipeline/dump.h — `pkv dump` as one library call: run a GGUF model over
// text and stream its per-layer, per-KV-head keys, values and queries into an HDF5
// KV dump (docs/formats/kv_dump.md).
//
// Token stream: each text file is tokenized on its own (special-token strings are
// treated as plain text) and the files' tokens are concatenated in argument order;
// with token_ids_path set instead, the tokens are that file's ids (pipeline/text_input.h);
// the first `n_tokens` tokens are cut into sequences of `ctx` tokens (the last may
// be shorter). Each sequence is an independent prefill starting at position 0 —
// no BOS is inserted unless the model's tokenizer asks for one (add_bos_token).
// Perplexity is exp(mean NLL) over every token that has a predecessor in its
// sequence.
//
// Memory: the model stays quantized in its file mapping, one layer is dequantized
// at a time, and each layer's activations go to the writer before the next layer runs;
// the writer's chunk pipeline holds at most a bounded queue (KvDumpWriteOptions), so
// peak memory does not grow with n_tokens.
//
// Several workers (DumpConfig::engines, MPI ranks; docs/distributed.md): the sequences
// are split into contiguous blocks balanced by tokens (plan_dump_parts), each worker
// dumps its block into a shard "<out>.shards/part-<i>-of-<n>.h5" (a complete dump of
// its tokens), and <out> joins them: its activations are HDF5 virtual datasets over the
// shards, the rest (tokens, sequences, sources, summary) is its own. Readers see one
// dump (docs/formats/kv_dump.md, "Shards"). Shards and <out> appear only once every
// worker has finished; the token values, activations and perplexity equal those of a
// one-worker dump of the same tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pkv/kvdump/kv_dump.h"
#include "pkv/model/engine.h"

namespace pkv {

/// Most writer threads `writer_threads = -1` resolves to for an unfiltered dump: beyond a
/// few, threads that pwrite into the same file wait for each other.
inline constexpr int kDirectWriterThreads = 4;

struct DumpConfig {
    std::string model_path;
    std::vector<std::string> text_paths;
    /// Instead of text_paths: a file of token ids (pipeline/text_input.h gives its format).
    std::string token_ids_path;
    int64_t n_tokens = 16384;   ///< tokens to run and store
    int ctx = 1024;             ///< tokens per sequence (<= the model's context length)
    CaptureSet capture;         ///< which activations to store
    std::vector<int> layers;    ///< model layers to store; empty = all
    bool hf_dim_order = false;  ///< store K/Q in Hugging Face half-split order
    int chunk_tokens = 512;     ///< HDF5 chunk length along tokens (64 KiB chunks at head_dim 64)
    /// 0: activations unfiltered; 1..9: shuffle + deflate at that level (KvDumpWriteOptions).
    int compress = 0;
    /// Encoder threads of each file's chunk pipeline; 0: the synchronous writer (the
    /// reference); -1: the cores less one (at least 1), shared among this process's workers,
    /// and with compress 0 at most kDirectWriterThreads (they only write, to one file).
    int writer_threads = -1;
    /// Flush the output to disk before it is renamed into place (AtomicOutput::commit);
    /// the direct writer then starts the disk on each write as it goes. false: the file is
    /// left in the page cache for the system to write when it will (faster, for scratch
    /// dumps; a power cut soon after may leave a file whose data never reached the disk).
    bool fsync = true;
    std::string out_path;
    bool force = false;             ///< overwrite an existing output
    std::vector<std::string> argv;  ///< recorded as provenance
    /// The engine that runs the model (apps: --device); empty: the CPU reference engine.
    EngineFactory engine;
    /// Workers of this process (apps: --workers, --devices): one thread per entry, each
    /// running an engine of its own made by that factory (an empty one: the CPU engine)
    /// and writing one shard. 0 or 1 entries: one worker with `engine`. Under MPI every
    /// rank runs this many workers; one worker in all writes one plain file.
    std::vector<EngineFactory> engines;
};

struct DumpSummary {
    std::string out_path;
    std::string model_name;
    std::string device;  ///< the engine's description()
    int64_t n_tokens = 0;
    int64_t n_sequences = 0;
    int64_t n_predicted = 0;  ///< tokens that count toward perplexity
    double nll_mean = 0.0;    ///< nats per predicted token
    double perplexity = 0.0;
    double seconds = 0.0;  ///< forward + write
    double tokens_per_s = 0.0;
    uint64_t peak_rss_bytes = 0;  ///< the process's peak resident memory
    uint64_t model_bytes = 0;
    uint64_t file_bytes = 0;  ///< of out_path (a joined dump: without its shards)
    /// A joined dump's shards as written (paths beside out_path); empty for one file.
    std::vector<std::string> shard_paths;
    uint64_t shard_bytes = 0;  ///< their total size
    int workers = 1;           ///< workers of the whole job (threads times MPI ranks)
    /// Where the time went, summed over this process's workers: the engine's forward
    /// pass (run_batch less the sink), the sink (conversion and staging, blocked on a
    /// full queue included), and the writer's own figures (KvDumpWriterStats).
    double forward_seconds = 0.0, sink_seconds = 0.0;
    KvDumpWriterStats writer;
};

/// A contiguous block of whole sequences that one worker dumps into one shard.
struct DumpPart {
    int64_t first_sequence = 0, n_sequences = 0;
    int64_t token_start = 0, n_tokens = 0;
};

/// Splits sequences (their lengths in token order, each >= 1) into at most `workers`
/// contiguous blocks, in order, covering each sequence once. With at least as many
/// sequences as workers there are `workers` blocks, each of one sequence or more, block
/// w ending at the sequence boundary nearest to (w + 1) T / workers tokens (so with
/// sequences of equal length every block is within one sequence of T / workers);
/// with fewer sequences, one block per sequence. invalid_argument for workers < 1 or a
/// length < 1; no sequences give no blocks.
std::vector<DumpPart> plan_dump_parts(const std::vector<int64_t>& seq_lengths, int workers);

/// Shard `index` of `count` of the joined dump `out_path`, relative to its folder:
/// "<name of out_path>.shards/part-<index>-of-<count>.h5".
std::string dump_shard_name(const std::string& out_path, int index, int count);

/// Validates the whole configuration first (files, numbers, layers, output), then
/// runs. Throws pkv::Error naming the offending input; never leaves a partial file
/// under out_path. With several workers, also refuses (failed_precondition, unless
/// force) a "<out>.shards" folder holding shards already; with force, shards of an
/// earlier dump there that the new one does not use are removed after it is in place.
/// Under MPI (dist::Comm::world().size() > 1) it is collective: every rank calls it with
/// the same configuration; rank 0 writes out_path and returns the summary of the whole
/// dump, the others their shards' (out_path empty). A rank that throws must end the job
/// (dist::Comm::abort) so that none waits; outputs then never appear.
DumpSummary run_dump(const DumpConfig& config);

/// The writer options of one of `workers` files written at once by this process under
/// `c` (writer_threads -1 resolved against the cores).
KvDumpWriteOptions dump_write_options(const DumpConfig& c, int workers);

/// One line of where a dump's time went, for stderr: "time: forward 12.1 s, ...".
std::string describe_dump_time(const DumpSummary& s);

/// Peak resident set size of this process in bytes (0 if unknown).
uint64_t peak_rss_bytes();

}  // namespace pkv
