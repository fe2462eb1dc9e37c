// pkv_fuzz_seeds: writes the seed corpus of the fuzz targets, small valid inputs made by
// pkv's own writers, one folder per target:
//   OUT/fuzz_gguf/           tiny Llama models (test/support/tiny_model.h), a file with every
//                            metadata value type and every supported tensor type, pattern
//                            tables exported as GGUF (F32 and F16 patterns)
//   OUT/fuzz_kv_dump/        KV dumps of 2 layers, 4 query heads, 2 KV heads, head_dim 8,
//                            16 tokens in 2 sequences (every activation; a subset in HF order)
//   OUT/fuzz_pattern_table/  pattern tables as safetensors: F32, F16, HF key order, Hadamard
//   OUT/fuzz_check_report/   analyze and eval reports trimmed from test/baselines/, as
//                            "NEW \0 BASE [\0 TOLERANCES]" pairs (see fuzz_check_report.cpp)
// Every seed stays under scripts/fuzz.sh's -max_len, which libFuzzer would truncate it to.
//
// Usage: pkv_fuzz_seeds OUT_DIR [SOURCE_DIR]   (SOURCE_DIR: the checkout, for test/baselines)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/core/half.h"
#include "pkv/core/log.h"
#include "pkv/gguf/ggml_types.h"
#include "pkv/gguf/gguf_writer.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/pipeline/export.h"
#include "pkv/table/pattern_table.h"
#include "support/tiny_model.h"
#include "unit/table/table_fixture.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void write_bytes(const fs::path& path, const void* data, size_t size) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!f.good()) throw std::runtime_error("cannot write " + path.string());
}

void write_bytes(const fs::path& path, const std::vector<uint8_t>& bytes) {
    write_bytes(path, bytes.data(), bytes.size());
}

// ----------------------------------------------------------------------------- GGUF

template <typename Block>
std::vector<uint8_t> block_bytes(const std::vector<Block>& blocks) {
    std::vector<uint8_t> out(blocks.size() * sizeof(Block));
    std::memcpy(out.data(), blocks.data(), out.size());
    return out;
}

// Sign-varying values of a few magnitudes, so every quantizer uses its whole range.
std::vector<float> ramp(size_t n) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(std::sin(0.7 * static_cast<double>(i)) * (1 + i % 7));
    return v;
}

// One tensor of every type pkv dequantizes and one metadata key of every value type, so
// that mutations start from each branch of the parser.
void write_types_gguf(const fs::path& path) {
    using pkv::GgmlType;
    using pkv::GgufType;
    using pkv::GgufValue;
    pkv::GgufWriter w(64);
    auto value = [](GgufType t, auto v) {
        GgufValue x;
        x.type = t;
        x.value = v;
        return x;
    };
    w.set_string("general.architecture", "llama");
    w.set("t.u8", value(GgufType::U8, uint64_t{200}));
    w.set("t.i8", value(GgufType::I8, int64_t{-100}));
    w.set("t.u16", value(GgufType::U16, uint64_t{60000}));
    w.set("t.i16", value(GgufType::I16, int64_t{-30000}));
    w.set_u32("t.u32", 4000000000u);
    w.set_i32("t.i32", -2000000000);
    w.set_f32("t.f32", 0.5f);
    w.set_bool("t.bool", true);
    w.set_u64("t.u64", uint64_t{1} << 40);
    w.set("t.i64", value(GgufType::I64, -(int64_t{1} << 40)));
    w.set_f64("t.f64", -1e300);
    w.set_f32_array("t.f32_array", {1.0f, -2.0f, 3.5f});
    GgufValue inner = value(
        GgufType::ARRAY, std::vector<GgufValue>{value(GgufType::I16, int64_t{-1}), value(GgufType::I16, int64_t{2})});
    inner.array_type = GgufType::I16;
    GgufValue nested = value(GgufType::ARRAY, std::vector<GgufValue>{inner, inner});
    nested.array_type = GgufType::ARRAY;
    w.set("t.nested", nested);

    const std::vector<float> x = ramp(256);
    w.add_tensor_f32("f32", {8, 2}, std::vector<float>(x.begin(), x.begin() + 16));
    std::vector<uint16_t> h(32), b(32);
    pkv::float_to_half_n(x.data(), h.data(), 32);
    pkv::float_to_bf16_n(x.data(), b.data(), 32);
    w.add_tensor("f16", {16, 2}, GgmlType::F16, block_bytes(h));
    w.add_tensor("bf16", {32}, GgmlType::BF16, block_bytes(b));
    std::vector<pkv::block_q4_0> q40(2);
    std::vector<pkv::block_q4_1> q41(1);
    std::vector<pkv::block_q5_0> q50(1);
    std::vector<pkv::block_q5_1> q51(1);
    std::vector<pkv::block_q8_0> q80(2);
    pkv::quantize_row_q4_0_ref(x.data(), q40.data(), 64);
    pkv::quantize_row_q4_1_ref(x.data(), q41.data(), 32);
    pkv::quantize_row_q5_0_ref(x.data(), q50.data(), 32);
    pkv::quantize_row_q5_1_ref(x.data(), q51.data(), 32);
    pkv::quantize_row_q8_0_ref(x.data(), q80.data(), 64);
    w.add_tensor("q4_0", {32, 2}, GgmlType::Q4_0, block_bytes(q40));
    w.add_tensor("q4_1", {32}, GgmlType::Q4_1, block_bytes(q41));
    w.add_tensor("q5_0", {32}, GgmlType::Q5_0, block_bytes(q50));
    w.add_tensor("q5_1", {32}, GgmlType::Q5_1, block_bytes(q51));
    w.add_tensor("q8_0", {64}, GgmlType::Q8_0, block_bytes(q80));
    // pkv has no K-quant quantizer: any bytes are a valid block, with finite scales here.
    pkv::block_q4_K q4k{};
    q4k.d = pkv::float_to_half(0.25f);
    q4k.dmin = pkv::float_to_half(0.125f);
    for (size_t i = 0; i < sizeof q4k.scales; ++i) q4k.scales[i] = static_cast<uint8_t>(17 * i + 3);
    for (size_t i = 0; i < sizeof q4k.qs; ++i) q4k.qs[i] = static_cast<uint8_t>(31 * i);
    pkv::block_q6_K q6k{};
    for (size_t i = 0; i < sizeof q6k.ql; ++i) q6k.ql[i] = static_cast<uint8_t>(13 * i);
    for (size_t i = 0; i < sizeof q6k.qh; ++i) q6k.qh[i] = static_cast<uint8_t>(7 * i + 1);
    for (size_t i = 0; i < sizeof q6k.scales; ++i) q6k.scales[i] = static_cast<int8_t>(i * 9 - 60);
    q6k.d = pkv::float_to_half(0.01f);
    w.add_tensor("q4_K", {256}, GgmlType::Q4_K, block_bytes(std::vector<pkv::block_q4_K>{q4k}));
    w.add_tensor("q6_K", {256}, GgmlType::Q6_K, block_bytes(std::vector<pkv::block_q6_K>{q6k}));
    w.write(path.string(), /*force=*/true);
}

void write_gguf_seeds(const fs::path& dir) {
    // Small enough that the file (embedding of the 266-token vocabulary included) fits -max_len.
    pkv::test::TinyModelSpec s;
    s.n_layer = 1;
    s.n_embd = 16;
    s.n_head = 2;
    s.n_head_kv = 1;
    s.n_ff = 16;
    s.n_ctx = 64;
    pkv::test::write_tiny_model((dir / "tiny_model.gguf").string(), s);
    s.n_layer = 2;
    s.n_embd = 8;
    s.n_head = 2;
    s.n_head_kv = 2;
    s.n_ff = 8;
    s.tied = false;
    s.seed = 2;
    pkv::test::write_tiny_model((dir / "tiny_model_untied.gguf").string(), s);
    write_types_gguf(dir / "types.gguf");
    const pkv::PatternTable t = pkv_test::make_table({0, 2}, 3, 4, 5, 8);
    write_bytes(dir / "table_f32.gguf", pkv::encode_table_gguf(t, pkv::PatternDtype::f32));
    write_bytes(dir / "table_f16.gguf", pkv::encode_table_gguf(t, pkv::PatternDtype::f16));
}

// ------------------------------------------------------------------------- KV dump

void write_dump(const fs::path& path, const pkv::CaptureSet& capture, bool hf) {
    constexpr int kLayers = 2, kHead = 4, kHeadKv = 2, kDim = 8, kSeq = 8;
    constexpr int64_t kTokens = 16;
    pkv::KvDumpHeader h;
    h.n_layer_model = kLayers;
    h.layers = {0, 1};
    h.n_head = kHead;
    h.n_head_kv = kHeadKv;
    h.head_dim = kDim;
    h.n_tokens = kTokens;
    h.capture = capture;
    h.hf_dim_order = hf;
    h.chunk_tokens = kSeq;  // two chunks per head
    h.model = {{"name", "pkv fuzz seed"},
               {"file", "seed.gguf"},
               {"sha256", std::string(64, 'e')},
               {"arch", "llama"},
               {"n_layer", kLayers},
               {"n_head", kHead},
               {"n_head_kv", kHeadKv},
               {"head_dim", kDim},
               {"n_rot", kDim},
               {"n_embd", kHead * kDim},
               {"n_ff", 48},
               {"n_vocab", 266},
               {"n_ctx_train", 64},
               {"rope_freq_base", 10000.0},
               {"rope_freq_scale", 1.0},
               {"rope_type", "norm"},
               {"rope_scaling", "none"},
               {"rms_eps", 1e-5},
               {"file_type", 0},
               {"sliding_window", 4},
               {"swa_layers", {0}},
               {"rope_freq_base_swa", 10000.0}};
    h.provenance = {
        {"tool", "pkv"}, {"version", "0.1.0"}, {"argv", {"pkv", "dump"}}, {"created_utc", "2000-01-01T00:00:00Z"}};
    h.sources = {{"seed.txt", std::string(64, 'f'), 100, kTokens}};
    // Layer 0 local (window 4), layer 1 global: both kinds of /layer_info entry.
    h.layer_info = {{0, 4, 10000.0, kHeadKv, kDim}, {1, 0, 10000.0, kHeadKv, kDim}};
    std::error_code ec;
    fs::remove(path, ec);
    pkv::KvDumpWriter w(path.string(), h);
    auto rows = [](int what, int slot, int64_t t0, int heads) {
        std::vector<float> r(static_cast<size_t>(kSeq) * heads * kDim);
        for (size_t i = 0; i < r.size(); ++i)
            r[i] = static_cast<float>(3.0 *
                                      std::sin(0.31 * static_cast<double>(i + t0 * heads * kDim) + what + 1.7 * slot));
        return r;
    };
    for (int64_t t0 = 0; t0 < kTokens; t0 += kSeq) {
        for (int slot = 0; slot < kLayers; ++slot) {
            const auto kp = rows(0, slot, t0, kHeadKv), ko = rows(1, slot, t0, kHeadKv), v = rows(2, slot, t0, kHeadKv),
                       q = rows(3, slot, t0, kHead);
            w.write_layer(slot, t0, kSeq, capture.k_pre ? kp.data() : nullptr, capture.k_post ? ko.data() : nullptr,
                          capture.v ? v.data() : nullptr, capture.q ? q.data() : nullptr);
        }
        std::vector<int32_t> id(kSeq), pos(kSeq), seq(kSeq, static_cast<int32_t>(t0 / kSeq));
        std::vector<float> nll(kSeq, std::nanf(""));
        for (int i = 0; i < kSeq; ++i) {
            id[i] = static_cast<int32_t>((t0 + i) * 37 % 266);
            pos[i] = i;
            if (i > 0) nll[i] = 1.0f + 0.125f * static_cast<float>(i);
        }
        w.write_tokens(t0, id, pos, seq, nll);
    }
    w.finish({0, kSeq}, {kSeq, kSeq},
             {{"n_tokens", kTokens}, {"perplexity", 3.0}, {"nll_mean", std::log(3.0)}, {"n_predicted", kTokens - 2}});
}

void write_dump_seeds(const fs::path& dir) {
    write_dump(dir / "dump_all.h5", pkv::CaptureSet{}, /*hf=*/false);
    write_dump(dir / "dump_kpost_v_hf.h5", pkv::CaptureSet::parse("k_post,v"), /*hf=*/true);
}

// -------------------------------------------------------------------- pattern table

void write_table_seeds(const fs::path& dir) {
    const pkv::PatternTable t = pkv_test::make_table({0, 2}, 3, 4, 5, 8);
    write_bytes(dir / "table_f32.safetensors", pkv::encode_table_safetensors(t, pkv::PatternDtype::f32));
    write_bytes(dir / "table_f16.safetensors", pkv::encode_table_safetensors(t, pkv::PatternDtype::f16));
    write_bytes(dir / "table_hf.safetensors",
                pkv::encode_table_safetensors(pkv::with_key_dim_order(t, pkv::kDimOrderHf), pkv::PatternDtype::f32));
    pkv::PatternTable r = t;
    r.rotation = pkv::ptable::kRotationHadamard;
    r.rotation_seed = 5;
    r.assign = pkv::ptable::kAssignL2;
    r.key_basis = pkv::ptable::kBasisPre;
    r.bits = 4;
    write_bytes(dir / "table_hadamard.safetensors", pkv::encode_table_safetensors(r, pkv::PatternDtype::f32));
}

// -------------------------------------------------------------------------- reports

json read_json(const fs::path& path) {
    std::ifstream f(path);
    if (!f.good()) throw std::runtime_error("cannot open " + path.string());
    return json::parse(f);
}

// The baseline's shape at a few hundredth of its size: the results of two heads of
// layer 0 and a taste of the long lists.
json trimmed_analyze(const json& full) {
    json j = full;
    json results = json::array();
    for (const json& r : full.at("results"))
        if (r.at("layer") == 0 && r.at("kv_head").get<int>() < 2) results.push_back(r);
    j["results"] = results;
    if (j.contains("histograms") && j["histograms"].is_array() && j["histograms"].size() > 1)
        j["histograms"] = json::array({j["histograms"][0]});
    if (j.contains("fragile") && j["fragile"].contains("heads") && j["fragile"]["heads"].size() > 2)
        j["fragile"]["heads"] = json::array({j["fragile"]["heads"][0], j["fragile"]["heads"][1]});
    return j;
}

// A new report that moves every class of metric: some regress, some improve, one goes
// non-finite (null, as pkv writes NaN).
json worse_analyze(json j) {
    bool nulled = false;
    for (json& r : j["results"]) {
        if (r.contains("k") && r["k"].at("nmse").is_number()) r["k"]["nmse"] = r["k"]["nmse"].get<double>() * 1.5;
        if (r.contains("attn") && r["attn"].at("kl").is_number() && !nulled && r["attn"]["kl"].get<double>() > 0) {
            r["attn"]["kl"] = nullptr;
            nulled = true;
        }
    }
    for (json& s : j["summary"])
        if (s.at("v_nmse").is_number()) s["v_nmse"] = s["v_nmse"].get<double>() * 0.5;
    return j;
}

json worse_eval(json j) {
    for (json& m : j["methods"]) {
        if (m.at("ppl").is_number()) m["ppl"] = m["ppl"].get<double>() * 1.02;
        if (m.at("top1_agreement").is_number()) m["top1_agreement"] = m["top1_agreement"].get<double>() - 0.02;
        if (m.at("label") == "kivi:2") m["kl_mean"] = nullptr;
    }
    return j;
}

void write_pair(const fs::path& path, const json& report, const json& baseline, const std::string& tolerances = "") {
    std::string s = report.dump(1);
    s += '\0';
    s += baseline.dump(1);
    if (!tolerances.empty()) {
        s += '\0';
        s += tolerances;
    }
    write_bytes(path, s.data(), s.size());
}

void write_report_seeds(const fs::path& dir, const fs::path& source) {
    const json analyze = trimmed_analyze(read_json(source / "test" / "baselines" / "analyze.json"));
    const json eval = read_json(source / "test" / "baselines" / "eval.json");
    const std::string one = analyze.dump(1);
    write_bytes(dir / "analyze_self.json", one.data(), one.size());
    write_pair(dir / "analyze_pair", worse_analyze(analyze), analyze);
    write_pair(dir / "analyze_pair_tol", analyze, worse_analyze(analyze), "nmse=60%,kl=0.01,rel=5%,bits=0");
    write_pair(dir / "eval_pair", worse_eval(eval), eval);
    write_pair(dir / "eval_pair_tol", eval, worse_eval(eval), "ppl=1%,top1=3,kl=10%");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || argc > 3) {
        std::fprintf(stderr, "usage: %s OUT_DIR [SOURCE_DIR]\n", argv[0]);
        return 2;
    }
    const fs::path out = argv[1];
    const fs::path source = argc == 3 ? fs::path(argv[2]) : fs::path(PKV_FUZZ_SOURCE_DIR);
    pkv::log::set_level(pkv::log::Level::warn);
    try {
        for (const char* target : {"fuzz_gguf", "fuzz_kv_dump", "fuzz_pattern_table", "fuzz_check_report"}) {
            fs::remove_all(out / target);
            fs::create_directories(out / target);
        }
        write_gguf_seeds(out / "fuzz_gguf");
        write_dump_seeds(out / "fuzz_kv_dump");
        write_table_seeds(out / "fuzz_pattern_table");
        write_report_seeds(out / "fuzz_check_report", source);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pkv_fuzz_seeds: %s\n", e.what());
        return 1;
    }
    return 0;
}
