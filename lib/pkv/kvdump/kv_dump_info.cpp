// describe_kv_dump, kv_dump_metadata_json and is_hdf5_file: read-only views of a dump.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/kvdump/kv_dump_internal.h"

namespace pkv {

using namespace kvdump_detail;

namespace {

uint64_t file_size(const std::string& path) {
    struct stat st {};
    return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

std::string human_bytes(double b) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024.0 && u < 4) b /= 1024.0, ++u;
    return u == 0 ? fmt::format("{:.0f} B", b) : fmt::format("{:.1f} {}", b, units[u]);
}

/// Every object the spec names, in the order a reader meets them.
const char* const kAllDatasets[] = {
    kKPre,         kKPost,       kV,           kQ,        kLayers,   kLayerWindow, kLayerRopeBase, kLayerNHeadKv,
    kLayerHeadDim, kTokenId,     kTokenPos,    kTokenSeq, kTokenNll, kSeqStart,    kSeqLength,     kSourcePath,
    kSourceSha256, kSourceBytes, kSourceTokens};

/// Shape, dtype and storage of a dataset; for a joined dump's activation, the storage of
/// its shards (chunks and filters of the first, bytes of all) and their files ("shards").
nlohmann::json dataset_json(const h5::File& f, const std::string& name, const std::string& job, ShardFiles& files) {
    h5::Id d = h5::open_dataset(f, name);
    h5::Id t = h5::type_of(f, d.get(), name);
    nlohmann::json j;
    j["shape"] = h5::shape_of(f, d.get(), name);
    j["dtype"] = h5::type_name(t.get());
    std::vector<uint64_t> chunks = h5::chunks_of(d.get());
    j["filters"] = h5::filters_of(d.get());
    j["storage_bytes"] = h5::storage_bytes(d.get());
    if (h5::is_virtual(d.get())) {
        const ActivationData a(f, name, job, files);
        chunks = a.chunks();
        j["filters"] = a.filters();
        j["storage_bytes"] = a.storage_bytes();
        j["shards"] = a.shard_files();
    }
    j["chunks"] = chunks.empty() ? nlohmann::json(nullptr) : nlohmann::json(chunks);
    const std::string where = f.where(name);
    if (h5::has_attr(d.get(), kAttrAxes)) j["axes"] = h5::read_attr_strings(d.get(), where, kAttrAxes);
    if (h5::has_attr(d.get(), kAttrDimOrder)) j["dim_order"] = h5::read_attr_string(d.get(), where, kAttrDimOrder);
    return j;
}

// KvDumpReader::layer_info as JSON; null when the file lacks what it needs (the layers,
// head geometry, a version of major 1), which the validator reports.
nlohmann::json layer_info_json(const h5::File& f, const nlohmann::json& j) {
    int major = 0, minor = 0;
    const bool known =
        parse_version(j[kAttrFormatVersion].get<std::string>(), &major, &minor) && major == kSupportedMajor;
    if (!known || !j.contains(kAttrNHeadKv) || !j.contains(kAttrHeadDim) || !j["datasets"].contains(kLayers))
        return nullptr;
    const auto layers = h5::read_1d_i32(f, kLayers);
    const auto info = read_layer_info(f, requires_layer_info(major, minor), j[kAttrModel], layers,
                                      static_cast<int>(j[kAttrNHeadKv].get<int64_t>()),
                                      static_cast<int>(j[kAttrHeadDim].get<int64_t>()));
    nlohmann::json out = nlohmann::json::array();
    for (const auto& li : info)
        out.push_back({{"layer", li.layer},
                       {"window", li.window},
                       {"rope_base", li.rope_base},
                       {"n_head_kv", li.n_head_kv},
                       {"head_dim", li.head_dim}});
    return out;
}

}  // namespace

bool is_hdf5_file(const std::string& path) {
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    std::ifstream in(path, std::ios::binary);
    char buf[8] = {0};
    return in.read(buf, 8) && std::memcmp(buf, sig, 8) == 0;
}

nlohmann::json kv_dump_metadata_json(const std::string& path) {
    h5::File f = h5::File::open_read(path);
    const hid_t root = f.id();
    const std::string where = f.where("/");
    nlohmann::json j;
    j["file"] = path;
    j["file_bytes"] = file_size(path);
    // format and version first: a file that is not a dump should fail here, clearly.
    j[kAttrFormat] = h5::read_attr_string(root, where, kAttrFormat);
    j[kAttrFormatVersion] = h5::read_attr_string(root, where, kAttrFormatVersion);
    for (const char* k : {kAttrNLayer, kAttrNHead, kAttrNHeadKv, kAttrHeadDim, kAttrNTokens})
        if (h5::has_attr(root, k)) j[k] = h5::read_attr_int(root, where, k);
    for (const char* k : {kAttrDimOrder, kAttrCapture})
        if (h5::has_attr(root, k)) j[k] = h5::read_attr_string(root, where, k);
    for (const char* k : {kAttrModel, kAttrProvenance, kAttrSummary})
        j[k] = h5::has_attr(root, k) ? parse_json_attr(root, where, k) : nlohmann::json(nullptr);
    for (const char* k : {kAttrShards, kAttrShard})
        if (h5::has_attr(root, k)) j[k] = parse_record_attr(root, where, k);
    const std::string job = joined_job(f);
    ShardFiles files;
    nlohmann::json ds = nlohmann::json::object();
    for (const char* name : kAllDatasets)
        if (h5::exists(f, name)) ds[name] = dataset_json(f, name, job, files);
    j["datasets"] = ds;
    j["layer_info"] = layer_info_json(f, j);
    return j;
}

namespace {

// o[k] as text for the summary (strings unquoted, other values as JSON); dflt when o is
// not an object or lacks k or holds null there.
std::string field_text(const nlohmann::json& o, const char* k, const std::string& dflt = "?") {
    if (!o.is_object() || !o.contains(k) || o[k].is_null()) return dflt;
    return o[k].is_string() ? o[k].get<std::string>() : o[k].dump();
}

// "layers:" line: how many layers are stored, with the first 16 indices.
std::string layers_line(const std::string& path, const nlohmann::json& j) {
    size_t n_stored = 0;
    std::string layer_list;
    if (j["datasets"].contains(kLayers)) {
        h5::File f = h5::File::open_read(path);
        const auto layers = h5::read_1d_i32(f, kLayers);
        n_stored = layers.size();
        for (size_t i = 0; i < layers.size() && i < 16; ++i) layer_list += (i ? "," : "") + std::to_string(layers[i]);
        if (layers.size() > 16) layer_list += ",...";
    }
    return fmt::format("  layers:      {} of {} stored ({})\n", n_stored, field_text(j, kAttrNLayer), layer_list);
}

// "geometry:" line: the stored layers grouped by attention geometry, local (sliding-window)
// groups first: "15 local (window 512, RoPE base 10000), 3 global (RoPE base 1000000)",
// or "all 30 layers global (RoPE base 100000)"; "" without layer_info.
std::string geometry_line(const nlohmann::json& j) {
    const auto& info = j["layer_info"];
    if (!info.is_array() || info.empty()) return {};
    struct Group {
        int64_t window;
        double base;
        size_t n;
    };
    std::vector<Group> groups;
    for (const auto& li : info) {
        const int64_t w = li["window"].get<int64_t>();
        const double b = li["rope_base"].get<double>();
        auto it =
            std::find_if(groups.begin(), groups.end(), [&](const Group& g) { return g.window == w && g.base == b; });
        if (it == groups.end()) groups.push_back({w, b, 1});
        else ++it->n;
    }
    std::stable_partition(groups.begin(), groups.end(), [](const Group& g) { return g.window > 0; });
    auto describe = [](const Group& g) {
        const std::string base = g.base > 0.0 ? fmt::format("RoPE base {}", g.base) : "RoPE base unknown";
        return g.window > 0 ? fmt::format("window {}, {}", g.window, base) : base;
    };
    std::string text;
    if (groups.size() == 1)
        text = fmt::format("all {} layer{} {} ({})", groups[0].n, groups[0].n == 1 ? "" : "s",
                           groups[0].window > 0 ? "local" : "global", describe(groups[0]));
    else
        for (const Group& g : groups)
            text += fmt::format("{}{} {} ({})", text.empty() ? "" : ", ", g.n, g.window > 0 ? "local" : "global",
                                describe(g));
    const bool derived = !j["datasets"].contains(kLayerWindow);
    return fmt::format("  geometry:    {}{}\n", text, derived ? " (format 1.0: from the model record)" : "");
}

// "tokens:" line: the token count and the number and length range of the sequences.
std::string tokens_line(const std::string& path, const nlohmann::json& j) {
    std::string seq_text = "? sequences";
    if (j["datasets"].contains(kSeqLength)) {
        h5::File f = h5::File::open_read(path);
        const auto len = h5::read_1d_i64(f, kSeqLength);
        if (!len.empty()) {
            const auto [lo, hi] = std::minmax_element(len.begin(), len.end());
            seq_text = fmt::format("{} sequences (lengths {}-{})", len.size(), *lo, *hi);
        } else {
            seq_text = "0 sequences";
        }
    }
    return fmt::format("  tokens:      {} in {}\n", field_text(j, kAttrNTokens), seq_text);
}

// "sources:" lines: the first 8 source files with their token counts ("" without sources).
std::string sources_lines(const std::string& path, const nlohmann::json& ds) {
    if (!ds.contains(kSourcePath)) return {};
    h5::File f = h5::File::open_read(path);
    const auto paths = h5::read_1d_strings(f, kSourcePath);
    std::vector<int64_t> toks;
    if (ds.contains(kSourceTokens)) toks = h5::read_1d_i64(f, kSourceTokens);
    std::string out = fmt::format("  sources:     {} file{}\n", paths.size(), paths.size() == 1 ? "" : "s");
    for (size_t i = 0; i < paths.size() && i < 8; ++i)
        out +=
            fmt::format("               {} ({} tokens)\n", paths[i], i < toks.size() ? std::to_string(toks[i]) : "?");
    if (paths.size() > 8) out += fmt::format("               ... and {} more\n", paths.size() - 8);
    return out;
}

// "datasets:" block (one line per activation dataset: shape, dtype, chunks, filters, size)
// and the "file:" line comparing the activations as float16 with their stored size.
std::string storage_lines(const nlohmann::json& j) {
    const auto& ds = j["datasets"];
    uint64_t raw = 0, stored = 0;
    std::string out = "  datasets:\n";
    for (const char* name : kActivations) {
        if (!ds.contains(name)) continue;
        const auto& d = ds[name];
        uint64_t n = 1;
        for (const auto& x : d["shape"]) n *= x.get<uint64_t>();
        const uint64_t bytes = d["storage_bytes"].get<uint64_t>();
        raw += n * 2;
        stored += bytes;
        std::string filters;
        for (const auto& x : d["filters"]) filters += (filters.empty() ? "" : "+") + x.get<std::string>();
        const auto chunks = d["chunks"].is_null() ? std::vector<uint64_t>{} : d["chunks"].get<std::vector<uint64_t>>();
        out +=
            fmt::format("    {:<8} {} {}, chunks {}, {}, {} (ratio {:.2f})\n", name,
                        shape_text(d["shape"].get<std::vector<uint64_t>>()), d["dtype"].get<std::string>(),
                        chunks.empty() ? "none" : shape_text(chunks), filters.empty() ? "no filters" : filters,
                        human_bytes(static_cast<double>(bytes)), bytes ? (n * 2.0) / static_cast<double>(bytes) : 0.0);
    }
    const uint64_t fbytes = j["file_bytes"].get<uint64_t>();
    out +=
        fmt::format("  file:        {} ({} bytes); activations {} as float16, stored in {}: compression ratio {:.3f}\n",
                    human_bytes(static_cast<double>(fbytes)), fbytes, human_bytes(static_cast<double>(raw)),
                    human_bytes(static_cast<double>(stored)),
                    stored ? static_cast<double>(raw) / static_cast<double>(stored) : 0.0);
    return out;
}

// "shards:" line of a joined dump (its parts' files and token counts) or of a shard; "" otherwise.
std::string shards_line(const nlohmann::json& j) {
    if (j.contains(kAttrShards) && j[kAttrShards].contains("parts") && j[kAttrShards]["parts"].is_array()) {
        const auto& parts = j[kAttrShards]["parts"];
        std::string out = fmt::format("  shards:      {} (job {})\n", parts.size(), field_text(j[kAttrShards], "job"));
        for (size_t i = 0; i < parts.size() && i < 8; ++i) {
            const auto& p = parts[i];
            const bool known = p.contains("token_start") && p["token_start"].is_number_integer() &&
                               p.contains("n_tokens") && p["n_tokens"].is_number_integer();
            out += fmt::format("               {} (tokens {})\n", field_text(p, "file"),
                               known ? fmt::format("{}-{}", p["token_start"].get<int64_t>(),
                                                   p["token_start"].get<int64_t>() + p["n_tokens"].get<int64_t>() - 1)
                                     : std::string("?"));
        }
        if (parts.size() > 8) out += fmt::format("               ... and {} more\n", parts.size() - 8);
        return out;
    }
    if (j.contains(kAttrShard))
        return fmt::format("  shard:       {} of {} of {} (job {}), tokens from {}\n",
                           field_text(j[kAttrShard], "index"), field_text(j[kAttrShard], "count"),
                           field_text(j[kAttrShard], "main"), field_text(j[kAttrShard], "job"),
                           field_text(j[kAttrShard], "token_start"));
    return {};
}

// "perplexity:" (or "summary: missing") and "created:" lines from the summary and
// provenance attributes.
std::string summary_lines(const nlohmann::json& sum, const nlohmann::json& prov) {
    std::string out;
    if (sum.is_object()) {
        const bool has_ppl = sum.contains("perplexity") && sum["perplexity"].is_number();
        if (has_ppl)
            out += fmt::format("  perplexity:  {:.4f} (mean nll {:.4f} over {} predicted tokens)\n",
                               sum["perplexity"].get<double>(), sum.value("nll_mean", std::nan("")),
                               field_text(sum, "n_predicted"));
        else out += "  perplexity:  none recorded\n";
    } else {
        out += "  summary:     missing (the writer did not finish)\n";
    }
    if (prov.is_object())
        out += fmt::format("  created:     {} by {} {} (commit {})\n", field_text(prov, "created_utc"),
                           field_text(prov, "tool"), field_text(prov, "version"), field_text(prov, "commit"));
    return out;
}

}  // namespace

std::string describe_kv_dump(const std::string& path) {
    const nlohmann::json j = kv_dump_metadata_json(path);
    const auto& m = j["model"];
    std::string out =
        fmt::format("{}: KV dump, format {} {}\n", path, field_text(j, kAttrFormat), field_text(j, kAttrFormatVersion));
    const std::string sha = field_text(m, "sha256", "");
    out += fmt::format("  model:       {} ({}, {}{})\n", field_text(m, "name"), field_text(m, "arch"),
                       field_text(m, "file"), sha.empty() ? "" : ", sha256 " + sha.substr(0, 12) + "...");
    out += fmt::format("  rope:        base {}, n_rot {}, type {}\n", field_text(m, "rope_freq_base"),
                       field_text(m, "n_rot"), field_text(m, "rope_type"));
    out += layers_line(path, j);
    out += geometry_line(j);
    out += fmt::format("  heads:       {} query, {} kv, head_dim {}, dim_order {}\n", field_text(j, kAttrNHead),
                       field_text(j, kAttrNHeadKv), field_text(j, kAttrHeadDim), field_text(j, kAttrDimOrder));
    out += tokens_line(path, j);
    out += sources_lines(path, j["datasets"]);
    out += shards_line(j);
    out += storage_lines(j);
    out += summary_lines(j["summary"], j["provenance"]);
    return out;
}

}  // namespace pkv
