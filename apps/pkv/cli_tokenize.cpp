// `pkv tokenize`: the token ids pkv gives a text file under a GGUF's tokenizer, to
// compare with other tokenizers (llama.cpp's llama-tokenize) or inspect by eye.
#include <cstdio>
#include <string>

#include "commands.h"
#include "pkv/tokenizer/tokenizer.h"

namespace pkv::cli {

Command add_tokenize(CLI::App& root) {
    struct Args {
        std::string model, text;
        bool no_bos = false, parse_special = false;
    };
    auto args = std::make_shared<Args>();
    auto* app = root.add_subcommand("tokenize", "print the token ids of a text file, one line, space-separated");
    app->add_option("--model,-m", args->model, "GGUF model or vocabulary-only GGUF")
        ->required()
        ->check(CLI::ExistingFile);
    // The library names a text file it cannot read, in one line.
    app->add_option("--text,-f", args->text, "text file, tokenized byte for byte (no trailing newline removed)")
        ->required();
    app->add_flag("--no-bos", args->no_bos, "add neither BOS nor EOS, even where the vocabulary asks for them");
    app->add_flag("--parse-special", args->parse_special,
                  "match control tokens such as <|im_start|> in the text (user-defined tokens always match)");
    return {app, [args]() {
                const auto ids = tokenize_file(args->model, args->text, !args->no_bos, args->parse_special);
                std::string line;
                for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
                std::printf("%s\n", line.c_str());
                return 0;
            }};
}

}  // namespace pkv::cli
