// --token-ids input: read_token_ids' format and refusals, token_stream from a token-ids
// file (source record, too few ids, ids beyond the model's vocabulary), and run_dump
// storing exactly the file's ids for a model without a tokenizer.
#include <cstring>
#include <fstream>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/sha256.h"
#include "pkv/gguf/gguf.h"
#include "pkv/gguf/gguf_writer.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/pipeline/dump.h"
#include "pkv/pipeline/text_input.h"
#include "support/scratch_dir.h"
#include "support/tiny_model.h"

using namespace pkv;

namespace {

std::string write_ids(const pkv_test::ScratchDir& dir, const std::string& name, const std::vector<int32_t>& ids) {
    std::vector<uint8_t> b(ids.size() * 4);
    for (size_t i = 0; i < ids.size(); ++i) {
        const auto u = static_cast<uint32_t>(ids[i]);
        for (int k = 0; k < 4; ++k) b[4 * i + k] = static_cast<uint8_t>(u >> (8 * k));
    }
    return dir.write(name, b);
}

}  // namespace

TEST_CASE("read_token_ids reads little-endian int32 ids and refuses bad files", "[pipeline][token_ids]") {
    pkv_test::ScratchDir dir;
    const std::string ok = write_ids(dir, "ok.bin", {0, 1, 65535, 65536, 99999});
    CHECK(read_token_ids(ok, 100000) == std::vector<int32_t>{0, 1, 65535, 65536, 99999});
    // The byte order is fixed: 0x01020304 is stored 04 03 02 01.
    const std::string le = dir.write("le.bin", {0x04, 0x03, 0x02, 0x01});
    CHECK(read_token_ids(le, 0x01020305) == std::vector<int32_t>{0x01020304});

    CHECK_THROWS_WITH(read_token_ids(ok, 99999),
                      ContainsSubstring("ok.bin: token 4 (byte offset 16) is 99999, expected an id in [0, 99999)"));
    const std::string neg = write_ids(dir, "neg.bin", {5, -1, 7});
    CHECK_THROWS_WITH(read_token_ids(neg, 10), ContainsSubstring("neg.bin: token 1 (byte offset 4) is -1"));
    const std::string odd = dir.write("odd.bin", {1, 0, 0, 0, 2, 0});
    CHECK_THROWS_WITH(read_token_ids(odd, 10), ContainsSubstring("odd.bin: token-ids file of 6 bytes"));
    const std::string empty = dir.write("empty.bin", {});
    CHECK_THROWS_WITH(read_token_ids(empty, 10), ContainsSubstring("empty.bin: token-ids file is empty"));
    try {
        read_token_ids(neg, 10);
        FAIL("expected a refusal");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::out_of_range);
    }
}

TEST_CASE("token_stream takes the first n ids of a token-ids file and records it", "[pipeline][token_ids]") {
    pkv_test::ScratchDir dir;
    const std::string model_path = dir.path("tiny.gguf");
    test::write_tiny_model(model_path);
    const auto model = GgufFile::open(model_path);
    const int nv = test::tiny_vocab_size();
    const std::string ids = write_ids(dir, "ids.bin", {3, nv - 1, 0, 17, 42});
    std::vector<TextSource> sources;
    CHECK(token_stream(*model, {}, ids, 4, sources) == std::vector<int32_t>{3, nv - 1, 0, 17});
    REQUIRE(sources.size() == 1);
    CHECK(sources[0].path == ids);
    CHECK(sources[0].bytes == 20);
    CHECK(sources[0].tokens == 4);
    CHECK(sources[0].sha256 == sha256_file(ids));

    sources.clear();
    CHECK_THROWS_WITH(token_stream(*model, {}, ids, 6, sources),
                      ContainsSubstring("--tokens 6: " + ids + " holds only 5 token ids"));
    const std::string big = write_ids(dir, "big.bin", {1, 2, nv});
    CHECK_THROWS_WITH(token_stream(*model, {}, big, 2, sources),
                      ContainsSubstring("big.bin: token 2 (byte offset 8) is " + std::to_string(nv)));

    CHECK_THROWS_WITH(check_model_and_inputs(model_path, {ids}, ids), ContainsSubstring("give one of them, not both"));
    CHECK_THROWS_WITH(check_model_and_inputs(model_path, {}, dir.path("none.bin")),
                      ContainsSubstring("none.bin: token-ids file not found"));
    CHECK_THROWS_WITH(check_model_and_inputs(model_path, {}, dir.str()), ContainsSubstring("is a directory"));
    CHECK_NOTHROW(check_model_and_inputs(model_path, {}, ids));
}

TEST_CASE("run_dump with token ids stores the file's ids for a model without a tokenizer",
          "[pipeline][token_ids][dump]") {
    pkv_test::ScratchDir dir;
    // The tiny model without its vocabulary (no tokenizer key at all): only the ids file can feed it.
    const std::string with_vocab = dir.path("tiny.gguf"), model_path = dir.path("novocab.gguf");
    test::write_tiny_model(with_vocab);
    {
        const auto src = GgufFile::open(with_vocab);
        GgufWriter w;
        for (const auto& key : src->keys())
            if (key.rfind("tokenizer.", 0) != 0) w.set(key, src->get(key));
        for (const auto& t : src->tensors()) {
            const uint8_t* p = src->tensor_data(t);
            w.add_tensor(t.name, t.ne, t.type(), std::vector<uint8_t>(p, p + t.nbytes));
        }
        w.write(model_path);
    }
    std::vector<int32_t> ids;
    for (int i = 0; i < 70; ++i) ids.push_back((i * 37 + 5) % test::tiny_vocab_size());
    DumpConfig c;
    c.model_path = model_path;
    c.token_ids_path = write_ids(dir, "ids.bin", ids);
    c.n_tokens = 64;
    c.ctx = 32;
    c.out_path = dir.path("dump.h5");
    c.argv = {"pkv", "dump", "(test)"};
    const DumpSummary s = run_dump(c);
    CHECK(s.n_tokens == 64);
    CHECK(s.n_sequences == 2);
    CHECK(validate_kv_dump(c.out_path).empty());
    KvDumpReader r(c.out_path);
    CHECK(r.token_ids() == std::vector<int32_t>(ids.begin(), ids.begin() + 64));
}
