// /layer_info (format 1.1): each stored layer's sliding window, RoPE base and head
// geometry; written, read and checked here, and derived from the model record for 1.0
// files, which have only the record's swa_layers / sliding_window / rope_freq_base(_swa).
#include <cmath>
#include <set>

#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/kvdump/kv_dump_internal.h"

namespace pkv::kvdump_detail {

namespace {

constexpr const char* kLayerDatasets[] = {kLayerWindow, kLayerRopeBase, kLayerNHeadKv, kLayerHeadDim};

// The first index of `v` where `ok` fails, or -1.
template <typename T, typename F>
int64_t first_bad(const std::vector<T>& v, F ok) {
    for (size_t i = 0; i < v.size(); ++i)
        if (!ok(v[i])) return static_cast<int64_t>(i);
    return -1;
}

// One /layer_info dataset, its shape and type class checked before it is read.
void check_column(const h5::File& f, const char* name, size_t n_layers, bool floating) {
    h5::Id d = h5::open_dataset(f, name);
    const auto shape = h5::shape_of(f, d.get(), name);
    PKV_CHECK(shape.size() == 1 && shape[0] == n_layers, data_loss, "{}: expected shape [L={}], got {}", f.where(name),
              n_layers, shape_text(shape));
    h5::Id t = h5::type_of(f, d.get(), name);
    const H5T_class_t cls = H5Tget_class(t.get());
    PKV_CHECK(floating ? cls == H5T_FLOAT : cls == H5T_INTEGER, data_loss, "{}: expected dtype {}, got {}",
              f.where(name), floating ? "a float type" : "an integer type", h5::type_name(t.get()));
}

}  // namespace

std::vector<std::pair<const char*, std::string>> layer_info_value_problems(const LayerInfoColumns& c, int64_t n_head_kv,
                                                                           int64_t head_dim) {
    std::vector<std::pair<const char*, std::string>> out;
    int64_t i = first_bad(c.window, [](int64_t w) { return w >= 0 && w <= kMaxWindow; });
    if (i >= 0)
        out.emplace_back(kLayerWindow, fmt::format("expected a window in [0, {}] tokens (0: global layer), got {} "
                                                   "at index {}",
                                                   kMaxWindow, c.window[i], i));
    i = first_bad(c.rope_base, [](double b) { return std::isfinite(b) && b >= 0.0; });
    if (i >= 0)
        out.emplace_back(kLayerRopeBase,
                         fmt::format("expected a finite RoPE base >= 0, got {} at index {}", c.rope_base[i], i));
    const std::pair<const char*, const std::vector<int64_t>*> same[] = {{kLayerNHeadKv, &c.n_head_kv},
                                                                        {kLayerHeadDim, &c.head_dim}};
    for (const auto& [name, col] : same) {
        const int64_t want = name == kLayerNHeadKv ? n_head_kv : head_dim;
        i = first_bad(*col, [&](int64_t x) { return x == want; });
        if (i >= 0)
            out.emplace_back(name, fmt::format("expected {} (the root attribute {}), got {} at index {}", want,
                                               name == kLayerNHeadKv ? kAttrNHeadKv : kAttrHeadDim, (*col)[i], i));
    }
    return out;
}

std::vector<KvDumpLayerInfo> derive_layer_info(const nlohmann::json& model, const std::vector<int32_t>& layers,
                                               int n_head_kv, int head_dim, const std::string& where) {
    std::set<int64_t> local;
    if (model.is_object() && model.contains("swa_layers") && model["swa_layers"].is_array())
        for (const auto& x : model["swa_layers"])
            if (x.is_number_integer()) local.insert(x.get<int64_t>());
    // A usable base only: a record without one leaves the layer's base unknown (0).
    auto base = [&](const char* key) {
        if (!model.is_object() || !model.contains(key) || !model[key].is_number()) return 0.0;
        const double b = model[key].get<double>();
        return std::isfinite(b) && b > 0.0 ? b : 0.0;
    };
    const double base_global = base("rope_freq_base"), base_local = base("rope_freq_base_swa");
    std::vector<KvDumpLayerInfo> out;
    for (int32_t l : layers) {
        KvDumpLayerInfo li;
        li.layer = l;
        li.n_head_kv = n_head_kv;
        li.head_dim = head_dim;
        li.rope_base = base_global;
        if (local.count(l)) {
            // Calling a local layer global would be a wrong answer, not an unknown one.
            const nlohmann::json w = model.value("sliding_window", nlohmann::json());
            const bool ok = w.is_number_integer() && w.get<int64_t>() >= 1 && w.get<int64_t>() <= kMaxWindow;
            std::string got = w.is_null() ? std::string("nothing") : w.dump();
            if (got.size() > 40) got = got.substr(0, 40) + "...";
            PKV_CHECK(ok, data_loss,
                      "{}: attribute 'model': field 'sliding_window': expected an integer in [1, {}] (swa_layers "
                      "lists layer {}), got {}",
                      where, kMaxWindow, l, got);
            li.window = static_cast<int32_t>(w.get<int64_t>());
            li.rope_base = base_local;
        }
        out.push_back(li);
    }
    return out;
}

std::vector<KvDumpLayerInfo> read_layer_info(const h5::File& f, bool required, const nlohmann::json& model,
                                             const std::vector<int32_t>& layers, int n_head_kv, int head_dim) {
    bool any = false;
    for (const char* name : kLayerDatasets) any = any || h5::exists(f, name);
    if (!any && !required) return derive_layer_info(model, layers, n_head_kv, head_dim, f.where("/"));
    for (const char* name : kLayerDatasets)
        PKV_CHECK(h5::exists(f, name), data_loss, "{}: expected a dataset ({}), got none", f.where(name),
                  any ? "the other /layer_info datasets are present" : "format_version 1.1 requires /layer_info");
    for (const char* name : kLayerDatasets) check_column(f, name, layers.size(), name == kLayerRopeBase);
    LayerInfoColumns c;
    c.window = h5::read_1d_i64(f, kLayerWindow);
    c.rope_base = h5::read_1d_f64(f, kLayerRopeBase);
    c.n_head_kv = h5::read_1d_i64(f, kLayerNHeadKv);
    c.head_dim = h5::read_1d_i64(f, kLayerHeadDim);
    const auto problems = layer_info_value_problems(c, n_head_kv, head_dim);
    if (!problems.empty()) fail(ErrorCode::data_loss, "{}: {}", f.where(problems[0].first), problems[0].second);
    std::vector<KvDumpLayerInfo> out(layers.size());
    for (size_t i = 0; i < layers.size(); ++i)
        out[i] = {layers[i], static_cast<int32_t>(c.window[i]), c.rope_base[i], static_cast<int32_t>(c.n_head_kv[i]),
                  static_cast<int32_t>(c.head_dim[i])};
    return out;
}

void check_header_layer_info(const std::string& path, const KvDumpHeader& h) {
    // Every pkv writer knows its layers' geometry; a header without it is a bug.
    PKV_ASSERT(!h.layer_info.empty());
    const size_t L = h.layers.size();
    PKV_CHECK(h.layer_info.size() == L, internal,
              "{}::{}: kv dump: expected layer_info for the {} stored layers, got {}", path, kLayerInfo, L,
              h.layer_info.size());
    LayerInfoColumns c;
    for (size_t i = 0; i < L; ++i) {
        const KvDumpLayerInfo& li = h.layer_info[i];
        PKV_CHECK(li.layer == h.layers[i], internal,
                  "{}::{}: kv dump: expected layer_info[{}] for layer {}, got layer {}", path, kLayerInfo, i,
                  h.layers[i], li.layer);
        c.window.push_back(li.window);
        c.rope_base.push_back(li.rope_base);
        c.n_head_kv.push_back(li.n_head_kv);
        c.head_dim.push_back(li.head_dim);
    }
    const auto problems = layer_info_value_problems(c, h.n_head_kv, h.head_dim);
    if (!problems.empty())
        fail(ErrorCode::internal, "{}::{}: kv dump: {}", path, problems[0].first, problems[0].second);
}

void write_layer_info(const h5::File& f, const KvDumpHeader& h) {
    const size_t L = h.layer_info.size();
    std::vector<int32_t> window, n_head_kv, head_dim;
    std::vector<double> rope_base;
    for (const KvDumpLayerInfo& li : h.layer_info) {
        window.push_back(li.window);
        rope_base.push_back(li.rope_base);
        n_head_kv.push_back(li.n_head_kv);
        head_dim.push_back(li.head_dim);
    }
    h5::create_group(f, kLayerInfo);
    const std::pair<const char*, const std::vector<int32_t>*> ints[] = {
        {kLayerWindow, &window}, {kLayerNHeadKv, &n_head_kv}, {kLayerHeadDim, &head_dim}};
    for (const auto& [name, col] : ints) {
        h5::Id d = h5::create_1d(f, name, H5T_STD_I32LE, L);
        h5::write_1d(f, d.get(), name, H5T_NATIVE_INT32, 0, L, col->data());
        d.close_checked(f.where(name));
    }
    h5::Id d = h5::create_1d(f, kLayerRopeBase, H5T_IEEE_F64LE, L);
    h5::write_1d(f, d.get(), kLayerRopeBase, H5T_NATIVE_DOUBLE, 0, L, rope_base.data());
    d.close_checked(f.where(kLayerRopeBase));
}

}  // namespace pkv::kvdump_detail
