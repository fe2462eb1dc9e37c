// KV dump writer and reader (docs/formats/kv_dump.md).
#include "pkv/kvdump/kv_dump.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>

#include "pkv/core/half.h"
#include "pkv/core/memory_budget.h"
#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump_internal.h"

namespace pkv {

// --- CaptureSet --------------------------------------------------------------------------

CaptureSet CaptureSet::parse(const std::string& list) {
    CaptureSet c;
    c.k_pre = c.k_post = c.v = c.q = false;
    size_t pos = 0, n_items = 0;
    while (pos <= list.size()) {
        size_t comma = list.find(',', pos);
        if (comma == std::string::npos) comma = list.size();
        std::string item = list.substr(pos, comma - pos);
        item.erase(0, item.find_first_not_of(" \t"));
        item.erase(item.find_last_not_of(" \t") + 1);
        if (item == "k_pre") c.k_pre = true;
        else if (item == "k_post") c.k_post = true;
        else if (item == "v") c.v = true;
        else if (item == "q") c.q = true;
        else if (!item.empty())
            fail(ErrorCode::invalid_argument, "capture list '{}': unknown item '{}' (expected k_pre, k_post, v, q)",
                 list, item);
        if (!item.empty()) ++n_items;
        pos = comma + 1;
    }
    PKV_CHECK(n_items > 0, invalid_argument, "capture list '{}': expected at least one of k_pre, k_post, v, q", list);
    return c;
}

std::string CaptureSet::to_string() const {
    std::string s;
    auto add = [&](bool on, const char* name) {
        if (!on) return;
        if (!s.empty()) s += ",";
        s += name;
    };
    add(k_pre, "k_pre");
    add(k_post, "k_post");
    add(v, "v");
    add(q, "q");
    return s;
}

namespace kvdump_detail {

std::string json_text(const nlohmann::json& j) {
    // Paths are not always valid UTF-8; replace bad bytes rather than fail the dump.
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::vector<std::string> axes_of(const std::string& dataset) {
    return {"layer", dataset == kvdump::kQ ? "head" : "kv_head", "token", "dim"};
}

bool is_rope_dataset(const std::string& dataset) {
    return dataset == kvdump::kKPre || dataset == kvdump::kKPost || dataset == kvdump::kQ;
}

const char* dim_order_of(const KvDumpHeader& h) {
    return h.hf_dim_order || h.native_half_split ? kvdump::kDimOrderHf : kvdump::kDimOrderGguf;
}

std::string normalize(const std::string& dataset) {
    return dataset.empty() || dataset[0] == '/' ? dataset : "/" + dataset;
}

nlohmann::json parse_json_attr(hid_t obj, const std::string& where, const std::string& name) {
    const std::string text = h5::read_attr_string(obj, where, name);
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        fail(ErrorCode::data_loss, "{}: attribute '{}': expected JSON text, got a parse error: {}", where, name,
             e.what());
    }
}

nlohmann::json parse_record_attr(hid_t obj, const std::string& where, const std::string& name) {
    nlohmann::json j = parse_json_attr(obj, where, name);
    PKV_CHECK(j.is_object(), data_loss, "{}: attribute '{}': expected a JSON object, got {}", where, name,
              j.type_name());
    if (name != kvdump::kAttrModel) return j;
    // The fields readers use, with the types the spec gives them: a record that has one
    // of another type is refused here rather than deep inside a command.
    auto bad = [&](const char* key, const char* want) {
        std::string got = j[key].dump();
        if (got.size() > 40) got = got.substr(0, 40) + "...";
        fail(ErrorCode::data_loss, "{}: attribute '{}': field '{}': expected {}, got {}", where, name, key, want, got);
    };
    for (const char* k : kModelIntFields) {
        if (!j.contains(k)) continue;
        if (!j[k].is_number_integer() || j[k].get<int64_t>() < 0 ||
            j[k].get<int64_t>() > std::numeric_limits<int32_t>::max())
            bad(k, "an integer in [0, 2^31)");
    }
    for (const char* k : kModelNumberFields)
        if (j.contains(k) && !j[k].is_number()) bad(k, "a number");
    for (const char* k : kModelStringFields)
        if (j.contains(k) && !j[k].is_string()) bad(k, "a string");
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_string()) bad("rope_scaling", "a string");
    if (j.contains("rope_type") && j["rope_type"] != "norm" && j["rope_type"] != "neox")
        bad("rope_type", "'norm' or 'neox'");
    if (j.contains("rope_freq_factors") && !j["rope_freq_factors"].is_null()) {
        const auto& f = j["rope_freq_factors"];
        const bool ok = f.is_array() && std::all_of(f.begin(), f.end(), [](const nlohmann::json& x) {
                            return x.is_number() && x.get<double>() > 0.0 && std::isfinite(x.get<double>());
                        });
        if (!ok) bad("rope_freq_factors", "null or an array of positive numbers");
    }
    return j;
}

std::string shape_text(const std::vector<uint64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

bool parse_version(const std::string& v, int* major, int* minor) {
    const size_t dot = v.find('.');
    if (dot == std::string::npos || dot == 0 || dot + 1 >= v.size()) return false;
    // At most 6 digits a part: anything longer is not a version pkv wrote, and would
    // overflow an int.
    if (dot > 6 || v.size() - dot - 1 > 6) return false;
    for (size_t i = 0; i < v.size(); ++i)
        if (i != dot && (v[i] < '0' || v[i] > '9')) return false;
    *major = std::stoi(v.substr(0, dot));
    *minor = std::stoi(v.substr(dot + 1));
    return true;
}

void gguf_to_hf_order(const float* src, float* dst, int head_dim) {
    const int half = head_dim / 2;
    for (int i = 0; i < half; ++i) {
        dst[i] = src[2 * i];
        dst[i + half] = src[2 * i + 1];
    }
}

}  // namespace kvdump_detail

using namespace kvdump_detail;

// --- reader ------------------------------------------------------------------------------

struct KvDumpReader::Impl {
    h5::File f;
    std::vector<int32_t> layers;
    std::vector<KvDumpLayerInfo> layer_info;
    int n_layer_model = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
    int64_t n_tokens = 0;
    std::string dim_order;
    nlohmann::json model, provenance, summary;
    h5::Id f16;
    ShardFiles shard_files;
    std::map<std::string, ActivationData> open;

    std::vector<int32_t> token_column(const char* name) const {
        {
            // The shape first: it says more about a wrong column than its storage does.
            h5::Id d = h5::open_dataset(f, name);
            const auto shape = h5::shape_of(f, d.get(), name);
            PKV_CHECK(shape.size() == 1 && static_cast<int64_t>(shape[0]) == n_tokens, data_loss,
                      "{}: expected shape [T={}], got {}", f.where(name), n_tokens, shape_text(shape));
        }
        return h5::read_1d_i32(f, name);
    }
};

KvDumpReader::KvDumpReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    m.f = h5::File::open_read(path);
    const hid_t root = m.f.id();
    const std::string where = m.f.where("/");
    const std::string format = h5::read_attr_string(root, where, kvdump::kAttrFormat);
    PKV_CHECK(format == kvdump::kFormat, data_loss, "{}: expected format '{}', got '{}'", where, kvdump::kFormat,
              format);
    const std::string version = h5::read_attr_string(root, where, kvdump::kAttrFormatVersion);
    int major = 0, minor = 0;
    PKV_CHECK(parse_version(version, &major, &minor) && major == kSupportedMajor, unsupported,
              "{}: expected format_version {}.x, got '{}'", where, kSupportedMajor, version);
    auto bounded = [&](const char* name, int64_t hi) {
        const int64_t v = h5::read_attr_int(root, where, name);
        PKV_CHECK(v >= 1 && v <= hi, data_loss, "{}: attribute '{}': expected an integer in [1, {}], got {}", where,
                  name, hi, v);
        return v;
    };
    m.n_layer_model = static_cast<int>(bounded(kAttrNLayer, kMaxLayers));
    m.n_head = static_cast<int>(bounded(kAttrNHead, kMaxHeads));
    m.n_head_kv = static_cast<int>(bounded(kAttrNHeadKv, kMaxHeads));
    PKV_CHECK(m.n_head % m.n_head_kv == 0, data_loss, "{}: expected n_head ({}) to be a multiple of n_head_kv ({})",
              where, m.n_head, m.n_head_kv);
    m.head_dim = static_cast<int>(bounded(kAttrHeadDim, kMaxHeadDim));
    m.n_tokens = bounded(kAttrNTokens, kMaxTokens);
    m.dim_order = h5::read_attr_string(root, where, kvdump::kAttrDimOrder);
    PKV_CHECK(m.dim_order == kDimOrderGguf || m.dim_order == kDimOrderHf, data_loss,
              "{}: attribute '{}': expected '{}' or '{}', got '{}'", where, kvdump::kAttrDimOrder, kDimOrderGguf,
              kDimOrderHf, m.dim_order);
    m.model = parse_record_attr(root, where, kvdump::kAttrModel);
    m.provenance = parse_record_attr(root, where, kvdump::kAttrProvenance);
    if (h5::has_attr(root, kAttrSummary)) m.summary = parse_record_attr(root, where, kAttrSummary);
    m.layers = h5::read_1d_i32(m.f, kvdump::kLayers);
    PKV_CHECK(!m.layers.empty() && static_cast<int64_t>(m.layers.size()) <= kMaxLayers, data_loss,
              "{}: expected 1 to {} layers, got {}", m.f.where(kvdump::kLayers), kMaxLayers, m.layers.size());
    for (size_t i = 0; i < m.layers.size(); ++i)
        PKV_CHECK(m.layers[i] >= 0 && m.layers[i] < m.n_layer_model && (i == 0 || m.layers[i] > m.layers[i - 1]),
                  data_loss, "{}: expected ascending layers in [0, n_layer = {}), got {} at index {}",
                  m.f.where(kvdump::kLayers), m.n_layer_model, m.layers[i], i);
    m.layer_info = read_layer_info(m.f, requires_layer_info(major, minor), m.model, m.layers, m.n_head_kv, m.head_dim);
    m.f16 = h5::make_f16_type();

    const std::string job = joined_job(m.f);
    for (const char* name : kActivations) {
        if (!h5::exists(m.f, name)) continue;
        ActivationData d(m.f, name, job, m.shard_files);
        const auto shape = h5::shape_of(m.f, d.id(), name);
        PKV_CHECK(shape.size() == 4, data_loss, "{}: expected rank 4, got {}", m.f.where(name), shape.size());
        const int H = std::string(name) == kvdump::kQ ? m.n_head : m.n_head_kv;
        const std::vector<uint64_t> want = {m.layers.size(), static_cast<uint64_t>(H),
                                            static_cast<uint64_t>(m.n_tokens), static_cast<uint64_t>(m.head_dim)};
        PKV_CHECK(shape == want, data_loss, "{}: expected shape [L={}, H={}, T={}, D={}], got {}", m.f.where(name),
                  want[0], want[1], want[2], want[3], shape_text(shape));
        h5::Id type = h5::type_of(m.f, d.id(), name);
        PKV_CHECK(h5::is_f16_type(type.get()), data_loss, "{}: expected dtype float16, got {}", m.f.where(name),
                  h5::type_name(type.get()));
        d.check_stored();
        m.open.emplace(name, std::move(d));
    }
}

KvDumpReader::~KvDumpReader() = default;

const std::string& KvDumpReader::path() const { return impl_->f.path(); }
int KvDumpReader::n_layers() const { return static_cast<int>(impl_->layers.size()); }
const std::vector<int32_t>& KvDumpReader::layers() const { return impl_->layers; }
const std::vector<KvDumpLayerInfo>& KvDumpReader::layer_info() const { return impl_->layer_info; }
int KvDumpReader::n_layer_model() const { return impl_->n_layer_model; }
int KvDumpReader::n_head() const { return impl_->n_head; }
int KvDumpReader::n_head_kv() const { return impl_->n_head_kv; }
int KvDumpReader::head_dim() const { return impl_->head_dim; }
int64_t KvDumpReader::n_tokens() const { return impl_->n_tokens; }
bool KvDumpReader::has(const std::string& dataset) const { return impl_->open.count(normalize(dataset)) > 0; }

std::vector<float> KvDumpReader::read_head(const std::string& dataset, int slot, int head) const {
    return read_head(dataset, slot, head, 0, impl_->n_tokens);
}

std::vector<float> KvDumpReader::read_head(const std::string& dataset, int slot, int head, int64_t t0,
                                           int64_t count) const {
    const Impl& m = *impl_;
    const std::string name = normalize(dataset);
    const auto it = m.open.find(name);
    PKV_CHECK(it != m.open.end(), not_found, "{}: missing dataset (not captured in this dump)", m.f.where(name));
    const int H = name == kvdump::kQ ? m.n_head : m.n_head_kv;
    PKV_CHECK(slot >= 0 && slot < n_layers(), out_of_range, "{}: layer slot {} outside [0, {})", m.f.where(name), slot,
              n_layers());
    PKV_CHECK(head >= 0 && head < H, out_of_range, "{}: head {} outside [0, {})", m.f.where(name), head, H);
    PKV_CHECK(t0 >= 0 && count >= 0 && t0 + count <= m.n_tokens, out_of_range, "{}: tokens [{}, {}) outside [0, {})",
              m.f.where(name), t0, t0 + count, m.n_tokens);
    const uint64_t T = static_cast<uint64_t>(count), D = static_cast<uint64_t>(m.head_dim);
    // float16 as read plus the float copy returned.
    check_memory_budget(checked_mul(T * D, 6, m.f.where(name)), m.f.where(name));
    std::vector<uint16_t> raw(T * D);
    it->second.read(static_cast<uint64_t>(slot), static_cast<uint64_t>(head), static_cast<uint64_t>(t0), T, m.f16.get(),
                    raw.data());
    std::vector<float> out(raw.size());
    half_to_float_n(raw.data(), out.data(), raw.size());
    return out;
}

KvDumpReader::Sequences KvDumpReader::sequences() const {
    const Impl& m = *impl_;
    Sequences s;
    s.start = h5::read_1d_i64(m.f, kvdump::kSeqStart);
    s.length = h5::read_1d_i32(m.f, kvdump::kSeqLength);
    PKV_CHECK(s.start.size() == s.length.size(), data_loss, "{}: expected {} entries (as {}), got {}",
              m.f.where(kvdump::kSeqLength), s.start.size(), kvdump::kSeqStart, s.length.size());
    PKV_CHECK(!s.start.empty(), data_loss, "{}: expected at least one sequence, got none",
              m.f.where(kvdump::kSeqStart));
    int64_t next = 0;
    for (size_t i = 0; i < s.start.size(); ++i) {
        PKV_CHECK(s.start[i] == next, data_loss, "{}: expected sequence {} to start at token {}, got {}",
                  m.f.where(kvdump::kSeqStart), i, next, s.start[i]);
        PKV_CHECK(s.length[i] > 0 && s.length[i] <= m.n_tokens - next, data_loss,
                  "{}: expected sequence {} to hold 1 to {} tokens (the rest of n_tokens {}), got {}",
                  m.f.where(kvdump::kSeqLength), i, m.n_tokens - next, m.n_tokens, s.length[i]);
        next += s.length[i];
    }
    PKV_CHECK(next == m.n_tokens, data_loss, "{}: expected sequences covering n_tokens = {}, got {}",
              m.f.where(kvdump::kSeqLength), m.n_tokens, next);
    return s;
}

std::vector<int32_t> KvDumpReader::token_ids() const { return impl_->token_column(kvdump::kTokenId); }
std::vector<int32_t> KvDumpReader::token_seq() const { return impl_->token_column(kvdump::kTokenSeq); }
std::vector<int32_t> KvDumpReader::token_pos() const { return impl_->token_column(kvdump::kTokenPos); }
nlohmann::json KvDumpReader::model() const { return impl_->model; }
nlohmann::json KvDumpReader::provenance() const { return impl_->provenance; }
nlohmann::json KvDumpReader::summary() const { return impl_->summary; }
std::string KvDumpReader::dim_order() const { return impl_->dim_order; }

}  // namespace pkv
