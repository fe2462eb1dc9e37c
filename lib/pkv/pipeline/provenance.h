// pkv/pipeline/provenance.h — the JSON records every pkv output carries about the
// model and the texts it was made from.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/dump/kv_dump.h"

namespace pkv {

class GgufFile;
struct LlamaHparams;

/// The model record: name, file, sha256, architecture, every hyperparameter and
/// the RoPE convention (rope_type "norm": pairs (2i, 2i+1)).
nlohmann::json model_json(const LlamaHparams& hp, const GgufFile& file, const std::string& path,
                          const std::string& sha256);
/// The current time as "2026-11-29T05:00:00Z" (UTC, seconds).
std::string utc_timestamp();
/// The fields every command's provenance record starts with: tool, version, commit,
/// command, argv and created_utc (now). Callers add what is specific to them.
nlohmann::json provenance_json(const std::string& command, const std::vector<std::string>& argv);
/// [{path, sha256, bytes, tokens}, ...]
nlohmann::json sources_json(const std::vector<TextSource>& sources);

}  // namespace pkv
