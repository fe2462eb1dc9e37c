// pkv/core/provenance.h — the command record every pkv output starts its provenance with.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pkv {

/// The current time as "2026-11-29T05:00:00Z" (UTC, seconds).
std::string utc_timestamp();

/// tool, version, commit, command, argv and created_utc (now). Callers add what is
/// specific to them (model, texts, settings).
nlohmann::json provenance_json(const std::string& command, const std::vector<std::string>& argv);

}  // namespace pkv
