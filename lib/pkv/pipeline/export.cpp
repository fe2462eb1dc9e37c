// pkv/pipeline/export.cpp — see export.h and docs/formats/pattern_table.md.
#include "pkv/pipeline/export.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <set>

#include <fmt/ranges.h>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/gguf/gguf_writer.h"
#include "pkv/table/safetensors.h"

namespace pkv {

using nlohmann::json;

void key_dims_gguf_to_hf(const float* in, float* out, int D) {
    const int h = D / 2;
    for (int i = 0; i < h; ++i) {
        out[i] = in[2 * i];
        out[i + h] = in[2 * i + 1];
    }
}

void key_dims_hf_to_gguf(const float* in, float* out, int D) {
    const int h = D / 2;
    for (int i = 0; i < h; ++i) {
        out[2 * i] = in[i];
        out[2 * i + 1] = in[i + h];
    }
}

namespace {

std::string canonical_order(const std::string& order, const char* what) {
    if (order == "gguf" || order == kDimOrderGguf) return kDimOrderGguf;
    if (order == "hf" || order == kDimOrderHf) return kDimOrderHf;
    fail(ErrorCode::invalid_argument, "{}: expected gguf or hf, got '{}'", what, order);
}

PatternDtype parse_dtype(const std::string& s) {
    if (s == "f32") return PatternDtype::f32;
    if (s == "f16") return PatternDtype::f16;
    fail(ErrorCode::invalid_argument, "--dtype: expected f32 or f16, got '{}'", s);
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
    std::vector<uint8_t> out(v.size() * 4);
    if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
    return out;
}

std::vector<uint8_t> f16_bytes(const std::vector<float>& v) {
    std::vector<uint16_t> h(v.size());
    float_to_half_n(v.data(), h.data(), v.size());
    std::vector<uint8_t> out(h.size() * 2);
    if (!h.empty()) std::memcpy(out.data(), h.data(), out.size());
    return out;
}

std::vector<uint8_t> i64_bytes(const std::vector<int64_t>& v) {
    std::vector<uint8_t> out(v.size() * 8);
    if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
    return out;
}

std::vector<uint8_t> pattern_bytes(const std::vector<float>& v, PatternDtype dt) {
    return dt == PatternDtype::f16 ? f16_bytes(v) : f32_bytes(v);
}

// The shortest decimal that reads back as the same float (0.1f prints as 0.1, not
// 0.10000000149011612); JSON has no NaN or Inf, so those become null.
json float_json(float f) {
    if (!std::isfinite(f)) return nullptr;
    return std::stod(fmt::format("{}", f));
}

template <typename T>
json nested(const T* data, const std::vector<uint64_t>& shape, size_t dim, size_t& pos) {
    json a = json::array();
    for (uint64_t i = 0; i < shape[dim]; ++i) {
        if (dim + 1 == shape.size()) {
            if constexpr (std::is_same_v<T, float>) a.push_back(float_json(data[pos++]));
            else a.push_back(data[pos++]);
        } else {
            a.push_back(nested(data, shape, dim + 1, pos));
        }
    }
    return a;
}

template <typename T>
json tensor_json(const char* dtype, const std::vector<uint64_t>& shape, const std::vector<T>& v) {
    size_t pos = 0;
    return {{"dtype", dtype}, {"shape", shape}, {"data", nested(v.data(), shape, 0, pos)}};
}

std::vector<float> rounded_f16(const std::vector<float>& v) {
    std::vector<uint16_t> h(v.size());
    std::vector<float> out(v.size());
    float_to_half_n(v.data(), h.data(), v.size());
    half_to_float_n(h.data(), out.data(), h.size());
    return out;
}

std::string human_bytes(uint64_t n) {
    if (n < 10 * 1024) return fmt::format("{} bytes", n);
    if (n < 10 * 1048576) return fmt::format("{:.1f} KiB", n / 1024.0);
    return fmt::format("{:.1f} MiB", n / 1048576.0);
}

uint64_t file_bytes(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

void write_bytes_atomic(const std::string& path, const std::vector<uint8_t>& bytes, bool force) {
    AtomicOutput out(path, force);
    out.write_and_commit(bytes.data(), bytes.size());
}

// Indented metadata, one line per tensor: readable, and far shorter than one number per line.
std::string json_text(const json& doc) {
    std::string out = "{\n";
    out += " \"format\": " + doc["format"].dump() + ",\n";
    out += " \"format_version\": " + doc["format_version"].dump() + ",\n";
    std::string meta = doc["metadata"].dump(1);
    for (size_t i = 0; (i = meta.find('\n', i)) != std::string::npos; i += 2) meta.replace(i, 1, "\n ");
    out += " \"metadata\": " + meta + ",\n";
    out += " \"layers\": " + doc["layers"].dump() + ",\n";
    out += " \"tensors\": {";
    size_t i = 0;
    for (auto it = doc["tensors"].begin(); it != doc["tensors"].end(); ++it)
        out += std::string(i++ ? "," : "") + "\n  " + json(it.key()).dump() + ": " + it.value().dump();
    out += "\n }\n}\n";
    return out;
}

}  // namespace

PatternTable with_key_dim_order(const PatternTable& t, const std::string& order) {
    const std::string want = canonical_order(order, "key dim order");
    if (t.key_dim_order == want) return t;
    PKV_CHECK(t.rotation == ptable::kRotationNone, unsupported,
              "key dim order {}: a table with pkv.rotation \"{}\" cannot be re-ordered (the rotation mixes every "
              "dimension; calibrate in the wanted order instead)",
              want, t.rotation);
    PatternTable out = t;
    out.key_dim_order = want;
    const int D = t.model.head_dim;
    for (PatternLayer& l : out.layers) {
        check_interrupted();
        const std::vector<float> src = l.k_patterns;
        for (size_t r = 0; r + D <= src.size(); r += D) {
            if (want == kDimOrderHf) key_dims_gguf_to_hf(src.data() + r, l.k_patterns.data() + r, D);
            else key_dims_hf_to_gguf(src.data() + r, l.k_patterns.data() + r, D);
        }
    }
    return out;
}

std::vector<uint8_t> encode_table_safetensors(const PatternTable& t, PatternDtype dtype) {
    std::vector<uint8_t> bytes = encode_pattern_table(t);
    if (dtype == PatternDtype::f32) return bytes;
    // Same file with the two pattern tensors of every layer narrowed to F16.
    const SafetensorsFile f = SafetensorsFile::parse(std::move(bytes), "pattern table");
    SafetensorsWriter narrowed;
    for (const auto& [k, v] : f.metadata()) narrowed.set_metadata(k, v);
    for (const std::string& name : f.names()) {
        check_interrupted();
        StTensor st = f.tensor(name).to_tensor();
        const bool pattern = name.size() > 11 && (name.compare(name.size() - 11, 11, ".k_patterns") == 0 ||
                                                  name.compare(name.size() - 11, 11, ".v_patterns") == 0);
        if (pattern) {
            std::vector<float> v(st.data.size() / 4);
            if (!v.empty()) std::memcpy(v.data(), st.data.data(), st.data.size());
            st.dtype = "F16";
            st.data = f16_bytes(v);
        }
        narrowed.add(std::move(st));
    }
    return narrowed.encode();
}

json pattern_table_metadata_json(const PatternTable& t) {
    const SafetensorsFile f = SafetensorsFile::parse(encode_pattern_table(t), "pattern table");
    json m = json::object();
    for (const auto& [k, v] : f.metadata()) m[k] = v;
    m[ptable::kMetaCalibration] = t.calibration;
    return m;
}

std::vector<uint8_t> encode_table_gguf(const PatternTable& t, PatternDtype dtype) {
    check_pattern_table(t);
    namespace P = ptable;
    GgufWriter w;
    const auto& m = t.model;
    w.set_string("general.type", kGgufPatternsType);
    w.set_string("general.name", m.name);
    w.set_string(P::kMetaFormat, P::kFormat);
    w.set_string(P::kMetaFormatVersion, pattern_table_format_version(t));
    w.set_string(P::kMetaModelName, m.name);
    w.set_string(P::kMetaModelArch, m.arch);
    w.set_string(P::kMetaModelSha256, m.sha256);
    if (!m.rope.empty()) w.set_string(P::kMetaModelRope, m.rope);
    w.set_u32(P::kMetaNLayer, m.n_layer);
    w.set_u32(P::kMetaNHead, m.n_head);
    w.set_u32(P::kMetaNHeadKv, m.n_head_kv);
    w.set_u32(P::kMetaHeadDim, m.head_dim);
    std::vector<int32_t> layers;
    for (const PatternLayer& l : t.layers) layers.push_back(l.layer);
    w.set_i32_array(P::kMetaLayers, layers);
    if (t.layer_geometry) {
        std::vector<int32_t> windows;
        GgufValue bases;  // F64: a base round-trips exactly, as in the table
        bases.type = GgufType::ARRAY;
        bases.array_type = GgufType::F64;
        std::vector<GgufValue> items;
        for (const PatternLayer& l : t.layers) {
            windows.push_back(l.window);
            GgufValue b;
            b.type = GgufType::F64;
            b.value = l.rope_base;
            items.push_back(b);
        }
        bases.value = std::move(items);
        w.set_i32_array(P::kMetaLayersWindow, windows);
        w.set(P::kMetaLayersRopeBase, bases);
    }
    w.set_string(P::kMetaKeyBasis, t.key_basis);
    w.set_string(P::kMetaKeyDimOrder, t.key_dim_order);
    w.set_string(P::kMetaRotation, t.rotation);
    w.set_u64(P::kMetaRotationSeed, t.rotation_seed);
    w.set_u32(P::kMetaBits, t.bits);
    if (t.has_allocation()) w.set_string(P::kMetaAllocation, pattern_table_allocation_json(t).dump());
    if (t.outliers > 0) w.set_u32(P::kMetaOutliers, t.outliers);
    w.set_u32(P::kMetaGroup, t.group);
    w.set_u32(P::kMetaWindow, t.window);
    w.set_string(P::kMetaAssign, t.assign);
    w.set_u32(P::kMetaKPatterns, t.k_patterns);
    w.set_u32(P::kMetaVPatterns, t.v_patterns);
    w.set_string(P::kMetaCalibration, t.calibration.dump());

    // ggml lists dims fastest first: a row-major [H, M, D] array is ne = {D, M, H}.
    const uint64_t H = m.n_head_kv, D = m.head_dim, Mk = t.k_patterns, Mv = t.v_patterns;
    const GgmlType pat = dtype == PatternDtype::f16 ? GgmlType::F16 : GgmlType::F32;
    const GgmlType i64 = static_cast<GgmlType>(27);  // GGML_TYPE_I64
    for (const PatternLayer& l : t.layers) {
        check_interrupted();
        const std::string b = "blk." + std::to_string(l.layer) + ".pkv_";
        w.add_tensor(b + P::kKPatterns, {D, Mk, H}, pat, pattern_bytes(l.k_patterns, dtype));
        w.add_tensor(b + P::kVPatterns, {D, Mv, H}, pat, pattern_bytes(l.v_patterns, dtype));
        w.add_tensor(b + P::kKCounts, {Mk, H}, i64, i64_bytes(l.k_counts));
        w.add_tensor(b + P::kVCounts, {Mv, H}, i64, i64_bytes(l.v_counts));
        w.add_tensor_f32(b + P::kKClip, {H}, l.k_clip);
        w.add_tensor_f32(b + P::kVClip, {H}, l.v_clip);
        w.add_tensor_f32(b + P::kVGateZ, {H}, l.v_gate_z);
    }
    return w.encode();
}

json table_to_json(const PatternTable& t, PatternDtype dtype) {
    check_pattern_table(t);
    namespace P = ptable;
    const uint64_t H = t.model.n_head_kv, D = t.model.head_dim, Mk = t.k_patterns, Mv = t.v_patterns;
    const bool f16 = dtype == PatternDtype::f16;
    const char* pdt = f16 ? "F16" : "F32";
    json tensors = json::object(), layers = json::array();
    for (const PatternLayer& l : t.layers) {
        check_interrupted();
        const int i = l.layer;
        // Without recorded geometry (a 1.0 table) window and RoPE base are unknown: null.
        layers.push_back({{"layer", i},
                          {"window", t.layer_geometry ? json(l.window) : json(nullptr)},
                          {"rope_base", t.layer_geometry ? json(l.rope_base) : json(nullptr)}});
        tensors[P::tensor_name(i, P::kKPatterns)] =
            tensor_json(pdt, {H, Mk, D}, f16 ? rounded_f16(l.k_patterns) : l.k_patterns);
        tensors[P::tensor_name(i, P::kVPatterns)] =
            tensor_json(pdt, {H, Mv, D}, f16 ? rounded_f16(l.v_patterns) : l.v_patterns);
        tensors[P::tensor_name(i, P::kKCounts)] = tensor_json("I64", {H, Mk}, l.k_counts);
        tensors[P::tensor_name(i, P::kVCounts)] = tensor_json("I64", {H, Mv}, l.v_counts);
        tensors[P::tensor_name(i, P::kKClip)] = tensor_json("F32", {H}, l.k_clip);
        tensors[P::tensor_name(i, P::kVClip)] = tensor_json("F32", {H}, l.v_clip);
        tensors[P::tensor_name(i, P::kVGateZ)] = tensor_json("F32", {H}, l.v_gate_z);
    }
    return {{"format", P::kFormat},
            {"format_version", pattern_table_format_version(t)},
            {"metadata", pattern_table_metadata_json(t)},
            {"layers", layers},
            {"tensors", tensors}};
}

ExportSummary export_pattern_table(const std::string& table_path, const std::string& out_path, const ExportOptions& o) {
    PKV_CHECK(o.format == "safetensors" || o.format == "gguf" || o.format == "json", invalid_argument,
              "--format: expected safetensors, gguf or json, got '{}'", o.format);
    const PatternDtype dtype = parse_dtype(o.dtype);
    const std::string order = o.key_order.empty() ? "" : canonical_order(o.key_order, "--key-order");
    PKV_CHECK(!out_path.empty(), invalid_argument, "--out: expected a path, got ''");
    // Refuse an existing output before the (possibly large) table is read.
    struct stat st {};
    PKV_CHECK(o.force || ::stat(out_path.c_str(), &st) != 0, failed_precondition,
              "{}: output exists; pass --force to overwrite it", out_path);

    PatternTable t = read_pattern_table(table_path);
    // From here the loops poll: a signal ends the export with status 130 and no file.
    install_interrupt_handlers();
    check_interrupted();
    // A NEOX model's keys are in half-split order in every runtime: no interleaved order exists.
    const bool neox = !t.model.rope.empty() && nlohmann::json::parse(t.model.rope).value("type", "") == "neox";
    PKV_CHECK(!neox || order.empty() || order == "hf_half_split", invalid_argument,
              "--key-order {}: {} is for a {} model with NEOX RoPE, whose keys are in hf_half_split order in every "
              "runtime",
              o.key_order, table_path, t.model.arch);
    if (!order.empty()) t = with_key_dim_order(t, order);

    ExportSummary s;
    s.out_path = out_path;
    s.format = o.format;
    s.key_dim_order = t.key_dim_order;
    s.dtype = o.dtype;
    s.tensors = 7 * t.layers.size();
    std::vector<uint8_t> bytes;
    if (o.format == "safetensors") {
        bytes = encode_table_safetensors(t, dtype);
    } else if (o.format == "gguf") {
        bytes = encode_table_gguf(t, dtype);
    } else {
        const std::string text = json_text(table_to_json(t, dtype));
        bytes.assign(text.begin(), text.end());
    }
    write_bytes_atomic(out_path, bytes, o.force);
    s.bytes = bytes.size();
    return s;
}

// ------------------------------------------------------------------ info / validate

namespace {

// "lo..hi (mean m)" over every value of the vectors, or "none" when they are all empty.
std::string value_range(const std::vector<const std::vector<float>*>& vs) {
    float lo = INFINITY, hi = -INFINITY;
    double sum = 0;
    size_t n = 0;
    for (const auto* v : vs)
        for (float x : *v) {
            lo = std::min(lo, x), hi = std::max(hi, x), sum += x, ++n;
        }
    return n ? fmt::format("{:.4g}..{:.4g} (mean {:.4g})", lo, hi, sum / n) : std::string("none");
}

// "layers: 15 local (window 512, RoPE base 10000), 3 global (RoPE base 1000000)" when
// any calibrated layer is local; "" otherwise (all global, or geometry not recorded).
std::string layer_geometry_line(const PatternTable& t) {
    std::map<int, int> windows;
    std::set<double> local_bases, global_bases;
    int n_global = 0;
    for (const PatternLayer& l : t.layers) {
        if (l.window > 0) ++windows[l.window];
        else ++n_global;
        if (l.rope_base > 0.0) (l.window > 0 ? local_bases : global_bases).insert(l.rope_base);
    }
    if (windows.empty()) return "";
    int n_local = 0;
    std::vector<int> ws;
    for (const auto& [w, n] : windows) n_local += n, ws.push_back(w);
    const auto bases = [](const std::set<double>& b) { return fmt::format("RoPE base {}", fmt::join(b, "/")); };
    std::string local = fmt::format("window{} {}", ws.size() > 1 ? "s" : "", fmt::join(ws, "/"));
    if (!local_bases.empty()) local += ", " + bases(local_bases);
    std::string out = fmt::format("layers: {} local ({})", n_local, local);
    if (n_global > 0)
        out += fmt::format(", {} global{}", n_global, global_bases.empty() ? "" : " (" + bases(global_bases) + ")");
    return out + "\n";
}

// The file, model, layer, pattern and residual lines: what the table is and what it fits.
std::string table_shape_lines(const std::string& path, const PatternTable& t, const SafetensorsFile& f) {
    const auto& m = t.model;
    std::string pattern_dtype = "F32";
    if (!t.layers.empty()) pattern_dtype = f.tensor(ptable::tensor_name(t.layers[0].layer, ptable::kKPatterns)).dtype;
    std::string out =
        fmt::format("{}: {} {}, {}, {} tensors\n", path, ptable::kFormat, f.metadata().at(ptable::kMetaFormatVersion),
                    human_bytes(file_bytes(path)), f.names().size());
    out += fmt::format("model: {} ({}), {} layers, {} heads, {} KV heads, head_dim {}, sha256 {}\n",
                       m.name.empty() ? "unnamed" : m.name, m.arch, m.n_layer, m.n_head, m.n_head_kv, m.head_dim,
                       m.sha256.empty() ? "none" : m.sha256);
    std::string layers;
    for (size_t i = 0; i < t.layers.size(); ++i) layers += (i ? "," : "") + std::to_string(t.layers[i].layer);
    out += fmt::format("layers: {} of {} calibrated: {}\n", t.layers.size(), m.n_layer, layers);
    out += layer_geometry_line(t);
    out += fmt::format(
        "patterns: Mk {} key, Mv {} value per head ({}); keys {} basis, {} order; rotation {}{}; assign {}\n",
        t.k_patterns, t.v_patterns, pattern_dtype, t.key_basis, t.key_dim_order, t.rotation,
        t.rotation == ptable::kRotationNone ? "" : fmt::format(" (seed {})", t.rotation_seed), t.assign);
    out += fmt::format("residual: {} bits, group {}, window {}{}\n", t.bits, t.group, t.window,
                       t.outliers > 0 ? fmt::format(", {} exact outliers per group", t.outliers) : "");
    if (t.has_allocation()) {
        int n[17] = {};
        for (const PatternLayer& L : t.layers)
            for (const auto* w : {&L.k_bits, &L.v_bits})
                for (int b : *w) ++n[b];
        out += fmt::format(
            "widths: allocated under a budget of {} bits per element, {:.4f} reached; K/V heads at 2/3/4/8/16 bits: "
            "{}/{}/{}/{}/{}\n",
            t.alloc_budget, t.alloc_bits, n[2], n[3], n[4], n[8], n[16]);
    }
    return out;
}

// The clip / gate ranges and the dead-pattern totals over all layers and heads.
std::string fitted_value_lines(const PatternTable& t) {
    const int H = t.model.n_head_kv;
    std::vector<const std::vector<float>*> kc, vc, gz;
    int64_t dead_k = 0, dead_v = 0;
    for (const PatternLayer& l : t.layers) {
        kc.push_back(&l.k_clip), vc.push_back(&l.v_clip), gz.push_back(&l.v_gate_z);
        dead_k += std::count(l.k_counts.begin(), l.k_counts.end(), 0);
        dead_v += std::count(l.v_counts.begin(), l.v_counts.end(), 0);
    }
    std::string out = fmt::format("clip: K {}, V {}; V gate z {}\n", value_range(kc), value_range(vc), value_range(gz));
    const int64_t slots_k = int64_t(t.layers.size()) * H * t.k_patterns,
                  slots_v = int64_t(t.layers.size()) * H * t.v_patterns;
    out += fmt::format("dead patterns: K {} of {}, V {} of {}\n", dead_k, slots_k, dead_v, slots_v);
    return out;
}

// One "held-out K|V" line per tensor: the mean over heads of each recorded held-out
// NMSE method ("" when the calibration lists no heads).
std::string heldout_lines(const json& c) {
    std::string out;
    if (!c.contains("heads") || !c["heads"].is_array() || c["heads"].empty()) return out;
    for (const char* kv : {"k", "v"}) {
        std::map<std::string, std::pair<double, int>> acc;
        for (const json& h : c["heads"]) {
            if (!h.contains(kv) || !h[kv].contains("heldout") || !h[kv]["heldout"].is_object()) continue;
            for (auto it = h[kv]["heldout"].begin(); it != h[kv]["heldout"].end(); ++it)
                if (it.value().is_number()) {
                    acc[it.key()].first += it.value().get<double>();
                    acc[it.key()].second += 1;
                }
        }
        if (acc.empty()) continue;
        std::string s;
        for (const auto& [k, a] : acc) s += fmt::format(" {} {:.4g}", k, a.first / a.second);
        out += fmt::format("held-out {} (mean over {} heads):{}\n", kv[0] == 'k' ? "K" : "V",
                           acc.begin()->second.second, s);
    }
    return out;
}

// The "calibration:" line (tool, time, seed, tokens, dumps, device, seconds, objective) and the
// held-out means; every field is optional, the metadata being free-form JSON.
std::string calibration_lines(const json& c) {
    if (c.empty()) return "calibration: none recorded\n";
    auto get = [&](const json& j, const char* k) { return j.contains(k) ? j[k].dump() : std::string("?"); };
    std::string line =
        fmt::format("calibration: {} {}", c.value("tool", std::string("?")), c.value("version", std::string("?")));
    if (c.contains("time")) line += ", " + c["time"].get<std::string>();
    line += ", seed " + get(c, "seed");
    if (c.contains("tokens") && c["tokens"].is_object())
        line += fmt::format(", tokens train {} holdout {}", get(c["tokens"], "train"), get(c["tokens"], "holdout"));
    if (c.contains("dumps") && c["dumps"].is_array()) line += fmt::format(", {} dump(s)", c["dumps"].size());
    if (c.contains("device") && c["device"].is_string()) line += ", device " + c["device"].get<std::string>();
    if (c.contains("seconds") && c["seconds"].is_number())
        line += fmt::format(", {:.1f} s", c["seconds"].get<double>());
    // Tables written before --objective existed were fitted on the raw error.
    if (c.contains("heads")) {
        const bool named = c.contains("objective") && c["objective"].is_string();
        line += ", objective " + (named ? c["objective"].get<std::string>() : std::string("kv (not recorded)"));
    }
    return line + "\n" + heldout_lines(c);
}

}  // namespace

std::string describe_pattern_table(const std::string& path) {
    const PatternTable t = read_pattern_table(path);
    const SafetensorsFile f = SafetensorsFile::open(path);
    std::string out = table_shape_lines(path, t, f);
    out += fitted_value_lines(t);
    out += calibration_lines(t.calibration);
    const auto findings = pattern_table_findings(t);
    out += findings.empty() ? "findings: none\n"
                            : fmt::format("findings: {} (see pkv validate {})\n", findings.size(), path);
    return out;
}

json describe_pattern_table_json(const std::string& path) {
    const PatternTable t = read_pattern_table(path);
    const SafetensorsFile f = SafetensorsFile::open(path);
    json m = json::object();
    for (const auto& [k, v] : f.metadata()) m[k] = v;
    m[ptable::kMetaCalibration] = t.calibration;
    json tensors = json::object();
    for (const std::string& name : f.names())
        tensors[name] = {{"dtype", f.tensor(name).dtype}, {"shape", f.tensor(name).shape}};
    return {{"kind", "pattern_table"},
            {"file", path},
            {"file_bytes", file_bytes(path)},
            {"metadata", m},
            {"tensors", tensors}};
}

std::vector<std::string> validate_pattern_table(const std::string& path) {
    PatternTable t;
    try {
        t = read_pattern_table(path);
    } catch (const Error& e) {
        return {e.what()};
    }
    std::vector<std::string> out;
    for (const std::string& finding : pattern_table_findings(t)) out.push_back(path + "::" + finding);
    return out;
}

}  // namespace pkv
