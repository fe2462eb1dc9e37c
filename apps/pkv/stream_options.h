// apps/pkv/stream_options.h — the options of `calibrate --model` and `analyze --model`:
// the model and text to stream activations from instead of a dump, named and defaulted
// as in `pkv dump` so the same arguments give the same tokens.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "pkv/core/error.h"
#include "pkv/pipeline/kv_source.h"

namespace pkv::cli {

struct StreamArgs {
    std::string dim_order = "gguf";
    CLI::Option* model = nullptr;  ///< --model, which the with---model options need
};

inline void add_stream_options(CLI::App* app, ModelSourceConfig& m, StreamArgs& a) {
    a.model =
        app->add_option("--model,-m", m.model_path,
                        "GGUF model to run over --text instead of reading a dump (activations streamed, no file)");
    auto* text =
        app->add_option("--text,-t", m.text_paths, "with --model: text file(s), tokenized separately and concatenated");
    app->add_option("--token-ids", m.token_ids_path,
                    "with --model, instead of --text: the model's token ids, little-endian int32, 4 bytes each")
        ->excludes(text)
        ->needs(a.model);
    // Given without --model they would be ignored: CLI11 refuses them instead.
    app->add_option("--tokens,-n", m.n_tokens, "with --model: tokens to run")->capture_default_str()->needs(a.model);
    app->add_option("--ctx,-c", m.ctx, "with --model: tokens per sequence (independent prefill from position 0)")
        ->capture_default_str()
        ->needs(a.model);
    app->add_option("--dim-order", a.dim_order, "with --model: key/query head-dimension order, gguf or hf")
        ->capture_default_str()
        ->needs(a.model);
}

/// Checks what only makes sense with --model: --text needs it, and --model needs --text
/// or --token-ids.
inline void resolve_stream(ModelSourceConfig& m, const StreamArgs& a) {
    PKV_CHECK(a.dim_order == "gguf" || a.dim_order == "hf", invalid_argument,
              "--dim-order: expected gguf or hf, got '{}'", a.dim_order);
    m.hf_dim_order = a.dim_order == "hf";
    if (m.model_path.empty())
        PKV_CHECK(m.text_paths.empty(), invalid_argument, "--text: needs --model (the model to run over it)");
    else
        PKV_CHECK(!m.text_paths.empty() || !m.token_ids_path.empty(), invalid_argument,
                  "--model {}: needs --text or --token-ids (the input to run it over)", m.model_path);
}

}  // namespace pkv::cli
