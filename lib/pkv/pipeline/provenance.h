// pkv/pipeline/provenance.h — the JSON records every pkv output carries about the
// model and the texts it was made from (the command record is core/provenance.h).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/core/provenance.h"
#include "pkv/kvdump/kv_dump.h"

namespace pkv {

class GgufFile;
struct LlamaHparams;

/// The model record: name, file, sha256, architecture, every hyperparameter and
/// the RoPE convention (rope_type "norm": pairs (2i, 2i+1)).
nlohmann::json model_json(const LlamaHparams& hp, const GgufFile& file, const std::string& path,
                          const std::string& sha256);
/// The attention geometry of the model `layers` (ascending, below hp.n_layer) for a KV dump
/// header: window = sliding_window on local layers (0 on global ones), rope_base =
/// rope_params(hp, layer).base, the model's n_head_kv and head_dim.
std::vector<KvDumpLayerInfo> layer_info_of(const LlamaHparams& hp, const std::vector<int32_t>& layers);
/// [{path, sha256, bytes, tokens}, ...]
nlohmann::json sources_json(const std::vector<TextSource>& sources);

}  // namespace pkv
