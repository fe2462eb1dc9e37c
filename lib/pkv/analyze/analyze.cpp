// `pkv analyze`: validation, then the streaming loop over (layer, KV head) and
// sequences. The report is assembled in analyze_report.cpp.
#include "pkv/analyze/analyze.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include <fmt/ranges.h>

#include "pkv/analyze/analyze_internal.h"
#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/core/progress.h"
#include "pkv/dump/kv_dump.h"
#include "pkv/quant/hadamard.h"
#include "pkv/table/pattern_table.h"

namespace pkv {

using analyze_detail::ConfigAccum;
using analyze_detail::PairResult;
using analyze_detail::ReportInputs;
using analyze_detail::RunSpec;

namespace {

// Warnings are logged once and kept for the report.
struct Warnings {
    std::vector<std::string> list;
    void add(const std::string& w) {
        if (std::find(list.begin(), list.end(), w) != list.end()) return;
        log::warn("{}", w);
        list.push_back(w);
    }
};

// RoPE of a key error, so that pre-RoPE reconstructions can be scored by post-RoPE
// queries: k_hat_post = k_post + RoPE_pos(k_hat_pre - k_pre) (RoPE is linear).
struct Rope {
    bool ok = false;
    double base = 10000.0, scale = 1.0;
    int n_rot = 0;
    bool hf = false;
    void apply(float* x, int D, int64_t pos) const {
        const int half = n_rot / 2;
        for (int i = 0; i < half; ++i) {
            const double theta = pos * scale * std::pow(base, -2.0 * i / n_rot);
            const double c = std::cos(theta), s = std::sin(theta);
            const int a = hf ? i : 2 * i, b = hf ? i + D / 2 : 2 * i + 1;
            const double xa = x[a], xb = x[b];
            x[a] = static_cast<float>(xa * c - xb * s);
            x[b] = static_cast<float>(xa * s + xb * c);
        }
    }
};

Rope rope_from_model(const nlohmann::json& m, const std::string& dim_order, int D) {
    Rope r;
    if (!m.is_object() || !m.contains("rope_freq_base") || !m["rope_freq_base"].is_number()) return r;
    const std::string scaling = m.value("rope_scaling", std::string("none"));
    if (scaling != "none" && scaling != "linear") return r;
    r.base = m["rope_freq_base"].get<double>();
    r.scale = m.value("rope_freq_scale", 1.0);
    r.n_rot = m.value("n_rot", D);
    r.hf = dim_order == kvdump::kDimOrderHf;
    r.ok = r.n_rot >= 2 && r.n_rot <= D && r.n_rot % 2 == 0 && (!r.hf || r.n_rot == D);
    return r;
}

bool uses_table(const AnalyzeConfig& c) {
    return std::find(c.methods.begin(), c.methods.end(), KvMethod::patternkv_table) != c.methods.end();
}

void validate(const AnalyzeConfig& c, const KvDumpReader& dump) {
    PKV_CHECK(!c.methods.empty(), invalid_argument, "--methods: expected at least one method");
    const bool minmax = std::any_of(c.methods.begin(), c.methods.end(), kv_method_takes_bits) || uses_table(c);
    PKV_CHECK(!uses_table(c) || !c.table_path.empty(), invalid_argument,
              "--methods patternkv-table needs --table (a pattern table from pkv calibrate)");
    const int D = dump.head_dim();
    PKV_CHECK(!c.bits.empty(), invalid_argument, "--bits: expected at least one width");
    for (int b : c.bits)
        PKV_CHECK(b == 2 || b == 3 || b == 4 || b == 8, invalid_argument, "--bits {}: expected 2, 3, 4 or 8", b);
    PKV_CHECK(c.group >= 1, invalid_argument, "--group {}: expected at least 1", c.group);
    PKV_CHECK(c.window >= 1, invalid_argument, "--window {}: expected at least 1", c.window);
    if (minmax && c.group < D)
        PKV_CHECK(D % c.group == 0, invalid_argument,
                  "--group {} does not divide head_dim {} (per-token value groups of min(group, head_dim) channels)",
                  c.group, D);
    for (KvMethod m : c.methods)
        if (m == KvMethod::q4_0 || m == KvMethod::q8_0)
            PKV_CHECK(D % 32 == 0, unsupported, "{}: head_dim {}: {} needs a multiple of 32", dump.path(), D,
                      kv_method_name(m));
    if (c.rotate)
        PKV_CHECK(D > 0 && (D & (D - 1)) == 0, unsupported, "--rotate: head_dim {}: hadamard rotation needs a power of two",
                  D);
    PKV_CHECK(c.patterns >= 1, invalid_argument, "--patterns {}: expected at least 1", c.patterns);
    PKV_CHECK(c.pattern_cap == 0 || c.pattern_cap >= c.patterns, invalid_argument,
              "--pattern-cap {}: expected 0 (no cap) or at least --patterns {}", c.pattern_cap, c.patterns);
    PKV_CHECK(c.attn_stride >= 1, invalid_argument, "--attn-stride {}: expected at least 1", c.attn_stride);
    PKV_CHECK(c.prefill >= -1, invalid_argument, "--prefill {}: expected at least 0", c.prefill);
    const std::string kname = c.keys_pre ? kvdump::kKPre : kvdump::kKPost;
    PKV_CHECK(dump.has(kname) || dump.has(kvdump::kV), not_found,
              "{}: no {} and no {} dataset: nothing to analyse", dump.path(), kname, kvdump::kV);
    for (int l : c.layers) {
        const auto& ls = dump.layers();
        PKV_CHECK(std::find(ls.begin(), ls.end(), l) != ls.end(), not_found,
                  "--layers {}: layer not stored in {} (stored: {})", l, dump.path(), fmt::join(ls, ","));
    }
    for (int h : c.heads)
        PKV_CHECK(h >= 0 && h < dump.n_head_kv(), out_of_range, "--heads {}: expected a KV head in [0, {})", h,
                  dump.n_head_kv());
}

// The table must describe what is analysed: applying patterns of another model, key
// basis or dim order would silently give meaningless errors.
void validate_table(const AnalyzeConfig& c, const KvDumpReader& dump, const PatternTable& t,
                    const std::vector<int>& layers) {
    const std::string& tp = c.table_path;
    const nlohmann::json model = dump.model();
    const std::string sha = model.is_object() ? model.value("sha256", std::string()) : std::string();
    PKV_CHECK(t.model.sha256 == sha, invalid_argument,
              "--table {}: calibrated on model sha256 {} but {} comes from model sha256 {}", tp,
              t.model.sha256.substr(0, 16), dump.path(), sha.substr(0, 16));
    PKV_CHECK(t.model.n_head_kv == dump.n_head_kv() && t.model.head_dim == dump.head_dim(), invalid_argument,
              "--table {}: n_head_kv {} / head_dim {} but the dump has {} / {}", tp, t.model.n_head_kv,
              t.model.head_dim, dump.n_head_kv(), dump.head_dim());
    const std::string basis = c.keys_pre ? ptable::kBasisPre : ptable::kBasisPost;
    PKV_CHECK(t.key_basis == basis, invalid_argument, "--table {}: key basis is {} but --keys {} analyses {}", tp,
              t.key_basis, c.keys_pre ? "pre" : "post", basis);
    PKV_CHECK(t.key_dim_order == dump.dim_order(), invalid_argument,
              "--table {}: key dim order is {} but the dump's is {} (re-export the table with the dump's order)", tp,
              t.key_dim_order, dump.dim_order());
    PKV_CHECK(t.rotation == ptable::kRotationNone || c.rotate, invalid_argument,
              "--table {}: patterns are in the {}-rotated basis; add --rotate", tp, t.rotation);
    PKV_CHECK(t.rotation_seed == 0, unsupported,
              "--table {}: rotation seed {}: analyze rotates with the plain Hadamard matrix (seed 0)", tp, t.rotation_seed);
    for (int l : layers)
        PKV_CHECK(std::any_of(t.layers.begin(), t.layers.end(), [&](const PatternLayer& L) { return L.layer == l; }),
                  invalid_argument, "--table {}: layer {} was not calibrated (restrict --layers)", tp, l);
    if (t.group != c.group || t.window != c.window)
        log::warn("--table {}: fitted with group {} / window {}, analysed with --group {} / --window {}", tp, t.group,
                  t.window, c.group, c.window);
}

std::vector<RunSpec> make_runs(const AnalyzeConfig& c, const PatternTable* table) {
    std::vector<RunSpec> runs;
    for (int rot = 0; rot <= (c.rotate ? 1 : 0); ++rot)
        for (KvMethod m : c.methods) {
            if (m == KvMethod::patternkv_table) {
                // One run, in the table's own basis, at the bits it was fitted for.
                if ((rot == 1) == (table->rotation != ptable::kRotationNone)) runs.push_back({m, table->bits, rot == 1});
            } else if (kv_method_takes_bits(m))
                for (int b : c.bits) runs.push_back({m, b, rot == 1});
            else
                runs.push_back({m, kv_method_fixed_bits(m), rot == 1});
        }
    return runs;
}

}  // namespace

int64_t analyze_prefill(int64_t n, int64_t prefill, int window) {
    if (prefill >= 0) return std::min(n, prefill);
    return (n / 2) / window * window;
}

std::vector<KvMethod> parse_method_list(const std::string& list) {
    std::vector<KvMethod> out;
    std::stringstream ss(list);
    std::string item;
    while (std::getline(ss, item, ',')) {
        if (item.empty()) continue;
        const KvMethod m = parse_kv_method(item);
        if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
    }
    PKV_CHECK(!out.empty(), invalid_argument, "--methods '{}': expected at least one method", list);
    return out;
}

std::vector<int> parse_int_list(const std::string& option, const std::string& list) {
    std::set<int> out;
    std::stringstream ss(list);
    std::string item;
    auto num = [&](const std::string& s) {
        size_t used = 0;
        long v = -1;
        try {
            v = std::stol(s, &used);
        } catch (...) {
            used = 0;
        }
        PKV_CHECK(used == s.size() && !s.empty() && v >= 0 && v < (1L << 30), invalid_argument,
                  "{} '{}': expected non-negative integers or ranges like 2-5, got '{}'", option, list, s);
        return static_cast<int>(v);
    };
    while (std::getline(ss, item, ',')) {
        if (item.empty()) continue;
        const size_t dash = item.find('-');
        if (dash == std::string::npos) {
            out.insert(num(item));
        } else {
            const int a = num(item.substr(0, dash)), b = num(item.substr(dash + 1));
            PKV_CHECK(a <= b, invalid_argument, "{} '{}': empty range '{}'", option, list, item);
            for (int i = a; i <= b; ++i) out.insert(i);
        }
    }
    PKV_CHECK(!out.empty(), invalid_argument, "{} '{}': expected at least one value", option, list);
    return {out.begin(), out.end()};
}

nlohmann::json run_analyze(const AnalyzeConfig& c) {
    KvDumpReader dump(c.dump_path);
    validate(c, dump);
    std::unique_ptr<PatternTable> table;
    if (uses_table(c)) table = std::make_unique<PatternTable>(read_pattern_table(c.table_path));
    const int D = dump.head_dim();
    const int n_head = dump.n_head(), n_kv = dump.n_head_kv();
    PKV_CHECK(n_kv >= 1 && n_head % n_kv == 0, data_loss, "{}: n_head {} is not a multiple of n_head_kv {}",
              dump.path(), n_head, n_kv);
    const int group_q = n_head / n_kv;
    const std::string kname = c.keys_pre ? kvdump::kKPre : kvdump::kKPost;

    Warnings warn;
    ReportInputs in;
    in.config = &c;
    in.runs = make_runs(c, table.get());
    in.has_k = dump.has(kname);
    in.has_v = dump.has(kvdump::kV);
    if (!in.has_k) warn.add(fmt::format("{}: no {} dataset: key metrics are null", dump.path(), kname));
    if (!in.has_v) warn.add(fmt::format("{}: no {} dataset: value metrics are null", dump.path(), kvdump::kV));
    in.has_attn = dump.has(kvdump::kQ) && in.has_k && in.has_v;
    Rope rope;
    if (!dump.has(kvdump::kQ)) {
        warn.add(fmt::format("{}: no {} dataset (queries not captured): attention metrics skipped", dump.path(),
                             kvdump::kQ));
    } else if (in.has_attn && c.keys_pre) {
        rope = rope_from_model(dump.model(), dump.dim_order(), D);
        if (!dump.has(kvdump::kKPost) || !rope.ok) {
            in.has_attn = false;
            warn.add(fmt::format("{}: --keys pre needs {} and a plain RoPE description in the model record to score "
                                 "attention: attention metrics skipped",
                                 dump.path(), kvdump::kKPost));
        }
    } else if (!in.has_attn) {
        warn.add(fmt::format("{}: attention metrics need keys and values: skipped", dump.path()));
    }

    const KvDumpReader::Sequences seqs = dump.sequences();
    const std::vector<int64_t>& seq_start = seqs.start;
    const std::vector<int32_t>& seq_len = seqs.length;
    in.n_tokens = dump.n_tokens();

    // (slot, layer) and heads to analyse.
    std::vector<std::pair<int, int>> slots;
    for (int s = 0; s < dump.n_layers(); ++s) {
        const int l = dump.layers()[s];
        if (c.layers.empty() || std::find(c.layers.begin(), c.layers.end(), l) != c.layers.end())
            slots.push_back({s, l});
    }
    in.heads = c.heads;
    if (in.heads.empty())
        for (int h = 0; h < n_kv; ++h) in.heads.push_back(h);
    for (const auto& s : slots) in.layers.push_back(s.second);
    if (table) {
        validate_table(c, dump, *table, in.layers);
        in.table = {{"path", c.table_path},
                    {"bits", table->bits},
                    {"group", table->group},
                    {"window", table->window},
                    {"k_patterns", table->k_patterns},
                    {"v_patterns", table->v_patterns},
                    {"assign", table->assign},
                    {"rotation", table->rotation},
                    {"calibration",
                     {{"dumps", table->calibration.value("dumps", nlohmann::json::array())},
                      {"tokens", table->calibration.value("tokens", nlohmann::json::object())},
                      {"seed", table->calibration.value("seed", nlohmann::json(nullptr))}}}};
    }

    const size_t n_pairs = slots.size() * in.heads.size();
    // Histograms for up to 6 heads spread over the analysed ones (patternkv only).
    int hist_run = -1;
    for (size_t r = 0; r < in.runs.size(); ++r)
        if (in.runs[r].method == KvMethod::patternkv && !in.runs[r].rotate) {
            hist_run = static_cast<int>(r);
            break;
        }
    std::set<size_t> hist_pairs;
    if (hist_run >= 0)
        for (size_t i = 0; i < std::min<size_t>(6, n_pairs); ++i) hist_pairs.insert(i * n_pairs / std::min<size_t>(6, n_pairs));

    SimParams base;
    base.group = c.group;
    base.window = c.window;
    base.patterns = c.patterns;
    base.pattern_cap = c.pattern_cap;
    base.decode_l2 = c.assign_l2;
    base.seed = c.seed;

    install_interrupt_handlers();
    Progress progress("analyze", static_cast<uint64_t>(n_pairs) * static_cast<uint64_t>(in.n_tokens), "tok");
    const size_t R = in.runs.size();
    size_t pair_index = 0;
    for (const auto& slot_layer : slots) {
        // Not a structured binding: C++17 lambdas cannot capture those (clang refuses).
        const int slot = slot_layer.first, layer = slot_layer.second;
        for (int head : in.heads) {
            // patternkv-table: this head's rows of the table.
            TableHeadView tk, tv;
            if (table) {
                const PatternLayer& L = *std::find_if(table->layers.begin(), table->layers.end(),
                                                      [&](const PatternLayer& x) { return x.layer == layer; });
                const bool l2 = table->assign == ptable::kAssignL2;
                tk = {L.k_patterns.data() + static_cast<int64_t>(head) * table->k_patterns * D, table->k_patterns,
                      L.k_clip[head], ptable::kDefaultGateZ, l2};
                tv = {L.v_patterns.data() + static_cast<int64_t>(head) * table->v_patterns * D, table->v_patterns,
                      L.v_clip[head], L.v_gate_z[head], l2};
            }
            PairResult pr;
            pr.layer = layer;
            pr.head = head;
            pr.configs.resize(R);
            pr.has_hist = hist_pairs.count(pair_index) > 0;
            for (size_t s = 0; s < seq_start.size(); ++s) {
                check_interrupted();
                const int64_t t0 = seq_start[s], n = seq_len[s];
                if (n <= 0) continue;
                const int64_t P = analyze_prefill(n, c.prefill, c.window);
                if (P < c.patterns && std::any_of(c.methods.begin(), c.methods.end(),
                                                  [](KvMethod m) { return m == KvMethod::patternkv; }))
                    warn.add(fmt::format("a sequence has a prefill of {} tokens, fewer than --patterns {}: its "
                                         "prefill k-means uses k = {}",
                                         P, c.patterns, P));
                std::vector<float> xk, xv, kpost;
                std::vector<std::vector<float>> qs;
                if (in.has_k) xk = dump.read_head(kname, slot, head, t0, n);
                if (in.has_v) xv = dump.read_head(kvdump::kV, slot, head, t0, n);
                if (in.has_attn) {
                    for (int g = 0; g < group_q; ++g)
                        qs.push_back(dump.read_head(kvdump::kQ, slot, head * group_q + g, t0, n));
                    if (c.keys_pre) kpost = dump.read_head(kvdump::kKPost, slot, head, t0, n);
                }
                for (int rot = 0; rot <= (c.rotate ? 1 : 0); ++rot) {
                    std::vector<float> k = xk, v = xv;
                    if (rot) {
                        if (in.has_k) hadamard_rotate_rows(k.data(), n, D);
                        if (in.has_v) hadamard_rotate_rows(v.data(), n, D);
                    }
                    if (in.has_k) accumulate_flatness(pr.raw_k[rot], KvTensor::k, k.data(), n, D, c.group, nullptr);
                    if (in.has_v) accumulate_flatness(pr.raw_v[rot], KvTensor::v, v.data(), n, D, c.group, nullptr);
                    std::vector<size_t> idx;
                    for (size_t r = 0; r < R; ++r)
                        if (in.runs[r].rotate == (rot == 1)) idx.push_back(r);
                    std::vector<SimResult> sk(idx.size()), sv(idx.size());
#pragma omp parallel for schedule(dynamic)
                    for (int64_t i = 0; i < static_cast<int64_t>(idx.size()); ++i) {
                        const RunSpec& run = in.runs[idx[i]];
                        ConfigAccum& acc = pr.configs[idx[i]];
                        SimParams sp = base;
                        sp.method = run.method;
                        sp.bits = run.bits;
                        sp.table_k = &tk;
                        sp.table_v = &tv;
                        if (in.has_k) {
                            sk[i] = simulate_cache(sp, KvTensor::k, k.data(), n, D, P);
                            acc.k.add(k.data(), sk[i].recon.data(), n * D);
                            acc.k.bits += sk[i].bits.total();
                            acc.k.elements += static_cast<double>(n) * D;
                            if (run.method == KvMethod::patternkv || run.method == KvMethod::patternkv_table)
                                accumulate_flatness(acc.flat_k, KvTensor::k, k.data(), n, D, c.group, &sk[i]);
                        }
                        if (in.has_v) {
                            sv[i] = simulate_cache(sp, KvTensor::v, v.data(), n, D, P);
                            acc.v.add(v.data(), sv[i].recon.data(), n * D);
                            acc.v.bits += sv[i].bits.total();
                            acc.v.elements += static_cast<double>(n) * D;
                            if (run.method == KvMethod::patternkv || run.method == KvMethod::patternkv_table)
                                accumulate_flatness(acc.flat_v, KvTensor::v, v.data(), n, D, c.group, &sv[i]);
                        }
                    }
                    if (pr.has_hist && !rot) {
                        for (size_t i = 0; i < idx.size(); ++i) {
                            if (static_cast<int>(idx[i]) != hist_run) continue;
                            auto hist = [&](HistAccum& h, const std::vector<float>& x, const SimResult& sim, bool isk) {
                                std::vector<float> raw, res;
                                for (int64_t t = 0; t < n && sim.pattern[t] >= 0; ++t) {
                                    const float* cc = sim.bank.data() + static_cast<int64_t>(sim.pattern[t]) * D;
                                    const bool sub = isk || sim.gate[t];
                                    for (int d = 0; d < D; ++d) {
                                        raw.push_back(x[t * D + d]);
                                        res.push_back(x[t * D + d] - (sub ? cc[d] : 0.0f));
                                    }
                                }
                                h.add(raw.data(), static_cast<int64_t>(raw.size()), res.data(),
                                      static_cast<int64_t>(res.size()), c.hist_bins);
                            };
                            if (in.has_k) hist(pr.hist_k, k, sk[i], true);
                            if (in.has_v) hist(pr.hist_v, v, sv[i], false);
                        }
                    }
                    if (!in.has_attn) continue;
                    // Attention basis: post-RoPE keys are scored in the simulation basis
                    // (rotated queries); pre-RoPE key errors are rotated back and RoPE'd.
                    std::vector<std::vector<float>> khat_store;
                    std::vector<AttnCache> caches;
                    const std::vector<float>* kexact = c.keys_pre ? &kpost : &k;
                    for (size_t i = 0; i < idx.size(); ++i) {
                        AttnCache ca;
                        if (c.keys_pre) {
                            std::vector<float> e(static_cast<size_t>(n * D));
                            for (int64_t j = 0; j < n * D; ++j) e[j] = sk[i].recon[j] - k[j];
                            if (rot) hadamard_rotate_rows(e.data(), n, D, nullptr, true);
                            for (int64_t t = 0; t < n; ++t) {
                                rope.apply(e.data() + t * D, D, t);
                                for (int d = 0; d < D; ++d) e[t * D + d] += kpost[t * D + d];
                            }
                            khat_store.push_back(std::move(e));
                            ca.k_hat = khat_store.back().data();
                        } else {
                            ca.k_hat = sk[i].recon.data();
                        }
                        ca.flush_k = sk[i].flush_step.data();
                        ca.v_hat = sv[i].recon.data();
                        ca.flush_v = sv[i].flush_step.data();
                        ca.acc = &pr.configs[idx[i]].attn;
                        caches.push_back(ca);
                    }
                    for (auto& qh : qs) {
                        std::vector<float> qq = qh;
                        if (rot && !c.keys_pre) hadamard_rotate_rows(qq.data(), n, D);
                        accumulate_attention(qq.data(), kexact->data(), v.data(), n, D, c.attn_stride, caches);
                    }
                }
                progress.advance(static_cast<uint64_t>(n));
            }
            in.pairs.push_back(std::move(pr));
            ++pair_index;
        }
    }
    progress.finish();

    const nlohmann::json model = dump.model();
    in.model = {{"name", model.value("name", std::string("unknown"))},
                {"n_layer", model.value("n_layer", dump.n_layers())},
                {"n_head", n_head},
                {"n_head_kv", n_kv},
                {"head_dim", D}};
    in.dump_model = model.is_object() ? model : nlohmann::json::object();
    const nlohmann::json prov = dump.provenance();
    in.dump_provenance = prov.is_object() ? prov : nlohmann::json::object();
    in.warnings = warn.list;
    return analyze_detail::build_report(in);
}

}  // namespace pkv
