// libFuzzer target: the GGUF reader on arbitrary bytes. Parses header, metadata and
// tensor infos, renders every value, dequantizes every tensor of a supported type and
// tokenizes a short text with the file's vocabulary, then runs what `pkv info --tensors`,
// `pkv info --json` and `pkv validate` run on a model (hyperparameters, the forward
// pass's tensor checks, the tokenizer). Exported pattern tables (`pkv export --format
// gguf`) are GGUF files too and come through here. docs/fuzzing.md lists what counts as
// a finding.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "fuzz_common.h"
#include "pkv/gguf/gguf.h"
#include "pkv/pipeline/inspect.h"
#include "pkv/tokenizer/tokenizer.h"

namespace {

void read_gguf(const std::string& path) {
    const auto f = pkv::GgufFile::open(path);
    for (const std::string& key : f->keys()) (void)pkv::GgufFile::to_string(f->get(key));
    (void)f->find_u64("general.alignment");
    (void)f->find_string("general.architecture");
    for (const pkv::GgufTensorInfo& t : f->tensors()) {
        if (f->find_tensor(t.name) == nullptr) continue;
        (void)f->tensor_data(t);
        // One tensor refused (a bad row length for its type) must not hide the others.
        if (pkv::ggml_type_supported(t.type_id)) pkv_fuzz::guarded([&] { (void)f->dequantize(t); });
    }
    // The text touches merges, byte tokens and a control token.
    if (pkv::tokenizer_available()) {
        const pkv::Tokenizer tok(pkv::vocab_from_gguf(*f));
        const auto ids = tok.encode("the thin heron\n\t<s> \xc3\xa9t\xc3\xa9 42", /*parse_special=*/true);
        (void)tok.decode(ids);
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    pkv_fuzz::init();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = pkv_fuzz::write_input("input.gguf", data, size);
    pkv_fuzz::guarded([&] { read_gguf(path); });
    // The inspect entry points pick a reader by signature: other signatures belong to
    // the other targets.
    if (size < 4 || std::memcmp(data, "GGUF", 4) != 0) return 0;
    pkv_fuzz::guarded([&] { (void)pkv::describe_file(path, /*list_tensors=*/true); });
    pkv_fuzz::guarded([&] { (void)pkv::describe_file_json(path).dump(); });
    pkv_fuzz::guarded([&] { (void)pkv::validate_file(path); });
    return 0;
}
