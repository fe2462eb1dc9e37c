// pkv/pipeline/dump.h — `pkv dump` as one library call: run a GGUF model over
// text and stream its per-layer, per-KV-head keys, values and queries into an HDF5
// KV dump (docs/formats/kv_dump.md).
//
// Token stream: each text file is tokenized on its own (special-token strings are
// treated as plain text) and the files' tokens are concatenated in argument order;
// the first `n_tokens` tokens are cut into sequences of `ctx` tokens (the last may
// be shorter). Each sequence is an independent prefill starting at position 0 —
// no BOS is inserted unless the model's tokenizer asks for one (add_bos_token).
// Perplexity is exp(mean NLL) over every token that has a predecessor in its
// sequence.
//
// Memory: the model stays quantized in its file mapping, one layer is dequantized
// at a time, and each layer's activations are written before the next layer runs,
// so peak memory does not grow with n_tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pkv/kvdump/kv_dump.h"
#include "pkv/model/engine.h"

namespace pkv {

struct DumpConfig {
    std::string model_path;
    std::vector<std::string> text_paths;
    int64_t n_tokens = 16384;   ///< tokens to run and store
    int ctx = 1024;             ///< tokens per sequence (<= the model's context length)
    CaptureSet capture;         ///< which activations to store
    std::vector<int> layers;    ///< model layers to store; empty = all
    bool hf_dim_order = false;  ///< store K/Q in Hugging Face half-split order
    int chunk_tokens = 512;     ///< HDF5 chunk length along tokens (64 KiB chunks at head_dim 64)
    std::string out_path;
    bool force = false;             ///< overwrite an existing output
    std::vector<std::string> argv;  ///< recorded as provenance
    /// The engine that runs the model (apps: --device); empty: the CPU reference engine.
    EngineFactory engine;
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
    uint64_t file_bytes = 0;
};

/// Validates the whole configuration first (files, numbers, layers, output), then
/// runs. Throws pkv::Error naming the offending input; never leaves a partial file
/// under out_path.
DumpSummary run_dump(const DumpConfig& config);

/// Peak resident set size of this process in bytes (0 if unknown).
uint64_t peak_rss_bytes();

}  // namespace pkv
