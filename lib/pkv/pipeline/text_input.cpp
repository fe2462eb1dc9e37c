#include "pkv/pipeline/text_input.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/core/sha256.h"
#include "pkv/gguf/gguf.h"
#include "pkv/tokenizer/tokenizer.h"

namespace pkv {

void check_model_and_texts(const std::string& model_path, const std::vector<std::string>& text_paths) {
    struct stat st {};
    PKV_CHECK(!model_path.empty(), invalid_argument, "--model is required");
    PKV_CHECK(stat(model_path.c_str(), &st) == 0, not_found, "{}: model file not found", model_path);
    PKV_CHECK(!text_paths.empty(), invalid_argument, "--text: at least one text file is required");
    for (const auto& t : text_paths) {
        PKV_CHECK(stat(t.c_str(), &st) == 0, not_found, "{}: text file not found", t);
        PKV_CHECK(!S_ISDIR(st.st_mode), invalid_argument, "{}: text is a directory, expected a file", t);
    }
}

std::string read_text_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    PKV_CHECK(f, not_found, "{}: cannot open text: {}", path, std::strerror(errno));
    std::ostringstream ss;
    ss << f.rdbuf();
    PKV_CHECK(!f.bad(), io, "{}: read error", path);
    return ss.str();
}

std::vector<int32_t> token_stream(const GgufFile& model, const std::vector<std::string>& text_paths, int64_t n_tokens,
                                  std::vector<TextSource>& sources) {
    Tokenizer tokenizer(vocab_from_gguf(model));
    std::vector<int32_t> stream;
    for (const auto& path : text_paths) {
        if (static_cast<int64_t>(stream.size()) >= n_tokens) {
            log::warn("{}: not used: the earlier texts already hold --tokens {}", path, n_tokens);
            continue;
        }
        const std::string text = read_text_file(path);
        PKV_CHECK(!text.empty(), invalid_argument, "{}: text file is empty", path);
        const std::vector<int32_t> ids = tokenizer.encode(text, /*parse_special=*/false);
        PKV_CHECK(!ids.empty(), invalid_argument, "{}: text yields no tokens", path);
        TextSource src;
        src.path = path;
        src.sha256 = sha256_hex(text.data(), text.size());
        src.bytes = static_cast<int64_t>(text.size());
        const int64_t take = std::min<int64_t>(static_cast<int64_t>(ids.size()), n_tokens - stream.size());
        src.tokens = take;
        stream.insert(stream.end(), ids.begin(), ids.begin() + take);
        log::info("{}: {} bytes, {} tokens (using {})", path, text.size(), ids.size(), take);
        sources.push_back(src);
        check_interrupted();
    }
    PKV_CHECK(static_cast<int64_t>(stream.size()) >= n_tokens, out_of_range,
              "--tokens {}: the text holds only {} tokens ({}); pass fewer tokens or more text", n_tokens,
              stream.size(), text_paths.size() == 1 ? text_paths[0] : std::to_string(text_paths.size()) + " files");
    return stream;
}

std::vector<int32_t> read_token_ids(const std::string& path, int64_t n_vocab) {
    const std::string bytes = read_text_file(path);
    PKV_CHECK(!bytes.empty(), data_loss, "{}: token-ids file is empty", path);
    PKV_CHECK(bytes.size() % 4 == 0, data_loss,
              "{}: token-ids file of {} bytes: expected little-endian int32 ids, a multiple of 4 bytes", path,
              bytes.size());
    std::vector<int32_t> ids(bytes.size() / 4);
    for (size_t i = 0; i < ids.size(); ++i) {
        const auto* b = reinterpret_cast<const uint8_t*>(bytes.data()) + 4 * i;
        const uint32_t u = uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
        int32_t id;
        std::memcpy(&id, &u, 4);
        PKV_CHECK(id >= 0 && id < n_vocab, out_of_range,
                  "{}: token {} (byte offset {}) is {}, expected an id in [0, {}) (the model's vocabulary)", path, i,
                  4 * i, id, n_vocab);
        ids[i] = id;
    }
    return ids;
}

void check_model_and_inputs(const std::string& model_path, const std::vector<std::string>& text_paths,
                            const std::string& token_ids_path) {
    if (token_ids_path.empty()) return check_model_and_texts(model_path, text_paths);
    PKV_CHECK(text_paths.empty(), invalid_argument, "--text and --token-ids: give one of them, not both");
    struct stat st {};
    PKV_CHECK(!model_path.empty(), invalid_argument, "--model is required");
    PKV_CHECK(stat(model_path.c_str(), &st) == 0, not_found, "{}: model file not found", model_path);
    PKV_CHECK(stat(token_ids_path.c_str(), &st) == 0, not_found, "{}: token-ids file not found", token_ids_path);
    PKV_CHECK(!S_ISDIR(st.st_mode), invalid_argument, "{}: token-ids file is a directory, expected a file",
              token_ids_path);
}

std::vector<int32_t> token_stream(const GgufFile& model, const std::vector<std::string>& text_paths,
                                  const std::string& token_ids_path, int64_t n_tokens,
                                  std::vector<TextSource>& sources) {
    if (token_ids_path.empty()) return token_stream(model, text_paths, n_tokens, sources);
    const GgufTensorInfo* embd = model.find_tensor("token_embd.weight");
    PKV_CHECK(embd != nullptr && embd->ne.size() == 2, not_found,
              "{}: tensor 'token_embd.weight' [n_embd, n_vocab] not found: cannot check the ids of {}", model.path(),
              token_ids_path);
    std::vector<int32_t> ids = read_token_ids(token_ids_path, static_cast<int64_t>(embd->ne[1]));
    PKV_CHECK(static_cast<int64_t>(ids.size()) >= n_tokens, out_of_range,
              "--tokens {}: {} holds only {} token ids; pass fewer tokens or more ids", n_tokens, token_ids_path,
              ids.size());
    TextSource src;
    src.path = token_ids_path;
    src.sha256 = sha256_file(token_ids_path);
    src.bytes = static_cast<int64_t>(ids.size()) * 4;
    src.tokens = n_tokens;
    sources.push_back(src);
    log::info("{}: {} token ids (using {})", token_ids_path, ids.size(), n_tokens);
    ids.resize(static_cast<size_t>(n_tokens));
    return ids;
}

}  // namespace pkv
