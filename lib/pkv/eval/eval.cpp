// `pkv eval`: validation, token stream, and the per-sequence loop over the fp16
// reference and every method. The report's Markdown is in eval_report.cpp.
#include "pkv/eval/eval.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
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
#include "pkv/pipeline/provenance.h"
#include "pkv/pipeline/text_input.h"
#include "pkv/core/version.h"
#include "pkv/eval/eval_cache.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/llama.h"
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
    check_model_and_texts(c.model_path, c.text_paths);
    PKV_CHECK(c.n_tokens >= 2, invalid_argument, "--tokens: expected at least 2, got {}", c.n_tokens);
    PKV_CHECK(c.ctx >= 2, invalid_argument, "--ctx: expected at least 2, got {}", c.ctx);
    PKV_CHECK(c.prefill >= -1, invalid_argument, "--prefill: expected at least 0, got {}", c.prefill);
    PKV_CHECK(!c.kv.empty(), invalid_argument, "--kv: expected at least one method spec");
}

// Sums of one variant (the reference or a method) over the run.
struct Accum {
    double nll_dec = 0, nll_all = 0, kl_dec = 0, kl_all = 0;
    int64_t top1_dec = 0, top1_all = 0;
    double seconds = 0, cpu = 0;
    double k_bits = 0, v_bits = 0, elements = 0;  // elements of K (= of V)
    double kv_bytes_peak = 0;                      // largest final cache of one sequence
};

double ratio(double a, double b) { return b > 0 ? a / b : std::nan(""); }

nlohmann::json num(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }

}  // namespace

int64_t eval_prefill(int64_t n, int64_t prefill) {
    if (prefill >= 0) return std::min(n, prefill);
    return (n / 2) / 128 * 128;
}

nlohmann::json run_eval(const EvalConfig& c) {
    check_config(c);
    // Specs first: a typo should not wait for the model to load.
    std::vector<KvSpec> specs;
    std::set<std::string> labels;
    for (const auto& t : c.kv) {
        specs.push_back(parse_kv_spec(t));
        PKV_CHECK(labels.insert(specs.back().label()).second, invalid_argument,
                  "--kv '{}': the same method as an earlier --kv ({})", t, specs.back().label());
    }
    const auto t_start = Clock::now();
    auto file = GgufFile::open(c.model_path);
    LlamaModel model(file);
    const LlamaHparams& hp = model.hparams();
    PKV_CHECK(static_cast<uint32_t>(c.ctx) <= hp.n_ctx_train, out_of_range,
              "--ctx {}: longer than the model's context length {} ({}: {}.context_length)", c.ctx, hp.n_ctx_train,
              c.model_path, hp.arch);
    const int D = static_cast<int>(hp.head_dim), HKV = static_cast<int>(hp.n_head_kv);
    const int L = static_cast<int>(hp.n_layer);
    for (const auto& s : specs) check_kv_spec(s, D);
    std::vector<bool> keep(L, false);
    for (int l : c.keep_fp16_layers) {
        PKV_CHECK(l >= 0 && l < L, out_of_range, "--keep-fp16-layers: layer {} is out of range: {} has layers 0-{}", l,
                  c.model_path, L - 1);
        keep[l] = true;
    }

    install_interrupt_handlers();
    std::vector<TextSource> sources;
    const std::vector<int32_t> stream = token_stream(*file, c.text_paths, c.n_tokens, sources);
    const int64_t T = c.n_tokens;
    int64_t n_dec = 0, n_all = 0, n_seq = 0;
    for (int64_t t0 = 0; t0 < T; t0 += c.ctx) {
        const int64_t n = std::min<int64_t>(c.ctx, T - t0);
        n_dec += std::max<int64_t>(0, n - 1 - eval_prefill(n, c.prefill));
        n_all += n - 1;
        ++n_seq;
    }
    PKV_CHECK(n_dec > 0, invalid_argument,
              "--prefill {}: leaves no decode position to score (sequences of up to {} tokens; decode positions are "
              "t >= prefill with a next token)",
              c.prefill, std::min<int64_t>(c.ctx, T));
    for (const auto& s : specs)
        if (s.method == KvMethod::patternkv && !s.table && eval_prefill(std::min<int64_t>(c.ctx, T), c.prefill) < s.patterns)
            log::warn("--kv '{}': the prefill of {} tokens is shorter than its {} patterns: k-means uses k = prefill",
                      s.text, eval_prefill(std::min<int64_t>(c.ctx, T), c.prefill), s.patterns);

    const size_t M = specs.size();
    const std::string model_sha = sha256_file(c.model_path);
    std::vector<std::unique_ptr<MethodCache>> caches;
    for (const auto& s : specs) {
        std::shared_ptr<const PatternTable> table;
        if (s.table) {
            auto t = std::make_shared<PatternTable>(read_pattern_table(s.table_path));
            check_table_for_eval(s, *t, hp, model_sha, keep);
            table = std::move(t);
        }
        caches.push_back(std::make_unique<MethodCache>(s, c.seed, keep, hp, std::move(table)));
    }
    std::vector<Accum> acc(M + 1);
    double compare_seconds = 0;
    Progress progress("eval", static_cast<uint64_t>(T) * (M + 1), "tok");
    for (int64_t t0 = 0; t0 < T; t0 += c.ctx) {
        const int n = static_cast<int>(std::min<int64_t>(c.ctx, T - t0));
        const int64_t P = eval_prefill(n, c.prefill);
        const std::vector<int32_t> ids(stream.begin() + t0, stream.begin() + t0 + n);
        std::vector<std::vector<float>> hidden(M + 1);
        ForwardOptions opts;
        opts.want_nll = false;
        opts.want_hidden = true;
        for (size_t v = 0; v <= M; ++v) {
            check_interrupted();
            if (v > 0) {
                caches[v - 1]->begin_sequence(n, P);
                opts.kv_cache = caches[v - 1]->hook();
            }
            const auto t = Clock::now();
            const double c0 = cpu_seconds();
            hidden[v] = model.forward(ids, opts).hidden;
            acc[v].seconds += seconds_since(t);
            acc[v].cpu += cpu_seconds() - c0;
            const double elements = static_cast<double>(n) * D * HKV * L;
            const double kb = v > 0 ? caches[v - 1]->key_bits() : 16.0 * elements;
            const double vb = v > 0 ? caches[v - 1]->value_bits() : 16.0 * elements;
            acc[v].k_bits += kb;
            acc[v].v_bits += vb;
            acc[v].elements += elements;
            acc[v].kv_bytes_peak = std::max(acc[v].kv_bytes_peak, (kb + vb) / 8.0);
            progress.advance(static_cast<uint64_t>(n));
        }
        std::vector<const float*> hp_ptr;
        for (const auto& h : hidden) hp_ptr.push_back(h.data());
        const auto t = Clock::now();
        const std::vector<NextTokenStats> st = model.compare_next_token(ids, hp_ptr);
        compare_seconds += seconds_since(t);
        for (size_t v = 0; v <= M; ++v) {
            for (int i = 0; i + 1 < n; ++i) {
                const bool dec = i >= P;
                const double kl = v > 0 ? st[v].kl[i] : 0.0;
                const bool same = st[v].argmax[i] == st[0].argmax[i];
                acc[v].nll_all += st[v].nll[i];
                acc[v].kl_all += kl;
                acc[v].top1_all += same;
                if (dec) {
                    acc[v].nll_dec += st[v].nll[i];
                    acc[v].kl_dec += kl;
                    acc[v].top1_dec += same;
                }
            }
        }
    }
    progress.finish();
    const double total_seconds = seconds_since(t_start);

    // Report.
    nlohmann::json report;
    report["format"] = "pkv.eval_report";
    report["version"] = "1.0";
    report["provenance"] = provenance_json("eval", c.argv);
    report["provenance"].update({
        {"model", {{"file", c.model_path}, {"sha256", model_sha}, {"name", hp.name}}},
        {"texts", sources_json(sources)},
        {"settings",
         {{"tokens", T},
          {"ctx", c.ctx},
          {"prefill", c.prefill},
          {"prefill_rule", c.prefill >= 0 ? "min(n, prefill)" : "floor(n / 2 / 128) * 128"},
          {"keep_fp16_layers", c.keep_fp16_layers},
          {"seed", c.seed},
          {"kv", c.kv}}},
    });
    report["model"] = model_json(hp, *file, c.model_path, model_sha);
    report["run"] = {{"n_tokens", T},
                     {"n_sequences", n_seq},
                     {"scored_decode", n_dec},
                     {"scored_all", n_all},
                     {"seconds", total_seconds},
                     {"compare_seconds", compare_seconds}};
    auto figures = [&](const Accum& a, const Accum& ref) {
        const double ppl = std::exp(a.nll_dec / n_dec), ref_ppl = std::exp(ref.nll_dec / n_dec);
        const double elems = 2.0 * a.elements;
        return nlohmann::json{
            {"ppl", num(ppl)},
            {"ppl_all", num(std::exp(a.nll_all / n_all))},
            {"ppl_delta_pct", num(100.0 * (ppl / ref_ppl - 1.0))},
            {"nll_mean", num(a.nll_dec / n_dec)},
            {"kl_mean", num(a.kl_dec / n_dec)},
            {"kl_mean_all", num(a.kl_all / n_all)},
            {"top1_agreement", num(static_cast<double>(a.top1_dec) / n_dec)},
            {"top1_agreement_all", num(static_cast<double>(a.top1_all) / n_all)},
            {"bits_per_element", num(ratio(a.k_bits + a.v_bits, elems))},
            {"k_bits_per_element", num(ratio(a.k_bits, a.elements))},
            {"v_bits_per_element", num(ratio(a.v_bits, a.elements))},
            {"kv_bytes", num(a.kv_bytes_peak)},
            {"seconds", num(a.seconds)},
            {"seconds_per_token", num(a.seconds / static_cast<double>(T))},
            {"cpu_seconds", num(a.cpu)},
            {"cpu_seconds_per_token", num(a.cpu / static_cast<double>(T))},
            {"cost_vs_fp16", num(ratio(a.cpu, ref.cpu))},
        };
    };
    report["reference"] = figures(acc[0], acc[0]);
    report["reference"]["label"] = "fp16 (reference)";
    nlohmann::json methods = nlohmann::json::array();
    for (size_t v = 1; v <= M; ++v) {
        const KvSpec& s = specs[v - 1];
        nlohmann::json j = figures(acc[v], acc[0]);
        j["spec"] = s.text;
        j["label"] = s.label();
        j["method"] = s.method_name;
        j["bits"] = s.bits;
        j["group"] = s.group;
        j["window"] = s.window;
        j["patterns"] = s.patterns;
        j["pattern_cap"] = s.pattern_cap;
        j["decode_assign"] = s.decode_l2 ? "l2" : "minmax";
        j["rotate"] = s.rotate;
        j["keys"] = s.keys_pre ? "pre" : "post";
        if (s.table) j["table"] = s.table_path;
        methods.push_back(j);
    }
    report["methods"] = methods;
    return report;
}

}  // namespace pkv
