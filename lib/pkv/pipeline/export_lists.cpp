// pkv/pipeline/export_lists.cpp — see export_lists.h and docs/formats/kv_plan.md.
#include "pkv/pipeline/export_lists.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/core/memory_budget.h"
#include "pkv/core/provenance.h"
#include "pkv/core/version.h"

namespace pkv {

using nlohmann::json;

namespace {

constexpr const char* kAnalyzeFormat = "pkv.analyze_report";

// o[path[0]][path[1]]..., or nullptr where a step is missing or not an object.
const json* find(const json& o, std::initializer_list<const char*> path) {
    const json* at = &o;
    for (const char* key : path) {
        if (!at->is_object() || !at->contains(key)) return nullptr;
        at = &(*at)[key];
    }
    return at;
}

// A found value as an error message shows it: its JSON text, cut short; "nothing" when absent.
std::string shown(const json* v) {
    if (!v) return "nothing";
    std::string s = v->dump();
    return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// Checks one hyperparameter of the report's model against the table's.
void check_model_int(const json& report, const char* key, int want, const std::string& report_path,
                     const std::string& table_path) {
    const json* v = find(report, {"model", key});
    PKV_CHECK(v && v->is_number_integer(), invalid_argument, "{}: model.{}: expected an integer, got {}", report_path,
              key, shown(v));
    PKV_CHECK(v->get<long long>() == want, invalid_argument,
              "{}: model.{}: expected {} (as {}), got {}: the report is for another model", report_path, key, want,
              table_path, v->get<long long>());
}

void check_layers_in_range(const std::vector<int>& layers, int n_layer, const std::string& what,
                           const std::string& table_path) {
    for (int l : layers)
        PKV_CHECK(l >= 0 && l < n_layer, out_of_range,
                  "{}: layer {} is out of range: {} is for a model with layers 0-{}", what, l, table_path, n_layer - 1);
}

std::string read_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    PKV_CHECK(f.good(), invalid_argument, "{}: cannot open the report", path);
    check_file_fits_budget(path);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void check_kv_cache_algo(const std::string& algo) {
    const auto& algos = modelopt_kv_cache_algos();
    PKV_CHECK(std::find(algos.begin(), algos.end(), algo) != algos.end(), invalid_argument,
              "--kv-cache-algo: expected {}, got '{}'", fmt::join(algos, ", "), algo);
}

json parse_report(const std::string& path) {
    try {
        return json::parse(read_text(path));
    } catch (const json::exception& e) {
        fail(ErrorCode::invalid_argument, "{}: not valid JSON: {}", path, e.what());
    }
}

}  // namespace

bool is_kv_plan_format(const std::string& format) {
    return format == "vllm-skip" || format == "modelopt" || format == "kv-plan-json";
}

int kv_layer_bits(const PatternTable& t, int layer) {
    if (!t.has_allocation()) return t.bits;
    for (const PatternLayer& L : t.layers) {
        if (L.layer != layer) continue;
        int widest = 0;
        for (const auto* w : {&L.k_bits, &L.v_bits}) widest = std::max(widest, *std::max_element(w->begin(), w->end()));
        return widest;
    }
    return t.bits;
}

std::vector<int> KvPlan::fp16_layers() const {
    std::vector<int> out;
    for (const KvLayerPlan& l : layers)
        if (l.fp16) out.push_back(l.layer);
    return out;
}

std::vector<int> KvPlan::quantized_layers() const {
    std::vector<int> out;
    for (const KvLayerPlan& l : layers)
        if (!l.fp16) out.push_back(l.layer);
    return out;
}

std::vector<int> report_keep_fp16_layers(const json& report, const std::string& report_path, const PatternTable& t,
                                         const std::string& table_path) {
    const json* format = find(report, {"format"});
    PKV_CHECK(format && *format == kAnalyzeFormat, invalid_argument,
              "{}: format: expected \"{}\" (a report of pkv analyze --json), got {}", report_path, kAnalyzeFormat,
              shown(format));
    const json* version = find(report, {"format_version"});
    PKV_CHECK(version && version->is_string() && version->get<std::string>().rfind("1.", 0) == 0, invalid_argument,
              "{}: format_version: expected major version 1 (\"1.x\"), got {}", report_path, shown(version));
    check_model_int(report, "n_layer", t.model.n_layer, report_path, table_path);
    check_model_int(report, "n_head_kv", t.model.n_head_kv, report_path, table_path);
    check_model_int(report, "head_dim", t.model.head_dim, report_path, table_path);
    // The fingerprint tells two models of one geometry apart; either side may lack it
    // (synthetic data), and then the geometry is all there is to compare.
    const json* sha = find(report, {"provenance", "dump", "model", "sha256"});
    if (sha && sha->is_string() && !sha->get<std::string>().empty() && !t.model.sha256.empty())
        PKV_CHECK(lower(sha->get<std::string>()) == lower(t.model.sha256), invalid_argument,
                  "{}: provenance.dump.model.sha256: expected {} (as {}), got {}: the report is for another model file",
                  report_path, t.model.sha256, table_path, sha->get<std::string>());

    const json* keep = find(report, {"fragile", "keep_fp16_layers"});
    PKV_CHECK(keep && keep->is_array(), invalid_argument,
              "{}: fragile.keep_fp16_layers: expected an array of layer indices, got {}", report_path, shown(keep));
    std::set<int> layers;
    for (const json& v : *keep) {
        PKV_CHECK(v.is_number_integer(), invalid_argument,
                  "{}: fragile.keep_fp16_layers: expected layer indices (integers), got {}", report_path, shown(&v));
        const long long l = v.get<long long>();
        PKV_CHECK(l >= 0 && l < t.model.n_layer, out_of_range,
                  "{}: fragile.keep_fp16_layers: layer {} is out of range: expected 0-{}", report_path, l,
                  t.model.n_layer - 1);
        layers.insert(static_cast<int>(l));
    }
    return {layers.begin(), layers.end()};
}

KvPlan make_kv_plan(const PatternTable& t, const std::string& table_path, const std::string& report_path,
                    const std::vector<int>& report_layers, const std::optional<std::vector<int>>& option_layers) {
    check_pattern_table(t);
    const int L = t.model.n_layer;
    check_layers_in_range(report_layers, L, report_path + ": fragile.keep_fp16_layers", table_path);
    if (option_layers) check_layers_in_range(*option_layers, L, "--keep-fp16-layers", table_path);

    KvPlan p;
    p.table_path = table_path;
    p.table_format_version = pattern_table_format_version(t);
    p.model = t.model;
    p.group = t.group;
    p.window = t.window;
    p.report_path = report_path;
    const std::set<int> from_report(report_layers.begin(), report_layers.end());
    p.report_layers.assign(from_report.begin(), from_report.end());
    std::set<int> from_option;
    if (option_layers) {
        from_option.insert(option_layers->begin(), option_layers->end());
        p.option_layers = std::vector<int>(from_option.begin(), from_option.end());
    }
    std::set<int> calibrated;
    for (const PatternLayer& l : t.layers) calibrated.insert(l.layer);
    for (int i = 0; i < L; ++i) {
        KvLayerPlan l;
        l.layer = i;
        l.not_calibrated = calibrated.count(i) == 0;
        l.from_report = from_report.count(i) != 0;
        l.from_option = from_option.count(i) != 0;
        if (!l.not_calibrated && t.has_allocation()) {
            const auto it =
                std::find_if(t.layers.begin(), t.layers.end(), [&](const PatternLayer& x) { return x.layer == i; });
            l.k_bits = it->k_bits;
            l.v_bits = it->v_bits;
            l.from_allocation = kv_layer_bits(t, i) == 16;
        }
        l.fp16 = l.not_calibrated || l.from_report || l.from_option || l.from_allocation;
        l.bits = l.fp16 ? 16 : kv_layer_bits(t, i);
        p.layers.push_back(l);
    }
    return p;
}

std::string vllm_skip_text(const KvPlan& plan) { return fmt::format("{}\n", fmt::join(plan.fp16_layers(), " ")); }

const std::vector<std::string>& modelopt_kv_cache_algos() {
    static const std::vector<std::string> algos = {"FP8", "INT8", "NVFP4", "NVFP4_AFFINE"};
    return algos;
}

json modelopt_kv_config(const KvPlan& plan, const std::string& kv_cache_algo) {
    check_kv_cache_algo(kv_cache_algo);
    json exclude = json::array();
    // The attention module owns a layer's K and V cache quantizers in ModelOpt's
    // Hugging Face models, so its path names the layer's cache.
    for (int l : plan.fp16_layers()) exclude.push_back(fmt::format("model.layers.{}.self_attn", l));
    // No quantized layer: the whole cache is unquantized, which ModelOpt writes as null.
    const json algo = plan.quantized_layers().empty() ? json(nullptr) : json(kv_cache_algo);
    return {{"producer", {{"name", "pkv"}, {"version", PKV_VERSION}}},
            {"quantization", {{"quant_algo", nullptr}, {"kv_cache_quant_algo", algo}, {"exclude_modules", exclude}}}};
}

std::string modelopt_kv_text(const KvPlan& plan, const std::string& kv_cache_algo) {
    return modelopt_kv_config(plan, kv_cache_algo).dump(4) + "\n";
}

json kv_plan_json(const KvPlan& plan, const json& provenance) {
    json layers = json::array();
    for (const KvLayerPlan& l : plan.layers) {
        json reasons = json::array();
        if (l.not_calibrated) reasons.push_back("not_calibrated");
        if (l.from_report) reasons.push_back("report");
        if (l.from_option) reasons.push_back("keep_fp16_layers");
        if (l.from_allocation) reasons.push_back("allocation");
        json entry = {
            {"layer", l.layer}, {"cache", l.fp16 ? "fp16" : "patternkv"}, {"bits", l.bits}, {"reasons", reasons}};
        if (!l.k_bits.empty()) entry["k_bits"] = l.k_bits, entry["v_bits"] = l.v_bits;
        layers.push_back(std::move(entry));
    }
    const json report = plan.report_path.empty()
                            ? json(nullptr)
                            : json({{"path", plan.report_path}, {"keep_fp16_layers", plan.report_layers}});
    const auto& m = plan.model;
    return {
        {"format", kKvPlanFormat},
        {"format_version", kKvPlanFormatVersion},
        {"provenance", provenance},
        {"table",
         {{"path", plan.table_path},
          {"format_version", plan.table_format_version},
          {"group", plan.group},
          {"window", plan.window}}},
        {"model",
         {{"name", m.name},
          {"arch", m.arch},
          {"sha256", m.sha256},
          {"n_layer", m.n_layer},
          {"n_head_kv", m.n_head_kv},
          {"head_dim", m.head_dim}}},
        {"sources",
         {{"report", report}, {"keep_fp16_layers", plan.option_layers ? json(*plan.option_layers) : json(nullptr)}}},
        {"fp16_layers", plan.fp16_layers()},
        {"quantized_layers", plan.quantized_layers()},
        {"layers", layers}};
}

std::string kv_plan_text(const json& doc) {
    // Fixed key order, one line per key and per layer (layer first): short, diffable, readable.
    static const char* const keys[] = {"format", "format_version", "provenance",  "table",
                                       "model",  "sources",        "fp16_layers", "quantized_layers"};
    std::string out = "{\n";
    for (const char* k : keys) out += fmt::format(" {}: {},\n", json(k).dump(), doc.at(k).dump());
    out += " \"layers\": [";
    const json& layers = doc.at("layers");
    for (size_t i = 0; i < layers.size(); ++i) {
        const json& l = layers[i];
        const std::string widths =
            l.contains("k_bits") ? fmt::format(",\"k_bits\":{},\"v_bits\":{}", l["k_bits"].dump(), l["v_bits"].dump())
                                 : std::string();
        out += fmt::format("{}{{\"layer\":{},\"cache\":{},\"bits\":{},\"reasons\":{}{}}}", i ? ",\n  " : "\n  ",
                           l.at("layer").dump(), l.at("cache").dump(), l.at("bits").dump(), l.at("reasons").dump(),
                           widths);
    }
    out += layers.empty() ? "]\n}\n" : "\n ]\n}\n";
    return out;
}

KvPlanSummary export_kv_plan(const std::string& table_path, const std::string& out_path, const KvPlanOptions& o) {
    PKV_CHECK(is_kv_plan_format(o.format), invalid_argument,
              "--format: expected vllm-skip, modelopt or kv-plan-json, got '{}'", o.format);
    PKV_CHECK(o.kv_cache_algo.empty() || o.format == "modelopt", invalid_argument,
              "--kv-cache-algo: only with --format modelopt, got --format {}", o.format);
    const std::string algo = o.kv_cache_algo.empty() ? "FP8" : o.kv_cache_algo;
    check_kv_cache_algo(algo);
    PKV_CHECK(!out_path.empty(), invalid_argument, "--out: expected a path, got ''");
    struct stat st {};
    PKV_CHECK(o.force || ::stat(out_path.c_str(), &st) != 0, failed_precondition,
              "{}: output exists; pass --force to overwrite it", out_path);

    const PatternTable t = read_pattern_table(table_path);
    std::vector<int> report_layers;
    if (!o.report_path.empty())
        report_layers = report_keep_fp16_layers(parse_report(o.report_path), o.report_path, t, table_path);
    const KvPlan plan = make_kv_plan(t, table_path, o.report_path, report_layers, o.keep_fp16_layers);
    if (plan.quantized_layers().empty())
        log::warn("{}: every layer of {} keeps an fp16 KV cache; the plan quantizes nothing", out_path, t.model.name);

    std::string text;
    if (o.format == "vllm-skip") text = vllm_skip_text(plan);
    else if (o.format == "modelopt") text = modelopt_kv_text(plan, algo);
    else text = kv_plan_text(kv_plan_json(plan, provenance_json("export", o.argv)));
    AtomicOutput out(out_path, o.force);
    out.write_and_commit(text.data(), text.size());

    KvPlanSummary s;
    s.out_path = out_path;
    s.format = o.format;
    s.n_layer = t.model.n_layer;
    s.fp16_layers = plan.fp16_layers();
    s.quantized = static_cast<int>(plan.quantized_layers().size());
    s.bytes = text.size();
    return s;
}

}  // namespace pkv
