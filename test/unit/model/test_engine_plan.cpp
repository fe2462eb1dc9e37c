// The host-side plans of a batched engine (engine_plan.h): packing, tiles, chunks, memory
// sizing, the device weight layout, weight conversion and the batch checks.
#include <algorithm>
#include <functional>
#include <limits>
#include <random>
#include <set>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/engine_plan.h"
#include "tiny_llama.h"

using namespace pkv;
using namespace pkv_test;

namespace {

std::vector<std::vector<int32_t>> seqs_of(const std::vector<int>& lengths) {
    std::vector<std::vector<int32_t>> s;
    int32_t next = 0;
    for (int n : lengths) {
        s.emplace_back();
        for (int i = 0; i < n; ++i) s.back().push_back(next++ % 50);
    }
    return s;
}

}  // namespace

TEST_CASE("pack_batch: rows, positions, next-token targets and sequence starts", "[model][engine_plan]") {
    const std::vector<std::vector<int32_t>> seqs = {{5, 6, 7}, {9}, {1, 2}};
    const PackedBatch b = pack_batch(seqs);
    CHECK(b.n_rows() == 6);
    CHECK(b.n_seq() == 3);
    CHECK(b.max_len == 3);
    CHECK(b.tokens == std::vector<int32_t>{5, 6, 7, 9, 1, 2});
    CHECK(b.pos == std::vector<int32_t>{0, 1, 2, 0, 0, 1});
    CHECK(b.target == std::vector<int32_t>{6, 7, -1, -1, 2, -1});
    CHECK(b.row0 == std::vector<int64_t>{0, 3, 4, 6});
    const PackedBatch e = pack_batch({});
    CHECK(e.n_rows() == 0);
    CHECK(e.n_seq() == 0);
}

TEST_CASE("attention_tiles cover every row once and never cross a sequence", "[model][engine_plan]") {
    const std::vector<int> lengths = {37, 1, 16, 17, 64};
    const PackedBatch b = pack_batch(seqs_of(lengths));
    const auto tiles = attention_tiles(b, 16);
    std::vector<int> seen(static_cast<size_t>(b.n_rows()), 0);
    for (const AttentionTile& t : tiles) {
        REQUIRE(t.nq >= 1);
        CHECK(t.nq <= 16);
        const auto s = std::upper_bound(b.row0.begin(), b.row0.end(), t.row0) - b.row0.begin() - 1;
        REQUIRE(b.row0[static_cast<size_t>(s)] == t.row0);  // starts at a sequence start
        CHECK(t.row0 + t.q0 + t.nq <= b.row0[static_cast<size_t>(s) + 1]);
        for (int r = 0; r < t.nq; ++r) ++seen[static_cast<size_t>(t.row0 + t.q0 + r)];
    }
    CHECK(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; }));
    CHECK(tiles.size() == 3 + 1 + 1 + 2 + 4);
}

TEST_CASE("split_even, group_sequences and padded_rows", "[model][engine_plan]") {
    CHECK(split_even(10, 4) == std::vector<Range>{{0, 4}, {4, 4}, {8, 2}});
    CHECK(split_even(8, 4) == std::vector<Range>{{0, 4}, {4, 4}});
    CHECK(split_even(0, 4).empty());
    // 10 + 20 fit in 32; 30 does not fit after them; 40 is longer than 32 and stands alone.
    CHECK(group_sequences(seqs_of({10, 20, 30, 40, 1}), 32) == std::vector<Range>{{0, 2}, {2, 1}, {3, 1}, {4, 1}});
    CHECK(group_sequences(seqs_of({8, 8, 8, 8}), 32) == std::vector<Range>{{0, 4}});
    CHECK(group_sequences({}, 32).empty());
    CHECK(padded_rows(0, 1024) == 1024);
    CHECK(padded_rows(1, 1024) == 1024);
    CHECK(padded_rows(1024, 1024) == 1024);
    CHECK(padded_rows(1025, 1024) == 2048);
}

TEST_CASE("vocab_chunk_rows fits the budget in multiples of 256", "[model][engine_plan]") {
    CHECK(vocab_chunk_rows(49152, 1024, int64_t{256} << 20) == 49152);  // one chunk
    const int64_t c = vocab_chunk_rows(262144, 1024, int64_t{256} << 20);
    CHECK(c == 65536);
    CHECK(vocab_chunk_rows(262144, 1024, 1) == 256);  // never below 256
    CHECK(vocab_chunk_rows(64, 1024, 1) == 64);       // never above the vocabulary
    const int64_t odd = vocab_chunk_rows(100000, 1000, 1000 * 4 * 777);
    CHECK(odd == 768);
    CHECK(odd * 1000 * 4 <= 1000 * 4 * 777);
}

TEST_CASE("activation bytes per row and the rows a budget holds", "[model][engine_plan]") {
    LlamaHparams hp;
    hp.n_embd = 64, hp.n_ff = 128, hp.n_head = 4, hp.n_head_kv = 2, hp.head_dim = 16;
    const int64_t f32 = activation_bytes_per_row(hp, WeightType::f32);
    CHECK(f32 == 4 * (4 * 64 + 2 * 64 + 2 * 32 + 2 * 128) + 2 * 2 * (3 * 32 + 64) + 4 * 2 * 32 + 4 * 2 * 2 + 12);
    CHECK(activation_bytes_per_row(hp, WeightType::bf16) == f32 + 2 * 128);
    // A feed-forward narrower than q | k | v: the gate buffer takes the fused product's width.
    hp.n_ff = 32;
    CHECK(activation_bytes_per_row(hp, WeightType::f32) ==
          4 * (4 * 64 + 2 * 64 + 2 * 32 + 32 + (64 + 2 * 32)) + 2 * 2 * (3 * 32 + 64) + 4 * 2 * 32 + 4 * 2 * 2 + 12);
    CHECK(rows_for_memory(1000 * 100, 100, 64, 1 << 20) == 960);
    CHECK(rows_for_memory(1000 * 100, 100, 64, 512) == 512);
    CHECK(rows_for_memory(63 * 100, 100, 64, 1 << 20) == 0);
    CHECK(rows_for_memory(-5, 100, 64, 1 << 20) == 0);
}

TEST_CASE("weight_layout places every weight the device needs once, aligned", "[model][engine_plan]") {
    ScratchDir dir;
    TinySpec s;
    s.arch = "qwen2";
    s.qkv_bias = true;
    s.n_layer = 3;
    SECTION("tied output") {}
    SECTION("separate output") { s.tied = false; }
    const std::string path = dir.path("tiny.gguf");
    write_tiny_llama(path, s);
    const LlamaModel model(GgufFile::open(path));
    for (WeightType type : {WeightType::bf16, WeightType::fp16, WeightType::f32}) {
        const WeightLayout w = weight_layout(model, type);
        CAPTURE(weight_type_name(type), s.tied);
        // 9 parts + 3 biases per layer, the output matrix and its norm.
        REQUIRE(w.tensors.size() == 3 * 12 + 2);
        int64_t end = 0;
        std::set<std::string> names;
        for (const DeviceTensor& t : w.tensors) {
            const bool follows = t.part == LayerPart::wk || t.part == LayerPart::wv;
            CHECK((follows ? t.offset == end : t.offset % 256 == 0));  // wk after wq, wv after wk
            CHECK(t.offset >= end);                                    // in order, no overlap
            end = t.offset + t.bytes;
            CHECK(t.bytes == t.rows * t.cols * (t.matrix ? weight_type_bytes(type) : 4));
            names.insert(t.info->name);
        }
        CHECK(end <= w.total_bytes);
        CHECK(names.count("rope_freqs.weight") == 0);
        const DeviceTensor& out = w.tensors[static_cast<size_t>(w.output)];
        CHECK(out.info->name == (s.tied ? "token_embd.weight" : "output.weight"));
        CHECK(out.matrix);
        CHECK(out.rows == s.n_vocab);
        CHECK_FALSE(w.tensors[static_cast<size_t>(w.output_norm)].matrix);
        CHECK(names.count("token_embd.weight") == (s.tied ? 1u : 0u));
        for (int l = 0; l < 3; ++l) {
            const auto& idx = w.layer_index[static_cast<size_t>(l)];
            CHECK(idx[static_cast<int>(LayerPart::bq)] >= 0);
            CHECK(idx[static_cast<int>(LayerPart::bo)] == -1);
            CHECK(idx[static_cast<int>(LayerPart::q_norm)] == -1);
            const DeviceTensor& wq = w.tensors[static_cast<size_t>(idx[static_cast<int>(LayerPart::wq)])];
            CHECK(wq.info->name == "blk." + std::to_string(l) + ".attn_q.weight");
            CHECK(wq.matrix);
            CHECK(wq.rows == s.n_head * s.head_dim);
            CHECK(wq.cols == s.n_embd);
            CHECK(qkv_adjacent(w, l));
            const DeviceTensor& wv = w.tensors[static_cast<size_t>(idx[static_cast<int>(LayerPart::wv)])];
            CHECK(wv.offset + wv.bytes ==
                  wq.offset + (s.n_head + 2 * s.n_head_kv) * s.head_dim * wq.cols * (type == WeightType::f32 ? 4 : 2));
            CHECK_FALSE(w.tensors[static_cast<size_t>(idx[static_cast<int>(LayerPart::attn_norm)])].matrix);
        }
    }
}

TEST_CASE("default_slab_rows widens the slab for narrow models", "[model][engine_plan]") {
    LlamaHparams hp;
    const std::pair<uint32_t, int> cases[] = {{4096, 1024}, {2048, 2048}, {1024, 4096}, {640, 4096},
                                              {576, 4096},  {512, 8192},  {32, 8192},   {8192, 1024}};
    for (const auto& [embd, slab] : cases) {
        hp.n_embd = embd;
        CAPTURE(embd);
        CHECK(default_slab_rows(hp) == slab);
    }
}

TEST_CASE("split_qkv_ref splits the fused product's rows and adds the biases", "[model][engine_plan]") {
    const int qd = 4, kd = 2, rows = 3, w = qd + 2 * kd;
    std::vector<float> qkv(static_cast<size_t>(rows * w));
    for (size_t i = 0; i < qkv.size(); ++i) qkv[i] = static_cast<float>(i) + 0.25f;
    const std::vector<float> bq = {1, 2, 3, 4}, bk = {10, 20}, bv = {100, 200};
    std::vector<float> q(rows * qd), k(rows * kd), v(rows * kd);
    split_qkv_ref(qkv.data(), rows, qd, kd, bq.data(), bk.data(), bv.data(), q.data(), k.data(), v.data());
    for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < qd; ++c) CHECK(q[r * qd + c] == qkv[r * w + c] + bq[c]);
        for (int c = 0; c < kd; ++c) {
            CHECK(k[r * kd + c] == qkv[r * w + qd + c] + bk[c]);
            CHECK(v[r * kd + c] == qkv[r * w + qd + kd + c] + bv[c]);
        }
    }
    split_qkv_ref(qkv.data(), rows, qd, kd, nullptr, nullptr, nullptr, q.data(), k.data(), v.data());
    CHECK(q[qd] == qkv[w]);
    CHECK(k[kd + 1] == qkv[w + qd + 1]);
    CHECK(v[2 * kd] == qkv[2 * w + qd + kd]);
}

TEST_CASE("pack_rows converts dequantized rows with round to nearest even", "[model][engine_plan]") {
    ScratchDir dir;
    TinySpec s;
    s.embd_type = GgmlType::Q8_0;
    s.n_vocab = 40000;  // 1.28 Mi values: more than one block of rows
    const std::string path = dir.path("tiny.gguf");
    write_tiny_llama(path, s);
    const auto file = GgufFile::open(path);
    const GgufTensorInfo& t = *file->find_tensor("token_embd.weight");
    const uint64_t row0 = 3, n = 39990, cols = t.row_length();
    std::vector<float> ref(n * cols);
    file->dequantize_rows(t, row0, n, ref.data());
    std::vector<float> f32(ref.size());
    pack_rows(*file, t, row0, n, WeightType::f32, f32.data());
    CHECK(f32 == ref);
    std::vector<uint16_t> got(ref.size()), want(ref.size());
    pack_rows(*file, t, row0, n, WeightType::bf16, got.data());
    float_to_bf16_n(ref.data(), want.data(), ref.size());
    CHECK(got == want);
    pack_rows(*file, t, row0, n, WeightType::fp16, got.data());
    float_to_half_n(ref.data(), want.data(), ref.size());
    CHECK(got == want);
}

TEST_CASE("embed_rows gathers and scales token embeddings as the CPU pass", "[model][engine_plan]") {
    ScratchDir dir;
    TinySpec s;
    s.arch = "gemma3";
    s.qk_norm = true;
    s.embd_type = GgmlType::F16;
    const std::string path = dir.path("tiny.gguf");
    const TinyModel tm = write_tiny_llama(path, s);
    const LlamaModel model(GgufFile::open(path));
    const std::vector<int32_t> tok = {3, 0, 63, 3};
    std::vector<float> out(tok.size() * static_cast<size_t>(s.n_embd));
    embed_rows(model.file(), model.hparams(), tok, out.data());
    const float scale = model.hparams().embd_scale;
    REQUIRE(scale > 1.0f);
    for (size_t i = 0; i < tok.size(); ++i)
        for (int c = 0; c < s.n_embd; ++c)
            CHECK(out[i * s.n_embd + c] == tm.w.at("token_embd.weight")[tok[i] * s.n_embd + c] * scale);
}

TEST_CASE("check_engine_batch refuses what the forward pass would, before any work", "[model][engine_plan]") {
    ScratchDir dir;
    TinySpec s;
    s.n_ctx = 16;
    const std::string path = dir.path("tiny.gguf");
    write_tiny_llama(path, s);
    const LlamaModel model(GgufFile::open(path));
    const GgufFile& f = model.file();
    const LlamaHparams& hp = model.hparams();
    ForwardOptions o;
    CHECK_NOTHROW(check_engine_batch(f, hp, {{1, 2}, {3}}, o, false));
    CHECK(code_of([&] { check_engine_batch(f, hp, {{1, 2}, {}}, o, false); }) == ErrorCode::out_of_range);
    CHECK(code_of([&] { check_engine_batch(f, hp, {std::vector<int32_t>(17, 1)}, o, false); }) ==
          ErrorCode::out_of_range);
    CHECK(code_of([&] { check_engine_batch(f, hp, {{1, 64}}, o, false); }) == ErrorCode::out_of_range);
    CHECK(code_of([&] { check_engine_batch(f, hp, {{1, -1}}, o, false); }) == ErrorCode::out_of_range);
    ForwardOptions bad = o;
    bad.pos0 = 1;
    CHECK(code_of([&] { check_engine_batch(f, hp, {{1}}, bad, false); }) == ErrorCode::invalid_argument);
    bad = o;
    bad.layers = {true};
    CHECK(code_of([&] { check_engine_batch(f, hp, {{1}}, bad, false); }) == ErrorCode::invalid_argument);
    bad = o;
    bad.capture = true;
    CHECK(code_of([&] { check_engine_batch(f, hp, {{1}}, bad, false); }) == ErrorCode::invalid_argument);
    CHECK_NOTHROW(check_engine_batch(f, hp, {{1}}, bad, true));
    bad = o;
    bad.kv_cache = [](const KvHookInput&, KvHookOutput&) {};
    CHECK(code_of([&] { check_engine_batch(f, hp, {{1}}, bad, false); }) == ErrorCode::invalid_argument);
}

TEST_CASE("check_finite_results refuses a nan or infinite loss or hidden value, naming where", "[model][engine_plan]") {
    ScratchDir dir;
    const std::string path = dir.path("tiny.gguf");
    write_tiny_llama(path, TinySpec{});
    const auto file = GgufFile::open(path);
    std::vector<ForwardResult> r(3);
    for (auto& x : r) x.nll = {1.0f, 2.0f}, x.hidden = {0.5f, -0.5f};
    CHECK_NOTHROW(check_finite_results(*file, r, 0, 3, 0, "why"));
    r[2].nll[1] = std::numeric_limits<float>::quiet_NaN();
    CHECK_NOTHROW(check_finite_results(*file, r, 0, 2, 0, "why"));  // only the range given is checked
    try {
        check_finite_results(*file, r, 1, 3, 7, "binary16 overflow");
        FAIL("a nan loss was accepted");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::data_loss);
        const std::string m = e.what();
        CHECK(m.find(path) != std::string::npos);
        CHECK(m.find("sequence 8: the loss at position 1 is nan (binary16 overflow)") != std::string::npos);
    }
    r[2].nll[1] = 1.0f;
    r[0].hidden[1] = std::numeric_limits<float>::infinity();
    CHECK(code_of([&] { check_finite_results(*file, r, 0, 1, 0, "why"); }) == ErrorCode::data_loss);
}
