// pkv/pipeline/text_input.h — the model and text inputs shared by `pkv dump` and
// `pkv eval`: up-front file checks and the token stream, so both commands see exactly
// the same tokens for the same arguments.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pkv/kvdump/kv_dump.h"

namespace pkv {

class GgufFile;

/// Throws (not_found / invalid_argument) naming the path when the model file is
/// missing, no text is given, or a text is missing or a directory.
void check_model_and_texts(const std::string& model_path, const std::vector<std::string>& text_paths);

/// The whole contents of a text file; throws naming the path.
std::string read_text_file(const std::string& path);

/// Tokenizes the texts in order with the model's tokenizer (no special-token
/// parsing) and returns the first n_tokens ids of their concatenation. Texts after the
/// one that completes n_tokens are skipped with a warning. sources receives one
/// record per text used (path, sha256, bytes, tokens taken). Throws when a text is
/// empty or yields no tokens, or when all texts hold fewer than n_tokens tokens.
std::vector<int32_t> token_stream(const GgufFile& model, const std::vector<std::string>& text_paths, int64_t n_tokens,
                                  std::vector<TextSource>& sources);

}  // namespace pkv
