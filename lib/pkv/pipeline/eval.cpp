// `pkv eval`: validation, token stream, and the per-sequence loop over the fp16
// reference and every method; report/eval_json.cpp turns the result into the report.
#include "pkv/pipeline/eval.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/core/progress.h"
#include "pkv/core/sha256.h"
#include "pkv/core/version.h"
#include "pkv/gguf/gguf.h"
#include "pkv/kvcache/device_cache.h"
#include "pkv/model/llama.h"
#include "pkv/pipeline/eval_cache.h"
#include "pkv/pipeline/eval_runtime.h"
#include "pkv/pipeline/provenance.h"
#include "pkv/pipeline/text_input.h"
#include "pkv/tokenizer/tokenizer.h"

namespace pkv {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// CPU time of the whole process (all threads): steadier than wall time on shared
// cores, where another program's load stretches whichever method runs at the time.
double cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

void check_config(const EvalConfig& c) {
    check_model_and_inputs(c.model_path, c.text_paths, c.token_ids_path);
    PKV_CHECK(c.n_tokens >= 2, invalid_argument, "--tokens: expected at least 2, got {}", c.n_tokens);
    PKV_CHECK(c.ctx >= 2, invalid_argument, "--ctx: expected at least 2, got {}", c.ctx);
    PKV_CHECK(c.prefill >= -1, invalid_argument, "--prefill: expected at least 0, got {}", c.prefill);
    PKV_CHECK(!c.kv.empty(), invalid_argument, "--kv: expected at least one method spec");
    check_position_buckets(c.position_buckets);
}

std::string join_edges(const std::vector<int64_t>& edges) {
    std::string s;
    for (size_t i = 0; i < edges.size(); ++i) s += (i ? "," : "") + std::to_string(edges[i]);
    return s;
}

// The method specs, parsed and checked for duplicates before the model loads.
std::vector<KvSpec> parse_specs(const EvalConfig& c) {
    std::vector<KvSpec> specs;
    std::set<std::string> labels;
    for (const auto& t : c.kv) {
        specs.push_back(parse_kv_spec(t));
        PKV_CHECK(labels.insert(specs.back().label()).second, invalid_argument,
                  "--kv '{}': the same method as an earlier --kv ({})", t, specs.back().label());
    }
    return specs;
}

// Counts the sequences and scored positions; refuses a prefill that leaves nothing to score.
void count_positions(const EvalConfig& c, EvalResult& r) {
    const int64_t T = c.n_tokens;
    for (int64_t t0 = 0; t0 < T; t0 += c.ctx) {
        const int64_t n = std::min<int64_t>(c.ctx, T - t0);
        r.scored_decode += std::max<int64_t>(0, n - 1 - eval_prefill(n, c.prefill));
        r.scored_all += n - 1;
        ++r.n_sequences;
    }
    PKV_CHECK(r.scored_decode > 0, invalid_argument,
              "--prefill {}: leaves no decode position to score (sequences of up to {} tokens; decode positions are "
              "t >= prefill with a next token)",
              c.prefill, std::min<int64_t>(c.ctx, T));
    const int64_t P = eval_prefill(std::min<int64_t>(c.ctx, T), c.prefill);
    for (const auto& s : r.specs)
        if (s.method == KvMethod::patternkv && !s.table && P < s.patterns)
            log::warn("--kv '{}': the prefill of {} tokens is shorter than its {} patterns: k-means uses k = prefill",
                      s.text, P, s.patterns);
}

std::vector<bool> keep_layers(const EvalConfig& c, int L) {
    std::vector<bool> keep(L, false);
    for (int l : c.keep_fp16_layers) {
        PKV_CHECK(l >= 0 && l < L, out_of_range, "--keep-fp16-layers: layer {} is out of range: {} has layers 0-{}", l,
                  c.model_path, L - 1);
        keep[l] = true;
    }
    return keep;
}

// Adds one sequence's final cache: elements of K (= of V) and their stored bits.
void add_storage(EvalAccum& acc, double elements, double kb, double vb) {
    acc.k_bits += kb;
    acc.v_bits += vb;
    acc.elements += elements;
    acc.kv_bytes_peak = std::max(acc.kv_bytes_peak, (kb + vb) / 8.0);
}

// Runs variant v (0: the fp16 reference, else method v - 1) on the sequences of one
// engine batch, caches[b] holding sequence b's cache (empty for the reference); returns
// their final hidden states and adds the batch's time and, sequence by sequence, storage.
std::vector<std::vector<float>> run_variant(ForwardEngine& engine, const std::vector<std::vector<int32_t>>& ids,
                                            const std::vector<int64_t>& P,
                                            const std::vector<std::unique_ptr<MethodCache>>& caches, bool host_cache,
                                            EvalAccum& acc) {
    const LlamaHparams& hp = engine.hparams();
    const size_t B = ids.size();
    ForwardOptions opts;
    opts.want_nll = false;
    opts.want_hidden = true;
    // An engine that simulates this method itself keeps K/V where its forward runs; the
    // description carries every rule of the hook (MethodCache::device_cache).
    DeviceKvCache device;
    bool on_device = false;
    if (!caches.empty() && !host_cache && !caches[0]->host_only()) {
        device = caches[0]->device_cache(P);
        on_device = engine.supports_device_cache(device);
    }
    BatchCacheHook hook;
    if (!caches.empty() && !on_device) {
        for (size_t b = 0; b < B; ++b) caches[b]->begin_sequence(static_cast<int>(ids[b].size()), P[b]);
        // Each sequence's calls go to its own cache, which allows concurrent calls for distinct triples.
        hook = [&caches](int seq, const KvHookInput& in, KvHookOutput& out) {
            caches.at(static_cast<size_t>(seq))->hook()(in, out);
        };
    }
    const auto t = Clock::now();
    const double c0 = cpu_seconds();
    BatchResult r = on_device ? engine.run_batch_device_cache(ids, opts, nullptr, device)
                              : engine.run_batch(ids, opts, nullptr, hook);
    acc.cache_on_device = on_device;
    acc.seconds += seconds_since(t);
    acc.cpu += cpu_seconds() - c0;
    PKV_CHECK(r.size() == B, internal, "eval: the engine returned {} results for a batch of {} sequences", r.size(), B);
    std::vector<std::vector<float>> hidden(B);
    for (size_t b = 0; b < B; ++b) {
        const int n = static_cast<int>(ids[b].size());
        PKV_CHECK(r[b].hidden.size() == static_cast<size_t>(n) * hp.n_embd, internal,
                  "eval: the engine returned {} hidden values for a sequence of {} tokens", r[b].hidden.size(), n);
        hidden[b] = std::move(r[b].hidden);
        const double elements = cached_elements(hp, n);
        double kb = exact_bits(elements), vb = kb;
        if (on_device) kb = r[b].cache_k_bits, vb = r[b].cache_v_bits;
        else if (!caches.empty()) kb = caches[b]->key_bits(), vb = caches[b]->value_bits();
        add_storage(acc, elements, kb, vb);
    }
    return hidden;
}

// run_variant for a method under --engine runtime: LlamaModel::forward on the CPU, sequence
// by sequence, each layer's attention computed through the packed cache.
std::vector<std::vector<float>> run_variant_runtime(const LlamaModel& model,
                                                    const std::vector<std::vector<int32_t>>& ids,
                                                    const std::vector<int64_t>& P, RuntimeAttention& rt,
                                                    EvalAccum& acc) {
    ForwardOptions opts;
    opts.want_nll = false;
    opts.want_hidden = true;
    opts.attention = rt.hook();
    std::vector<std::vector<float>> hidden;
    for (size_t b = 0; b < ids.size(); ++b) {
        const int n = static_cast<int>(ids[b].size());
        rt.begin_sequence(n, P[b]);
        const auto t = Clock::now();
        const double c0 = cpu_seconds();
        ForwardResult r = model.forward(ids[b], opts);
        acc.seconds += seconds_since(t);
        acc.cpu += cpu_seconds() - c0;
        hidden.push_back(std::move(r.hidden));
        add_storage(acc, cached_elements(model.hparams(), n), rt.key_bits(), rt.value_bits());
    }
    acc.runtime = true;
    return hidden;
}

// Sequences per engine batch: what the engine takes, capped so that the batch's final hidden
// states of every variant ([n, n_embd] floats each, held until the comparison) stay within 2 GiB.
size_t eval_batch_sequences(const ForwardEngine& engine, int ctx, size_t variants, int64_t n_sequences) {
    const double per_seq = static_cast<double>(variants) * ctx * engine.hparams().n_embd * sizeof(float);
    const auto by_memory = static_cast<int64_t>(std::max(1.0, std::floor(2.0 * (1 << 30) / per_seq)));
    return static_cast<size_t>(
        std::max<int64_t>(1, std::min({static_cast<int64_t>(engine.batch_sequences(ctx)), by_memory, n_sequences})));
}

// Adds one sequence's next-token statistics of variant v against the reference (st[0]),
// to the totals and to the bucket of each position.
void add_scores(const std::vector<NextTokenStats>& st, size_t v, int n, int64_t P, const std::vector<int64_t>& edges,
                EvalAccum& acc) {
    for (int i = 0; i + 1 < n; ++i) {
        const bool dec = i >= P;
        const double kl = v > 0 ? st[v].kl[i] : 0.0;
        const bool same = st[v].argmax[i] == st[0].argmax[i];
        acc.nll_all += st[v].nll[i];
        acc.kl_all += kl;
        acc.top1_all += same;
        EvalBucket& b = acc.buckets[position_bucket(edges, i)];
        ++b.n_all;
        b.nll_all += st[v].nll[i];
        b.kl_all += kl;
        b.top1_all += same;
        if (dec) {
            acc.nll_dec += st[v].nll[i];
            acc.kl_dec += kl;
            acc.top1_dec += same;
            ++b.n_dec;
            b.nll_dec += st[v].nll[i];
            b.kl_dec += kl;
            b.top1_dec += same;
        }
    }
}

}  // namespace

void check_position_buckets(const std::vector<int64_t>& edges) {
    PKV_CHECK(!edges.empty(), invalid_argument, "--position-buckets: expected at least one edge, e.g. 0,1024,4096");
    PKV_CHECK(edges[0] == 0, invalid_argument, "--position-buckets {}: the first edge must be 0, got {}",
              join_edges(edges), edges[0]);
    for (size_t i = 1; i < edges.size(); ++i)
        PKV_CHECK(edges[i] > edges[i - 1], invalid_argument,
                  "--position-buckets {}: edges must ascend, got {} after {}", join_edges(edges), edges[i],
                  edges[i - 1]);
}

std::vector<int64_t> parse_position_buckets(const std::string& list) {
    std::vector<int64_t> edges;
    std::stringstream in(list);
    std::string item;
    while (std::getline(in, item, ',')) {
        const bool digits = !item.empty() && item.size() <= 12 &&
                            std::all_of(item.begin(), item.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
        PKV_CHECK(digits, invalid_argument,
                  "--position-buckets '{}': expected non-negative integers separated by commas, got '{}'", list, item);
        edges.push_back(std::stoll(item));
    }
    PKV_CHECK(!list.empty() && list.back() != ',', invalid_argument,
              "--position-buckets '{}': expected non-negative integers separated by commas, got ''", list);
    check_position_buckets(edges);
    return edges;
}

size_t position_bucket(const std::vector<int64_t>& edges, int64_t t) {
    return static_cast<size_t>(std::upper_bound(edges.begin() + 1, edges.end(), t) - edges.begin() - 1);
}

const char* eval_attention_name(EvalAttention a) { return a == EvalAttention::runtime ? "runtime" : "host"; }

int64_t eval_prefill(int64_t n, int64_t prefill) {
    if (prefill >= 0) return std::min(n, prefill);
    return (n / 2) / 128 * 128;
}

EvalResult run_eval(const EvalConfig& c) {
    check_config(c);
    EvalResult r;
    r.config = std::make_shared<const EvalConfig>(c);
    // Specs first: a typo should not wait for the model to load.
    r.specs = parse_specs(c);
    const auto t_start = Clock::now();
    auto file = GgufFile::open(c.model_path);
    LlamaModel model(file);
    const LlamaHparams& hp = model.hparams();
    PKV_CHECK(static_cast<uint32_t>(c.ctx) <= hp.n_ctx_train, out_of_range,
              "--ctx {}: longer than the model's context length {} ({}: {}.context_length)", c.ctx, hp.n_ctx_train,
              c.model_path, hp.arch);
    const bool runtime = c.attention == EvalAttention::runtime;
    PKV_CHECK(!runtime || !c.engine, unsupported,
              "--engine runtime: the packed cache's decode attention runs on the CPU: expected --device cpu (a device "
              "engine is not supported with it yet)");
    for (const auto& s : r.specs) {
        check_kv_spec(s, static_cast<int>(hp.head_dim));
        check_spec_for_window(s, hp, c.model_path);
        if (runtime) check_runtime_spec(s, hp, c.model_path);
    }
    const std::vector<bool> keep = keep_layers(c, static_cast<int>(hp.n_layer));

    install_interrupt_handlers();
    const std::vector<int32_t> stream = token_stream(*file, c.text_paths, c.token_ids_path, c.n_tokens, r.sources);
    int32_t bos = -1;
    if (c.bos_each_sequence) {
        const VocabData v = vocab_from_gguf(*file);
        PKV_CHECK(v.add_bos && v.bos_id >= 0, invalid_argument,
                  "--bos-each-sequence: {} does not add BOS (tokenizer.ggml.add_bos_token)", c.model_path);
        bos = v.bos_id;
    }
    count_positions(c, r);

    const size_t M = r.specs.size();
    r.model_sha256 = sha256_file(c.model_path);
    r.model_name = hp.name;
    r.model = model_json(hp, *file, c.model_path, r.model_sha256);
    std::vector<std::shared_ptr<const PatternTable>> tables;
    for (auto& s : r.specs) {
        std::shared_ptr<const PatternTable> table;
        if (s.table) {
            auto t = std::make_shared<PatternTable>(read_pattern_table(s.table_path));
            check_table_for_eval(s, *t, hp, r.model_sha256, keep);
            if (s.table_auto) s.bits = t->bits;  // the uniform width; an allocation's heads carry their own
            if (s.outliers == 0 && t->outliers > 0) {
                // The clip ratios were fitted for groups without these elements: hold them out too.
                s.outliers = t->outliers;
                log::info("--kv '{}': {} was fitted with {} exact outliers per group: holding them out (:out{})",
                          s.text, s.table_path, t->outliers, t->outliers);
                if (runtime) check_runtime_spec(s, hp, c.model_path);
            }
            PKV_CHECK(!runtime || !t->has_allocation(), unsupported,
                      "--kv '{}': --engine runtime cannot run it: {} records a width per KV head (budget {} bits per "
                      "element) and the packed cache runs one width",
                      s.text, s.table_path, t->alloc_budget);
            if (runtime && s.table_auto) {  // now with the table's width
                KvSpec fixed = s;
                fixed.table_auto = false;
                check_runtime_spec(fixed, hp, c.model_path);
            }
            table = std::move(t);
        }
        tables.push_back(std::move(table));
    }
    // The runtime reads each table with its own reader, as a runtime would.
    std::vector<std::unique_ptr<RuntimeAttention>> rt(M);
    for (size_t m = 0; m < M && runtime; ++m)
        rt[m] = std::make_unique<RuntimeAttention>(
            r.specs[m], keep, hp, r.specs[m].table ? open_runtime_table(r.specs[m], hp, r.model_sha256) : nullptr);
    // The engine last: every input is checked before a GPU engine spends time uploading weights.
    const std::unique_ptr<ForwardEngine> engine = c.engine ? c.engine(model) : make_cpu_engine(model);
    r.device = engine->description();
    // One cache per method and sequence of a batch: a batch's sequences run their hooks concurrently.
    const size_t B = eval_batch_sequences(*engine, c.ctx, M + 1, r.n_sequences);
    std::vector<std::vector<std::unique_ptr<MethodCache>>> caches(M + 1);
    for (size_t m = 0; m < M; ++m)
        for (size_t b = 0; b < B; ++b)
            caches[m + 1].push_back(std::make_unique<MethodCache>(r.specs[m], c.seed, keep, hp, tables[m]));
    if (B > 1) log::info("eval: {} sequences per engine batch", B);
    std::vector<EvalAccum> acc(M + 1);
    for (auto& a : acc) a.buckets.resize(c.position_buckets.size());
    const int64_t T = c.n_tokens;
    Progress progress("eval", static_cast<uint64_t>(T) * (M + 1), "tok");
    for (int64_t g0 = 0; g0 < T; g0 += static_cast<int64_t>(B) * c.ctx) {
        std::vector<std::vector<int32_t>> ids;
        std::vector<int64_t> P;
        uint64_t tokens = 0;
        for (int64_t t0 = g0; t0 < T && ids.size() < B; t0 += c.ctx) {
            const int n = static_cast<int>(std::min<int64_t>(c.ctx, T - t0));
            ids.emplace_back(stream.begin() + t0, stream.begin() + t0 + n);
            if (bos >= 0) ids.back()[0] = bos;
            P.push_back(eval_prefill(n, c.prefill));
            tokens += static_cast<uint64_t>(n);
        }
        std::vector<std::vector<std::vector<float>>> hidden(M + 1);  // [variant][sequence]
        for (size_t v = 0; v <= M; ++v) {
            check_interrupted();
            hidden[v] = v > 0 && runtime ? run_variant_runtime(model, ids, P, *rt[v - 1], acc[v])
                                         : run_variant(*engine, ids, P, caches[v], c.host_cache, acc[v]);
            progress.advance(tokens);
        }
        // Sequence by sequence, in order: the sums are added as with one sequence per batch.
        for (size_t b = 0; b < ids.size(); ++b) {
            std::vector<const float*> hp_ptr;
            for (size_t v = 0; v <= M; ++v) hp_ptr.push_back(hidden[v][b].data());
            const auto t = Clock::now();
            const std::vector<NextTokenStats> st = model.compare_next_token(ids[b], hp_ptr);
            r.compare_seconds += seconds_since(t);
            const int n = static_cast<int>(ids[b].size());
            for (size_t v = 0; v <= M; ++v) add_scores(st, v, n, P[b], c.position_buckets, acc[v]);
        }
    }
    progress.finish();
    r.seconds = seconds_since(t_start);
    r.reference = acc[0];
    r.methods.assign(acc.begin() + 1, acc.end());
    return r;
}

}  // namespace pkv
