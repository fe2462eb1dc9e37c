// `--kv` spec grammar: accepted forms, canonical labels and every error message.
#include <string>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/kvcache/kv_spec.h"

using namespace pkv;

namespace {

std::string parse_error(const std::string& spec) {
    try {
        parse_kv_spec(spec);
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::invalid_argument);
        return e.what();
    }
    FAIL("no error for --kv '" << spec << "'");
    return {};
}

std::string check_error(const std::string& spec, int head_dim) {
    const KvSpec s = parse_kv_spec(spec);
    try {
        check_kv_spec(s, head_dim);
    } catch (const Error& e) {
        return e.what();
    }
    FAIL("no error for --kv '" << spec << "' at head_dim " << head_dim);
    return {};
}

}  // namespace

TEST_CASE("kv spec: methods, widths and defaults", "[eval][spec]") {
    const KvSpec f = parse_kv_spec("fp16");
    CHECK(f.method == KvMethod::fp16);
    CHECK(f.bits == 16);
    CHECK(f.label() == "fp16");

    const KvSpec k = parse_kv_spec("kivi:2");
    CHECK(k.method == KvMethod::kivi);
    CHECK(k.bits == 2);
    CHECK(k.group == 128);
    CHECK(k.window == 128);
    CHECK_FALSE(k.rotate);
    CHECK_FALSE(k.keys_pre);
    CHECK(k.label() == "kivi:2");

    const KvSpec k4 = parse_kv_spec("kivi:g32:4:w64");  // fields in any order
    CHECK(k4.bits == 4);
    CHECK(k4.group == 32);
    CHECK(k4.window == 64);
    CHECK(k4.label() == "kivi:4:g32:w64");

    const KvSpec s = parse_kv_spec("kivi:4:sink4");
    CHECK(s.sinks == 4);
    CHECK(s.label() == "kivi:4:sink4");
    CHECK(kv_spec_sim_params(s, 0).sinks == 4);
    const KvSpec o = parse_kv_spec("kivi:4:out2:sink1");
    CHECK(o.outliers == 2);
    CHECK(o.label() == "kivi:4:sink1:out2");
    CHECK(kv_spec_sim_params(o, 0).outliers == 2);
    CHECK(parse_kv_spec("patternkv-table:4:sink1:pre:sink.safetensors").table_path == "sink.safetensors");
    CHECK(parse_kv_spec("patternkv-table:4:sink1:pre:sink.safetensors").sinks == 1);

    const KvSpec p = parse_kv_spec("patternkv:2:p16:cap64:l2:rot:pre");
    CHECK(p.method == KvMethod::patternkv);
    CHECK(p.patterns == 16);
    CHECK(p.pattern_cap == 64);
    CHECK(p.decode_l2);
    CHECK(p.rotate);
    CHECK(p.keys_pre);
    CHECK(p.label() == "patternkv:2:p16:cap64:l2:rot:pre");

    CHECK(parse_kv_spec("q4_0").bits == 4);
    CHECK(parse_kv_spec("q8_0:8").bits == 8);
    CHECK(parse_kv_spec("fp8:rot").label() == "fp8:rot");
    const KvSpec lr = parse_kv_spec("q4_0:rotv64");
    CHECK(lr.rotate);
    CHECK(lr.rotate_v_block == 64);
    CHECK(lr.label() == "q4_0:rotv64");
    CHECK(parse_kv_spec("q8_0:rot").rotate_v_block == 0);
    CHECK(parse_kv_spec("q4_0:post").label() == "q4_0");

    const SimParams sp = kv_spec_sim_params(parse_kv_spec("patternkv:3:g64:w32:p8"), 42);
    CHECK(sp.method == KvMethod::patternkv);
    CHECK(sp.bits == 3);
    CHECK(sp.group == 64);
    CHECK(sp.window == 32);
    CHECK(sp.patterns == 8);
    CHECK(sp.seed == 42);
}

TEST_CASE("kv spec: patternkv-table keeps the rest of the spec as its path", "[eval][spec]") {
    const KvSpec t = parse_kv_spec("patternkv-table:2:tables/T.safetensors");
    CHECK(t.table);
    CHECK(t.bits == 2);
    CHECK(t.table_path == "tables/T.safetensors");
    const KvSpec r = parse_kv_spec("patternkv-table:4:rot:/x/a:b.safetensors");
    CHECK(r.rotate);
    CHECK(r.table_path == "/x/a:b.safetensors");
    CHECK(r.label() == "patternkv-table:4:rot:/x/a:b.safetensors");
    CHECK_THAT(parse_error("patternkv-table:2"), ContainsSubstring("needs a table file"));
    CHECK(t.method == KvMethod::patternkv_table);
    CHECK_THAT(check_error("patternkv-table:2:g48:T.safetensors", 64), ContainsSubstring("group 48 does not divide"));
}

TEST_CASE("kv spec: errors name the spec and what was expected", "[eval][spec]") {
    CHECK(parse_error("foo:2") ==
          "unknown method 'foo' in --kv 'foo:2': expected one of fp16, kivi, patternkv, patternkv-table, q4_0, q8_0, "
          "fp8");
    CHECK_THAT(parse_error(""), ContainsSubstring("unknown method ''"));
    CHECK(parse_error("kivi:5") == "--kv 'kivi:5': 5 bits is not supported by kivi: expected 2, 3, 4 or 8");
    CHECK(parse_error("kivi") == "--kv 'kivi': kivi needs a code width, e.g. kivi:2 (2, 3, 4 or 8)");
    CHECK(parse_error("q4_0:2") == "--kv 'q4_0:2': q4_0 has a fixed width of 4 bits, got 2");
    CHECK(parse_error("q8_0:g32") == "--kv 'q8_0:g32': 'g32' (group) applies to kivi and patternkv only");
    CHECK(parse_error("kivi:2:p8") == "--kv 'kivi:2:p8': 'p8' (prefill patterns) applies to patternkv only");
    CHECK(parse_error("kivi:2:l2") == "--kv 'kivi:2:l2': 'l2' (L2 decode assignment) applies to patternkv only");
    CHECK(parse_error("kivi:2:4") == "--kv 'kivi:2:4': 'bits' is given twice");
    CHECK(parse_error("kivi:2:rot:rot") == "--kv 'kivi:2:rot:rot': 'rot' is given twice");
    CHECK(parse_error("q4_0:rot:rotv64") == "--kv 'q4_0:rot:rotv64': 'rot/rotv64' is given twice");
    CHECK(parse_error("patternkv-table:4:rotv64:t.safetensors") ==
          "--kv 'patternkv-table:4:rotv64:t.safetensors': 'rotv64' (values rotated in 64-element blocks) applies to "
          "kivi, patternkv, q4_0, q8_0 and fp8 only");
    CHECK(parse_error("kivi:2::rot") == "--kv 'kivi:2::rot': empty field after '2'");
    CHECK(parse_error("kivi:2:g0") == "--kv 'kivi:2:g0': group 0 must be at least 1");
    CHECK(parse_error("kivi:2:w0") == "--kv 'kivi:2:w0': window 0 must be at least 1");
    CHECK(parse_error("kivi:2:sink0") == "--kv 'kivi:2:sink0': sink 0 must be at least 1 token");
    CHECK(parse_error("kivi:2:out9") == "--kv 'kivi:2:out9': out9 must be 1 to 8 elements per group");
    CHECK(parse_error("fp8:out1") ==
          "--kv 'fp8:out1': 'out1' (exact outliers per group) applies to kivi, patternkv and patternkv-table only");
    CHECK(parse_error("q4_0:sink1") ==
          "--kv 'q4_0:sink1': 'sink1' (exact attention-sink tokens) applies to kivi, patternkv and patternkv-table "
          "only");
    CHECK(parse_error("patternkv:2:p32:cap8") ==
          "--kv 'patternkv:2:p32:cap8': cap8 must be 0 (no cap) or at least the 32 prefill patterns");
    CHECK(parse_error("fp16:rot") == "--kv 'fp16:rot': fp16 takes no options (it is the unquantized cache)");
    CHECK_THAT(parse_error("kivi:2:gx"), ContainsSubstring("unknown field 'gx'"));
    CHECK_THAT(parse_error("kivi:2:-4"), ContainsSubstring("unknown field '-4'"));
}

TEST_CASE("kv spec: checks against the model's head_dim", "[eval][spec]") {
    CHECK_NOTHROW(check_kv_spec(parse_kv_spec("kivi:2:g32"), 64));
    CHECK_NOTHROW(check_kv_spec(parse_kv_spec("kivi:2:g256"), 64));  // value groups cap at head_dim
    CHECK(check_error("kivi:2:g48", 64) ==
          "--kv 'kivi:2:g48': group 48 does not divide head_dim 64 (value groups are min(group, head_dim) channels)");
    CHECK(check_error("q4_0", 48) == "--kv 'q4_0': head_dim 48: q4_0 needs a multiple of 32");
    CHECK_NOTHROW(check_kv_spec(parse_kv_spec("q4_0:rotv64"), 64));
    CHECK(check_error("q4_0:rotv64", 32) == "--kv 'q4_0:rotv64': head_dim 32: rotv64 needs at least 64");
    CHECK(check_error("kivi:2:rot", 48) == "--kv 'kivi:2:rot': head_dim 48: hadamard rotation needs a power of two");
}
