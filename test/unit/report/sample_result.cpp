#include "sample_result.h"

#include <memory>

namespace pkv::test {

namespace {

constexpr double kElements = 1000;

// Power sums of a distribution with values 0 (share 1 - q) and +-1 (share q / 2 each):
// variance q, fourth moment q, so the excess kurtosis is 1/q - 3.
void set_flat(FlatAccum& f, double ros, double kurtosis) {
    const double q = 1.0 / (kurtosis + 3.0);
    f.ros_sum = 4 * ros;
    f.groups = 4;
    f.count = 1000;
    f.s1 = f.s3 = 0;
    f.s2 = f.s4 = q * f.count;
}

// One dimension with zero mean and energy 10 over 10 tokens: total variance 10.
void set_flatness(FlatnessAccum& f, const SampleMetrics& m, bool pattern) {
    set_flat(f.raw, m.ros_raw, m.kurt_raw);
    f.has_resid = pattern;
    if (!pattern) return;
    set_flat(f.resid, m.ros_resid, m.kurt_resid);
    f.sum = {0.0};
    f.sq = 10;
    f.tokens = 10;
    f.resid2 = 10 * (1 - m.var_explained);
}

void set_error(ErrorAccum& e, double nmse, double eff_bits) {
    e.ref2 = 1;
    e.err2 = nmse;
    e.elements = kElements;
    e.bits = eff_bits * kElements;
}

}  // namespace

void set_metrics(analyze::PairResult& pair, size_t r, const SampleMetrics& m, bool pattern) {
    analyze::ConfigAccum& a = pair.configs.at(r);
    set_error(a.k, m.k_nmse, m.eff_bits);
    set_error(a.v, m.v_nmse, m.eff_bits);
    a.attn.kl_sum = 2 * m.kl;
    a.attn.kl_rows = 2;
    a.attn.rel_sum = 2 * m.out_rel_err;
    a.attn.rel_rows = 2;
    for (int rot = 0; rot < 2; ++rot) {
        set_flatness(pair.raw_k[rot], m, false);
        set_flatness(pair.raw_v[rot], m, false);
    }
    set_flatness(a.flat_k, m, pattern);
    set_flatness(a.flat_v, m, pattern);
}

AnalyzeResult make_sample_result(const std::vector<int>& windows, int n_kv_head) {
    auto config = std::make_shared<AnalyzeConfig>();
    config->dump_path = "dump.h5";
    config->methods = {KvMethod::fp16, KvMethod::kivi, KvMethod::patternkv};
    config->bits = {2};
    config->argv = {"pkv", "analyze", "--dump", "dump.h5"};
    AnalyzeResult res;
    res.config = config;
    res.runs = {{KvMethod::fp16, 16, false}, {KvMethod::kivi, 2, false}, {KvMethod::patternkv, 2, false}};
    res.has_k = res.has_v = res.has_attn = true;
    res.n_tokens = 2048;
    const int n_layer = static_cast<int>(windows.size());
    res.model = {{"name", "sample"},
                 {"n_layer", n_layer},
                 {"n_head", 4 * n_kv_head},
                 {"n_head_kv", n_kv_head},
                 {"head_dim", 64}};
    res.dump_model = {{"name", "sample"}};
    res.dump_provenance = {{"tool", "pkv"}, {"command", "dump"}};
    for (int l = 0; l < n_layer; ++l) res.layers.push_back(l);
    for (int h = 0; h < n_kv_head; ++h) res.heads.push_back(h);
    res.layer_windows = windows;
    for (int l = 0; l < n_layer; ++l)
        for (int h = 0; h < n_kv_head; ++h) {
            analyze::PairResult p;
            p.layer = l;
            p.head = h;
            p.window = windows[l];
            p.configs.resize(res.runs.size());
            const double kivi = windows[l] > 0 ? 0.04 : 0.08;
            SampleMetrics fp16, k2, p2;
            fp16.k_nmse = fp16.v_nmse = fp16.kl = fp16.out_rel_err = 0;
            k2.k_nmse = kivi;
            k2.v_nmse = kivi / 2;
            k2.eff_bits = 2.5;
            p2.k_nmse = kivi / 4;
            p2.v_nmse = kivi / 8;
            p2.eff_bits = 2.75;
            set_metrics(p, 0, fp16, false);
            set_metrics(p, 1, k2, false);
            set_metrics(p, 2, p2, true);
            res.pairs.push_back(std::move(p));
        }
    return res;
}

}  // namespace pkv::test
