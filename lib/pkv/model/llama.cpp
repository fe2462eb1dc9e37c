// pkv/model/llama.cpp — the Llama forward pass: tensor validation, per-layer
// dequantization, and the blocked output projection with a streaming log-softmax.
#include "pkv/model/llama.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <exception>

#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/ops.h"

namespace pkv {

using ops::RowMatrix;

namespace {

std::string shape_string(const std::vector<uint64_t>& ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

/// The tensor `name` with exactly the dims `ne` (ggml order) and a type pkv reads.
const GgufTensorInfo* require_tensor(const GgufFile& f, const std::string& name, const std::vector<uint64_t>& ne) {
    const GgufTensorInfo* t = f.find_tensor(name);
    PKV_CHECK(t != nullptr, not_found, "{}: tensor '{}' is missing", f.path(), name);
    PKV_CHECK(t->ne == ne, data_loss, "{}: tensor '{}': expected shape {}, got {}", f.path(), name, shape_string(ne),
              shape_string(t->ne));
    PKV_CHECK(ggml_type_supported(t->type_id), unsupported, "{}: tensor '{}': type {} (id {}) is not supported",
              f.path(), name, ggml_type_name(t->type_id), t->type_id);
    const uint64_t block = ggml_block_size(t->type());
    PKV_CHECK(ne[0] % block == 0, data_loss, "{}: tensor '{}': row length {} is not a multiple of the {} block size {}",
              f.path(), name, ne[0], ggml_type_name(t->type_id), block);
    return t;
}

/// The quantized tensors of one block, inside the file mapping.
struct LayerTensors {
    const GgufTensorInfo *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w_gate, *w_up, *w_down;
};

}  // namespace

struct LlamaModel::Impl {
    std::shared_ptr<const GgufFile> file;
    LlamaHparams hp;
    const GgufTensorInfo* tok_embd = nullptr;
    const GgufTensorInfo* out_norm = nullptr;
    const GgufTensorInfo* output = nullptr;  ///< token_embd when tied
    std::vector<LayerTensors> layers;
};

namespace {

/// One layer's weights in fp32, one buffer reused for every layer of a forward call
/// (every layer has the same shapes, so the offsets are fixed).
struct LayerWeights {
    std::vector<float> buf;
    float *attn_norm = nullptr, *wq = nullptr, *wk = nullptr, *wv = nullptr, *wo = nullptr, *ffn_norm = nullptr,
          *w_gate = nullptr, *w_up = nullptr, *w_down = nullptr;

    static std::array<const GgufTensorInfo*, 9> parts(const LayerTensors& t) {
        return {t.attn_norm, t.wq, t.wk, t.wv, t.wo, t.ffn_norm, t.w_gate, t.w_up, t.w_down};
    }
    void reserve(const LayerTensors& t) {
        float** dst[] = {&attn_norm, &wq, &wk, &wv, &wo, &ffn_norm, &w_gate, &w_up, &w_down};
        const auto p = parts(t);
        size_t total = 0;
        for (const auto* x : p) total += x->n_elements();
        buf.resize(total);
        size_t off = 0;
        for (size_t i = 0; i < p.size(); ++i) {
            *dst[i] = buf.data() + off;
            off += p[i]->n_elements();
        }
    }
    /// Part `part` of `n_parts` of every tensor's rows, so threads share the work.
    void load_part(const GgufFile& f, const LayerTensors& t, int part, int n_parts) {
        float* dst[] = {attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down};
        const auto p = parts(t);
        for (size_t i = 0; i < p.size(); ++i) {
            const uint64_t rows = p[i]->n_rows(), per = (rows + n_parts - 1) / n_parts;
            const uint64_t r0 = std::min(rows, per * part), r1 = std::min(rows, r0 + per);
            if (r1 > r0)
                f.dequantize_rows(*p[i], r0, r1 - r0, dst[i] + r0 * p[i]->row_length());
        }
    }
};

// Hands one (KV head, tensor) of layer l to the hook and installs what it returns:
// the reconstruction into the head's columns of `hat`, the flush steps into
// flush[g] and a pointer to them into flush_ptr[g] (null: the head stays exact).
void run_kv_hook(const KvCacheHook& hook, int l, int g, bool value, int n, int HD, int KD, const float* k_post,
                 const float* k_pre, const float* v, RowMatrix& hat, std::vector<std::vector<int32_t>>& flush,
                 std::vector<const int32_t*>& flush_ptr) {
    const float* src = value ? v : k_post;
    std::vector<float> x(static_cast<size_t>(n) * HD), pre;
    for (int i = 0; i < n; ++i)
        std::copy_n(src + static_cast<int64_t>(i) * KD + static_cast<int64_t>(g) * HD, HD, x.data() + i * HD);
    if (!value) {
        pre.resize(x.size());
        for (int i = 0; i < n; ++i)
            std::copy_n(k_pre + static_cast<int64_t>(i) * KD + static_cast<int64_t>(g) * HD, HD, pre.data() + i * HD);
    }
    KvHookInput in;
    in.layer = l;
    in.kv_head = g;
    in.value = value;
    in.n_tokens = n;
    in.head_dim = HD;
    in.x = x.data();
    in.k_pre = value ? nullptr : pre.data();
    KvHookOutput out;
    hook(in, out);
    const char* what = value ? "values" : "keys";
    if (out.recon.empty() && out.flush_step.empty()) {
        flush[g].clear();
        flush_ptr[g] = nullptr;
        return;
    }
    PKV_CHECK(out.recon.size() == x.size() && out.flush_step.size() == static_cast<size_t>(n), internal,
              "KV cache hook, layer {} KV head {} {}: expected recon of {} and flush_step of {} values, got {} and {}",
              l, g, what, x.size(), n, out.recon.size(), out.flush_step.size());
    for (int i = 0; i < n; ++i)
        std::copy_n(out.recon.data() + i * HD, HD, hat.data() + static_cast<int64_t>(i) * KD + static_cast<int64_t>(g) * HD);
    flush[g] = std::move(out.flush_step);
    flush_ptr[g] = flush[g].data();
}

}  // namespace

LlamaModel::LlamaModel(std::shared_ptr<const GgufFile> file) : impl_(std::make_unique<Impl>()) {
    PKV_CHECK(file != nullptr, invalid_argument, "LlamaModel: no file given");
    impl_->file = std::move(file);
    const GgufFile& f = *impl_->file;
    LlamaHparams& hp = impl_->hp;
    hp = llama_hparams_from_gguf(f);
    const uint64_t E = hp.n_embd, V = hp.n_vocab, F = hp.n_ff;
    const uint64_t QD = uint64_t{hp.n_head} * hp.head_dim, KD = uint64_t{hp.n_head_kv} * hp.head_dim;
    impl_->tok_embd = require_tensor(f, "token_embd.weight", {E, V});
    impl_->out_norm = require_tensor(f, "output_norm.weight", {E});
    impl_->output = hp.tied_output ? impl_->tok_embd : require_tensor(f, "output.weight", {E, V});
    impl_->layers.reserve(hp.n_layer);
    for (uint32_t l = 0; l < hp.n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        LayerTensors L{};
        L.attn_norm = require_tensor(f, p + "attn_norm.weight", {E});
        L.wq = require_tensor(f, p + "attn_q.weight", {E, QD});
        L.wk = require_tensor(f, p + "attn_k.weight", {E, KD});
        L.wv = require_tensor(f, p + "attn_v.weight", {E, KD});
        L.wo = require_tensor(f, p + "attn_output.weight", {QD, E});
        L.ffn_norm = require_tensor(f, p + "ffn_norm.weight", {E});
        L.w_gate = require_tensor(f, p + "ffn_gate.weight", {E, F});
        L.w_up = require_tensor(f, p + "ffn_up.weight", {E, F});
        L.w_down = require_tensor(f, p + "ffn_down.weight", {F, E});
        impl_->layers.push_back(L);
    }
}

LlamaModel::~LlamaModel() = default;
const LlamaHparams& LlamaModel::hparams() const { return impl_->hp; }
const GgufFile& LlamaModel::file() const { return *impl_->file; }

ForwardResult LlamaModel::forward(const std::vector<int32_t>& tokens, const ForwardOptions& opts,
                                  const LayerSink& sink) const {
    const GgufFile& f = *impl_->file;
    const LlamaHparams& hp = impl_->hp;
    const int n = static_cast<int>(tokens.size());
    PKV_CHECK(!tokens.empty() && tokens.size() <= hp.n_ctx_train, out_of_range,
              "{}: forward of {} tokens: expected 1 to {} (context_length)", f.path(), tokens.size(), hp.n_ctx_train);
    PKV_CHECK(opts.pos0 >= 0, invalid_argument, "{}: forward pos0: expected >= 0, got {}", f.path(), opts.pos0);
    PKV_CHECK(opts.layers.empty() || opts.layers.size() == hp.n_layer, invalid_argument,
              "{}: forward capture layer mask: expected {} entries (one per layer), got {}", f.path(), hp.n_layer,
              opts.layers.size());
    PKV_CHECK(!opts.capture || sink, invalid_argument, "{}: forward: capture requested without a layer sink", f.path());
    for (int i = 0; i < n; ++i)
        PKV_CHECK(tokens[i] >= 0 && static_cast<uint32_t>(tokens[i]) < hp.n_vocab, out_of_range,
                  "{}: token {} at position {}: expected an id in [0, {})", f.path(), tokens[i], i, hp.n_vocab);

    const int E = static_cast<int>(hp.n_embd), H = static_cast<int>(hp.n_head), HKV = static_cast<int>(hp.n_head_kv);
    const int HD = static_cast<int>(hp.head_dim), FF = static_cast<int>(hp.n_ff);
    const int QD = H * HD, KD = HKV * HD;

    RowMatrix x(n, E);
    for (int i = 0; i < n; ++i) f.dequantize_rows(*impl_->tok_embd, static_cast<uint64_t>(tokens[i]), 1, x.row(i).data());
    const RopeTable rope = rope_table(rope_params(hp), n, opts.pos0);
    RowMatrix q(n, QD), k(n, KD), v(n, KD), att(n, QD), k_pre;
    std::vector<char> capture(hp.n_layer, 0);
    for (uint32_t l = 0; l < hp.n_layer; ++l) capture[l] = opts.capture && (opts.layers.empty() || opts.layers[l]);
    const bool hooked = static_cast<bool>(opts.kv_cache);
    if (opts.capture || hooked) k_pre.resize(n, KD);
    // The hooked path: the cache the hook describes, per KV head (rows of k_hat/v_hat
    // of an exact head are never read).
    RowMatrix k_hat, v_hat;
    std::vector<std::vector<int32_t>> k_flush, v_flush;
    std::vector<const int32_t*> k_flush_ptr, v_flush_ptr;
    if (hooked) {
        k_hat.resize(n, KD), v_hat.resize(n, KD);
        k_flush.resize(HKV), v_flush.resize(HKV);
        k_flush_ptr.assign(HKV, nullptr), v_flush_ptr.assign(HKV, nullptr);
    }

    // One parallel region for all layers; each thread owns a contiguous slice of token
    // rows for everything but the dequantization, which is split by weight rows. That
    // leaves three barriers per layer: weights ready, K/V of every row ready, and all
    // rows done before the weight buffer is refilled. Attention for a thread's own rows
    // needs only K/V rows before them, so it follows the second barrier directly.
    // (Fewer barriers matter on shared cores: a waiting thread spins.)
    // Exceptions cannot leave the region: the first is kept and rethrown afterwards,
    // and the remaining stages are skipped while the barriers still run.
    LayerWeights w;
    w.reserve(impl_->layers.front());
    std::exception_ptr error;
    std::atomic<bool> failed{false};
    auto guarded = [&](auto&& fn) {
        if (failed.load()) return;
        try {
            fn();
        } catch (...) {
#pragma omp critical(pkv_forward_error)
            if (!error) error = std::current_exception();
            failed = true;
        }
    };
    const int threads = n >= 32 ? omp_get_max_threads() : 1;
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int per = (n + nt - 1) / nt;
        const int ra = std::min(n, t * per), rb = std::min(n, ra + per), m = rb - ra;
        RowMatrix xn(std::max(m, 1), E), proj(std::max(m, 1), E), gate(std::max(m, 1), FF), up(std::max(m, 1), FF);
        RowMatrix scratch, scratch2;
        for (uint32_t l = 0; l < hp.n_layer; ++l) {
#pragma omp barrier
            guarded([&] { w.load_part(f, impl_->layers[l], t, nt); });
#pragma omp barrier
            if (m > 0)
                guarded([&] {
                    ops::rms_norm(x.row(ra).data(), m, E, w.attn_norm, hp.rms_eps, xn.data());
                    ops::matmul_wt(xn.data(), m, E, w.wq, QD, q.row(ra).data());
                    ops::matmul_wt(xn.data(), m, E, w.wk, KD, k.row(ra).data());
                    ops::matmul_wt(xn.data(), m, E, w.wv, KD, v.row(ra).data());
                    if (capture[l] || hooked) k_pre.middleRows(ra, m) = k.middleRows(ra, m);
                    rope_apply(q.row(ra).data(), m, H, HD, rope, ra);
                    rope_apply(k.row(ra).data(), m, HKV, HD, rope, ra);
                });
#pragma omp barrier
            if (capture[l] && t == 0)
                guarded([&] {
                    LayerActivations a;
                    a.layer = static_cast<int>(l);
                    a.n_tokens = n;
                    a.k_pre = k_pre.data();
                    a.k_post = k.data();
                    a.v = v.data();
                    a.q = q.data();
                    sink(a);
                });
            if (hooked) {
                // Each (KV head, tensor) is one work item; the loop's implicit barrier
                // makes every head's cache ready before any attention row reads it.
#pragma omp for schedule(dynamic, 1)
                for (int item = 0; item < 2 * HKV; ++item)
                    guarded([&] { run_kv_hook(opts.kv_cache, static_cast<int>(l), item / 2, item % 2 == 1, n, HD, KD,
                                              k.data(), k_pre.data(), v.data(), item % 2 ? v_hat : k_hat,
                                              item % 2 ? v_flush : k_flush, item % 2 ? v_flush_ptr : k_flush_ptr); });
            }
            if (m > 0)
                guarded([&] {
                    if (hooked)
                        ops::causal_attention_rows_cached(q.data(), k.data(), v.data(), k_hat.data(), v_hat.data(),
                                                          k_flush_ptr.data(), v_flush_ptr.data(), H, HKV, HD,
                                                          att.data(), ra, rb, scratch, scratch2);
                    else
                        ops::causal_attention_rows(q.data(), k.data(), v.data(), H, HKV, HD, att.data(), ra, rb,
                                                   scratch);
                    ops::matmul_wt(att.row(ra).data(), m, QD, w.wo, E, proj.data());
                    x.middleRows(ra, m) += proj.topRows(m);
                    ops::rms_norm(x.row(ra).data(), m, E, w.ffn_norm, hp.rms_eps, xn.data());
                    ops::matmul_wt(xn.data(), m, E, w.w_gate, FF, gate.data());
                    ops::matmul_wt(xn.data(), m, E, w.w_up, FF, up.data());
                    ops::swiglu_inplace(gate.data(), up.data(), int64_t{m} * FF);
                    ops::matmul_wt(gate.data(), m, FF, w.w_down, E, proj.data());
                    x.middleRows(ra, m) += proj.topRows(m);
                });
        }
    }
    if (error) std::rethrow_exception(error);
    w = LayerWeights();
    q = k = v = k_pre = att = k_hat = v_hat = RowMatrix();

    std::vector<float> norm_w(E);
    f.dequantize_rows(*impl_->out_norm, 0, 1, norm_w.data());
    RowMatrix xn(n, E);
    ops::rms_norm(x.data(), n, E, norm_w.data(), hp.rms_eps, xn.data());
    x = RowMatrix();

    ForwardResult res;
    if (opts.want_hidden) res.hidden.assign(xn.data(), xn.data() + static_cast<size_t>(n) * E);
    const int n_targets = opts.want_nll ? n - 1 : 0;
    if (n_targets == 0 && !opts.want_last_logits) return res;
    // Rows of xn whose logits are needed: the n-1 rows with a next token, plus the
    // last row when its logits are wanted.
    const int row_begin = n_targets > 0 ? 0 : n - 1;
    const int row_end = opts.want_last_logits ? n : n_targets;
    if (opts.want_last_logits) res.last_logits.resize(hp.n_vocab);

    // The output matrix is dequantized in chunks of vocabulary rows, once per call
    // (49152 x 576 in fp32 would be 113 MB), and each chunk meets the needed rows in
    // tiles of kRowBlock, so neither the full fp32 matrix nor the full [n, n_vocab]
    // logits exist. Threads take whole chunks and keep their own per-row log-sum-exp
    // statistics, merged at the end: one barrier for the whole projection.
    constexpr int kRowBlock = 256;
    const int64_t n_vocab = hp.n_vocab;
    const int64_t chunk = std::min<int64_t>(n_vocab, std::max<int64_t>(64, (int64_t{1} << 20) / std::max(E, 1)));
    const int64_t n_chunks = (n_vocab + chunk - 1) / chunk;
    std::vector<ops::LogitRowStats> stats(n_targets);
    const int out_threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), n_chunks));
#pragma omp parallel num_threads(out_threads)
    {
        std::vector<ops::LogitRowStats> mine(n_targets);
        std::vector<float> wbuf(static_cast<size_t>(chunk) * E);
        RowMatrix logits;
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < n_chunks; ++c) {
            guarded([&] {
                const int64_t v0 = c * chunk, nv = std::min(chunk, n_vocab - v0);
                f.dequantize_rows(*impl_->output, static_cast<uint64_t>(v0), static_cast<uint64_t>(nv), wbuf.data());
                for (int r0 = row_begin; r0 < row_end; r0 += kRowBlock) {
                    const int nr = std::min(kRowBlock, row_end - r0);
                    logits.resize(nr, nv);
                    ops::matmul_wt(xn.row(r0).data(), nr, E, wbuf.data(), nv, logits.data());
                    for (int r = 0; r < nr; ++r) {
                        const int i = r0 + r;
                        if (i < n_targets) mine[i].add_block(logits.row(r).data(), nv, v0, tokens[i + 1]);
                    }
                    if (opts.want_last_logits && r0 + nr == n)
                        std::copy_n(logits.row(nr - 1).data(), nv, res.last_logits.begin() + v0);
                }
            });
        }
#pragma omp critical(pkv_forward_merge)
        for (int i = 0; i < n_targets; ++i) stats[i].merge(mine[i]);
    }
    if (error) std::rethrow_exception(error);
    res.nll.resize(n_targets);
    res.argmax.resize(n_targets);
    for (int i = 0; i < n_targets; ++i) {
        res.nll[i] = static_cast<float>(stats[i].nll());
        res.argmax[i] = stats[i].argmax;
    }
    return res;
}

std::vector<NextTokenStats> LlamaModel::compare_next_token(const std::vector<int32_t>& tokens,
                                                           const std::vector<const float*>& hidden) const {
    const GgufFile& f = *impl_->file;
    const LlamaHparams& hp = impl_->hp;
    const int n = static_cast<int>(tokens.size()), E = static_cast<int>(hp.n_embd);
    const int nv_var = static_cast<int>(hidden.size());
    PKV_CHECK(nv_var >= 1, invalid_argument, "{}: compare_next_token: expected at least one hidden state", f.path());
    for (const float* h : hidden)
        PKV_CHECK(h != nullptr, invalid_argument, "{}: compare_next_token: null hidden state", f.path());
    for (int i = 0; i < n; ++i)
        PKV_CHECK(tokens[i] >= 0 && static_cast<uint32_t>(tokens[i]) < hp.n_vocab, out_of_range,
                  "{}: token {} at position {}: expected an id in [0, {})", f.path(), tokens[i], i, hp.n_vocab);
    std::vector<NextTokenStats> res(nv_var);
    const int n_targets = std::max(0, n - 1);
    if (n_targets == 0) return res;

    // Same chunking and row tiles as forward(), so variant 0 reproduces its NLL.
    constexpr int kRowBlock = 256;
    const int64_t n_vocab = hp.n_vocab;
    const int64_t chunk = std::min<int64_t>(n_vocab, std::max<int64_t>(64, (int64_t{1} << 20) / std::max(E, 1)));
    const int64_t n_chunks = (n_vocab + chunk - 1) / chunk;
    std::vector<std::vector<ops::LogitRowStats>> stats(nv_var, std::vector<ops::LogitRowStats>(n_targets));
    std::vector<std::vector<ops::KlRowStats>> kl(nv_var, std::vector<ops::KlRowStats>(n_targets));
    std::exception_ptr error;
    const int out_threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), n_chunks));
#pragma omp parallel num_threads(out_threads)
    {
        std::vector<std::vector<ops::LogitRowStats>> mine(nv_var, std::vector<ops::LogitRowStats>(n_targets));
        std::vector<std::vector<ops::KlRowStats>> mine_kl(nv_var, std::vector<ops::KlRowStats>(n_targets));
        std::vector<float> wbuf(static_cast<size_t>(chunk) * E);
        std::vector<RowMatrix> logits(nv_var);
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < n_chunks; ++c) {
            try {
                const int64_t v0 = c * chunk, nv = std::min(chunk, n_vocab - v0);
                f.dequantize_rows(*impl_->output, static_cast<uint64_t>(v0), static_cast<uint64_t>(nv), wbuf.data());
                for (int r0 = 0; r0 < n_targets; r0 += kRowBlock) {
                    const int nr = std::min(kRowBlock, n_targets - r0);
                    for (int a = 0; a < nv_var; ++a) {
                        logits[a].resize(nr, nv);
                        ops::matmul_wt(hidden[a] + static_cast<int64_t>(r0) * E, nr, E, wbuf.data(), nv,
                                       logits[a].data());
                        for (int r = 0; r < nr; ++r)
                            mine[a][r0 + r].add_block(logits[a].row(r).data(), nv, v0, tokens[r0 + r + 1]);
                        if (a > 0)
                            for (int r = 0; r < nr; ++r)
                                mine_kl[a][r0 + r].add_block(logits[0].row(r).data(), logits[a].row(r).data(), nv);
                    }
                }
            } catch (...) {
#pragma omp critical(pkv_compare_error)
                if (!error) error = std::current_exception();
            }
        }
#pragma omp critical(pkv_compare_merge)
        for (int a = 0; a < nv_var; ++a)
            for (int i = 0; i < n_targets; ++i) {
                stats[a][i].merge(mine[a][i]);
                kl[a][i].merge(mine_kl[a][i]);
            }
    }
    if (error) std::rethrow_exception(error);
    for (int a = 0; a < nv_var; ++a) {
        NextTokenStats& r = res[a];
        r.nll.resize(n_targets);
        r.argmax.resize(n_targets);
        if (a > 0) r.kl.resize(n_targets);
        for (int i = 0; i < n_targets; ++i) {
            r.nll[i] = static_cast<float>(stats[a][i].nll());
            r.argmax[i] = stats[a][i].argmax;
            if (a > 0) r.kl[i] = static_cast<float>(kl[a][i].kl(stats[0][i].lse(), stats[a][i].lse()));
        }
    }
    return res;
}

std::vector<int32_t> LlamaModel::greedy(const std::vector<int32_t>& prompt, int n_new) const {
    PKV_CHECK(n_new >= 0, invalid_argument, "{}: greedy n_new: expected >= 0, got {}", impl_->file->path(), n_new);
    std::vector<int32_t> seq = prompt;
    ForwardOptions o;
    o.want_nll = false;
    o.want_last_logits = true;
    for (int t = 0; t < n_new; ++t) {
        const ForwardResult r = forward(seq, o);
        const auto best = std::max_element(r.last_logits.begin(), r.last_logits.end());
        seq.push_back(static_cast<int32_t>(best - r.last_logits.begin()));
    }
    return seq;
}

}  // namespace pkv
