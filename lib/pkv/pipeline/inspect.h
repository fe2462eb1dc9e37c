// pkv/pipeline/inspect.h — `pkv info` and `pkv validate` as library calls. Files are
// recognised by content: GGUF models by the "GGUF" magic, KV dumps by the HDF5 signature, pattern tables (and other
// safetensors files, which are then reported as not being pattern tables) by a safetensors header.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pkv {

enum class FileKind { gguf, kv_dump, pattern_table, unknown };
/// Looks at the first bytes; throws not_found when the file cannot be opened.
FileKind detect_file_kind(const std::string& path);

/// A readable summary of a GGUF model (header, hyperparameters, tensor types,
/// metadata; every tensor when list_tensors), of a KV dump or of a pattern table.
std::string describe_file(const std::string& path, bool list_tensors);
/// Machine-readable metadata of a GGUF model, a KV dump or a pattern table.
nlohmann::json describe_file_json(const std::string& path);

/// Every problem found in a KV dump (against docs/formats/kv_dump.md) or a GGUF
/// model (structure, the tensors and metadata pkv's forward pass and tokenizer
/// need), or a pattern table's read error or findings (docs/formats/pattern_table.md);
/// empty when the file is valid.
std::vector<std::string> validate_file(const std::string& path);

}  // namespace pkv
