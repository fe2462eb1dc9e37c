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

}  // namespace pkv
