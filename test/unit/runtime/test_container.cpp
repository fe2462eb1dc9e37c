// Runtime pattern-table reader: the safetensors container and its JSON header —
// truncation, byte flips, malformed JSON, bad offsets — always end in a TableError
// naming the problem, never in a crash or a half-loaded table.
#include <cstdlib>
#include <random>

#include "catch.h"
#include "support/scratch_dir.h"
#include "table_fixture.h"

using namespace rt_test;

namespace {

/// Replaces the one occurrence of `from` in the header of `bytes` with `to`.
std::vector<uint8_t> edit_header(const std::vector<uint8_t>& bytes, const std::string& from, const std::string& to) {
    std::string h = header_of(bytes);
    const size_t at = h.find(from);
    REQUIRE(at != std::string::npos);
    REQUIRE(h.find(from, at + 1) == std::string::npos);
    h.replace(at, from.size(), to);
    return with_header(bytes, h);
}

/// The error for a file whose whole header is `header` and data buffer `data_len` bytes.
std::string header_error(const std::string& header, size_t data_len = 0) {
    return load_error(raw_file(header, data_len));
}

}  // namespace

TEST_CASE("runtime container: every truncation of a valid table is refused") {
    const std::vector<uint8_t> bytes = encode(default_spec());
    REQUIRE(load_error(bytes).empty());
    for (size_t n = 0; n < bytes.size(); ++n) {
        const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
        const std::string err = load_error(cut);
        INFO("length " << n);
        CHECK_THAT(err, ContainsSubstring("pattern table t.safetensors: "));
    }
    CHECK_THAT(load_error({1, 2, 3}), ContainsSubstring("file of 3 bytes is shorter than the 8-byte header length"));
    const size_t data_len = bytes.size() - 8 - header_of(bytes).size();
    CHECK_THAT(load_error(std::vector<uint8_t>(bytes.begin(), bytes.end() - 4)),
               ContainsSubstring("tensors cover " + std::to_string(data_len) + " bytes of a " +
                                 std::to_string(data_len - 4) + "-byte data buffer"));
}

TEST_CASE("runtime container: random byte flips give a loaded table or a TableError, nothing else") {
    const std::vector<uint8_t> bytes = encode(default_spec());
    std::mt19937 rng(99);
    std::uniform_int_distribution<size_t> where(0, bytes.size() - 1);
    std::uniform_int_distribution<int> flip(1, 255);
    int refused = 0;
    for (int trial = 0; trial < 3000; ++trial) {
        std::vector<uint8_t> b = bytes;
        for (int k = 0; k < 1 + trial % 3; ++k) b[where(rng)] ^= static_cast<uint8_t>(flip(rng));
        refused += load_error(b).empty() ? 0 : 1;  // any other exception type fails the test
    }
    CHECK(refused > 0);
}

TEST_CASE("runtime container: header length limits") {
    std::vector<uint8_t> b = raw_file("{}", 0);
    const uint64_t big = 100'000'001;
    for (int i = 0; i < 8; ++i) b[static_cast<size_t>(i)] = static_cast<uint8_t>(big >> (8 * i));
    CHECK_THAT(load_error(b), ContainsSubstring("header length 100000001 exceeds the 100 MB limit"));
    for (int i = 0; i < 8; ++i) b[static_cast<size_t>(i)] = 0xff;
    CHECK_THAT(load_error(b), ContainsSubstring("exceeds the 100 MB limit"));
    b = raw_file("{}", 0);
    b[0] = 3;
    CHECK_THAT(load_error(b), ContainsSubstring("header length 3 exceeds the 2 bytes after the length"));
}

TEST_CASE("runtime container: malformed JSON headers are refused") {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"", "unexpected end"},
        {" ", "unexpected end"},
        {"{", "expected a string key"},
        {"{\"a\"", "expected ':'"},
        {"{\"a\":}", "unexpected character"},
        {"{\"a\":1,}", "expected a string key"},
        {"{\"a\":1 \"b\":2}", "expected '}'"},
        {"[1,2", "expected ']'"},
        {"{} x", "unexpected characters after the top-level value"},
        {"{}{}", "unexpected characters after the top-level value"},
        {"{\"a\":1,\"a\":2}", "duplicate key \"a\""},
        {"{\"m\":{\"x\":[{\"y\":1,\"y\":1}]}}", "duplicate key \"y\""},
        {"{\"a\":1.5}", "non-integer number"},
        {"{\"a\":1e3}", "non-integer number"},
        {"{\"a\":01}", "leading zero"},
        {"{\"a\":-}", "expected a digit"},
        {"{\"a\":18446744073709551616}", "integer out of range"},
        {"{\"a\":tru}", "unexpected character"},
        {"{\"a\":\"x}", "unterminated string"},
        {"{\"a\":\"\\q\"}", "bad escape \\q"},
        {"{\"a\":\"\\u12g4\"}", "bad \\u escape"},
        {"{\"a\":\"\\u12\"}", "bad \\u escape"},
        {"{\"a\":\"\\udc00\"}", "unpaired low surrogate"},
        {"{\"a\":\"\\ud800x\"}", "unpaired high surrogate"},
        {"{\"a\":\"\\ud800\\u0041\"}", "unpaired high surrogate"},
        {std::string("{\"a\":\"x\ty\"}"), "control character in string"},
        {std::string("{\"a\":\"\xff\"}"), "invalid UTF-8"},
        {std::string("{\"a\":\"\xc0\xaf\"}"), "invalid UTF-8"},          // overlong '/'
        {std::string("{\"a\":\"\xed\xa0\x80\"}"), "invalid UTF-8"},      // encoded surrogate
        {std::string("{\"a\":\"\xf4\x90\x80\x80\"}"), "invalid UTF-8"},  // above U+10FFFF
        {std::string("{\"a\":\"\xe2\x82\"}"), "invalid UTF-8"},          // cut sequence
        {std::string(100, '[') + std::string(100, ']'), "nesting deeper than 64"},
        {"[]", "header is not a JSON object"},
        {"\"x\"", "header is not a JSON object"},
    };
    for (const auto& c : cases) {
        INFO(c.first);
        const std::string err = header_error(c.first);
        CHECK_THAT(err, ContainsSubstring("pattern table t.safetensors: "));
        CHECK_THAT(err, ContainsSubstring(c.second));
    }
    CHECK_THAT(header_error("{\"a\":1.5}"), ContainsSubstring("malformed header JSON at byte 6: non-integer number"));
}

TEST_CASE("runtime container: escapes and UTF-8 in metadata decode exactly") {
    const std::vector<uint8_t> bytes = encode(default_spec());
    const std::vector<uint8_t> b = edit_header(
        bytes, R"("pkv.model.name":"tiny")",
        "\"pkv.model.name\":\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ \\/ \\b\\f\\n\\r\\t \xe2\x82\xac \\u20AC\"");
    CHECK(parse(b).model_name() == "caf\xc3\xa9 \xf0\x9f\x98\x80 \"q\" \\ / \b\f\n\r\t \xe2\x82\xac \xe2\x82\xac");
    // Whitespace between tokens and other JSON values in ignored places are accepted.
    const std::vector<uint8_t> b2 = edit_header(bytes, R"("layers.0.k_clip":{)",
                                                "\"layers.0.k_clip\" :\r\n\t{ \"extra\" : "
                                                "[ true, false, null, -7, {}, [] ] , ");
    CHECK(load_error(b2).empty());
}

TEST_CASE("runtime container: tensor entries and offsets follow pkv's safetensors rules") {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
         "b: data_offsets begin 4 overlaps the previous tensor ending at 8"},
        {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
         "b: data_offsets begin 12 leaves a gap after 8"},
        {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", "a: data_offsets begin 8 leaves a gap after 0"},
        {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "tensors cover 8 bytes of a 16-byte data buffer"},
        {R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", "a: expected [3] x F32 = 12 bytes, got 16"},
        {R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})", "a: data_offsets end 0 < begin 16"},
        {R"({"a":{"dtype":"F33","shape":[4],"data_offsets":[0,16]}})", "a: unknown dtype F33"},
        {R"({"a":{"dtype":4,"shape":[4],"data_offsets":[0,16]}})", "a: expected a string dtype"},
        {R"({"a":{"shape":[4],"data_offsets":[0,16]}})", "a: expected a string dtype"},
        {R"({"a":{"dtype":"F32","shape":4,"data_offsets":[0,16]}})", "a: expected a shape array"},
        {R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", "a: shape: expected an unsigned integer"},
        {R"({"a":{"dtype":"F32","shape":["4"],"data_offsets":[0,16]}})", "a: shape: expected an unsigned integer"},
        {R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", "a: expected data_offsets [begin, end]"},
        {R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,-16]}})",
         "a: data_offsets: expected an unsigned integer"},
        {R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,16]}})",
         "a: expected [4294967296, 4294967296, 4] x F32 = too many bytes, got 16"},
        {R"({"a":[1]})", "a: expected a tensor entry object"},
        {R"({"__metadata__":{"k":1}})", "__metadata__.k: expected a string value"},
        {R"({"__metadata__":["k"]})", "__metadata__: expected an object of strings"},
    };
    for (const auto& c : cases) {
        INFO(c.first);
        CHECK_THAT(header_error(c.first, 16), ContainsSubstring("pattern table t.safetensors: " + c.second));
    }
    // A well-formed container that is not a pattern table: empty, and empty/rank-0 tensors.
    CHECK_THAT(header_error("{}"), ContainsSubstring("pattern table t.safetensors: missing metadata pkv.format"));
    CHECK_THAT(header_error(R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},)"
                            R"("s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}})",
                            8),
               ContainsSubstring("missing metadata pkv.format"));
}

TEST_CASE("runtime container: overlapping tensors inside a real table are refused") {
    const std::vector<uint8_t> bytes = encode(default_spec());
    const std::string h = header_of(bytes);
    // Point layers.2.v_gate_z (8 bytes) at the last 8 bytes of the tensor laid out before it.
    const std::string key = R"("layers.2.v_gate_z":{"data_offsets":[)";
    const size_t at = h.find(key);
    REQUIRE(at != std::string::npos);
    const size_t comma = h.find(',', at + key.size()), close = h.find(']', comma);
    const uint64_t begin = std::stoull(h.substr(at + key.size(), comma - at - key.size()));
    std::string h2 = h;
    h2.replace(at + key.size(), close - at - key.size(), std::to_string(begin - 8) + "," + std::to_string(begin));
    CHECK_THAT(load_error(with_header(bytes, h2)), ContainsSubstring("overlaps the previous tensor"));
}

TEST_CASE("runtime container: a table written by Python's safetensors package reads back exactly") {
    const std::string py = std::string(PKV_TEST_DATA_DIR) + "/venv/bin/python";
    if (std::system(("'" + py + "' -c 'import safetensors, numpy' >/dev/null 2>&1").c_str()) != 0)
        PKV_SKIP(py + " with the safetensors package not available (run scripts/fetch-data.sh): cross-check skipped");
    pkv_test::ScratchDir dir;
    // Another writer: its own tensor order, header layout and padding; F16 value patterns.
    const std::string script = dir.write("write_table.py", [] {
        const std::string s = R"PY(
import sys
import numpy as np
from safetensors.numpy import save_file
H, D, Mk, Mv = 2, 8, 4, 3
t = {}
for l in (0, 2):
    b = 1000 * l
    t[f"layers.{l}.k_patterns"] = ((np.arange(H * Mk * D) + b) * 0.25 - 3).astype(np.float32).reshape(H, Mk, D)
    t[f"layers.{l}.v_patterns"] = ((np.arange(H * Mv * D) + b) * 0.125 - 1).astype(np.float16).reshape(H, Mv, D)
    t[f"layers.{l}.k_counts"] = (np.arange(H * Mk) + b).astype(np.int64).reshape(H, Mk)
    t[f"layers.{l}.v_counts"] = (np.arange(H * Mv) + b).astype(np.int64).reshape(H, Mv)
    t[f"layers.{l}.k_clip"] = np.array([0.5, 1.0], np.float32)
    t[f"layers.{l}.v_clip"] = np.array([0.25, 0.75], np.float32)
    t[f"layers.{l}.v_gate_z"] = np.array([1.6448536, 0.0], np.float32)
meta = {"pkv.format": "pkv.pattern_table", "pkv.format_version": "1.0", "pkv.model.name": "caf\u00e9",
        "pkv.model.arch": "llama", "pkv.model.sha256": sys.argv[2], "pkv.model.n_layer": "3",
        "pkv.model.n_head": "4", "pkv.model.n_head_kv": "2", "pkv.model.head_dim": "8", "pkv.layers": "0,2",
        "pkv.key.basis": "post_rope", "pkv.key.dim_order": "gguf_interleaved", "pkv.rotation": "none",
        "pkv.rotation.seed": "0", "pkv.quant.bits": "2", "pkv.quant.group": "128", "pkv.quant.window": "128",
        "pkv.assign": "minmax", "pkv.k_patterns": "4", "pkv.v_patterns": "3", "pkv.calibration": "{}"}
save_file(t, sys.argv[1], metadata=meta)
)PY";
        return std::vector<uint8_t>(s.begin(), s.end());
    }());
    const std::string path = dir.path("from_python.safetensors");
    REQUIRE(std::system(("'" + py + "' '" + script + "' '" + path + "' " + kSha).c_str()) == 0);
    const pkv_rt::PatternTable t = pkv_rt::PatternTable::open(path, default_decl());
    CHECK(t.model_name() == "caf\xc3\xa9");
    int mismatches = 0;
    for (const int l : {0, 2}) {
        for (int h = 0; h < kHeadsKv; ++h) {
            const pkv_rt::HeadView v = t.head(l, h);
            const int b = 1000 * l;
            for (int i = 0; i < kMk * kDim; ++i) mismatches += v.k_patterns[i] != (h * kMk * kDim + i + b) * 0.25f - 3;
            for (int i = 0; i < kMv * kDim; ++i) mismatches += v.v_patterns[i] != (h * kMv * kDim + i + b) * 0.125f - 1;
            for (int i = 0; i < kMk; ++i) mismatches += v.k_counts[i] != h * kMk + i + b;
            for (int i = 0; i < kMv; ++i) mismatches += v.v_counts[i] != h * kMv + i + b;
            mismatches += v.k_clip != (h ? 1.0f : 0.5f);
            mismatches += v.v_clip != (h ? 0.75f : 0.25f);
            mismatches += v.v_gate_z != (h ? 0.0f : 1.6448536f);
        }
    }
    CHECK(mismatches == 0);
}
