// The real SmolLM2-135M-Instruct Q4_1 model (when scripts/fetch-data.sh has fetched it),
// against values from test/python/ref_forward.py, an independent float64 numpy forward
// pass over weights dequantized by the `gguf` package from PyPI.
#include <filesystem>
#include <numeric>

#include "catch.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/llama.h"

using namespace pkv;

namespace {

const std::string kModel = PKV_TEST_DATA_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

// The first 64 tokens of /usr/share/games/fortunes/fortunes (byte-level BPE of the
// model's vocabulary, built with the `tokenizers` package).
const std::vector<int32_t> kFortune64 = {
    49,   1194, 327,   5512, 3884, 10095, 29646, 216,  1816,  314, 357,   47,  198, 21,    198,  49,
    1443, 2737, 10297, 1092, 260,  36215, 5634,  1163, 30,    198, 21,    198, 49,  10274, 282,  253,
    8525, 523,  3318,  325,  1135, 288,   346,   30,   198,   21,  198,   49,  986, 29,    1710, 37685,
    5732, 582,  523,   1972, 3318, 30,    198,   198,  35334, 260, 34136, 418, 750, 4319,  30,   198};

}  // namespace

TEST_CASE("real model: forward matches the numpy reference, greedy answers Paris", "[model][real]") {
    if (!std::filesystem::exists(kModel)) PKV_SKIP(kModel << " is missing: run scripts/fetch-data.sh");
    LlamaModel model(GgufFile::open(kModel));
    const LlamaHparams& hp = model.hparams();
    CHECK(hp.n_layer == 30);
    CHECK(hp.n_embd == 576);
    CHECK(hp.n_head == 9);
    CHECK(hp.n_head_kv == 3);
    CHECK(hp.head_dim == 64);
    CHECK(hp.n_ff == 1536);
    CHECK(hp.n_vocab == 49152);
    CHECK(hp.rope_freq_base == 100000.0f);
    CHECK(hp.tied_output);

    const ForwardResult r = model.forward(kFortune64, ForwardOptions{});
    REQUIRE(r.nll.size() == 63);
    // ref_forward.py: per-position values and the mean over the 63 predictions.
    CHECK(r.nll[0] == Approx(10.238854430).epsilon(1e-4));
    CHECK(r.nll[1] == Approx(3.702466545).epsilon(1e-4));
    CHECK(r.nll[2] == Approx(12.231032932).epsilon(1e-4));
    CHECK(r.argmax[0] == 29);
    CHECK(r.argmax[2] == 253);
    const double mean = std::accumulate(r.nll.begin(), r.nll.end(), 0.0) / 63.0;
    CHECK(mean == Approx(4.156215125).epsilon(1e-5));

    // "The capital of France is" -> " Paris" "." "\n"
    const auto out = model.greedy({504, 3575, 282, 4649, 314}, 3);
    CHECK(std::vector<int32_t>(out.begin() + 5, out.end()) == std::vector<int32_t>{7042, 30, 198});
}
