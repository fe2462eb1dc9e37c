// pkv/pipeline/kv_source.h — where `pkv calibrate` and `pkv analyze` get their keys,
// values and queries: a KV dump on disk, or the model itself run over text ("streamed").
//
// Both give the same view as KvDumpReader: stored layers, each (layer, head) of an
// activation dataset as [T, D] floats, the sequences that tile the tokens, and the
// model and provenance records. The model source stores every activation as binary16
// and reads it back as float, exactly as a dump does (keys and queries re-ordered to
// HF half-split order first when asked, as the dump writer does), so a calibration or
// analysis of the model source equals one of `pkv dump` of the same tokens bit for bit.
//
// Memory: the model source holds the activations of the sequences it has loaded (load()),
// [stored layers, heads, loaded tokens, head_dim] binary16 per captured dataset, and
// nothing else; the dump source reads from the file on demand.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/core/rope.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/model/engine.h"

namespace pkv {

class KvSource {
public:
    virtual ~KvSource() = default;
    /// The dump's path or the model's path: what error messages name.
    virtual const std::string& path() const = 0;
    virtual const std::vector<int32_t>& layers() const = 0;  ///< stored model layers, ascending
    int n_layers() const { return static_cast<int>(layers().size()); }
    virtual int n_layer_model() const = 0;
    virtual const std::vector<KvDumpLayerInfo>& layer_info() const = 0;  ///< one per stored layer
    virtual int n_head() const = 0;
    virtual int n_head_kv() const = 0;
    virtual int head_dim() const = 0;
    virtual int64_t n_tokens() const = 0;
    virtual bool has(const std::string& dataset) const = 0;
    /// Tokens [t0, t0 + count) of one (stored layer slot, head): [count, D] floats. For the
    /// model source they must lie in the loaded sequences (internal error otherwise).
    virtual std::vector<float> read_head(const std::string& dataset, int slot, int head, int64_t t0,
                                         int64_t count) const = 0;
    /// All tokens of one (slot, head): [T, D] floats.
    std::vector<float> read_head(const std::string& dataset, int slot, int head) const {
        return read_head(dataset, slot, head, 0, n_tokens());
    }
    virtual KvDumpReader::Sequences sequences() const = 0;
    virtual nlohmann::json model() const = 0;
    virtual nlohmann::json provenance() const = 0;
    virtual std::string dim_order() const = 0;
    /// Makes sequences [s0, s1) readable, dropping those loaded before: the model source
    /// runs its engine over them (progress on stderr); a dump has everything already.
    virtual void load(size_t s0, size_t s1) {
        (void)s0;
        (void)s1;
    }
    /// True for the model source.
    virtual bool streamed() const { return false; }
};

/// A KV dump (KvDumpReader's checks and errors).
std::unique_ptr<KvSource> open_dump_source(const std::string& path);

/// The model source: the token stream of `pkv dump` (pipeline/text_input.h token_stream,
/// sequences of ctx tokens, the last possibly shorter), optionally sampled.
struct ModelSourceConfig {
    std::string model_path;
    std::vector<std::string> text_paths;
    /// Instead of text_paths: a file of token ids (pipeline/text_input.h gives its format).
    std::string token_ids_path;
    int64_t n_tokens = 16384;   ///< tokens taken from the texts (or the ids)
    int ctx = 1024;             ///< tokens per sequence
    bool hf_dim_order = false;  ///< keys/queries in HF half-split order (dump --dim-order hf)
    CaptureSet capture;         ///< datasets to hold; only these are run and kept
    std::vector<int> layers;    ///< model layers to capture; empty: all
    /// > 0: keep a seeded uniform sample of whole sequences holding at most this many tokens
    /// (at least one sequence); the engine runs only over those. Every sequence when they
    /// hold no more than this, so the source then equals a dump of all tokens.
    int64_t sample_tokens = 0;
    uint64_t seed = 1234;  ///< of the sample
    EngineFactory engine;  ///< empty: the CPU reference engine
    std::string command;   ///< "calibrate" / "analyze", for the provenance record
    std::vector<std::string> argv;
};

/// Checks the files, model, --ctx and --layers (errors name them, before any forward pass)
/// and tokenizes; nothing is loaded yet. The provenance record is that of `pkv dump`
/// ({tool, version, argv, time, model, texts, device, settings}) with "source": "model"
/// and "stream": {tokens, sequences, sample_tokens, sampled_tokens, sampled_sequences, seed}.
std::unique_ptr<KvSource> open_model_source(const ModelSourceConfig& config);

/// One stored layer's RoPE, to turn pre-RoPE key reconstructions into the post-RoPE keys
/// a cache attends with (kvcache/pre_rope.h); nullopt when the model record `m` (a
/// source's model()) does not describe a RoPE pkv implements. The pairing follows the
/// stored order: half split when the dump is in HF order (re-ordered, or a NEOX model),
/// interleaved otherwise. A sliding-window layer rotates with its own base and no
/// scaling, as the model does.
std::optional<RopeParams> dump_layer_rope(const nlohmann::json& m, const std::string& dim_order, int D,
                                          const KvDumpLayerInfo& layer);

}  // namespace pkv
