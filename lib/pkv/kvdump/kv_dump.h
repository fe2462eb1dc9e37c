// pkv/kvdump/kv_dump.h — the KV dump file (HDF5), format "pkv.kvdump" version 1.1
// (1.2 for a joined dump, whose activations are virtual datasets over shard files).
//
// Spec: docs/formats/kv_dump.md; attribute schema: schemas/kv_dump.schema.json.
// Every name in the file is a constant below; the writer, reader and validator use
// only these constants.
//
// Activations are [n_layers_stored, n_heads, n_tokens, head_dim] float16 (binary16
// converted by pkv, never by HDF5), chunked [1, 1, chunk_tokens, head_dim] so reading
// one (layer, head) over all tokens touches only that head's chunks; unfiltered, or
// shuffle + deflate (KvDumpWriteOptions::compress). Each stored layer's attention geometry (sliding window, RoPE base,
// head shape) is in /layer_info (1.1); a 1.0 file leaves it to the model record.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pkv {

namespace kvdump {
constexpr const char* kFormat = "pkv.kvdump";
constexpr const char* kFormatVersion = "1.1";
/// A joined dump (KvDumpHeader::shards): its activations live in shard files.
constexpr const char* kFormatVersionJoined = "1.2";
// Datasets.
constexpr const char* kKPre = "/k_pre";           ///< [L, Hkv, T, D] f16, keys before RoPE
constexpr const char* kKPost = "/k_post";         ///< [L, Hkv, T, D] f16, keys after RoPE
constexpr const char* kV = "/v";                  ///< [L, Hkv, T, D] f16, values
constexpr const char* kQ = "/q";                  ///< [L, H, T, D] f16, queries after RoPE
constexpr const char* kLayers = "/layers";        ///< [L] i32, model layer index of each stored layer
constexpr const char* kTokenId = "/tokens/id";    ///< [T] i32
constexpr const char* kTokenPos = "/tokens/pos";  ///< [T] i32, position within its sequence
constexpr const char* kTokenSeq = "/tokens/seq";  ///< [T] i32, sequence index
constexpr const char* kTokenNll =
    "/tokens/nll";  ///< [T] f32, -ln p(token | earlier tokens of its sequence); NaN at pos 0
constexpr const char* kSeqStart = "/sequences/start";     ///< [S] i64, first token index
constexpr const char* kSeqLength = "/sequences/length";   ///< [S] i32
constexpr const char* kSourcePath = "/sources/path";      ///< [F] vlen utf-8
constexpr const char* kSourceSha256 = "/sources/sha256";  ///< [F] vlen utf-8
constexpr const char* kSourceBytes = "/sources/bytes";    ///< [F] i64
constexpr const char* kSourceTokens = "/sources/tokens";  ///< [F] i64, tokens taken from that source
// Per stored layer (1.1; required from 1.1 on, absent in 1.0 files).
constexpr const char* kLayerInfo = "/layer_info";                ///< group
constexpr const char* kLayerWindow = "/layer_info/window";       ///< [L] i32, sliding window in tokens; 0: global
constexpr const char* kLayerRopeBase = "/layer_info/rope_base";  ///< [L] f64, RoPE frequency base
constexpr const char* kLayerNHeadKv = "/layer_info/n_head_kv";   ///< [L] i32, = root n_head_kv in 1.x
constexpr const char* kLayerHeadDim = "/layer_info/head_dim";    ///< [L] i32, = root head_dim in 1.x
// Root attributes (see the spec for types).
constexpr const char* kAttrFormat = "format";
constexpr const char* kAttrFormatVersion = "format_version";
constexpr const char* kAttrProvenance = "provenance";  ///< JSON text: tool, version, argv, time, model, texts
constexpr const char* kAttrModel = "model";            ///< JSON text: name, file, sha256, hyperparameters
constexpr const char* kAttrSummary = "summary";        ///< JSON text written by finish(): n_tokens, perplexity, ...
/// JSON text of a joined dump (1.2): {"job": id, "parts": [{"file", "token_start", "n_tokens"}, ...]}.
constexpr const char* kAttrShards = "shards";
/// JSON text of a shard (a dump of its own): {"job", "index", "count", "token_start",
/// "sequence_start", "main"}: which tokens of which joined dump it holds.
constexpr const char* kAttrShard = "shard";
// Flat copies of the shape parameters (int32 scalars) for readers that skip the JSON.
constexpr const char* kAttrNLayer = "n_layer";  ///< layers of the model (not only the stored ones)
constexpr const char* kAttrNHead = "n_head";
constexpr const char* kAttrNHeadKv = "n_head_kv";
constexpr const char* kAttrHeadDim = "head_dim";
constexpr const char* kAttrNTokens = "n_tokens";
constexpr const char* kAttrCapture = "capture";  ///< string, CaptureSet::to_string() of what was captured
// Per-activation-dataset attributes.
constexpr const char* kAttrAxes = "axes";  ///< vlen strings, e.g. ["layer","kv_head","token","dim"]
constexpr const char* kAttrDimOrder =
    "dim_order";  ///< "gguf_interleaved" | "hf_half_split" (k_pre, k_post, q; also a root attribute)
constexpr const char* kDimOrderGguf = "gguf_interleaved";  ///< RoPE pairs (2i, 2i+1), as the model computes
constexpr const char* kDimOrderHf =
    "hf_half_split";  ///< RoPE pairs (i, i + D/2): hf[i] = gguf[2i], hf[i + D/2] = gguf[2i+1]
/// The activation datasets, in file order; any non-empty subset may be present.
constexpr const char* kActivations[] = {kKPre, kKPost, kV, kQ};
/// Bounds the reader accepts for the shape attributes (far above any model pkv runs;
/// a file beyond them is refused as corrupt before anything is allocated).
constexpr int64_t kMaxHeads = 1 << 16;
constexpr int64_t kMaxHeadDim = 1 << 16;
constexpr int64_t kMaxLayers = 1 << 16;
constexpr int64_t kMaxTokens = int64_t{1} << 40;
}  // namespace kvdump

/// Which activations to capture.
struct CaptureSet {
    bool k_pre = true, k_post = true, v = true, q = true;
    /// Parses "k_pre,k_post,v,q" (any subset, at least one); throws invalid_argument naming the bad item.
    static CaptureSet parse(const std::string& list);
    std::string to_string() const;
};

struct TextSource {
    std::string path;
    std::string sha256;
    int64_t bytes = 0;
    int64_t tokens = 0;  ///< tokens of this source that went into the dump
};

/// One stored layer's attention geometry (format 1.1; for 1.0 files derived from the model record).
struct KvDumpLayerInfo {
    int32_t layer = 0;  ///< model layer index (same as /layers)
    /// Sliding window W in tokens: query t attends keys t-W+1..t; 0: global layer (whole prefix).
    int32_t window = 0;
    /// RoPE frequency base of this layer's keys and queries; 0: unknown (1.0 file without a usable record).
    double rope_base = 0.0;
    int32_t n_head_kv = 0, head_dim = 0;  ///< head geometry (equal to the root attributes in 1.x)
};

/// One shard of a joined dump: tokens [token_start, token_start + n_tokens) of every
/// activation dataset are that dataset of `file`, a dump of n_tokens tokens; `file` is
/// relative to the folder of the joined dump (docs/formats/kv_dump.md, "Shards").
struct KvDumpShardRef {
    std::string file;
    int64_t token_start = 0, n_tokens = 0;
};

/// Everything the writer records besides the activations.
struct KvDumpHeader {
    int n_layer_model = 0;        ///< layers of the model
    std::vector<int32_t> layers;  ///< stored model layers, ascending
    int n_head = 0, n_head_kv = 0, head_dim = 0;
    int64_t n_tokens = 0;
    CaptureSet capture;
    bool hf_dim_order = false;  ///< keys/queries re-ordered to HF half-split order
    /// The model pairs RoPE dims (i, i + D/2) (NEOX: qwen2, qwen3): its keys/queries are in
    /// HF's half-split order already, so nothing is re-ordered and dim_order says hf_half_split.
    bool native_half_split = false;
    int chunk_tokens = 1024;    ///< HDF5 chunk length along tokens (clamped to n_tokens)
    nlohmann::json model;       ///< written as the "model" attribute
    nlohmann::json provenance;  ///< written as the "provenance" attribute
    std::vector<TextSource> sources;
    /// One per stored layer, in the order of `layers` (layer_info[i].layer == layers[i]),
    /// with the header's n_head_kv and head_dim. Required: the writer refuses an empty one.
    std::vector<KvDumpLayerInfo> layer_info;
    /// Non-empty: a joined dump (format 1.2). Its activations are virtual datasets mapping
    /// these shards, which must tile [0, n_tokens) in order; write_layer is refused. The
    /// root attribute "shards" records them with `job`.
    std::vector<KvDumpShardRef> shards;
    std::string job;  ///< the joined dump's job id (shards record it too)
    /// Not null: this file is a shard of a joined dump; written as the root attribute "shard".
    nlohmann::json shard;
};

/// How the writer stores the activations. Every setting stores the same binary16 bits;
/// only the filters, the file layout and the speed differ.
struct KvDumpWriteOptions {
    /// 0: no filters; 1..9: shuffle then deflate at that level (the files of pkv before
    /// the option existed used 4, as the synchronous path still does by default).
    int compress = 4;
    /// 0: the synchronous path: each write_layer call writes one hyperslab through HDF5's
    /// chunk cache, which runs the filters (the reference). N >= 1 with compress > 0: the
    /// chunk pipeline: full chunks are encoded on N threads and written in order by one
    /// more thread with HDF5's direct chunk write (chunk_writer.h). N >= 1 with compress 0:
    /// the direct path: chunks allocated up front, each head's tokens written in place
    /// with pwrite by N threads (direct_writer.h). The stored values are the same for all.
    int threads = 0;
    /// Pipeline only: most bytes of full chunks waiting to be encoded or written;
    /// write_layer* blocks beyond it (one chunk row always passes).
    uint64_t queue_bytes = uint64_t{256} << 20;
    /// Direct path only: start the disk on each write at once (sync_file_range), for an
    /// output that will be flushed to disk before it is renamed (AtomicOutput::commit).
    bool start_writeback = false;
    /// Tests: run on an encoder thread before each job (its submission index); may throw.
    std::function<void(uint64_t)> before_encode;
};

/// Where the writer's time went; KvDumpWriter::stats(). Seconds are wall time of the
/// thread named; in the pipeline they overlap each other and the caller's work.
struct KvDumpWriterStats {
    int compress = 0, threads = 0;
    uint64_t raw_bytes = 0;     ///< binary16 bytes of activations stored (tail chunks padded)
    uint64_t stored_bytes = 0;  ///< bytes the activation datasets take in the file
    uint64_t chunks = 0;        ///< chunks written (pipeline); pwrite calls (direct)
    /// Caller: conversion to binary16 and reordering into chunks (direct: until the
    /// workers had gathered its rows, which includes waiting for a free worker).
    double copy_seconds = 0;
    double encode_seconds = 0;  ///< pipeline: shuffle + deflate, summed over encoder threads
    /// Synchronous: the caller inside H5Dwrite (with HDF5's filters) and the final flush;
    /// pipeline: the writer thread inside H5Dwrite_chunk; direct: inside pwrite, summed
    /// over the workers.
    double write_seconds = 0;
    double wait_seconds = 0;    ///< caller blocked on the full queue (pipeline)
    uint64_t waits = 0;         ///< how often it blocked
    double finish_seconds = 0;  ///< finish(): the queue drained, the rest written, the file closed
    /// Pipeline: most bytes of full chunks in the queue at once; direct: the workers'
    /// buffers (one window of one head each).
    uint64_t peak_queue_bytes = 0;
    uint64_t peak_open_bytes = 0;  ///< most bytes of partly filled chunks held at once
};

/// Streams a dump into `path` (the caller's temporary name; see AtomicOutput).
/// Datasets are created at full size up front. Each (layer, token) must be written
/// exactly once, in any order; the pipeline writes a chunk once all its tokens arrived,
/// and finish() refuses (internal) when some never did.
class KvDumpWriter {
public:
    KvDumpWriter(const std::string& path, const KvDumpHeader& header, const KvDumpWriteOptions& options = {});
    ~KvDumpWriter();
    /// Token bookkeeping for tokens [t0, t0 + n).
    void write_tokens(int64_t t0, const std::vector<int32_t>& id, const std::vector<int32_t>& pos,
                      const std::vector<int32_t>& seq, const std::vector<float>& nll);
    /// One captured layer (index into header.layers) for tokens [t0, t0 + n_tokens).
    /// Inputs are row-major [n_tokens, n_heads * head_dim] floats, as the model gives them.
    void write_layer(int slot, int64_t t0, int n_tokens, const float* k_pre, const float* k_post, const float* v,
                     const float* q);
    /// The same with binary16 bits (as an engine gives them): stored as they are, with no
    /// float round trip; the bits a float input converts to are what write_layer stores.
    void write_layer16(int slot, int64_t t0, int n_tokens, const uint16_t* k_pre, const uint16_t* k_post,
                       const uint16_t* v, const uint16_t* q);
    /// A failure of a pipeline thread is rethrown by the next write_layer*, write_tokens
    /// or finish call.
    /// Records sequences and sources, adds summary attributes (JSON text "summary") and closes the file.
    void finish(const std::vector<int64_t>& seq_start, const std::vector<int32_t>& seq_length,
                const nlohmann::json& summary);
    /// So far (complete after finish()).
    KvDumpWriterStats stats() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// Read access for analysis tools and tests.
class KvDumpReader {
public:
    /// Opens and checks format, version, the shape attributes (positive, within
    /// kMaxHeads / kMaxHeadDim / kMaxTokens), the model and provenance records (JSON
    /// objects whose known fields have their spec types), and the shapes, types and
    /// stored chunks of the datasets it needs, before any data is read; throws naming
    /// "<file>::<object>" and expected vs actual. Reads of data are bounded by the
    /// memory budget (pkv/core/memory_budget.h). A joined dump's shards are opened and
    /// checked the same way here (a missing one: not_found naming it and its tokens),
    /// and its activations are read from them.
    explicit KvDumpReader(const std::string& path);
    ~KvDumpReader();
    const std::string& path() const;
    int n_layers() const;       ///< stored layers
    int n_layer_model() const;  ///< layers of the model (every stored layer is below it)
    const std::vector<int32_t>& layers() const;
    /// One per stored layer, in the order of layers(); read and checked when the file is
    /// opened. From /layer_info when present (required from 1.1 on); for a 1.0 file without
    /// it, derived from the model record: window = sliding_window for the layers listed in
    /// swa_layers, else 0; rope_base = rope_freq_base_swa for those, else rope_freq_base (0
    /// when the record has no usable value); head geometry from the root attributes.
    const std::vector<KvDumpLayerInfo>& layer_info() const;
    int n_head() const;
    int n_head_kv() const;
    int head_dim() const;
    int64_t n_tokens() const;
    bool has(const std::string& dataset) const;
    /// One (stored layer, head) of an activation dataset over all tokens: [T, D] floats.
    std::vector<float> read_head(const std::string& dataset, int slot, int head) const;
    /// Tokens [t0, t0 + count) of it: [count, D] floats (one hyperslab read).
    std::vector<float> read_head(const std::string& dataset, int slot, int head, int64_t t0, int64_t count) const;
    /// The sequences (/sequences/start, /sequences/length), checked to tile [0, n_tokens)
    /// with positive lengths; data_loss naming the object otherwise.
    struct Sequences {
        std::vector<int64_t> start;
        std::vector<int32_t> length;
    };
    Sequences sequences() const;
    std::vector<int32_t> token_ids() const;
    std::vector<int32_t> token_seq() const;
    std::vector<int32_t> token_pos() const;
    nlohmann::json model() const;
    nlohmann::json provenance() const;
    nlohmann::json summary() const;
    std::string dim_order() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// Checks a file against the spec; returns every problem found (empty = valid),
/// each "<file>::<object>: expected ..., got ...".
std::vector<std::string> validate_kv_dump(const std::string& path);
/// A readable multi-line summary for `pkv info`.
std::string describe_kv_dump(const std::string& path);
/// The dump's metadata as one JSON document (root attributes with the model,
/// provenance and summary JSON parsed; datasets with shape and dtype; "layer_info", one
/// object per stored layer as KvDumpReader::layer_info() gives it), the form
/// schemas/kv_dump.schema.json describes.
nlohmann::json kv_dump_metadata_json(const std::string& path);
/// True if the file starts with the HDF5 signature.
bool is_hdf5_file(const std::string& path);

}  // namespace pkv
