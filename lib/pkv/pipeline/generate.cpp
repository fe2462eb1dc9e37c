#include "pkv/pipeline/generate.h"

#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/llama.h"
#include "pkv/tokenizer/tokenizer.h"

namespace pkv {

GreedyResult generate_greedy(const std::string& model_path, const std::string& prompt, int n_new) {
    PKV_CHECK(n_new >= 1, invalid_argument, "--n: expected at least 1, got {}", n_new);
    auto f = GgufFile::open(model_path);
    LlamaModel model(f);
    Tokenizer tok(vocab_from_gguf(*f));
    GreedyResult r;
    r.prompt_ids = tok.encode(prompt, /*parse_special=*/true);
    PKV_CHECK(!r.prompt_ids.empty(), invalid_argument, "--prompt: yields no tokens");
    PKV_CHECK(r.prompt_ids.size() + n_new <= model.hparams().n_ctx_train, out_of_range,
              "--n {}: prompt ({} tokens) plus new tokens exceed the context length {}", n_new, r.prompt_ids.size(),
              model.hparams().n_ctx_train);
    const auto all = model.greedy(r.prompt_ids, n_new);
    r.new_ids.assign(all.begin() + r.prompt_ids.size(), all.end());
    r.text = tok.decode(r.new_ids);
    return r;
}

}  // namespace pkv
