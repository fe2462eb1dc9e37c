// The real SmolLM2-135M-Instruct Q4_1 file, when scripts/fetch-data.sh has fetched it.
#include <cmath>
#include <filesystem>

#include "catch.h"
#include "pkv/gguf/gguf.h"

using namespace pkv;

TEST_CASE("real model: SmolLM2-135M-Instruct Q4_1 header and tensors") {
    const std::string path = PKV_TEST_DATA_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (!std::filesystem::exists(path)) PKV_SKIP(path << " is missing: run scripts/fetch-data.sh to fetch the model");
    auto f = GgufFile::open(path);
    CHECK(f->version() == 3);
    CHECK(f->alignment() == 32);
    CHECK(f->get_string("general.architecture") == "llama");
    CHECK(f->get_u64("llama.block_count") == 30);
    CHECK(f->get_u64("llama.embedding_length") == 576);
    CHECK(f->get_u64("llama.attention.head_count") == 9);
    CHECK(f->get_u64("llama.attention.head_count_kv") == 3);
    CHECK(f->get_f64("llama.rope.freq_base") == 100000.0);
    CHECK(f->get_string("tokenizer.ggml.pre") == "smollm");
    CHECK(f->get_string_array("tokenizer.ggml.tokens").size() == 49152);
    REQUIRE(f->tensors().size() == 272);

    const GgufTensorInfo& emb = f->tensor("token_embd.weight");
    CHECK(emb.type() == GgmlType::Q8_0);
    CHECK(emb.ne == std::vector<uint64_t>{576, 49152});
    CHECK(f->tensor("blk.0.attn_q.weight").type() == GgmlType::Q4_1);
    CHECK(f->tensor("blk.29.ffn_norm.weight").type() == GgmlType::F32);
    CHECK(f->find_tensor("output.weight") == nullptr);  // tied to token_embd

    // Every supported tensor dequantizes to finite values.
    int non_finite = 0;
    for (const auto& t : f->tensors()) {
        REQUIRE(ggml_type_supported(t.type_id));
        std::vector<float> row(t.row_length());
        f->dequantize_rows(t, t.n_rows() - 1, 1, row.data());
        for (float v : row) non_finite += !std::isfinite(v);
    }
    CHECK(non_finite == 0);
    const std::vector<float> norm = f->dequantize(f->tensor("output_norm.weight"));
    CHECK(norm.size() == 576);
}
