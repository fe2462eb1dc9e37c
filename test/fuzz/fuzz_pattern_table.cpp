// libFuzzer target: the pattern table readers on arbitrary bytes. read_pattern_table
// reads the safetensors form only (the GGUF export is read by the GGUF reader, see
// fuzz_gguf.cpp; pkv has no reader for the JSON export), so the input is a safetensors
// file. A table it accepts goes through pattern_table_findings and every export `pkv
// export` offers (both key orders, F32 and F16, GGUF, JSON), and the safetensors export
// must read back: a table pkv accepts but cannot round-trip is a finding. Then what
// `pkv info [--json]` and `pkv validate` run on a table, and the dependency-free runtime
// reader (lib/pkv/runtime/pattern_table_reader.h), which has its own container and JSON
// parser, with a declaration matching the table so that it gets past the model checks.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "pkv/pipeline/export.h"
#include "pkv/runtime/pattern_table_reader.h"
#include "pkv/table/pattern_table.h"

namespace {

void exports(const pkv::PatternTable& t) {
    (void)pkv::pattern_table_findings(t);
    for (const char* order : {pkv::kDimOrderGguf, pkv::kDimOrderHf})
        pkv_fuzz::guarded([&] { (void)pkv::with_key_dim_order(t, order); });
    for (const pkv::PatternDtype dt : {pkv::PatternDtype::f32, pkv::PatternDtype::f16}) {
        pkv_fuzz::guarded([&] { (void)pkv::encode_table_gguf(t, dt); });
        pkv_fuzz::guarded([&] { (void)pkv::table_to_json(t, dt).dump(); });
    }
    try {
        const std::vector<uint8_t> bytes = pkv::encode_table_safetensors(t, pkv::PatternDtype::f32);
        (void)pkv::read_pattern_table(pkv_fuzz::write_input("again.safetensors", bytes.data(), bytes.size()));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pkv fuzz: a table pkv read does not read back after export: %s\n", e.what());
        std::abort();
    }
}

pkv_rt::RuntimeDecl declaration_of(const pkv::PatternTable& t) {
    pkv_rt::RuntimeDecl d;
    d.model_sha256 = t.model.sha256;
    d.arch = t.model.arch;
    d.n_layer = t.model.n_layer;
    d.n_head = t.model.n_head;
    d.n_head_kv = t.model.n_head_kv;
    d.head_dim = t.model.head_dim;
    d.key_basis = t.key_basis == pkv::ptable::kBasisPre ? pkv_rt::KeyBasis::pre_rope : pkv_rt::KeyBasis::post_rope;
    d.key_dim_order =
        t.key_dim_order == pkv::kDimOrderHf ? pkv_rt::DimOrder::hf_half_split : pkv_rt::DimOrder::gguf_interleaved;
    d.rotation = t.rotation == pkv::ptable::kRotationHadamard ? pkv_rt::Rotation::hadamard : pkv_rt::Rotation::none;
    return d;
}

// The model of make_seeds.cpp's tables, for inputs pkv refuses: the runtime reader still
// parses them up to its first check against the declaration.
pkv_rt::RuntimeDecl seed_declaration() {
    pkv_rt::RuntimeDecl d;
    d.n_layer = 4;
    d.n_head = 6;
    d.n_head_kv = 3;
    d.head_dim = 8;
    return d;
}

void runtime_read(const uint8_t* data, size_t size, const pkv_rt::RuntimeDecl& decl) {
    try {
        const pkv_rt::PatternTable t = pkv_rt::PatternTable::parse(data, size, "input", decl);
        std::vector<float> x(static_cast<size_t>(t.head_dim()));
        for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 5) - 2.0f;
        for (const int layer : t.layers()) {
            for (int h = 0; h < t.n_head_kv(); ++h) {
                const pkv_rt::HeadView v = t.head(layer, h);
                (void)v.nearest_k(x.data());
                (void)v.v_gate(x.data(), v.nearest_v(x.data()));
            }
        }
    } catch (const pkv_rt::TableError&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    pkv_fuzz::init();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = pkv_fuzz::write_input("input.safetensors", data, size);
    std::optional<pkv::PatternTable> table;
    pkv_fuzz::guarded([&] { table = pkv::read_pattern_table(path); });
    if (table) exports(*table);
    pkv_fuzz::guarded([&] { (void)pkv::describe_pattern_table(path); });
    pkv_fuzz::guarded([&] { (void)pkv::describe_pattern_table_json(path).dump(); });
    pkv_fuzz::guarded([&] { (void)pkv::validate_pattern_table(path); });
    pkv_fuzz::guarded([&] { runtime_read(data, size, table ? declaration_of(*table) : seed_declaration()); });
    return 0;
}
