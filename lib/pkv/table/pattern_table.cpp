// pkv/table/pattern_table.cpp — see pattern_table.h and docs/formats/pattern_table.md.
#include "pkv/table/pattern_table.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>
#include <type_traits>

#include <fmt/ranges.h>

#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/core/int_list.h"
#include "pkv/table/safetensors.h"

namespace pkv {

std::string ptable::tensor_name(int layer, const char* suffix) {
    return "layers." + std::to_string(layer) + "." + suffix;
}

namespace {

using nlohmann::json;

std::string shape_str(const std::vector<uint64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

bool is_sha256_hex(const std::string& s) {
    return s.size() == 64 &&
           std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool is_power_of_two(int n) { return n > 0 && (n & (n - 1)) == 0; }

bool one_of(const std::string& v, std::initializer_list<const char*> allowed) {
    for (const char* a : allowed)
        if (v == a) return true;
    return false;
}

std::string quoted_list(std::initializer_list<const char*> allowed) {
    std::string s;
    size_t i = 0;
    for (const char* a : allowed)
        s += (i++ ? (i == allowed.size() ? " or " : ", ") : "") + std::string("\"") + a + "\"";
    return s;
}

std::string join_layers(const std::vector<PatternLayer>& layers) {
    std::string s;
    for (size_t i = 0; i < layers.size(); ++i) s += (i ? "," : "") + std::to_string(layers[i].layer);
    return s;
}

// "{}" prints the shortest decimal that reads back as the same double.
std::string join_geometry(const std::vector<PatternLayer>& layers, bool rope_base) {
    std::string s;
    for (size_t i = 0; i < layers.size(); ++i)
        s += (i ? "," : "") + (rope_base ? fmt::format("{}", layers[i].rope_base) : std::to_string(layers[i].window));
    return s;
}

// A plain non-negative decimal as JSON writes numbers ("10000", "1e+06", "0.5"; no sign,
// no leading zeros, no "inf"/"nan"), so that what this reader takes the schema takes too.
bool is_plain_number(const std::string& s) {
    size_t i = 0;
    const auto digits = [&] {
        const size_t from = i;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
        return i - from;
    };
    const size_t whole = digits();
    if (whole == 0 || (whole > 1 && s[0] == '0')) return false;
    if (i < s.size() && s[i] == '.' && (++i, digits() == 0)) return false;
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
        ++i;
        if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
        if (digits() == 0) return false;
    }
    return i == s.size();
}

// The per-layer tensors with their element counts for a given geometry, in one place
// so that the checker, the writer and the reader agree.
struct TensorSpec {
    const char* suffix;
    const char* dtype;
    std::vector<uint64_t> shape;
};

std::vector<TensorSpec> layer_tensor_specs(uint64_t H, uint64_t Mk, uint64_t Mv, uint64_t D) {
    return {
        {ptable::kKPatterns, "F32", {H, Mk, D}},
        {ptable::kVPatterns, "F32", {H, Mv, D}},
        {ptable::kKCounts, "I64", {H, Mk}},
        {ptable::kVCounts, "I64", {H, Mv}},
        {ptable::kKClip, "F32", {H}},
        {ptable::kVClip, "F32", {H}},
        {ptable::kVGateZ, "F32", {H}},
    };
}

uint64_t numel(const std::vector<uint64_t>& shape) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    return n;
}

size_t field_size(const PatternLayer& l, const std::string& suffix) {
    if (suffix == ptable::kKPatterns) return l.k_patterns.size();
    if (suffix == ptable::kVPatterns) return l.v_patterns.size();
    if (suffix == ptable::kKCounts) return l.k_counts.size();
    if (suffix == ptable::kVCounts) return l.v_counts.size();
    if (suffix == ptable::kKClip) return l.k_clip.size();
    if (suffix == ptable::kVClip) return l.v_clip.size();
    return l.v_gate_z.size();
}

template <typename T>
std::vector<uint8_t> raw_bytes(const std::vector<T>& v) {
    std::vector<uint8_t> out(v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
    return out;
}

// ---------------------------------------------------------------- reading helpers

struct MetaReader {
    const std::string& path;
    const std::map<std::string, std::string>& meta;

    const std::string& str(const char* key) const {
        auto it = meta.find(key);
        PKV_CHECK(it != meta.end(), data_loss, "{}::{}: expected a metadata entry, got none", path, key);
        return it->second;
    }
    std::string enumerated(const char* key, std::initializer_list<const char*> allowed) const {
        const std::string& v = str(key);
        PKV_CHECK(one_of(v, allowed), data_loss, "{}::{}: expected {}, got \"{}\"", path, key, quoted_list(allowed), v);
        return v;
    }
    uint64_t u64(const char* key, uint64_t lo, uint64_t hi) const {
        const std::string& v = str(key);
        bool ok = !v.empty() && v.size() <= 20 &&
                  std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
        uint64_t n = 0;
        if (ok) {
            errno = 0;
            n = std::strtoull(v.c_str(), nullptr, 10);
            ok = errno == 0 && (v.size() == 1 || v[0] != '0');
        }
        PKV_CHECK(ok, data_loss, "{}::{}: expected a decimal integer, got \"{}\"", path, key, v);
        PKV_CHECK(n >= lo && n <= hi, data_loss, "{}::{}: expected an integer in [{}, {}], got {}", path, key, lo, hi,
                  n);
        return n;
    }
    int i32(const char* key, int lo, int hi = 1 << 30) const { return static_cast<int>(u64(key, lo, hi)); }
};

std::vector<int> parse_layer_list(const std::string& path, const std::string& v, int n_layer) {
    // Each item in the command line's list syntax, in canonical form only: it must print
    // back unchanged (no ranges, spaces or leading zeros); order is checked below.
    std::vector<int> out;
    bool ok = !v.empty();
    for (size_t pos = 0; ok && pos <= v.size();) {
        const size_t comma = std::min(v.find(',', pos), v.size());
        const std::string item = v.substr(pos, comma - pos);
        try {
            const std::vector<int> one = parse_int_list(ptable::kMetaLayers, item);
            ok = one.size() == 1 && std::to_string(one[0]) == item;
            if (ok) out.push_back(one[0]);
        } catch (const Error&) {
            ok = false;
        }
        pos = comma + 1;
    }
    PKV_CHECK(ok, data_loss, "{}::{}: expected ascending decimal layer indices separated by commas, got \"{}\"", path,
              ptable::kMetaLayers, v);
    for (size_t i = 0; i < out.size(); ++i) {
        PKV_CHECK(out[i] < n_layer, data_loss, "{}::{}: expected layers below n_layer {}, got {}", path,
                  ptable::kMetaLayers, n_layer, out[i]);
        PKV_CHECK(i == 0 || out[i] > out[i - 1], data_loss, "{}::{}: expected strictly ascending layers, got \"{}\"",
                  path, ptable::kMetaLayers, v);
    }
    return out;
}

// Copies a tensor into `out` after checking dtype and shape; patterns may be F16
// (`pkv export --dtype f16`), which is widened exactly.
template <typename T>
void read_tensor(const SafetensorsFile& f, const std::string& path, const std::string& name, const TensorSpec& spec,
                 bool allow_f16, std::vector<T>& out) {
    PKV_CHECK(f.contains(name), data_loss, "{}::{}: expected a {} tensor of shape {}, got none", path, name, spec.dtype,
              shape_str(spec.shape));
    const StTensorView& t = f.tensor(name);
    const bool f16 = allow_f16 && t.dtype == "F16";
    PKV_CHECK(t.dtype == spec.dtype || f16, data_loss, "{}::{}: expected dtype {}{}, got {}", path, name, spec.dtype,
              allow_f16 ? " or F16" : "", t.dtype);
    PKV_CHECK(t.shape == spec.shape, data_loss, "{}::{}: expected shape {}, got {}", path, name, shape_str(spec.shape),
              shape_str(t.shape));
    out.resize(t.numel());
    if (f16) {
        if constexpr (std::is_same_v<T, float>) {
            std::vector<uint16_t> h(out.size());
            if (!h.empty()) std::memcpy(h.data(), t.data, t.size);
            half_to_float_n(h.data(), out.data(), h.size());
        }
    } else if (!out.empty()) {
        std::memcpy(out.data(), t.data, t.size);
    }
}

}  // namespace

// ---------------------------------------------------------------------- check

void check_pattern_table(const PatternTable& t) {
    // Tables come from calibrate (whose inputs are checked before) or from a file (whose
    // reader turns this into data_loss naming the file): a failure here is pkv's own.
    auto bad = [](const std::string& field, const std::string& expected, const std::string& got) {
        fail(ErrorCode::internal, "pattern table: {}: expected {}, got {}", field, expected, got);
    };
    const PatternTableModel& m = t.model;
    if (m.arch.empty()) bad("model.arch", "a non-empty architecture", "\"\"");
    if (!m.sha256.empty() && !is_sha256_hex(m.sha256))
        bad("model.sha256", "64 lowercase hex digits or empty", "\"" + m.sha256 + "\"");
    if (m.n_layer < 1) bad("model.n_layer", "at least 1", std::to_string(m.n_layer));
    if (m.n_head < 1) bad("model.n_head", "at least 1", std::to_string(m.n_head));
    if (m.n_head_kv < 1 || m.n_head % std::max(m.n_head_kv, 1) != 0)
        bad("model.n_head_kv", "a positive divisor of n_head " + std::to_string(m.n_head), std::to_string(m.n_head_kv));
    if (m.head_dim < 2 || m.head_dim % 2 != 0) bad("model.head_dim", "an even number >= 2", std::to_string(m.head_dim));
    if (!one_of(t.key_basis, {ptable::kBasisPre, ptable::kBasisPost}))
        bad("key_basis", quoted_list({ptable::kBasisPre, ptable::kBasisPost}), "\"" + t.key_basis + "\"");
    if (!one_of(t.key_dim_order, {"gguf_interleaved", "hf_half_split"}))
        bad("key_dim_order", quoted_list({"gguf_interleaved", "hf_half_split"}), "\"" + t.key_dim_order + "\"");
    if (!one_of(t.rotation, {ptable::kRotationNone, ptable::kRotationHadamard}))
        bad("rotation", quoted_list({ptable::kRotationNone, ptable::kRotationHadamard}), "\"" + t.rotation + "\"");
    if (t.rotation == ptable::kRotationHadamard && !is_power_of_two(m.head_dim))
        bad("rotation", "a power-of-two head_dim for \"hadamard\"", "head_dim " + std::to_string(m.head_dim));
    if (t.rotation == ptable::kRotationNone && t.rotation_seed != 0)
        bad("rotation_seed", "0 without rotation", std::to_string(t.rotation_seed));
    if (t.bits != 2 && t.bits != 3 && t.bits != 4 && t.bits != 8) bad("bits", "2, 3, 4 or 8", std::to_string(t.bits));
    if (t.group < 1) bad("group", "at least 1", std::to_string(t.group));
    if (t.outliers < 0 || t.outliers > ptable::kMaxOutliers)
        bad("outliers", "0.." + std::to_string(ptable::kMaxOutliers), std::to_string(t.outliers));
    if (t.window < 1) bad("window", "at least 1", std::to_string(t.window));
    if (!one_of(t.assign, {ptable::kAssignL2, ptable::kAssignMinmax}))
        bad("assign", quoted_list({ptable::kAssignL2, ptable::kAssignMinmax}), "\"" + t.assign + "\"");
    if (t.k_patterns < 1) bad("k_patterns", "at least 1", std::to_string(t.k_patterns));
    if (t.v_patterns < 1) bad("v_patterns", "at least 1", std::to_string(t.v_patterns));
    if (!t.calibration.is_object()) bad("calibration", "a JSON object", t.calibration.type_name());
    if (!std::isfinite(t.alloc_budget) || t.alloc_budget < 0.0 || t.alloc_budget > 16.0 ||
        (t.has_allocation() && !(t.alloc_bits > 0.0 && t.alloc_bits <= 16.0)))
        bad("allocation", "a budget in [0, 16] (0: none) and mean bits in (0, 16]",
            fmt::format("{} / {}", t.alloc_budget, t.alloc_bits));
    if (t.layers.empty()) bad("layers", "at least one calibrated layer", "none");
    for (size_t i = 0; i < t.layers.size(); ++i) {
        const int l = t.layers[i].layer;
        const std::string at = "layers[" + std::to_string(i) + "].";
        if (l < 0 || l >= m.n_layer)
            bad(at + "layer", "a model layer in [0, " + std::to_string(m.n_layer) + ")", std::to_string(l));
        const int w = t.layers[i].window;
        const double base = t.layers[i].rope_base;
        if (w < 0) bad(at + "window", "a sliding window >= 0 (0: global)", std::to_string(w));
        if (!std::isfinite(base) || base < 0.0)
            bad(at + "rope_base", "a finite RoPE base >= 0 (0: not recorded)", fmt::format("{}", base));
        if (!t.layer_geometry && (w != 0 || base != 0.0))
            bad(at + "window/rope_base", "0 / 0 in a table without layer geometry (format 1.0)",
                fmt::format("{} / {}", w, base));
        if (i > 0 && l <= t.layers[i - 1].layer)
            bad("layers", "strictly ascending layer indices", "\"" + join_layers(t.layers) + "\"");
        const size_t H = static_cast<size_t>(m.n_head_kv);
        for (const auto* w : {&t.layers[i].k_bits, &t.layers[i].v_bits}) {
            const size_t want = t.has_allocation() ? H : 0;
            if (w->size() != want)
                bad(at + "k_bits/v_bits", std::to_string(want) + " widths (one per KV head with an allocation)",
                    std::to_string(w->size()));
            for (int b : *w)
                if (!pattern_table_alloc_width(b))
                    bad(at + "k_bits/v_bits", "widths of 2, 3, 4, 8 or 16", std::to_string(b));
        }
        for (const TensorSpec& s : layer_tensor_specs(m.n_head_kv, t.k_patterns, t.v_patterns, m.head_dim)) {
            const size_t got = field_size(t.layers[i], s.suffix);
            if (got != numel(s.shape))
                bad(ptable::tensor_name(l, s.suffix), std::to_string(numel(s.shape)) + " values " + shape_str(s.shape),
                    std::to_string(got));
        }
    }
}

const char* pattern_table_format_version(const PatternTable& t) {
    if (t.outliers > 0) return ptable::kFormatVersion13;
    if (t.has_allocation()) return ptable::kFormatVersion12;
    return t.layer_geometry ? ptable::kFormatVersion : ptable::kFormatVersion10;
}

int PatternTable::head_bits(size_t layer_index, int head, bool value) const {
    if (!has_allocation()) return bits;
    const PatternLayer& L = layers.at(layer_index);
    return (value ? L.v_bits : L.k_bits).at(static_cast<size_t>(head));
}

// ---------------------------------------------------------------------- write

namespace {

SafetensorsWriter table_writer(const PatternTable& t) {
    check_pattern_table(t);
    namespace P = ptable;
    SafetensorsWriter w;
    const auto& m = t.model;
    w.set_metadata(P::kMetaFormat, P::kFormat);
    w.set_metadata(P::kMetaFormatVersion, pattern_table_format_version(t));
    w.set_metadata(P::kMetaModelName, m.name);
    w.set_metadata(P::kMetaModelArch, m.arch);
    w.set_metadata(P::kMetaModelSha256, m.sha256);
    if (!m.rope.empty()) w.set_metadata(P::kMetaModelRope, m.rope);
    w.set_metadata(P::kMetaNLayer, std::to_string(m.n_layer));
    w.set_metadata(P::kMetaNHead, std::to_string(m.n_head));
    w.set_metadata(P::kMetaNHeadKv, std::to_string(m.n_head_kv));
    w.set_metadata(P::kMetaHeadDim, std::to_string(m.head_dim));
    w.set_metadata(P::kMetaLayers, join_layers(t.layers));
    if (t.layer_geometry) {
        w.set_metadata(P::kMetaLayersWindow, join_geometry(t.layers, false));
        w.set_metadata(P::kMetaLayersRopeBase, join_geometry(t.layers, true));
    }
    w.set_metadata(P::kMetaKeyBasis, t.key_basis);
    w.set_metadata(P::kMetaKeyDimOrder, t.key_dim_order);
    w.set_metadata(P::kMetaRotation, t.rotation);
    w.set_metadata(P::kMetaRotationSeed, std::to_string(t.rotation_seed));
    w.set_metadata(P::kMetaBits, std::to_string(t.bits));
    if (t.has_allocation()) w.set_metadata(P::kMetaAllocation, pattern_table_allocation_json(t).dump());
    if (t.outliers > 0) w.set_metadata(P::kMetaOutliers, std::to_string(t.outliers));
    w.set_metadata(P::kMetaGroup, std::to_string(t.group));
    w.set_metadata(P::kMetaWindow, std::to_string(t.window));
    w.set_metadata(P::kMetaAssign, t.assign);
    w.set_metadata(P::kMetaKPatterns, std::to_string(t.k_patterns));
    w.set_metadata(P::kMetaVPatterns, std::to_string(t.v_patterns));
    w.set_metadata(P::kMetaCalibration, t.calibration.dump());
    const uint64_t H = m.n_head_kv, D = m.head_dim;
    for (const PatternLayer& l : t.layers) {
        const int i = l.layer;
        w.add({P::tensor_name(i, P::kKPatterns), "F32", {H, uint64_t(t.k_patterns), D}, raw_bytes(l.k_patterns)});
        w.add({P::tensor_name(i, P::kVPatterns), "F32", {H, uint64_t(t.v_patterns), D}, raw_bytes(l.v_patterns)});
        w.add({P::tensor_name(i, P::kKCounts), "I64", {H, uint64_t(t.k_patterns)}, raw_bytes(l.k_counts)});
        w.add({P::tensor_name(i, P::kVCounts), "I64", {H, uint64_t(t.v_patterns)}, raw_bytes(l.v_counts)});
        w.add({P::tensor_name(i, P::kKClip), "F32", {H}, raw_bytes(l.k_clip)});
        w.add({P::tensor_name(i, P::kVClip), "F32", {H}, raw_bytes(l.v_clip)});
        w.add({P::tensor_name(i, P::kVGateZ), "F32", {H}, raw_bytes(l.v_gate_z)});
    }
    return w;
}

}  // namespace

std::vector<uint8_t> encode_pattern_table(const PatternTable& t) { return table_writer(t).encode(); }

void write_pattern_table(const PatternTable& t, const std::string& path, bool force) {
    table_writer(t).write(path, force);
}

// ----------------------------------------------------------------------- read

namespace {

// pkv.format must name a pattern table and pkv.format_version be "<major>.<minor>" with
// the major this reader knows; returns the minor (saturated: only "0 or more" matters).
uint64_t check_format_meta(const MetaReader& r, const std::string& path) {
    namespace P = ptable;
    const std::string& format = r.str(P::kMetaFormat);
    PKV_CHECK(format == P::kFormat, data_loss, "{}::{}: expected \"{}\", got \"{}\"", path, P::kMetaFormat, P::kFormat,
              format);
    const std::string& version = r.str(P::kMetaFormatVersion);
    const size_t dot = version.find('.');
    const bool well_formed = dot != std::string::npos && dot > 0 && dot + 1 < version.size() &&
                             version.find_first_not_of("0123456789.") == std::string::npos &&
                             version.find('.', dot + 1) == std::string::npos;
    PKV_CHECK(well_formed && version.substr(0, dot) == std::to_string(P::kVersionMajor), data_loss,
              "{}::{}: expected major version {} (\"{}.x\"), got \"{}\"", path, P::kMetaFormatVersion, P::kVersionMajor,
              P::kVersionMajor, version);
    return std::strtoull(version.c_str() + dot + 1, nullptr, 10);
}

// The pkv.model.* entries, each checked as it is read.
PatternTableModel read_model_meta(const MetaReader& r, const std::string& path) {
    namespace P = ptable;
    PatternTableModel m;
    m.name = r.str(P::kMetaModelName);
    m.arch = r.str(P::kMetaModelArch);
    PKV_CHECK(!m.arch.empty(), data_loss, "{}::{}: expected an architecture name, got \"\"", path, P::kMetaModelArch);
    m.sha256 = r.str(P::kMetaModelSha256);
    PKV_CHECK(m.sha256.empty() || is_sha256_hex(m.sha256), data_loss,
              "{}::{}: expected 64 lowercase hex digits or \"\", got \"{}\"", path, P::kMetaModelSha256, m.sha256);
    if (const auto it = r.meta.find(P::kMetaModelRope); it != r.meta.end()) {
        const auto j = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
        const bool ok = j.is_object() && j.contains("type") && (j["type"] == "norm" || j["type"] == "neox");
        PKV_CHECK(ok, data_loss, "{}::{}: expected a JSON object with type \"norm\" or \"neox\", got {}", path,
                  P::kMetaModelRope, it->second.substr(0, 60));
        m.rope = it->second;
    }
    m.n_layer = r.i32(P::kMetaNLayer, 1);
    m.n_head = r.i32(P::kMetaNHead, 1);
    m.n_head_kv = r.i32(P::kMetaNHeadKv, 1, m.n_head);
    PKV_CHECK(m.n_head % m.n_head_kv == 0, data_loss, "{}::{}: expected a divisor of n_head {}, got {}", path,
              P::kMetaNHeadKv, m.n_head, m.n_head_kv);
    m.head_dim = r.i32(P::kMetaHeadDim, 2);
    PKV_CHECK(m.head_dim % 2 == 0, data_loss, "{}::{}: expected an even head dimension, got {}", path, P::kMetaHeadDim,
              m.head_dim);
    return m;
}

// Basis, rotation, quantizer and pattern counts into t (whose model is already read:
// hadamard needs a power-of-two head_dim).
void read_settings_meta(const MetaReader& r, const std::string& path, PatternTable& t) {
    namespace P = ptable;
    t.key_basis = r.enumerated(P::kMetaKeyBasis, {P::kBasisPre, P::kBasisPost});
    t.key_dim_order = r.enumerated(P::kMetaKeyDimOrder, {"gguf_interleaved", "hf_half_split"});
    t.rotation = r.enumerated(P::kMetaRotation, {P::kRotationNone, P::kRotationHadamard});
    t.rotation_seed = r.u64(P::kMetaRotationSeed, 0, UINT64_MAX);
    PKV_CHECK(t.rotation != P::kRotationHadamard || is_power_of_two(t.model.head_dim), data_loss,
              "{}::{}: expected a power-of-two head_dim for \"hadamard\", got head_dim {}", path, P::kMetaRotation,
              t.model.head_dim);
    PKV_CHECK(t.rotation != P::kRotationNone || t.rotation_seed == 0, data_loss,
              "{}::{}: expected 0 without rotation, got {}", path, P::kMetaRotationSeed, t.rotation_seed);
    t.bits = r.i32(P::kMetaBits, 2, 8);
    PKV_CHECK(t.bits != 5 && t.bits != 6 && t.bits != 7, data_loss, "{}::{}: expected 2, 3, 4 or 8, got {}", path,
              P::kMetaBits, t.bits);
    t.group = r.i32(P::kMetaGroup, 1);
    if (r.meta.count(P::kMetaOutliers) != 0) t.outliers = r.i32(P::kMetaOutliers, 1, P::kMaxOutliers);
    t.window = r.i32(P::kMetaWindow, 1);
    t.assign = r.enumerated(P::kMetaAssign, {P::kAssignL2, P::kAssignMinmax});
    t.k_patterns = r.i32(P::kMetaKPatterns, 1);
    t.v_patterns = r.i32(P::kMetaVPatterns, 1);
}

// pkv.calibration: JSON text that must parse to an object.
json read_calibration_meta(const MetaReader& r, const std::string& path) {
    namespace P = ptable;
    const std::string& cal = r.str(P::kMetaCalibration);
    json calibration;
    try {
        calibration = json::parse(cal);
    } catch (const json::exception& e) {
        fail(ErrorCode::data_loss, "{}::{}: expected a JSON object, got text that does not parse ({})", path,
             P::kMetaCalibration, e.what());
    }
    PKV_CHECK(calibration.is_object(), data_loss, "{}::{}: expected a JSON object, got {}", path, P::kMetaCalibration,
              calibration.type_name());
    return calibration;
}

// kMetaLayersWindow and kMetaLayersRopeBase into t.layers (already read): one entry per
// layer, both required when `required` (format 1.1 on). In a 1.0 table a window list, when
// present, records the geometry (the rope bases then optional); without one the layers
// stay 0 / 0 (unknown) and a lone rope base list is ignored, as 1.0 readers did.
void read_layer_geometry(const MetaReader& r, const std::string& path, bool required, PatternTable& t) {
    namespace P = ptable;
    t.layer_geometry = required || r.meta.count(P::kMetaLayersWindow) != 0;
    if (!t.layer_geometry) return;
    for (const char* key : {P::kMetaLayersWindow, P::kMetaLayersRopeBase}) {
        if (!required && r.meta.count(key) == 0) continue;
        const std::string& v = r.str(key);
        std::vector<std::string> items;
        for (size_t pos = 0; pos <= v.size();) {
            const size_t comma = std::min(v.find(',', pos), v.size());
            items.push_back(v.substr(pos, comma - pos));
            pos = comma + 1;
        }
        PKV_CHECK(items.size() == t.layers.size(), data_loss,
                  "{}::{}: expected {} values, got {} (one per entry of {})", path, key, t.layers.size(), items.size(),
                  P::kMetaLayers);
        const bool window = std::strcmp(key, P::kMetaLayersWindow) == 0;
        for (size_t i = 0; i < items.size(); ++i) {
            const std::string& item = items[i];
            double x = -1.0;
            if (is_plain_number(item)) std::from_chars(item.data(), item.data() + item.size(), x);
            const bool ok =
                window ? item.find_first_not_of("0123456789") == std::string::npos && x >= 0.0 && x <= double(1 << 30)
                       : std::isfinite(x) && x >= 0.0;
            PKV_CHECK(ok, data_loss, "{}::{}: expected {} for layer {}, got \"{}\"", path, key,
                      window ? "a decimal integer in [0, 2^30] (0: global)" : "a finite number >= 0", t.layers[i].layer,
                      item);
            if (window) t.layers[i].window = static_cast<int>(x);
            else t.layers[i].rope_base = x;
        }
    }
}

// The seven tensors of each listed layer, shapes from t's geometry, appended to t.layers.
void read_layer_tensors(const SafetensorsFile& f, const std::string& path, const std::vector<int>& layers,
                        PatternTable& t) {
    namespace P = ptable;
    const auto specs = layer_tensor_specs(t.model.n_head_kv, t.k_patterns, t.v_patterns, t.model.head_dim);
    for (int l : layers) {
        PatternLayer pl;
        pl.layer = l;
        read_tensor(f, path, P::tensor_name(l, P::kKPatterns), specs[0], true, pl.k_patterns);
        read_tensor(f, path, P::tensor_name(l, P::kVPatterns), specs[1], true, pl.v_patterns);
        read_tensor(f, path, P::tensor_name(l, P::kKCounts), specs[2], false, pl.k_counts);
        read_tensor(f, path, P::tensor_name(l, P::kVCounts), specs[3], false, pl.v_counts);
        read_tensor(f, path, P::tensor_name(l, P::kKClip), specs[4], false, pl.k_clip);
        read_tensor(f, path, P::tensor_name(l, P::kVClip), specs[5], false, pl.v_clip);
        read_tensor(f, path, P::tensor_name(l, P::kVGateZ), specs[6], false, pl.v_gate_z);
        t.layers.push_back(std::move(pl));
    }
}

}  // namespace

PatternTable read_pattern_table(const std::string& path) {
    const SafetensorsFile f = SafetensorsFile::open(path);
    const MetaReader r{path, f.metadata()};
    const uint64_t minor = check_format_meta(r, path);

    PatternTable t;
    t.model = read_model_meta(r, path);
    const std::vector<int> layers = parse_layer_list(path, r.str(ptable::kMetaLayers), t.model.n_layer);
    read_settings_meta(r, path, t);
    t.calibration = read_calibration_meta(r, path);
    read_layer_tensors(f, path, layers, t);
    read_layer_geometry(r, path, minor >= 1, t);
    read_pattern_table_allocation(r.meta, path, t);
    try {
        check_pattern_table(t);  // everything above should already hold; keeps reader and checker in step
    } catch (const Error& e) {
        fail(ErrorCode::data_loss, "{}: {}", path, e.what());
    }
    return t;
}

// -------------------------------------------------------------------- findings

namespace {

// NaN/Inf in one tensor: how many, and where the first sits (head, pattern and dim when
// rows_per_head > 0; otherwise the tensor holds one value per head).
void add_non_finite(std::vector<std::string>& out, const std::string& name, const std::vector<float>& v,
                    int rows_per_head, int row_len) {
    size_t n = 0, first = 0;
    for (size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(v[i]) && n++ == 0) first = i;
    if (n == 0) return;
    std::string where;
    if (rows_per_head > 0) {
        const size_t per_head = size_t(rows_per_head) * row_len;
        where =
            fmt::format("head {}, pattern {}, dim {}", first / per_head, (first % per_head) / row_len, first % row_len);
    } else {
        where = fmt::format("head {}", first);
    }
    out.push_back(fmt::format("{}: {} non-finite value(s) (NaN/Inf), first at {} ({})", name, n, where, v[first]));
}

// Clip ratios outside (0, 1] and negative gate z of one layer; also notes whether any
// clip ratio was seen and whether any differs from 1 (a table with nothing fitted).
void add_clip_gate_findings(std::vector<std::string>& out, const PatternLayer& l, int H, bool& any_clip,
                            bool& any_clip_not_one) {
    const auto name = [&](const char* s) { return ptable::tensor_name(l.layer, s); };
    for (const auto& [suffix, clip] :
         {std::make_pair(ptable::kKClip, &l.k_clip), std::make_pair(ptable::kVClip, &l.v_clip)}) {
        for (int h = 0; h < H; ++h) {
            const float a = (*clip)[h];
            any_clip = true;
            if (a != 1.0f) any_clip_not_one = true;
            if (std::isfinite(a) && (a <= 0.0f || a > 1.0f))
                out.push_back(fmt::format("{}: head {}: expected a clip ratio in (0, 1], got {}", name(suffix), h, a));
        }
    }
    for (int h = 0; h < H; ++h)
        if (std::isfinite(l.v_gate_z[h]) && l.v_gate_z[h] < 0.0f)
            out.push_back(
                fmt::format("{}: head {}: expected a gate z >= 0, got {}", name(ptable::kVGateZ), h, l.v_gate_z[h]));
}

// Pairs "a=b" of one head's M rows of D values with ||a - b|| <= 1e-6 max(||a||, ||b||)
// (so two zero rows count too); rows whose norm is not finite are skipped.
std::vector<std::string> duplicate_pattern_pairs(const float* base, int M, int D) {
    std::vector<double> norms(M, 0.0);
    for (int j = 0; j < M; ++j) {
        double s = 0;
        for (int d = 0; d < D; ++d) s += double(base[size_t(j) * D + d]) * base[size_t(j) * D + d];
        norms[j] = std::sqrt(s);
    }
    std::vector<std::string> pairs;
    for (int a = 0; a < M; ++a) {
        if (!std::isfinite(norms[a])) continue;
        for (int b = a + 1; b < M; ++b) {
            if (!std::isfinite(norms[b])) continue;
            double s = 0;
            for (int d = 0; d < D; ++d) {
                const double diff = double(base[size_t(a) * D + d]) - base[size_t(b) * D + d];
                s += diff * diff;
            }
            if (std::sqrt(s) <= 1e-6 * std::max(norms[a], norms[b])) pairs.push_back(fmt::format("{}={}", a, b));
        }
    }
    return pairs;
}

// One tensor (K or V) of one layer: dead, negative and duplicate patterns per head, then
// heads whose count totals differ (every head sees the same tokens).
void add_count_findings(std::vector<std::string>& out, const std::string& cname, const std::string& pname, int H, int M,
                        int D, const std::vector<int64_t>& counts, const std::vector<float>& patterns) {
    std::vector<int64_t> sums(H, 0);
    for (int h = 0; h < H; ++h) {
        std::vector<int> dead, negative;
        for (int j = 0; j < M; ++j) {
            const int64_t c = counts[size_t(h) * M + j];
            if (c == 0) dead.push_back(j);
            if (c < 0) negative.push_back(j);
            sums[h] = saturating_add(sums[h], c);  // counts from the file may be anything
        }
        if (!dead.empty())
            out.push_back(fmt::format("{}: head {}: {} dead pattern(s) of {} (count 0): {}", cname, h, dead.size(), M,
                                      fmt::join(dead, ", ")));
        if (!negative.empty())
            out.push_back(fmt::format("{}: head {}: expected counts >= 0, got negative counts at pattern(s) {}", cname,
                                      h, fmt::join(negative, ", ")));
        const std::vector<std::string> pairs = duplicate_pattern_pairs(patterns.data() + size_t(h) * M * D, M, D);
        if (!pairs.empty())
            out.push_back(fmt::format("{}: head {}: {} duplicate pattern pair(s) (equal within 1e-6 relative): {}",
                                      pname, h, pairs.size(), fmt::join(pairs, ", ")));
    }
    for (int h = 1; h < H; ++h)
        if (sums[h] != sums[0]) {
            out.push_back(
                fmt::format("{}: expected the same count total in every head, got {}", cname, fmt::join(sums, ", ")));
            break;
        }
}

}  // namespace

std::vector<std::string> pattern_table_findings(const PatternTable& t) {
    namespace P = ptable;
    std::vector<std::string> out;
    const int H = t.model.n_head_kv, D = t.model.head_dim;
    bool any_clip_not_one = false, any_clip = false;
    for (const PatternLayer& l : t.layers) {
        const auto name = [&](const char* s) { return P::tensor_name(l.layer, s); };
        add_non_finite(out, name(P::kKPatterns), l.k_patterns, t.k_patterns, D);
        add_non_finite(out, name(P::kVPatterns), l.v_patterns, t.v_patterns, D);
        add_non_finite(out, name(P::kKClip), l.k_clip, 0, 1);
        add_non_finite(out, name(P::kVClip), l.v_clip, 0, 1);
        add_non_finite(out, name(P::kVGateZ), l.v_gate_z, 0, 1);
        add_clip_gate_findings(out, l, H, any_clip, any_clip_not_one);
        add_count_findings(out, name(P::kKCounts), name(P::kKPatterns), H, t.k_patterns, D, l.k_counts, l.k_patterns);
        add_count_findings(out, name(P::kVCounts), name(P::kVPatterns), H, t.v_patterns, D, l.v_counts, l.v_patterns);
    }
    if (any_clip && !any_clip_not_one)
        out.push_back("k_clip/v_clip: every clip ratio of the table is exactly 1 (nothing fitted)");
    return out;
}

// ----------------------------------------------------------------- recognise

bool is_pattern_table_file(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return false;
    unsigned char len[8];
    bool ok = std::fread(len, 1, 8, f) == 8;
    uint64_t n = 0;
    for (int i = 7; ok && i >= 0; --i) n = (n << 8) | len[i];
    std::string header;
    if (ok && n >= 2 && n <= 100'000'000) {
        header.resize(n);
        ok = std::fread(header.data(), 1, n, f) == n;
    } else {
        ok = false;
    }
    std::fclose(f);
    if (!ok || header[0] != '{') return false;
    const json j = json::parse(header, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("__metadata__") || !j["__metadata__"].is_object()) return false;
    const json& m = j["__metadata__"];
    return m.contains(ptable::kMetaFormat) && m[ptable::kMetaFormat] == ptable::kFormat;
}

}  // namespace pkv
