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

// --- writer ------------------------------------------------------------------------------

namespace {

struct Activation {
    const char* name;
    bool on = false;
    int heads = 0;
    h5::Id dset;
};

uint64_t next_prime(uint64_t n) {
    auto prime = [](uint64_t x) {
        if (x < 2) return false;
        for (uint64_t d = 2; d * d <= x; ++d)
            if (x % d == 0) return false;
        return true;
    };
    while (!prime(n)) ++n;
    return n;
}

}  // namespace

struct KvDumpWriter::Impl {
    KvDumpHeader h;
    h5::File f;
    h5::Id f16;
    std::array<Activation, 4> acts;  // k_pre, k_post, v, q
    h5::Id tok_id, tok_pos, tok_seq, tok_nll;
    std::vector<uint16_t> buf;
    std::vector<float> row;
    bool finished = false;

    /// A joined dump's activation: each shard's tokens are that dataset of the shard.
    void create_virtual_activation(Activation& a) {
        const uint64_t L = h.layers.size(), H = static_cast<uint64_t>(a.heads), D = static_cast<uint64_t>(h.head_dim);
        std::vector<h5::VirtualMapping> maps;
        for (const KvDumpShardRef& s : h.shards)
            maps.push_back({s.file,
                            a.name,
                            {0, 0, static_cast<uint64_t>(s.token_start), 0},
                            {L, H, static_cast<uint64_t>(s.n_tokens), D}});
        // NaN where a shard is missing, for readers that go through HDF5's mapping (h5py):
        // never a plausible value.
        const uint16_t nan16 = 0x7e00;
        a.dset = h5::create_virtual(f, a.name, f16.get(), {L, H, static_cast<uint64_t>(h.n_tokens), D}, maps, &nan16);
        write_activation_attrs(a);
    }

    void write_activation_attrs(Activation& a) {
        h5::write_attr_strings(a.dset.get(), f.where(a.name), kvdump::kAttrAxes, axes_of(a.name));
        if (is_rope_dataset(a.name))
            h5::write_attr_string(a.dset.get(), f.where(a.name), kvdump::kAttrDimOrder, dim_order_of(h));
    }

    void create_activation(Activation& a) {
        if (!h.shards.empty()) return create_virtual_activation(a);
        const int L = static_cast<int>(h.layers.size());
        const uint64_t T = static_cast<uint64_t>(h.n_tokens), D = static_cast<uint64_t>(h.head_dim);
        const uint64_t Tc = static_cast<uint64_t>(std::min<int64_t>(h.chunk_tokens, h.n_tokens));
        const hsize_t dims[4] = {static_cast<hsize_t>(L), static_cast<hsize_t>(a.heads), T, D};
        const hsize_t chunk[4] = {1, 1, Tc, D};
        h5::Id space(H5Screate_simple(4, dims, nullptr));
        h5::Id dcpl(H5Pcreate(H5P_DATASET_CREATE));
        H5Pset_chunk(dcpl.get(), 4, chunk);
        H5Pset_shuffle(dcpl.get());
        H5Pset_deflate(dcpl.get(), 4);
        // Every element is written; filling never-written chunks first would only cost time.
        H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER);
        // Data arrive one token window at a time for every (layer, head), so each write
        // touches L*H chunks and a window may end mid-chunk. The cache must keep the
        // partly written chunk of every (layer, head) plus the next one, or HDF5 would
        // compress, evict, re-read and re-compress them for every window.
        const uint64_t chunk_bytes = Tc * D * 2;
        const uint64_t hot = static_cast<uint64_t>(L) * static_cast<uint64_t>(a.heads) * 2;
        const uint64_t nbytes = std::clamp<uint64_t>(hot * chunk_bytes, 1u << 20, 1ull << 30);
        const uint64_t nslots = next_prime(std::max<uint64_t>(521, hot * 10));
        h5::Id dapl(H5Pcreate(H5P_DATASET_ACCESS));
        // w0 = 1: chunks already fully written leave the cache first.
        H5Pset_chunk_cache(dapl.get(), nslots, nbytes, 1.0);
        a.dset = h5::Id(H5Dcreate2(f.id(), a.name, f16.get(), space.get(), H5P_DEFAULT, dcpl.get(), dapl.get()));
        if (!a.dset) h5::fail_h5(ErrorCode::io, f.where(a.name), "cannot create dataset");
        write_activation_attrs(a);
    }
};

KvDumpWriter::KvDumpWriter(const std::string& path, const KvDumpHeader& header) : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    m.h = header;
    const KvDumpHeader& h = m.h;
    PKV_CHECK(h.n_head > 0 && h.n_head_kv > 0 && h.head_dim > 0, invalid_argument,
              "{}: kv dump: expected positive head counts and head_dim, got n_head {}, n_head_kv {}, head_dim {}", path,
              h.n_head, h.n_head_kv, h.head_dim);
    PKV_CHECK(h.n_tokens > 0, invalid_argument, "{}: kv dump: expected at least one token, got {}", path, h.n_tokens);
    PKV_CHECK(!h.layers.empty(), invalid_argument, "{}: kv dump: expected at least one layer", path);
    for (size_t i = 0; i < h.layers.size(); ++i) {
        PKV_CHECK(h.layers[i] >= 0 && h.layers[i] < h.n_layer_model, invalid_argument,
                  "{}: kv dump: layer {} out of range [0, {})", path, h.layers[i], h.n_layer_model);
        PKV_CHECK(i == 0 || h.layers[i] > h.layers[i - 1], invalid_argument,
                  "{}: kv dump: layers must be ascending, got {} after {}", path, h.layers[i], h.layers[i - 1]);
    }
    PKV_CHECK(h.capture.k_pre || h.capture.k_post || h.capture.v || h.capture.q, invalid_argument,
              "{}: kv dump: nothing to capture", path);
    PKV_CHECK(!h.hf_dim_order || h.head_dim % 2 == 0, invalid_argument,
              "{}: kv dump: hf dim order needs an even head_dim, got {}", path, h.head_dim);
    PKV_CHECK(h.chunk_tokens > 0, invalid_argument, "{}: kv dump: expected chunk_tokens > 0, got {}", path,
              h.chunk_tokens);
    check_header_layer_info(path, h);
    int64_t next = 0;
    for (const KvDumpShardRef& r : h.shards) {
        PKV_CHECK(r.token_start == next && r.n_tokens > 0 && !r.file.empty(), invalid_argument,
                  "{}: kv dump: shard '{}' holds tokens [{}, {}), expected a non-empty range from {}", path, r.file,
                  r.token_start, r.token_start + r.n_tokens, next);
        next += r.n_tokens;
    }
    PKV_CHECK(h.shards.empty() || (next == h.n_tokens && !h.job.empty()), invalid_argument,
              "{}: kv dump: shards cover {} of {} tokens (job '{}')", path, next, h.n_tokens, h.job);

    m.f = h5::File::create(path, !h.shards.empty());
    m.f16 = h5::make_f16_type();
    const hid_t root = m.f.id();
    const std::string where = m.f.where("/");
    h5::write_attr_string(root, where, kvdump::kAttrFormat, kvdump::kFormat);
    h5::write_attr_string(root, where, kvdump::kAttrFormatVersion,
                          h.shards.empty() ? kvdump::kFormatVersion : kvdump::kFormatVersionJoined);
    h5::write_attr_string(root, where, kvdump::kAttrModel, json_text(h.model));
    h5::write_attr_string(root, where, kvdump::kAttrProvenance, json_text(h.provenance));
    h5::write_attr_int(root, where, kAttrNLayer, h.n_layer_model);
    h5::write_attr_int(root, where, kAttrNHead, h.n_head);
    h5::write_attr_int(root, where, kAttrNHeadKv, h.n_head_kv);
    h5::write_attr_int(root, where, kAttrHeadDim, h.head_dim);
    h5::write_attr_int(root, where, kAttrNTokens, h.n_tokens);
    h5::write_attr_string(root, where, kvdump::kAttrDimOrder, dim_order_of(h));
    h5::write_attr_string(root, where, kAttrCapture, h.capture.to_string());
    if (!h.shards.empty()) {
        nlohmann::json parts = nlohmann::json::array();
        for (const KvDumpShardRef& r : h.shards)
            parts.push_back({{"file", r.file}, {"token_start", r.token_start}, {"n_tokens", r.n_tokens}});
        h5::write_attr_string(root, where, kAttrShards, json_text({{"job", h.job}, {"parts", parts}}));
    }
    if (!h.shard.is_null()) h5::write_attr_string(root, where, kAttrShard, json_text(h.shard));

    m.acts = {Activation{kvdump::kKPre, h.capture.k_pre, h.n_head_kv, {}},
              Activation{kvdump::kKPost, h.capture.k_post, h.n_head_kv, {}},
              Activation{kvdump::kV, h.capture.v, h.n_head_kv, {}}, Activation{kvdump::kQ, h.capture.q, h.n_head, {}}};
    for (auto& a : m.acts)
        if (a.on) m.create_activation(a);

    h5::Id layers = h5::create_1d(m.f, kvdump::kLayers, H5T_STD_I32LE, h.layers.size());
    h5::write_1d(m.f, layers.get(), kvdump::kLayers, H5T_NATIVE_INT32, 0, h.layers.size(), h.layers.data());
    layers.close_checked(m.f.where(kvdump::kLayers));
    write_layer_info(m.f, h);

    h5::create_group(m.f, "/tokens");
    const uint64_t T = static_cast<uint64_t>(h.n_tokens);
    m.tok_id = h5::create_1d(m.f, kvdump::kTokenId, H5T_STD_I32LE, T);
    m.tok_pos = h5::create_1d(m.f, kvdump::kTokenPos, H5T_STD_I32LE, T);
    m.tok_seq = h5::create_1d(m.f, kvdump::kTokenSeq, H5T_STD_I32LE, T);
    m.tok_nll = h5::create_1d(m.f, kvdump::kTokenNll, H5T_IEEE_F32LE, T);
}

KvDumpWriter::~KvDumpWriter() = default;

void KvDumpWriter::write_tokens(int64_t t0, const std::vector<int32_t>& id, const std::vector<int32_t>& pos,
                                const std::vector<int32_t>& seq, const std::vector<float>& nll) {
    Impl& m = *impl_;
    PKV_ASSERT(!m.finished);
    const size_t n = id.size();
    PKV_CHECK(pos.size() == n && seq.size() == n && nll.size() == n, internal,
              "{}: write_tokens: expected equal lengths, got id {}, pos {}, seq {}, nll {}", m.f.where("/tokens"), n,
              pos.size(), seq.size(), nll.size());
    PKV_CHECK(t0 >= 0 && t0 + static_cast<int64_t>(n) <= m.h.n_tokens, internal,
              "{}: write_tokens: tokens [{}, {}) outside [0, {})", m.f.where("/tokens"), t0, t0 + n, m.h.n_tokens);
    const uint64_t o = static_cast<uint64_t>(t0);
    h5::write_1d(m.f, m.tok_id.get(), kvdump::kTokenId, H5T_NATIVE_INT32, o, n, id.data());
    h5::write_1d(m.f, m.tok_pos.get(), kvdump::kTokenPos, H5T_NATIVE_INT32, o, n, pos.data());
    h5::write_1d(m.f, m.tok_seq.get(), kvdump::kTokenSeq, H5T_NATIVE_INT32, o, n, seq.data());
    h5::write_1d(m.f, m.tok_nll.get(), kvdump::kTokenNll, H5T_NATIVE_FLOAT, o, n, nll.data());
}

void KvDumpWriter::write_layer(int slot, int64_t t0, int n_tokens, const float* k_pre, const float* k_post,
                               const float* v, const float* q) {
    Impl& m = *impl_;
    PKV_ASSERT(!m.finished);
    PKV_CHECK(m.h.shards.empty(), internal, "{}: write_layer: a joined dump's activations are in its shards",
              m.f.path());
    PKV_CHECK(slot >= 0 && slot < static_cast<int>(m.h.layers.size()), internal,
              "{}: write_layer: slot {} outside [0, {})", m.f.path(), slot, m.h.layers.size());
    PKV_CHECK(t0 >= 0 && n_tokens > 0 && t0 + n_tokens <= m.h.n_tokens, internal,
              "{}: write_layer: tokens [{}, {}) outside [0, {})", m.f.path(), t0, t0 + n_tokens, m.h.n_tokens);
    const std::array<const float*, 4> src = {k_pre, k_post, v, q};
    const size_t D = static_cast<size_t>(m.h.head_dim), n = static_cast<size_t>(n_tokens);
    m.row.resize(D);
    for (size_t i = 0; i < m.acts.size(); ++i) {
        Activation& a = m.acts[i];
        if (!a.on) continue;
        PKV_CHECK(src[i] != nullptr, internal, "{}: write_layer: no data for a captured dataset", m.f.where(a.name));
        const size_t H = static_cast<size_t>(a.heads);
        const bool permute = m.h.hf_dim_order && !m.h.native_half_split && is_rope_dataset(a.name);
        // Model rows are [token][head][dim]; the file wants [head][token][dim].
        m.buf.resize(H * n * D);
        for (size_t t = 0; t < n; ++t)
            for (size_t hh = 0; hh < H; ++hh) {
                const float* s = src[i] + (t * H + hh) * D;
                if (permute) {
                    gguf_to_hf_order(s, m.row.data(), static_cast<int>(D));
                    s = m.row.data();
                }
                float_to_half_n(s, m.buf.data() + (hh * n + t) * D, D);
            }
        h5::write_block(m.f, a.dset.get(), a.name, m.f16.get(),
                        {static_cast<uint64_t>(slot), 0, static_cast<uint64_t>(t0), 0}, {1, H, n, D}, m.buf.data());
    }
}

void KvDumpWriter::finish(const std::vector<int64_t>& seq_start, const std::vector<int32_t>& seq_length,
                          const nlohmann::json& summary) {
    Impl& m = *impl_;
    PKV_ASSERT(!m.finished);
    PKV_CHECK(seq_start.size() == seq_length.size(), internal,
              "{}: finish: expected equal lengths, got start {}, length {}", m.f.where("/sequences"), seq_start.size(),
              seq_length.size());
    int64_t covered = 0;
    for (int32_t l : seq_length) covered += l;
    PKV_CHECK(covered == m.h.n_tokens, internal, "{}: finish: sequences cover {} tokens, expected {}",
              m.f.where("/sequences"), covered, m.h.n_tokens);

    h5::create_group(m.f, "/sequences");
    const size_t S = seq_start.size();
    h5::Id start = h5::create_1d(m.f, kvdump::kSeqStart, H5T_STD_I64LE, S);
    h5::write_1d(m.f, start.get(), kvdump::kSeqStart, H5T_NATIVE_INT64, 0, S, seq_start.data());
    h5::Id length = h5::create_1d(m.f, kvdump::kSeqLength, H5T_STD_I32LE, S);
    h5::write_1d(m.f, length.get(), kvdump::kSeqLength, H5T_NATIVE_INT32, 0, S, seq_length.data());

    h5::create_group(m.f, "/sources");
    const auto& src = m.h.sources;
    std::vector<std::string> paths, shas;
    std::vector<int64_t> bytes, tokens;
    for (const auto& s : src) {
        paths.push_back(s.path);
        shas.push_back(s.sha256);
        bytes.push_back(s.bytes);
        tokens.push_back(s.tokens);
    }
    h5::Id vstr = h5::make_vlen_string_type();
    h5::Id d_path = h5::create_1d(m.f, kvdump::kSourcePath, vstr.get(), src.size());
    h5::write_1d_strings(m.f, d_path.get(), kvdump::kSourcePath, paths);
    h5::Id d_sha = h5::create_1d(m.f, kvdump::kSourceSha256, vstr.get(), src.size());
    h5::write_1d_strings(m.f, d_sha.get(), kvdump::kSourceSha256, shas);
    h5::Id d_bytes = h5::create_1d(m.f, kvdump::kSourceBytes, H5T_STD_I64LE, src.size());
    h5::write_1d(m.f, d_bytes.get(), kvdump::kSourceBytes, H5T_NATIVE_INT64, 0, src.size(), bytes.data());
    h5::Id d_tokens = h5::create_1d(m.f, kvdump::kSourceTokens, H5T_STD_I64LE, src.size());
    h5::write_1d(m.f, d_tokens.get(), kvdump::kSourceTokens, H5T_NATIVE_INT64, 0, src.size(), tokens.data());

    h5::write_attr_string(m.f.id(), m.f.where("/"), kAttrSummary, json_text(summary));

    // Closing datasets writes their cached chunks: a full disk shows up here or in the flush.
    for (auto* d :
         {&start, &length, &d_path, &d_sha, &d_bytes, &d_tokens, &m.tok_id, &m.tok_pos, &m.tok_seq, &m.tok_nll})
        d->close_checked(m.f.path());
    for (auto& a : m.acts) a.dset.close_checked(m.f.where(a.name));
    m.f16.reset();
    m.f.close();
    m.finished = true;
}

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
