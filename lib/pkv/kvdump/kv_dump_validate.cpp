// validate_kv_dump: checks a file against docs/formats/kv_dump.md and lists every
// problem instead of stopping at the first, so one run tells the whole story.
#include <algorithm>
#include <cmath>
#include <optional>
#include <set>

#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/kvdump/kv_dump_internal.h"

namespace pkv {

using namespace kvdump_detail;

namespace {

enum class Want { integer, floating, f16, string };

const char* want_name(Want w) {
    switch (w) {
        case Want::integer: return "an integer type";
        case Want::floating: return "a float type";
        case Want::f16: return "float16";
        case Want::string: return "string";
    }
    return "?";
}

bool type_matches(hid_t t, Want w) {
    switch (w) {
        case Want::integer: return H5Tget_class(t) == H5T_INTEGER;
        case Want::floating: return H5Tget_class(t) == H5T_FLOAT;
        case Want::f16: return h5::is_f16_type(t);
        case Want::string: return H5Tget_class(t) == H5T_STRING;
    }
    return false;
}

class Checker {
public:
    explicit Checker(std::string path) : path_(std::move(path)) {}

    template <typename... Args>
    void add(const std::string& object, fmt::format_string<Args...> f, Args&&... args) {
        problems_.push_back(path_ + "::" + object + ": " + fmt::format(f, std::forward<Args>(args)...));
    }
    /// Runs `fn`, turning a thrown pkv::Error into a problem; returns whether it succeeded.
    template <typename F>
    bool guard(F&& fn) {
        try {
            fn();
            return true;
        } catch (const Error& e) {
            problems_.push_back(e.what());
            return false;
        }
    }
    std::vector<std::string> take() { return std::move(problems_); }

private:
    std::string path_;
    std::vector<std::string> problems_;
};

/// Everything validate_kv_dump learns along the way; later checks use what earlier ones found.
struct State {
    h5::File f;
    std::optional<int64_t> n_layer, n_head, n_head_kv, head_dim, n_tokens;
    std::optional<std::string> dim_order, capture;
    std::optional<std::pair<int, int>> version;  ///< major, minor
    nlohmann::json model;
    std::optional<std::vector<int32_t>> layers;
};

std::optional<int64_t> root_int(Checker& c, State& s, const char* name) {
    std::optional<int64_t> v;
    c.guard([&] { v = h5::read_attr_int(s.f.id(), s.f.where("/"), name); });
    if (v && *v <= 0) {
        c.add("/", "attribute '{}': expected a positive integer, got {}", name, *v);
        v.reset();
    }
    return v;
}

std::optional<nlohmann::json> root_json(Checker& c, State& s, const char* name, const char* why_missing = "") {
    if (!h5::has_attr(s.f.id(), name)) {
        c.add("/", "missing attribute '{}'{}", name, why_missing);
        return std::nullopt;
    }
    std::optional<nlohmann::json> j;
    c.guard([&] { j = parse_json_attr(s.f.id(), s.f.where("/"), name); });
    if (j && !j->is_object()) {
        c.add("/", "attribute '{}': expected a JSON object, got {}", name, j->type_name());
        j.reset();
    }
    return j;
}

void check_root(Checker& c, State& s) {
    const hid_t root = s.f.id();
    const std::string where = s.f.where("/");
    c.guard([&] {
        const std::string fmt_name = h5::read_attr_string(root, where, kAttrFormat);
        if (fmt_name != kFormat) c.add("/", "expected format '{}', got '{}'", kFormat, fmt_name);
    });
    c.guard([&] {
        const std::string v = h5::read_attr_string(root, where, kAttrFormatVersion);
        int major = 0, minor = 0;
        if (!parse_version(v, &major, &minor))
            c.add("/", "attribute 'format_version': expected '<major>.<minor>', got '{}'", v);
        else if (major != kSupportedMajor)
            c.add("/", "unknown format_version: expected {}.x, got '{}'", kSupportedMajor, v);
        else s.version.emplace(major, minor);
    });
    s.n_layer = root_int(c, s, kAttrNLayer);
    s.n_head = root_int(c, s, kAttrNHead);
    s.n_head_kv = root_int(c, s, kAttrNHeadKv);
    s.head_dim = root_int(c, s, kAttrHeadDim);
    s.n_tokens = root_int(c, s, kAttrNTokens);
    if (s.n_head && s.n_head_kv && *s.n_head % *s.n_head_kv != 0)
        c.add("/", "expected n_head ({}) to be a multiple of n_head_kv ({})", *s.n_head, *s.n_head_kv);
    c.guard([&] {
        s.dim_order = h5::read_attr_string(root, where, kAttrDimOrder);
        if (*s.dim_order != kDimOrderGguf && *s.dim_order != kDimOrderHf) {
            c.add("/", "attribute 'dim_order': expected '{}' or '{}', got '{}'", kDimOrderGguf, kDimOrderHf,
                  *s.dim_order);
            s.dim_order.reset();
        }
    });
    if (s.dim_order && *s.dim_order == kDimOrderHf && s.head_dim && *s.head_dim % 2 != 0)
        c.add("/", "dim_order '{}' needs an even head_dim, got {}", kDimOrderHf, *s.head_dim);
    c.guard([&] {
        s.capture = h5::read_attr_string(root, where, kAttrCapture);
        CaptureSet::parse(*s.capture);
    });

    if (auto m = root_json(c, s, kAttrModel)) {
        s.model = *m;
        for (const char* k : kModelIntFields)
            if (!m->contains(k) || !(*m)[k].is_number_integer())
                c.add("/", "attribute 'model': expected integer field '{}', got {}", k,
                      m->contains(k) ? (*m)[k].type_name() : "nothing");
        for (const char* k : kModelNumberFields)
            if (!m->contains(k) || !(*m)[k].is_number())
                c.add("/", "attribute 'model': expected number field '{}', got {}", k,
                      m->contains(k) ? (*m)[k].type_name() : "nothing");
        for (const char* k : kModelStringFields)
            if (!m->contains(k) || !(*m)[k].is_string())
                c.add("/", "attribute 'model': expected string field '{}', got {}", k,
                      m->contains(k) ? (*m)[k].type_name() : "nothing");
        if (!m->contains("file_type"))
            c.add("/", "attribute 'model': expected field 'file_type' (integer or null), got nothing");
        const std::pair<const char*, std::optional<int64_t>> same[] = {
            {"n_layer", s.n_layer}, {"n_head", s.n_head}, {"n_head_kv", s.n_head_kv}, {"head_dim", s.head_dim}};
        for (const auto& [k, v] : same)
            if (v && m->contains(k) && (*m)[k].is_number_integer() && (*m)[k].get<int64_t>() != *v)
                c.add("/", "attribute 'model': expected {} = {} (the root attribute), got {}", k, *v,
                      (*m)[k].get<int64_t>());
        if (m->contains("rope_type") && (*m)["rope_type"] != "norm" && (*m)["rope_type"] != "neox")
            c.add("/", "attribute 'model': expected rope_type 'norm' or 'neox', got {}", (*m)["rope_type"].dump());
    }
    if (auto p = root_json(c, s, kAttrProvenance))
        for (const char* k : {"tool", "version"})
            if (!p->contains(k) || !(*p)[k].is_string())
                c.add("/", "attribute 'provenance': expected string field '{}'", k);
    if (auto sum = root_json(c, s, kAttrSummary, " (the writer did not finish)"))
        if (sum->contains("n_tokens") && s.n_tokens && (*sum)["n_tokens"] != *s.n_tokens)
            c.add("/", "attribute 'summary': expected n_tokens = {}, got {}", *s.n_tokens, (*sum)["n_tokens"].dump());
}

/// Opens a dataset and checks its rank and type; nullopt (with a problem) if unusable.
std::optional<std::pair<h5::Id, std::vector<uint64_t>>> open_checked(Checker& c, State& s, const std::string& name,
                                                                     size_t rank, Want want) {
    if (!h5::exists(s.f, name)) {
        c.add(name, "missing dataset");
        return std::nullopt;
    }
    std::optional<std::pair<h5::Id, std::vector<uint64_t>>> out;
    c.guard([&] {
        h5::Id d = h5::open_dataset(s.f, name);
        auto shape = h5::shape_of(s.f, d.get(), name);
        h5::Id t = h5::type_of(s.f, d.get(), name);
        bool ok = true;
        if (shape.size() != rank) {
            c.add(name, "expected rank {}, got {}", rank, shape.size());
            ok = false;
        }
        if (!type_matches(t.get(), want)) {
            c.add(name, "expected dtype {}, got {}", want_name(want), h5::type_name(t.get()));
            ok = false;
        }
        if (ok) out.emplace(std::move(d), std::move(shape));
    });
    return out;
}

void check_layers(Checker& c, State& s) {
    auto d = open_checked(c, s, kLayers, 1, Want::integer);
    if (!d) return;
    std::vector<int32_t> layers;
    if (!c.guard([&] { layers = h5::read_1d_i32(s.f, kLayers); })) return;
    bool ok = !layers.empty();
    if (layers.empty()) c.add(kLayers, "expected at least one layer, got none");
    for (size_t i = 0; i < layers.size(); ++i) {
        if (i > 0 && layers[i] <= layers[i - 1]) {
            c.add(kLayers, "expected ascending layers, got {} after {} at index {}", layers[i], layers[i - 1], i);
            ok = false;
        }
        if (layers[i] < 0 || (s.n_layer && layers[i] >= *s.n_layer)) {
            c.add(kLayers, "expected layers in [0, {}), got {} at index {}", s.n_layer.value_or(0), layers[i], i);
            ok = false;
        }
    }
    // A bad list still has a usable length for the shape checks.
    s.layers = layers;
    (void)ok;
}

/// Streams one activation dataset in token blocks of whole chunks and reports NaN/Inf.
void scan_finite(Checker& c, const std::string& name, const ActivationData& data, const std::vector<uint64_t>& shape) {
    const uint64_t L = shape[0], H = shape[1], T = shape[2], D = shape[3];
    if (T == 0 || D == 0) return;
    const auto chunks = data.chunks();
    const uint64_t tc = chunks.size() == 4 && chunks[2] > 0 ? chunks[2] : 1024;
    // About 4 MiB of float16 per read, rounded to whole chunks so none is decoded twice.
    const uint64_t block = std::max<uint64_t>(tc, ((2u << 20) / D) / tc * tc);
    h5::Id f16 = h5::make_f16_type();
    std::vector<uint16_t> buf(std::min(block, T) * D);
    uint64_t bad = 0;
    std::string first;
    for (uint64_t l = 0; l < L; ++l)
        for (uint64_t h = 0; h < H; ++h)
            for (uint64_t t0 = 0; t0 < T; t0 += block) {
                const uint64_t n = std::min(block, T - t0);
                if (!c.guard([&] { data.read(l, h, t0, n, f16.get(), buf.data()); })) return;
                for (uint64_t i = 0; i < n * D; ++i)
                    if ((buf[i] & 0x7c00u) == 0x7c00u) {
                        if (bad++ == 0)
                            first = fmt::format("[{}, {}, {}, {}] = {}", l, h, t0 + i / D, i % D,
                                                (buf[i] & 0x3ffu) ? "nan" : ((buf[i] & 0x8000u) ? "-inf" : "inf"));
                    }
            }
    if (bad > 0) c.add(name, "expected finite values, got {} NaN/Inf, first at {}", bad, first);
}

void check_activations(Checker& c, State& s) {
    std::set<std::string> present;
    std::string job;
    c.guard([&] { job = joined_job(s.f); });
    ShardFiles shard_files;
    bool any_virtual = false;
    for (const char* name : kActivations) {
        if (!h5::exists(s.f, name)) continue;
        present.insert(name);
        auto d = open_checked(c, s, name, 4, Want::f16);
        if (!d) continue;
        // A joined dump's activation reads from its shards (opened and checked here).
        std::optional<ActivationData> data;
        if (!c.guard([&] { data.emplace(s.f, name, job, shard_files); })) continue;
        any_virtual = any_virtual || data->is_virtual();
        const auto& shape = d->second;
        const bool is_q = std::string(name) == kQ;
        const std::optional<int64_t> H = is_q ? s.n_head : s.n_head_kv;
        const std::optional<uint64_t> L =
            s.layers ? std::optional<uint64_t>(s.layers->size()) : std::optional<uint64_t>();
        const bool shape_ok = (!L || shape[0] == *L) && (!H || shape[1] == static_cast<uint64_t>(*H)) &&
                              (!s.n_tokens || shape[2] == static_cast<uint64_t>(*s.n_tokens)) &&
                              (!s.head_dim || shape[3] == static_cast<uint64_t>(*s.head_dim));
        auto known = [](auto v) { return v ? std::to_string(*v) : std::string("?"); };
        if (!shape_ok)
            c.add(name, "expected shape [L={}, H={}, T={}, D={}], got {}", known(L), known(H), known(s.n_tokens),
                  known(s.head_dim), shape_text(shape));
        const auto chunks = data->chunks();
        if (chunks.size() != 4 || chunks[0] != 1 || chunks[1] != 1 || chunks[3] != shape[3])
            c.add(name, "expected chunks [1, 1, Tc, {}], got {}", shape[3],
                  chunks.empty() ? std::string("a contiguous layout") : shape_text(chunks));
        const std::string where = s.f.where(name);
        c.guard([&] {
            const auto axes = h5::read_attr_strings(d->first.get(), where, kAttrAxes);
            if (axes != axes_of(name))
                c.add(name, "attribute 'axes': expected {}, got {}", nlohmann::json(axes_of(name)).dump(),
                      nlohmann::json(axes).dump());
        });
        if (is_rope_dataset(name))
            c.guard([&] {
                const std::string order = h5::read_attr_string(d->first.get(), where, kAttrDimOrder);
                if (s.dim_order && order != *s.dim_order)
                    c.add(name, "attribute 'dim_order': expected '{}' (the root attribute), got '{}'", *s.dim_order,
                          order);
            });
        if (shape_ok && c.guard([&] { data->check_stored(); })) scan_finite(c, name, *data, shape);
    }
    if (any_virtual && !h5::has_attr(s.f.id(), kAttrShards))
        c.add("/", "missing attribute '{}' (the activations are virtual datasets over shards)", kAttrShards);
    if (present.empty()) c.add("/", "expected at least one of /k_pre, /k_post, /v, /q, got none");
    if (s.capture) {
        CaptureSet cap;
        try {
            cap = CaptureSet::parse(*s.capture);
        } catch (const Error&) {
            return;  // already reported by check_root
        }
        const std::pair<const char*, bool> want[] = {
            {kKPre, cap.k_pre}, {kKPost, cap.k_post}, {kV, cap.v}, {kQ, cap.q}};
        for (const auto& [name, on] : want)
            if (on != (present.count(name) > 0))
                c.add(name, "{} (attribute 'capture' is '{}')", on ? "missing dataset" : "unexpected dataset",
                      *s.capture);
    }
}

/// A 1-D dataset of known length; returns its values as int64 (or nothing when unusable).
template <typename T>
std::optional<std::vector<T>> column(Checker& c, State& s, const char* name, Want want, std::optional<int64_t> len,
                                     const char* len_name) {
    auto d = open_checked(c, s, name, 1, want);
    if (!d) return std::nullopt;
    if (len && d->second[0] != static_cast<uint64_t>(*len)) {
        c.add(name, "expected shape [{}={}], got {}", len_name, *len, shape_text(d->second));
        return std::nullopt;
    }
    std::optional<std::vector<T>> out;
    c.guard([&] {
        if constexpr (std::is_same_v<T, float>) out = h5::read_1d_f32(s.f, name);
        else if constexpr (std::is_same_v<T, double>) out = h5::read_1d_f64(s.f, name);
        else if constexpr (std::is_same_v<T, std::string>) out = h5::read_1d_strings(s.f, name);
        else out = h5::read_1d_i64(s.f, name);
    });
    return out;
}

using Column = std::optional<std::vector<int64_t>>;

// Token ids inside the model's vocabulary, when the model attribute records its size.
void check_token_ids(Checker& c, const State& s, const Column& id) {
    if (!id || !s.model.contains("n_vocab") || !s.model["n_vocab"].is_number_integer()) return;
    const int64_t nv = s.model["n_vocab"].get<int64_t>();
    for (size_t t = 0; t < id->size(); ++t)
        if ((*id)[t] < 0 || (*id)[t] >= nv) {
            c.add(kTokenId, "expected token ids in [0, {}), got {} at token {}", nv, (*id)[t], t);
            break;
        }
}

// Sequences follow each other: seq goes 0, 1, 2, ... and pos restarts at 0 with each.
void check_seq_pos(Checker& c, const std::vector<int64_t>& seq, const std::vector<int64_t>& pos) {
    for (size_t t = 0; t < pos.size(); ++t) {
        const bool new_seq = t == 0 || seq[t] != seq[t - 1];
        // Saturating: the values come from the file and may be anything.
        const int64_t want_seq = t == 0 ? 0 : saturating_add(seq[t - 1], new_seq ? 1 : 0);
        if (seq[t] != want_seq) {
            c.add(kTokenSeq, "expected sequence indices counting up from 0, got {} at token {} (after {})", seq[t], t,
                  t == 0 ? std::string("the start") : std::to_string(seq[t - 1]));
            break;
        }
        const int64_t want_pos = new_seq ? 0 : saturating_add(pos[t - 1], 1);
        if (pos[t] != want_pos) {
            c.add(kTokenPos, "expected position {} (restarting at 0 in each sequence), got {} at token {}", want_pos,
                  pos[t], t);
            break;
        }
    }
}

// The first token of a sequence predicts nothing (NaN); every other NLL is finite and >= 0.
void check_nll(Checker& c, const std::vector<float>& nll, const std::vector<int64_t>& pos) {
    int64_t bad = 0, first = -1;
    for (size_t t = 0; t < nll.size(); ++t) {
        const float x = nll[t];
        const bool ok = pos[t] == 0 ? std::isnan(x) : (std::isfinite(x) && x >= 0.0f);
        if (!ok && bad++ == 0) first = static_cast<int64_t>(t);
    }
    if (bad > 0)
        c.add(kTokenNll,
              "expected NaN at position 0 and finite values >= 0 elsewhere, got {} bad values, first "
              "{} at token {}",
              bad, nll[first], first);
}

// /sequences/start and /length tile [0, T) with positive lengths, and each start is a
// token that opens its sequence (seq i, pos 0) when those columns are usable.
void check_seq_tiling(Checker& c, std::optional<int64_t> T, const std::vector<int64_t>& start,
                      const std::vector<int64_t>& length, const Column& seq, const Column& pos) {
    int64_t next = 0;
    bool tiles = true;
    for (size_t i = 0; i < start.size() && tiles; ++i) {
        if (start[i] != next) {
            c.add(kSeqStart, "expected sequences to tile [0, T): sequence {} should start at {}, got {}", i, next,
                  start[i]);
            tiles = false;
        } else if (length[i] <= 0) {
            c.add(kSeqLength, "expected positive lengths, got {} for sequence {}", length[i], i);
            tiles = false;
        }
        next = saturating_add(next, length[i]);
    }
    if (tiles && T && next != *T) {
        c.add(kSeqLength, "expected sequences to tile [0, T={}), got a total length of {}", *T, next);
        tiles = false;
    }
    if (start.empty()) c.add(kSeqStart, "expected at least one sequence, got none");
    if (tiles && seq && pos && pos->size() == seq->size() && static_cast<size_t>(next) == seq->size())
        for (size_t i = 0; i < start.size(); ++i) {
            const int64_t t = start[i];
            if ((*seq)[t] != static_cast<int64_t>(i) || (*pos)[t] != 0) {
                c.add(kSeqStart, "expected token {} to open sequence {} (seq {}, pos 0), got seq {}, pos {}", t, i, i,
                      (*seq)[t], (*pos)[t]);
                break;
            }
        }
}

void check_tokens(Checker& c, State& s) {
    const auto T = s.n_tokens;
    auto id = column<int64_t>(c, s, kTokenId, Want::integer, T, "T");
    auto pos = column<int64_t>(c, s, kTokenPos, Want::integer, T, "T");
    auto seq = column<int64_t>(c, s, kTokenSeq, Want::integer, T, "T");
    auto nll = column<float>(c, s, kTokenNll, Want::floating, T, "T");
    auto start = column<int64_t>(c, s, kSeqStart, Want::integer, std::nullopt, "S");
    std::optional<int64_t> S;
    if (start) S = static_cast<int64_t>(start->size());
    auto length = column<int64_t>(c, s, kSeqLength, Want::integer, S, "S");

    check_token_ids(c, s, id);
    if (pos && seq && pos->size() == seq->size()) check_seq_pos(c, *seq, *pos);
    if (nll && pos && nll->size() == pos->size()) check_nll(c, *nll, *pos);
    if (start && length) check_seq_tiling(c, T, *start, *length, seq, pos);
}

void check_sources(Checker& c, State& s) {
    auto path = column<std::string>(c, s, kSourcePath, Want::string, std::nullopt, "F");
    std::optional<int64_t> F;
    if (path) F = static_cast<int64_t>(path->size());
    auto sha = column<std::string>(c, s, kSourceSha256, Want::string, F, "F");
    auto bytes = column<int64_t>(c, s, kSourceBytes, Want::integer, F, "F");
    auto tokens = column<int64_t>(c, s, kSourceTokens, Want::integer, F, "F");
    if (sha)
        for (size_t i = 0; i < sha->size(); ++i) {
            const std::string& h = (*sha)[i];
            const bool hex = h.size() == 64 && h.find_first_not_of("0123456789abcdef") == std::string::npos;
            if (!hex) c.add(kSourceSha256, "expected 64 lowercase hex digits, got '{}' for source {}", h, i);
        }
    if (bytes)
        for (size_t i = 0; i < bytes->size(); ++i)
            if ((*bytes)[i] < 0) c.add(kSourceBytes, "expected a size >= 0, got {} for source {}", (*bytes)[i], i);
    if (tokens && !tokens->empty() && s.n_tokens) {
        int64_t sum = 0;
        for (int64_t t : *tokens) sum = saturating_add(sum, t);
        if (sum != *s.n_tokens) c.add(kSourceTokens, "expected a total of T={} tokens, got {}", *s.n_tokens, sum);
    }
}

// /layer_info: required from 1.1 on; in a 1.0 file without it, the model record must
// still give every local layer a window (derive_layer_info).
void check_layer_info(Checker& c, State& s) {
    const char* names[] = {kLayerWindow, kLayerRopeBase, kLayerNHeadKv, kLayerHeadDim};
    bool any = false;
    for (const char* name : names) any = any || h5::exists(s.f, name);
    if (!any) {
        if (!s.version) return;  // an unusable version is reported already
        if (requires_layer_info(s.version->first, s.version->second)) {
            c.add(kLayerInfo, "expected a group (format_version {}.{} requires /layer_info), got none",
                  s.version->first, s.version->second);
        } else if (s.layers && s.model.is_object()) {
            c.guard([&] {
                derive_layer_info(s.model, *s.layers, static_cast<int>(s.n_head_kv.value_or(0)),
                                  static_cast<int>(s.head_dim.value_or(0)), s.f.where("/"));
            });
        }
        return;
    }
    std::optional<int64_t> L;
    if (s.layers) L = static_cast<int64_t>(s.layers->size());
    LayerInfoColumns cols;
    auto window = column<int64_t>(c, s, kLayerWindow, Want::integer, L, "L");
    auto base = column<double>(c, s, kLayerRopeBase, Want::floating, L, "L");
    auto n_head_kv = column<int64_t>(c, s, kLayerNHeadKv, Want::integer, L, "L");
    auto head_dim = column<int64_t>(c, s, kLayerHeadDim, Want::integer, L, "L");
    if (window) cols.window = *window;
    if (base) cols.rope_base = *base;
    // A root attribute that is unusable is reported already; its column is not compared.
    if (n_head_kv && s.n_head_kv) cols.n_head_kv = *n_head_kv;
    if (head_dim && s.head_dim) cols.head_dim = *head_dim;
    for (const auto& [name, what] : layer_info_value_problems(cols, s.n_head_kv.value_or(0), s.head_dim.value_or(0)))
        c.add(name, "{}", what);
}

}  // namespace

std::vector<std::string> validate_kv_dump(const std::string& path) {
    Checker c(path);
    State s;
    if (!c.guard([&] { s.f = h5::File::open_read(path); })) return c.take();
    check_root(c, s);
    check_layers(c, s);
    check_layer_info(c, s);
    check_activations(c, s);
    check_tokens(c, s);
    check_sources(c, s);
    return c.take();
}

}  // namespace pkv
