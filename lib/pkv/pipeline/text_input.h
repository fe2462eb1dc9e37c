// pkv/pipeline/text_input.h — the model and text inputs shared by `pkv dump` and
// `pkv eval`: up-front file checks and the token stream, so both commands see exactly
// the same tokens for the same arguments. The tokens come from text files (tokenized
// with the model's tokenizer) or from a token-ids file (--token-ids: the model's ids
// given directly, for models without a usable tokenizer such as random-weight
// benchmark models).
//
// Token-ids file format: the ids as little-endian int32, 4 bytes each, one after the
// other, no header (numpy: `ids.astype("<i4").tofile(path)`). Every id must satisfy
// 0 <= id < n_vocab (rows of the model's token_embd.weight).
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

/// Reads every id of a token-ids file (format above). Throws naming the path: not_found
/// when it cannot be opened, data_loss when it is empty or its size is not a multiple of
/// 4 bytes, out_of_range naming the first id outside [0, n_vocab) and its position.
std::vector<int32_t> read_token_ids(const std::string& path, int64_t n_vocab);

/// As check_model_and_texts, for either input: exactly one of text_paths and
/// token_ids_path must be given (invalid_argument otherwise); a token-ids file must
/// exist and not be a directory.
void check_model_and_inputs(const std::string& model_path, const std::vector<std::string>& text_paths,
                            const std::string& token_ids_path);

/// The first n_tokens of the token stream of either input: the texts' (as above) when
/// token_ids_path is empty, else the ids of that file, checked against the model's
/// vocabulary (its token_embd.weight rows; no tokenizer is needed) and used as given
/// (no BOS is added, whatever the tokenizer's add_bos_token says). A token-ids file
/// gives one source record: its path, the SHA-256 and size of its bytes and the tokens
/// taken. Throws out_of_range when the file holds fewer than n_tokens ids.
std::vector<int32_t> token_stream(const GgufFile& model, const std::vector<std::string>& text_paths,
                                  const std::string& token_ids_path, int64_t n_tokens,
                                  std::vector<TextSource>& sources);

}  // namespace pkv
