// `pkv analyze`: validation, then the streaming loop over (layer, KV head) and
// sequences; report/analyze_json.cpp turns the result into the report.
#include "pkv/pipeline/analyze.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>

#include <fmt/ranges.h>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/core/progress.h"
#include "pkv/core/rope.h"
#include "pkv/kvcache/pre_rope.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/pipeline/analyze_internal.h"
#include "pkv/pipeline/kv_source.h"
#include "pkv/quant/hadamard.h"
#include "pkv/table/pattern_table.h"

namespace pkv {

using namespace analyze_detail;

namespace {

bool uses_table(const AnalyzeConfig& c) {
    return std::find(c.methods.begin(), c.methods.end(), KvMethod::patternkv_table) != c.methods.end();
}

void validate(const AnalyzeConfig& c, const KvSource& dump) {
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
        PKV_CHECK(D > 0 && (D & (D - 1)) == 0, unsupported,
                  "--rotate: head_dim {}: hadamard rotation needs a power of two", D);
    PKV_CHECK(c.patterns >= 1, invalid_argument, "--patterns {}: expected at least 1", c.patterns);
    PKV_CHECK(c.pattern_cap == 0 || c.pattern_cap >= c.patterns, invalid_argument,
              "--pattern-cap {}: expected 0 (no cap) or at least --patterns {}", c.pattern_cap, c.patterns);
    PKV_CHECK(c.attn_stride >= 1, invalid_argument, "--attn-stride {}: expected at least 1", c.attn_stride);
    PKV_CHECK(c.prefill >= -1, invalid_argument, "--prefill {}: expected at least 0", c.prefill);
    const std::string kname = c.keys_pre ? kvdump::kKPre : kvdump::kKPost;
    PKV_CHECK(dump.has(kname) || dump.has(kvdump::kV), not_found, "{}: no {} and no {} dataset: nothing to analyse",
              dump.path(), kname, kvdump::kV);
    for (int l : c.layers) {
        const auto& ls = dump.layers();
        PKV_CHECK(std::find(ls.begin(), ls.end(), l) != ls.end(), not_found,
                  "--layers {}: layer not stored in {} (stored: {})", l, dump.path(), fmt::join(ls, ","));
    }
    for (int h : c.heads)
        PKV_CHECK(h >= 0 && h < dump.n_head_kv(), out_of_range, "--heads {}: expected a KV head in [0, {})", h,
                  dump.n_head_kv());
    // The block methods keep up to --window tokens in fp16, inside a local layer's ring.
    const bool windowed = std::any_of(c.methods.begin(), c.methods.end(), kv_method_keeps_window);
    for (const KvDumpLayerInfo& g : dump.layer_info())
        if (windowed && (c.layers.empty() || std::count(c.layers.begin(), c.layers.end(), g.layer)))
            check_window_fits_ring("--window", c.window, g.window, fmt::format("layer {} in {}", g.layer, dump.path()));
}

// The table must describe what is analysed: applying patterns of another model, key
// basis or dim order would silently give meaningless errors.
void validate_table(const AnalyzeConfig& c, const KvSource& dump, const PatternTable& t,
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
              "--table {}: rotation seed {}: analyze rotates with the plain Hadamard matrix (seed 0)", tp,
              t.rotation_seed);
    for (int l : layers)
        PKV_CHECK(std::any_of(t.layers.begin(), t.layers.end(), [&](const PatternLayer& L) { return L.layer == l; }),
                  invalid_argument, "--table {}: layer {} was not calibrated (restrict --layers)", tp, l);
    // A 1.1 table records each layer's window: it must be the layer the dump holds.
    for (const KvDumpLayerInfo& g : dump.layer_info())
        for (const PatternLayer& L : t.layers)
            if (t.layer_geometry && L.layer == g.layer)
                PKV_CHECK(L.window == g.window, invalid_argument,
                          "--table {}: layer {} was calibrated with sliding window {}, but {} has {} for it", tp,
                          L.layer, L.window, dump.path(), g.window);
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
                if ((rot == 1) == (table->rotation != ptable::kRotationNone))
                    runs.push_back({m, table->bits, rot == 1});
            } else if (kv_method_takes_bits(m))
                for (int b : c.bits) runs.push_back({m, b, rot == 1});
            else runs.push_back({m, kv_method_fixed_bits(m), rot == 1});
        }
    return runs;
}

SeqData read_sequence(const Context& x, int slot, int head, size_t s) {
    SeqData sd;
    const int64_t t0 = x.seqs.start[s];
    sd.n = x.seqs.length[s];
    sd.P = analyze_prefill(sd.n, x.c.prefill, x.c.window);
    sd.ring = x.dump.layer_info()[slot].window;
    if (!x.slot_rope.empty()) sd.rope = x.slot_rope[slot];
    if (x.out.has_k) sd.k = x.dump.read_head(x.kname, slot, head, t0, sd.n);
    if (x.out.has_v) sd.v = x.dump.read_head(kvdump::kV, slot, head, t0, sd.n);
    if (x.out.has_attn) {
        for (int g = 0; g < x.group_q; ++g)
            sd.qs.push_back(x.dump.read_head(kvdump::kQ, slot, head * x.group_q + g, t0, sd.n));
        if (x.c.keys_pre) sd.kpost = x.dump.read_head(kvdump::kKPost, slot, head, t0, sd.n);
    }
    return sd;
}

// patternkv-table: one head's rows of the table (empty views without a table).
void table_views(const Context& x, int layer, int head, TableHeadView& tk, TableHeadView& tv) {
    if (!x.table) return;
    const PatternTable& t = *x.table;
    const auto it =
        std::find_if(t.layers.begin(), t.layers.end(), [&](const PatternLayer& p) { return p.layer == layer; });
    const PatternLayer& L = *it;
    const size_t li = static_cast<size_t>(it - t.layers.begin());
    const bool l2 = t.assign == ptable::kAssignL2;
    // A table's width allocation gives each head its own width (the run's bits are pkv.quant.bits).
    tk = {L.k_patterns.data() + static_cast<int64_t>(head) * t.k_patterns * x.D,
          t.k_patterns,
          L.k_clip[head],
          ptable::kDefaultGateZ,
          l2,
          t.head_bits(li, head, false)};
    tv = {L.v_patterns.data() + static_cast<int64_t>(head) * t.v_patterns * x.D,
          t.v_patterns,
          L.v_clip[head],
          L.v_gate_z[head],
          l2,
          t.head_bits(li, head, true)};
}

PairResult new_pair(const Context& x, int slot, int layer, int head, bool has_hist) {
    PairResult pr;
    pr.layer = layer;
    pr.head = head;
    pr.window = x.dump.layer_info()[slot].window;
    pr.configs.resize(x.out.runs.size());
    pr.has_hist = has_hist;
    return pr;
}

// Sequences [s0, s1) of every analysed (layer, head), each added to its result in sequence
// order, so that any split into blocks or groups gives the sums of one pass over all
// sequences. Without a cache simulator a group is one sequence of one head; with one, as
// many whole sequences as it takes per call. The next group is read (and rotated, and
// with a simulator simulated) on another thread while this one is measured and scored, so
// reading and the device's simulation hide behind the work here.
void analyze_block(const Context& x, const std::vector<std::pair<int, int>>& slots, size_t s0, size_t s1,
                   std::vector<PairResult>& pairs, Progress& progress) {
    struct Item {
        size_t pair;
        int slot, layer, head;
        size_t seq;
    };
    std::vector<Item> items;
    size_t p = 0;
    for (const auto& [slot, layer] : slots)
        for (int head : x.out.heads) {
            for (size_t s = s0; s < s1; ++s)
                if (x.seqs.length[s] > 0) items.push_back({p, slot, layer, head, s});
            ++p;
        }
    const int64_t cap = x.sim ? x.sim->batch_tokens(x.D) : 0;
    std::vector<std::pair<size_t, size_t>> groups;
    for (size_t i = 0; i < items.size();) {
        size_t j = i + 1;
        for (int64_t tok = x.seqs.length[items[i].seq]; j < items.size() && tok + x.seqs.length[items[j].seq] <= cap;)
            tok += x.seqs.length[items[j++].seq];
        groups.push_back({i, j});
        i = j;
    }
    const bool mines = std::find(x.c.methods.begin(), x.c.methods.end(), KvMethod::patternkv) != x.c.methods.end();
    // The reading thread's part: read, rotate and (with a simulator) simulate. The source and
    // the simulator are only used here, one group at a time.
    auto prepare = [&x, &items](std::pair<size_t, size_t> g) {
        Group gr;
        for (size_t i = g.first; i < g.second; ++i)
            gr.sds.push_back(read_sequence(x, items[i].slot, items[i].head, items[i].seq));
        gr.ws.resize(gr.sds.size());
        for (size_t i = 0; i < gr.sds.size(); ++i) {
            gr.ws[i].sd = &gr.sds[i];
            table_views(x, items[g.first + i].layer, items[g.first + i].head, gr.ws[i].tk, gr.ws[i].tv);
        }
        for (int rot = 0; rot <= (x.c.rotate ? 1 : 0); ++rot) {
            Basis& b = gr.basis[rot];
            b.ks.resize(gr.sds.size());
            b.vs.resize(gr.sds.size());
            for (size_t w = 0; w < gr.sds.size(); ++w) {
                const SeqData& sd = gr.sds[w];
                b.ks[w] = sd.k;
                b.vs[w] = sd.v;
                if (rot && x.out.has_k) hadamard_rotate_rows(b.ks[w].data(), sd.n, x.D);
                if (rot && x.out.has_v) hadamard_rotate_rows(b.vs[w].data(), sd.n, x.D);
            }
            for (size_t r = 0; r < x.out.runs.size(); ++r)
                if (x.out.runs[r].rotate == (rot == 1)) b.idx.push_back(r);
            if (x.sim) {
                const auto t0 = std::chrono::steady_clock::now();
                simulate_group(x, b.idx, gr.ws, b.ks, b.vs, b.sk, b.sv);
                add_seconds(x.out.times.simulate, t0);
                b.simulated = true;
            }
        }
        return gr;
    };
    std::future<Group> next;
    if (!groups.empty()) next = std::async(std::launch::async, prepare, groups[0]);
    for (size_t g = 0; g < groups.size(); ++g) {
        const auto t0 = std::chrono::steady_clock::now();
        Group gr = next.get();
        add_seconds(x.out.times.read_wait, t0);
        check_interrupted();
        if (g + 1 < groups.size()) next = std::async(std::launch::async, prepare, groups[g + 1]);
        for (size_t i = 0; i < gr.sds.size(); ++i) {
            gr.ws[i].pr = &pairs[items[groups[g].first + i].pair];
            if (gr.sds[i].P < x.c.patterns && mines)
                x.warn.add(
                    fmt::format("a sequence has a prefill of {} tokens, fewer than --patterns {}: its prefill "
                                "k-means uses k = {}",
                                gr.sds[i].P, x.c.patterns, gr.sds[i].P));
        }
        analyze_group(x, gr);
        for (const SeqData& sd : gr.sds) progress.advance(static_cast<uint64_t>(sd.n));
    }
}

// Blocks of whole sequences of at most block_tokens tokens (at least one sequence each):
// what the model source holds at a time. A dump is one block.
std::vector<std::pair<size_t, size_t>> sequence_blocks(const KvDumpReader::Sequences& seqs, bool streamed,
                                                       int64_t block_tokens) {
    std::vector<std::pair<size_t, size_t>> out;
    const size_t S = seqs.start.size();
    if (!streamed || block_tokens <= 0) return {{0, S}};
    for (size_t s0 = 0; s0 < S;) {
        size_t s1 = s0 + 1;
        int64_t n = seqs.length[s0];
        while (s1 < S && n + seqs.length[s1] <= block_tokens) n += seqs.length[s1++];
        out.push_back({s0, s1});
        s0 = s1;
    }
    return out;
}

// The activations analyze reads: the analysed key basis (and post-RoPE keys to score
// pre-RoPE ones), values and queries.
std::unique_ptr<KvSource> open_source(const AnalyzeConfig& c) {
    const bool stream = !c.stream.model_path.empty();
    PKV_CHECK(stream != !c.dump_path.empty(), invalid_argument,
              stream ? "--model and --dump: expected one source of activations, got both"
                     : "--dump or --model: expected a KV dump or a model to stream from, got neither");
    if (!stream) return open_dump_source(c.dump_path);
    ModelSourceConfig m = c.stream;
    m.capture = CaptureSet::parse(c.keys_pre ? "k_pre,k_post,v,q" : "k_post,v,q");
    m.layers = c.layers;
    m.sample_tokens = 0;
    m.command = "analyze";
    m.argv = c.argv;
    return open_model_source(m);
}

// --keys pre: one RoPE table per distinct layer RoPE (global and local layers differ);
// false when a layer's RoPE is not one pkv implements.
bool plan_ropes(Context& x) {
    int32_t longest = 0;
    for (int32_t n : x.seqs.length) longest = std::max(longest, n);
    std::vector<RopeParams> seen;
    for (const KvDumpLayerInfo& g : x.dump.layer_info()) {
        const std::optional<RopeParams> r = dump_layer_rope(x.dump.model(), x.dump.dim_order(), x.D, g);
        if (!r) return false;
        size_t i = 0;
        while (i < seen.size() && !(seen[i].base == r->base && seen[i].freq_scale == r->freq_scale)) ++i;
        if (i == seen.size()) {
            seen.push_back(*r);
            x.ropes.push_back(rope_table(*r, longest));
        }
        x.slot_rope.push_back(static_cast<int>(i));
    }
    return true;
}

// Which datasets exist decides which metrics the report can have; each gap is a warning.
void plan_metrics(Context& x) {
    AnalyzeResult& out = x.out;
    const std::string& path = x.dump.path();
    out.has_k = x.dump.has(x.kname);
    out.has_v = x.dump.has(kvdump::kV);
    if (!out.has_k) x.warn.add(fmt::format("{}: no {} dataset: key metrics are null", path, x.kname));
    if (!out.has_v) x.warn.add(fmt::format("{}: no {} dataset: value metrics are null", path, kvdump::kV));
    out.has_attn = x.dump.has(kvdump::kQ) && out.has_k && out.has_v;
    if (!x.dump.has(kvdump::kQ)) {
        x.warn.add(
            fmt::format("{}: no {} dataset (queries not captured): attention metrics skipped", path, kvdump::kQ));
    } else if (out.has_attn && x.c.keys_pre && !(x.dump.has(kvdump::kKPost) && plan_ropes(x))) {
        out.has_attn = false;
        x.warn.add(
            fmt::format("{}: --keys pre needs {} and a plain RoPE description in the model record to "
                        "score attention: attention metrics skipped",
                        path, kvdump::kKPost));
    } else if (!out.has_attn) {
        x.warn.add(fmt::format("{}: attention metrics need keys and values: skipped", path));
    }
}

nlohmann::json table_record(const AnalyzeConfig& c, const PatternTable& t) {
    return {{"path", c.table_path},
            {"bits", t.bits},
            {"group", t.group},
            {"window", t.window},
            {"k_patterns", t.k_patterns},
            {"v_patterns", t.v_patterns},
            {"assign", t.assign},
            {"rotation", t.rotation},
            {"outliers", t.outliers},
            {"calibration",
             {{"dumps", t.calibration.value("dumps", nlohmann::json::array())},
              {"tokens", t.calibration.value("tokens", nlohmann::json::object())},
              {"seed", t.calibration.value("seed", nlohmann::json(nullptr))}}}};
}

// Histograms for up to 6 (layer, head) pairs spread over the analysed ones (patternkv only).
std::set<size_t> histogram_pairs(Context& x, size_t n_pairs) {
    for (size_t r = 0; r < x.out.runs.size(); ++r)
        if (x.out.runs[r].method == KvMethod::patternkv && !x.out.runs[r].rotate) {
            x.hist_run = static_cast<int>(r);
            break;
        }
    std::set<size_t> pairs;
    const size_t n_hist = std::min<size_t>(6, n_pairs);
    if (x.hist_run >= 0)
        for (size_t i = 0; i < n_hist; ++i) pairs.insert(i * n_pairs / n_hist);
    return pairs;
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

AnalyzeResult run_analyze(const AnalyzeConfig& c) {
    const std::unique_ptr<KvSource> source = open_source(c);
    KvSource& dump = *source;
    validate(c, dump);
    std::unique_ptr<PatternTable> table;
    if (uses_table(c)) table = std::make_unique<PatternTable>(read_pattern_table(c.table_path));
    const int n_head = dump.n_head(), n_kv = dump.n_head_kv();
    PKV_CHECK(n_kv >= 1 && n_head % n_kv == 0, data_loss, "{}: n_head {} is not a multiple of n_head_kv {}",
              dump.path(), n_head, n_kv);

    Warnings warn;
    AnalyzeResult out;
    out.config = std::make_shared<const AnalyzeConfig>(c);
    Context x(c, dump, table.get(), out, warn);
    x.kname = c.keys_pre ? kvdump::kKPre : kvdump::kKPost;
    x.D = dump.head_dim();
    x.group_q = n_head / n_kv;
    x.seqs = dump.sequences();
    const nlohmann::json mrec = dump.model();
    if (mrec.is_object() && mrec.contains("attn_scale") && mrec["attn_scale"].is_number())
        x.kq_scale = mrec["attn_scale"].get<float>();
    out.runs = make_runs(c, table.get());
    out.n_tokens = dump.n_tokens();
    plan_metrics(x);

    // (slot, layer) and heads to analyse.
    std::vector<std::pair<int, int>> slots;
    for (int s = 0; s < dump.n_layers(); ++s) {
        const int l = dump.layers()[s];
        if (c.layers.empty() || std::find(c.layers.begin(), c.layers.end(), l) != c.layers.end())
            slots.push_back({s, l});
    }
    out.heads = c.heads;
    if (out.heads.empty())
        for (int h = 0; h < n_kv; ++h) out.heads.push_back(h);
    for (const auto& s : slots) {
        out.layers.push_back(s.second);
        out.layer_windows.push_back(dump.layer_info()[s.first].window);
    }
    if (table) {
        validate_table(c, dump, *table, out.layers);
        out.table = table_record(c, *table);
    }
    x.base.group = c.group;
    x.base.window = c.window;
    x.base.patterns = c.patterns;
    x.base.pattern_cap = c.pattern_cap;
    x.base.decode_l2 = c.assign_l2;
    x.base.seed = c.seed;

    // The scorer comes after every check, so bad input fails before a GPU is set up.
    std::unique_ptr<AttentionScorer> scorer;
    if (c.attention) {
        scorer = c.attention();
        PKV_CHECK(scorer != nullptr, internal, "analyze: the attention scorer factory made no scorer");
        out.device = scorer->description();
        if (out.has_attn) x.scorer = scorer.get();
    }
    std::unique_ptr<CacheSimulator> sim;
    if (c.simulator && (out.has_k || out.has_v)) {
        sim = c.simulator();
        PKV_CHECK(sim != nullptr, internal, "analyze: the cache simulator factory made no simulator");
        out.sim_device = sim->description();
        x.sim = sim.get();
    }

    const size_t n_pairs = slots.size() * out.heads.size();
    const std::set<size_t> hist_pairs = histogram_pairs(x, n_pairs);
    install_interrupt_handlers();
    Progress progress("analyze", static_cast<uint64_t>(n_pairs) * static_cast<uint64_t>(out.n_tokens), "tok");
    for (const auto& [slot, layer] : slots)
        for (int head : out.heads)
            out.pairs.push_back(new_pair(x, slot, layer, head, hist_pairs.count(out.pairs.size()) > 0));
    for (const auto& [s0, s1] : sequence_blocks(x.seqs, dump.streamed(), c.block_tokens)) {
        dump.load(s0, s1);
        analyze_block(x, slots, s0, s1, out.pairs, progress);
    }
    if (x.scorer) {
        const auto t0 = std::chrono::steady_clock::now();
        x.scorer->finish();
        add_seconds(out.times.attention, t0);
    }
    progress.finish();

    const nlohmann::json model = dump.model();
    out.model = {{"name", model.value("name", std::string("unknown"))},
                 {"n_layer", model.value("n_layer", dump.n_layers())},
                 {"n_head", n_head},
                 {"n_head_kv", n_kv},
                 {"head_dim", x.D}};
    out.dump_model = model.is_object() ? model : nlohmann::json::object();
    const nlohmann::json prov = dump.provenance();
    out.dump_provenance = prov.is_object() ? prov : nlohmann::json::object();
    out.source = dump.streamed() ? "model" : "dump";
    out.source_path = dump.path();
    out.warnings = warn.list;
    return out;
}

}  // namespace pkv
