// test/unit/runtime/header_check.cc — proves lib/pkv/runtime/pattern_table_reader.h
// stands alone: test/CMakeLists.txt compiles this file with no include directories and
// links no library (warnings are errors), and runs it as the test "runtime: header
// builds alone". It also loads a table whose bytes are spelled out below, so the
// header's container code is checked against a file no pkv writer produced.
// (The .cc suffix keeps it out of the pkv_runtime_tests glob, which takes *.cpp.)
#include "../../../lib/pkv/runtime/pattern_table_reader.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "header_check: FAILED: %s\n", what);
        ++failures;
    }
}

void put_f32(std::vector<uint8_t>& out, float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(u >> (8 * i)));
}

// One layer, one KV head, D = 2, Mk = Mv = 2; patterns F16 for K, F32 for V.
std::vector<uint8_t> tiny_table() {
    const std::string meta =
        R"("__metadata__":{"pkv.format":"pkv.pattern_table","pkv.format_version":"1.0","pkv.model.arch":"llama",)"
        R"("pkv.model.sha256":"","pkv.model.n_layer":"1","pkv.model.n_head":"2","pkv.model.n_head_kv":"1",)"
        R"("pkv.model.head_dim":"2","pkv.layers":"0","pkv.key.basis":"post_rope",)"
        R"("pkv.key.dim_order":"gguf_interleaved","pkv.rotation":"none","pkv.rotation.seed":"0",)"
        R"("pkv.quant.bits":"2","pkv.quant.group":"128","pkv.quant.window":"128","pkv.assign":"l2",)"
        R"("pkv.k_patterns":"2","pkv.v_patterns":"2"})";
    const std::string header = "{" + meta +
                               R"(,"layers.0.k_patterns":{"dtype":"F16","shape":[1,2,2],"data_offsets":[0,8]},)"
                               R"("layers.0.v_patterns":{"dtype":"F32","shape":[1,2,2],"data_offsets":[8,24]},)"
                               R"("layers.0.k_counts":{"dtype":"I64","shape":[1,2],"data_offsets":[24,40]},)"
                               R"("layers.0.v_counts":{"dtype":"I64","shape":[1,2],"data_offsets":[40,56]},)"
                               R"("layers.0.k_clip":{"dtype":"F32","shape":[1],"data_offsets":[56,60]},)"
                               R"("layers.0.v_clip":{"dtype":"F32","shape":[1],"data_offsets":[60,64]},)"
                               R"("layers.0.v_gate_z":{"dtype":"F32","shape":[1],"data_offsets":[64,68]}})";
    std::vector<uint8_t> out;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i)));
    out.insert(out.end(), header.begin(), header.end());
    // K patterns (F16): {1, -2}, {0.5, 65504}.
    for (const unsigned h : {0x3c00u, 0xc000u, 0x3800u, 0x7bffu}) {
        out.push_back(static_cast<uint8_t>(h & 0xff));
        out.push_back(static_cast<uint8_t>(h >> 8));
    }
    for (const float f : {0.0f, 0.0f, 4.0f, 4.0f}) put_f32(out, f);  // V patterns
    for (const unsigned c : {3u, 5u, 7u, 9u}) {                      // counts
        out.push_back(static_cast<uint8_t>(c));
        out.insert(out.end(), 7, 0);
    }
    for (const float f : {0.75f, 1.0f, 1.6448536f}) put_f32(out, f);
    return out;
}

}  // namespace

int main() {
    const std::vector<uint8_t> bytes = tiny_table();
    pkv_rt::RuntimeDecl decl;
    decl.n_layer = 1;
    decl.n_head = 2;
    decl.n_head_kv = 1;
    decl.head_dim = 2;
    try {
        const pkv_rt::PatternTable t = pkv_rt::PatternTable::parse(bytes.data(), bytes.size(), "tiny", decl);
        const pkv_rt::HeadView h = t.head(0, 0);
        expect(h.k_patterns[1] == -2.0f && h.k_patterns[2] == 0.5f && h.k_patterns[3] == 65504.0f, "F16 patterns");
        expect(h.v_patterns[2] == 4.0f && h.v_counts[1] == 9 && h.k_counts[0] == 3, "F32 patterns and counts");
        expect(h.k_clip == 0.75f && h.v_clip == 1.0f && h.v_gate_z == 1.6448536f, "per-head scalars");
        const float x[2] = {0.4f, 60000.0f};
        expect(h.nearest_k(x) == 1 && t.assign() == pkv_rt::Assign::l2, "nearest key pattern");
        expect(!t.has_layer_geometry() && t.layer_window(0) == 0 && t.layer_rope_base(0) <= 0.0,
               "a 1.0 table records no layer geometry");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "header_check: FAILED: %s\n", e.what());
        return 1;
    }
    decl.key_basis = pkv_rt::KeyBasis::pre_rope;
    try {
        pkv_rt::PatternTable::parse(bytes.data(), bytes.size(), "tiny", decl);
        expect(false, "a pre_rope runtime must refuse a post_rope table");
    } catch (const pkv_rt::TableError& e) {
        expect(
            std::string(e.what()).find("key basis is post_rope but the runtime declares pre_rope") != std::string::npos,
            "refusal message");
    }
    if (failures == 0) std::printf("header_check: pattern_table_reader.h builds and works alone\n");
    return failures == 0 ? 0 : 1;
}
