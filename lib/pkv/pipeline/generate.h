// pkv/pipeline/generate.h — `pkv generate` as one library call: a greedy continuation
// of a prompt by a GGUF model, to check the forward pass and tokenizer by eye.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pkv {

/// Greedy continuation of `prompt` by the model at `model_path`: the prompt's token
/// ids, the new ids and the decoded new text.
struct GreedyResult {
    std::vector<int32_t> prompt_ids;
    std::vector<int32_t> new_ids;
    std::string text;
};
GreedyResult generate_greedy(const std::string& model_path, const std::string& prompt, int n_new);

}  // namespace pkv
