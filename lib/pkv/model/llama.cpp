// pkv/model/llama.cpp — the decoder forward pass: tensor binding, per-layer
// dequantization and the layer loop (the output projection is in logits.cpp).
#include "pkv/model/llama.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <exception>

#include "pkv/core/error.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/logits.h"
#include "pkv/model/ops.h"
#include "pkv/model/region_errors.h"

namespace pkv {

using ops::RowMatrix;

namespace {

/// The tensors of one block inside the file mapping, by LayerPart; null where the
/// architecture or file has none (biases, Q/K norms).
struct LayerTensors {
    std::array<const GgufTensorInfo*, kLayerParts> part{};
};

// The whole-file check, so a model is never built over something it would ignore.
LlamaHparams checked_hparams(const std::shared_ptr<const GgufFile>& file) {
    PKV_CHECK(file != nullptr, invalid_argument, "LlamaModel: no file given");
    const std::vector<ModelFinding> findings = model_findings(*file);
    if (findings.size() == 1) fail(findings[0].code, "{}", findings[0].message);
    if (!findings.empty())
        fail(findings[0].code, "{} (and {} more: `pkv validate {}` lists them)", findings[0].message,
             findings.size() - 1, file->path());
    return llama_hparams_from_gguf(*file);
}

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
/// (every layer has the same parts and shapes, so the offsets are fixed); w(part) is null
/// for a part the model does not have.
struct LayerWeights {
    std::vector<float> buf;
    std::array<float*, kLayerParts> ptr{};

    const float* w(LayerPart p) const { return ptr[static_cast<int>(p)]; }
    void reserve(const LayerTensors& t) {
        size_t total = 0;
        for (const auto* x : t.part) total += x ? x->n_elements() : 0;
        buf.resize(total);
        size_t off = 0;
        for (int i = 0; i < kLayerParts; ++i) {
            ptr[i] = t.part[i] ? buf.data() + off : nullptr;
            off += t.part[i] ? t.part[i]->n_elements() : 0;
        }
    }
    /// Part `part` of `n_parts` of every tensor's rows, so threads share the work.
    void load_part(const GgufFile& f, const LayerTensors& t, int part, int n_parts) {
        for (int i = 0; i < kLayerParts; ++i) {
            const GgufTensorInfo* p = t.part[i];
            if (p == nullptr) continue;
            const uint64_t rows = p->n_rows(), per = (rows + n_parts - 1) / n_parts;
            const uint64_t r0 = std::min(rows, per * part), r1 = std::min(rows, r0 + per);
            if (r1 > r0) f.dequantize_rows(*p, r0, r1 - r0, ptr[i] + r0 * p->row_length());
        }
    }
};

// Hands one (KV head, tensor) of layer l to the hook and installs what it returns:
// the reconstruction into the head's columns of `hat`, the flush steps into
// flush[g] and a pointer to them into flush_ptr[g] (null: the head stays exact).
void run_kv_hook(const KvCacheHook& hook, int l, int g, bool value, int n, int HD, int KD, const float* k_post,
                 const float* k_pre, const float* v, RowMatrix& hat, std::vector<std::vector<int32_t>>& flush,
                 std::vector<const int32_t*>& flush_ptr) {
    KvHookOutput out = call_kv_hook(hook, l, g, value, n, HD, KD, k_post, k_pre, v);
    if (out.recon.empty()) {
        flush[g].clear();
        flush_ptr[g] = nullptr;
        return;
    }
    for (int i = 0; i < n; ++i)
        std::copy_n(out.recon.data() + i * HD, HD,
                    hat.data() + static_cast<int64_t>(i) * KD + static_cast<int64_t>(g) * HD);
    flush[g] = std::move(out.flush_step);
    flush_ptr[g] = flush[g].data();
}

}  // namespace

KvHookOutput call_kv_hook(const KvCacheHook& hook, int layer, int g, bool value, int n, int HD, int64_t KD,
                          const float* k_post, const float* k_pre, const float* v, int sequence) {
    const float* src = value ? v : k_post;
    std::vector<float> x(static_cast<size_t>(n) * HD), pre;
    for (int i = 0; i < n; ++i) std::copy_n(src + i * KD + int64_t{g} * HD, HD, x.data() + int64_t{i} * HD);
    if (!value) {
        pre.resize(x.size());
        for (int i = 0; i < n; ++i) std::copy_n(k_pre + i * KD + int64_t{g} * HD, HD, pre.data() + int64_t{i} * HD);
    }
    KvHookInput in;
    in.layer = layer;
    in.kv_head = g;
    in.value = value;
    in.n_tokens = n;
    in.head_dim = HD;
    in.x = x.data();
    in.k_pre = value ? nullptr : pre.data();
    KvHookOutput out;
    hook(in, out);
    if (out.recon.empty() && out.flush_step.empty()) return out;
    PKV_CHECK(
        out.recon.size() == x.size() && out.flush_step.size() == static_cast<size_t>(n), internal,
        "KV cache hook, {}layer {} KV head {} {}: expected recon of {} and flush_step of {} values, got {} and {}",
        sequence >= 0 ? fmt::format("sequence {} ", sequence) : std::string(), layer, g, value ? "values" : "keys",
        x.size(), n, out.recon.size(), out.flush_step.size());
    return out;
}

LlamaModel::LlamaModel(std::shared_ptr<const GgufFile> file) : LlamaModel(file, checked_hparams(file)) {}

LlamaModel::LlamaModel(std::shared_ptr<const GgufFile> file, const LlamaHparams& hp) : impl_(std::make_unique<Impl>()) {
    PKV_CHECK(file != nullptr, invalid_argument, "LlamaModel: no file given");
    impl_->file = std::move(file);
    impl_->hp = hp;
    const GgufFile& f = *impl_->file;
    impl_->layers.assign(hp.n_layer, LayerTensors{});
    for (const TensorReq& r : model_tensor_plan(hp)) {
        if (auto problem = tensor_finding(f, r)) fail(problem->code, "{}", problem->message);
        const GgufTensorInfo* t = f.find_tensor(r.name);
        if (r.layer >= 0) impl_->layers[r.layer].part[static_cast<int>(r.part)] = t;
        else if (r.name == "token_embd.weight") impl_->tok_embd = t;
        else if (r.name == "output_norm.weight") impl_->out_norm = t;
        else if (r.name == "output.weight") impl_->output = t;
    }
    if (hp.tied_output) impl_->output = impl_->tok_embd;
}

LlamaModel::~LlamaModel() = default;
const LlamaHparams& LlamaModel::hparams() const { return impl_->hp; }
const GgufFile& LlamaModel::file() const { return *impl_->file; }

namespace {

/// The sizes of one forward call as ints, the index type of the activation matrices.
struct Dims {
    int n = 0, E = 0, H = 0, HKV = 0, HD = 0, FF = 0, QD = 0, KD = 0;
};

// Converted once, so the steps below need no casts.
Dims forward_dims(const LlamaHparams& hp, int n) {
    Dims d;
    d.n = n;
    d.E = static_cast<int>(hp.n_embd), d.H = static_cast<int>(hp.n_head), d.HKV = static_cast<int>(hp.n_head_kv);
    d.HD = static_cast<int>(hp.head_dim), d.FF = static_cast<int>(hp.n_ff);
    d.QD = d.H * d.HD, d.KD = d.HKV * d.HD;
    return d;
}

// Rejects bad tokens and options before any work, naming the file.
void check_forward_args(const GgufFile& f, const LlamaHparams& hp, const std::vector<int32_t>& tokens,
                        const ForwardOptions& opts, const LayerSink& sink) {
    const int n = static_cast<int>(tokens.size());
    PKV_CHECK(!tokens.empty() && tokens.size() <= hp.n_ctx_train, out_of_range,
              "{}: forward of {} tokens: expected 1 to {} (context_length)", f.path(), tokens.size(), hp.n_ctx_train);
    PKV_CHECK(opts.pos0 >= 0, invalid_argument, "{}: forward pos0: expected >= 0, got {}", f.path(), opts.pos0);
    // Within the window a sliding-window layer attends exactly like a full one.
    PKV_CHECK(hp.sliding_window == 0 || !hp.swa_layer.empty() || tokens.size() <= hp.sliding_window, unsupported,
              "{}: forward of {} tokens: expected at most attention.sliding_window = {} (pkv attends to the whole "
              "sequence)",
              f.path(), tokens.size(), hp.sliding_window);
    PKV_CHECK(opts.layers.empty() || opts.layers.size() == hp.n_layer, invalid_argument,
              "{}: forward capture layer mask: expected {} entries (one per layer), got {}", f.path(), hp.n_layer,
              opts.layers.size());
    PKV_CHECK(!opts.capture || sink, invalid_argument, "{}: forward: capture requested without a layer sink", f.path());
    PKV_CHECK(!opts.attention || !opts.kv_cache, invalid_argument,
              "{}: forward: an attention hook and a KV cache hook both given: expected at most one", f.path());
    for (int i = 0; i < n; ++i)
        PKV_CHECK(tokens[i] >= 0 && static_cast<uint32_t>(tokens[i]) < hp.n_vocab, out_of_range,
                  "{}: token {} at position {}: expected an id in [0, {})", f.path(), tokens[i], i, hp.n_vocab);
}

// Row by row: only the sequence's tokens are dequantized, never the whole table.
RowMatrix embed_tokens(const GgufFile& f, const GgufTensorInfo& tok_embd, const std::vector<int32_t>& tokens, int E,
                       float scale) {
    const int n = static_cast<int>(tokens.size());
    RowMatrix x(n, E);
    for (int i = 0; i < n; ++i) f.dequantize_rows(tok_embd, static_cast<uint64_t>(tokens[i]), 1, x.row(i).data());
    if (scale > 0.0f) x *= scale;
    return x;
}

/// The whole sequence's activations of the current layer: shared, as attention reads other threads' rows.
struct SeqActivations {
    RopeTable rope, rope_swa;  ///< global layers; sliding-window layers (empty without them)
    RowMatrix q, k, v, att, k_pre;
    std::vector<char> capture;  ///< per layer: hand the layer to the sink
    bool hooked = false;        ///< a KV cache hook is set
    bool attn_hooked = false;   ///< an attention hook computes s.att
    // The hooked path: the cache the hook describes, per KV head (rows of k_hat/v_hat
    // of an exact head are never read).
    RowMatrix k_hat, v_hat;
    std::vector<std::vector<int32_t>> k_flush, v_flush;
    std::vector<const int32_t*> k_flush_ptr, v_flush_ptr;
};

// Sized once per call so the layers only overwrite them; k_pre and the hook's cache only when read.
SeqActivations seq_activations(const LlamaHparams& hp, const Dims& d, const ForwardOptions& opts) {
    SeqActivations s;
    s.rope = rope_table(rope_params(hp), d.n, opts.pos0);
    if (has_local_layers(hp)) s.rope_swa = rope_table(local_rope_params(hp), d.n, opts.pos0);
    s.q.resize(d.n, d.QD), s.k.resize(d.n, d.KD), s.v.resize(d.n, d.KD), s.att.resize(d.n, d.QD);
    s.capture.assign(hp.n_layer, 0);
    for (uint32_t l = 0; l < hp.n_layer; ++l) s.capture[l] = opts.capture && (opts.layers.empty() || opts.layers[l]);
    s.hooked = static_cast<bool>(opts.kv_cache);
    s.attn_hooked = static_cast<bool>(opts.attention);
    if (opts.capture || s.hooked) s.k_pre.resize(d.n, d.KD);
    if (s.hooked) {
        s.k_hat.resize(d.n, d.KD), s.v_hat.resize(d.n, d.KD);
        s.k_flush.resize(d.HKV), s.v_flush.resize(d.HKV);
        s.k_flush_ptr.assign(d.HKV, nullptr), s.v_flush_ptr.assign(d.HKV, nullptr);
    }
    return s;
}

/// Everything the threads of the layer loop share.
struct LayerLoop {
    const GgufFile& f;
    const LlamaHparams& hp;
    const std::vector<LayerTensors>& layers;
    const ForwardOptions& opts;
    const LayerSink& sink;
    const Dims& d;
    RegionErrors& errors;
    RowMatrix& x;  ///< [n, E] residual stream
    SeqActivations s;
    LayerWeights w;  ///< the current layer in fp32
};

/// One thread's contiguous slice [ra, rb) of token rows and its scratch buffers.
struct ThreadRows {
    int t = 0, nt = 1, ra = 0, rb = 0, m = 0;
    RowMatrix xn, proj, gate, up, scratch, scratch2;

    ThreadRows(const Dims& d, int thread, int n_threads) : t(thread), nt(n_threads) {
        const int per = (d.n + nt - 1) / nt;
        ra = std::min(d.n, t * per), rb = std::min(d.n, ra + per), m = rb - ra;
        xn.resize(std::max(m, 1), d.E), proj.resize(std::max(m, 1), d.E);
        gate.resize(std::max(m, 1), d.FF), up.resize(std::max(m, 1), d.FF);
    }
};

// rows[i] += bias for each of `m` rows of `cols` values (a no-op without a bias).
void add_bias(float* rows, int m, int cols, const float* bias) {
    if (bias == nullptr) return;
    Eigen::Map<RowMatrix>(rows, m, cols).rowwise() += Eigen::Map<const Eigen::RowVectorXf>(bias, cols);
}

// Per-row work, so each thread projects its own rows; K is kept before RoPE (after
// qwen3's per-head norm: what RoPE rotates) for the sink and the hook.
void project_qkv(LayerLoop& L, ThreadRows& tr, uint32_t l) {
    using P = LayerPart;
    const Dims& d = L.d;
    SeqActivations& s = L.s;
    const LayerWeights& w = L.w;
    const int ra = tr.ra, m = tr.m;
    ops::rms_norm(L.x.row(ra).data(), m, d.E, w.w(P::attn_norm), L.hp.rms_eps, tr.xn.data());
    ops::matmul_wt(tr.xn.data(), m, d.E, w.w(P::wq), d.QD, s.q.row(ra).data());
    ops::matmul_wt(tr.xn.data(), m, d.E, w.w(P::wk), d.KD, s.k.row(ra).data());
    ops::matmul_wt(tr.xn.data(), m, d.E, w.w(P::wv), d.KD, s.v.row(ra).data());
    add_bias(s.q.row(ra).data(), m, d.QD, w.w(P::bq));
    add_bias(s.k.row(ra).data(), m, d.KD, w.w(P::bk));
    add_bias(s.v.row(ra).data(), m, d.KD, w.w(P::bv));
    if (w.w(P::q_norm)) {  // rows of one head are contiguous: [m * heads, head_dim]
        ops::rms_norm(s.q.row(ra).data(), int64_t{m} * d.H, d.HD, w.w(P::q_norm), L.hp.rms_eps, s.q.row(ra).data());
        ops::rms_norm(s.k.row(ra).data(), int64_t{m} * d.HKV, d.HD, w.w(P::k_norm), L.hp.rms_eps, s.k.row(ra).data());
    }
    if (s.capture[l] || s.hooked) s.k_pre.middleRows(ra, m) = s.k.middleRows(ra, m);
    const RopeTable& rope = is_local_layer(L.hp, l) ? s.rope_swa : s.rope;
    rope_apply(s.q.row(ra).data(), m, d.H, d.HD, rope, ra);
    rope_apply(s.k.row(ra).data(), m, d.HKV, d.HD, rope, ra);
}

// One thread, after the barrier: the sink sees every row of the layer, once.
void capture_layer(const LayerLoop& L, uint32_t l) {
    LayerActivations a;
    a.layer = static_cast<int>(l);
    a.n_tokens = L.d.n;
    a.k_pre = L.s.k_pre.data();
    a.k_post = L.s.k.data();
    a.v = L.s.v.data();
    a.q = L.s.q.data();
    L.sink(a);
}

// An orphaned `omp for` over (KV head, tensor): its implicit barrier readies every head before attention.
void hook_kv_cache(LayerLoop& L, uint32_t l) {
    const Dims& d = L.d;
    SeqActivations& s = L.s;
#pragma omp for schedule(dynamic, 1)
    for (int item = 0; item < 2 * d.HKV; ++item)
        L.errors.guarded([&] {
            run_kv_hook(L.opts.kv_cache, static_cast<int>(l), item / 2, item % 2 == 1, d.n, d.HD, d.KD, s.k.data(),
                        s.k_pre.data(), s.v.data(), item % 2 ? s.v_hat : s.k_hat, item % 2 ? s.v_flush : s.k_flush,
                        item % 2 ? s.v_flush_ptr : s.k_flush_ptr);
        });
}

// An orphaned `omp single`: one thread hands the whole layer to the hook and the implicit
// barrier keeps every thread's projection from reading s.att before the hook has written it.
void hook_attention(LayerLoop& L, uint32_t l) {
#pragma omp single
    L.errors.guarded([&] {
        const Dims& d = L.d;
        SeqActivations& s = L.s;
        AttentionHookInput in;
        in.layer = static_cast<int>(l);
        in.n_tokens = d.n;
        in.n_head = d.H, in.n_head_kv = d.HKV, in.head_dim = d.HD;
        in.kq_scale = L.hp.attn_scale;
        in.window = static_cast<int>(layer_window(L.hp, l));
        in.q = s.q.data(), in.k = s.k.data(), in.v = s.v.data();
        in.out = s.att.data();
        L.opts.attention(in);
    });
}

// Gemma's sublayer output norm, in place on the thread's projected rows (a no-op without it).
void post_norm(LayerLoop& L, ThreadRows& tr, LayerPart part) {
    const float* w = L.w.w(part);
    if (w == nullptr) return;
    ops::rms_norm(tr.proj.data(), tr.m, L.d.E, w, L.hp.rms_eps, tr.proj.data());
}

// A query row reads only K/V rows before it, so each thread attends and projects its own rows.
void attend_rows(LayerLoop& L, ThreadRows& tr, uint32_t l) {
    const Dims& d = L.d;
    SeqActivations& s = L.s;
    const int ra = tr.ra, m = tr.m;
    constexpr int kQBlock = 256;
    const float scale = L.hp.attn_scale;  // 0: 1/sqrt(head_dim)
    const int window = static_cast<int>(layer_window(L.hp, l));
    if (s.attn_hooked) {
        // s.att is the hook's (hook_attention ran before this).
    } else if (s.hooked)
        ops::causal_attention_rows_cached(s.q.data(), s.k.data(), s.v.data(), s.k_hat.data(), s.v_hat.data(),
                                          s.k_flush_ptr.data(), s.v_flush_ptr.data(), d.H, d.HKV, d.HD, s.att.data(),
                                          ra, tr.rb, tr.scratch, tr.scratch2, kQBlock, scale, window);
    else
        ops::causal_attention_rows(s.q.data(), s.k.data(), s.v.data(), d.H, d.HKV, d.HD, s.att.data(), ra, tr.rb,
                                   tr.scratch, kQBlock, scale, window);
    ops::matmul_wt(s.att.row(ra).data(), m, d.QD, L.w.w(LayerPart::wo), d.E, tr.proj.data());
    add_bias(tr.proj.data(), m, d.E, L.w.w(LayerPart::bo));
    post_norm(L, tr, LayerPart::post_attn_norm);
    L.x.middleRows(ra, m) += tr.proj.topRows(m);
}

// One barrier, every row's K/V ready, is all attention, the sink and the hook need after the projections.
void attention_block(LayerLoop& L, ThreadRows& tr, uint32_t l) {
    if (tr.m > 0) L.errors.guarded([&] { project_qkv(L, tr, l); });
#pragma omp barrier
    if (L.s.capture[l] && tr.t == 0) L.errors.guarded([&] { capture_layer(L, l); });
    if (L.s.hooked) hook_kv_cache(L, l);
    if (L.s.attn_hooked) hook_attention(L, l);
    if (tr.m > 0) L.errors.guarded([&] { attend_rows(L, tr, l); });
}

// Rows are independent, so the feed-forward sublayer needs no barrier.
void ffn_block(LayerLoop& L, ThreadRows& tr) {
    if (tr.m == 0) return;
    L.errors.guarded([&] {
        const Dims& d = L.d;
        const int ra = tr.ra, m = tr.m;
        const LayerWeights& w = L.w;
        ops::rms_norm(L.x.row(ra).data(), m, d.E, w.w(LayerPart::ffn_norm), L.hp.rms_eps, tr.xn.data());
        ops::matmul_wt(tr.xn.data(), m, d.E, w.w(LayerPart::ffn_gate), d.FF, tr.gate.data());
        ops::matmul_wt(tr.xn.data(), m, d.E, w.w(LayerPart::ffn_up), d.FF, tr.up.data());
        if (L.hp.gelu_ffn) ops::geglu_tanh_inplace(tr.gate.data(), tr.up.data(), int64_t{m} * d.FF);
        else ops::swiglu_inplace(tr.gate.data(), tr.up.data(), int64_t{m} * d.FF);
        ops::matmul_wt(tr.gate.data(), m, d.FF, w.w(LayerPart::ffn_down), d.E, tr.proj.data());
        post_norm(L, tr, LayerPart::post_ffn_norm);
        L.x.middleRows(ra, m) += tr.proj.topRows(m);
    });
}

// One decoder block, called by every thread: the step other architectures' blocks will change.
void layer_step(LayerLoop& L, ThreadRows& tr, uint32_t l) {
    // The weight buffer is refilled only when every row is done with the previous layer,
    // and read only when every thread's share of it is in.
#pragma omp barrier
    L.errors.guarded([&] { L.w.load_part(L.f, L.layers[l], tr.t, tr.nt); });
#pragma omp barrier
    attention_block(L, tr, l);
    ffn_block(L, tr);
}

// One region for all layers: three barriers per layer, as a waiting thread spins on shared cores.
void run_layers(LayerLoop& L) {
    // Each thread owns a contiguous slice of token rows for everything but the
    // dequantization, which is split by weight rows.
    L.w.reserve(L.layers.front());
    const int threads = L.d.n >= 32 ? omp_get_max_threads() : 1;
#pragma omp parallel num_threads(threads)
    {
        ThreadRows tr(L.d, omp_get_thread_num(), omp_get_num_threads());
        for (uint32_t l = 0; l < L.hp.n_layer; ++l) layer_step(L, tr, l);
    }
}

// The hidden state the output projection reads and ForwardResult::hidden returns.
RowMatrix final_norm(const GgufFile& f, const GgufTensorInfo& out_norm, const RowMatrix& x, int E, float eps) {
    std::vector<float> norm_w(E);
    f.dequantize_rows(out_norm, 0, 1, norm_w.data());
    RowMatrix xn(x.rows(), E);
    ops::rms_norm(x.data(), x.rows(), E, norm_w.data(), eps, xn.data());
    return xn;
}

}  // namespace

ForwardResult LlamaModel::forward(const std::vector<int32_t>& tokens, const ForwardOptions& opts,
                                  const LayerSink& sink) const {
    const GgufFile& f = *impl_->file;
    const LlamaHparams& hp = impl_->hp;
    check_forward_args(f, hp, tokens, opts, sink);
    const Dims d = forward_dims(hp, static_cast<int>(tokens.size()));
    const int n = d.n;

    RowMatrix x = embed_tokens(f, *impl_->tok_embd, tokens, d.E, hp.embd_scale);
    RegionErrors errors;
    {  // the layer weights and activations go at the end of this scope
        LayerLoop loop{f, hp, impl_->layers, opts, sink, d, errors, x, seq_activations(hp, d, opts), LayerWeights()};
        run_layers(loop);
    }
    errors.rethrow();
    const RowMatrix xn = final_norm(f, *impl_->out_norm, x, d.E, hp.rms_eps);
    x = RowMatrix();

    ForwardResult res;
    if (opts.want_hidden) res.hidden.assign(xn.data(), xn.data() + static_cast<size_t>(n) * d.E);
    const int n_targets = opts.want_nll ? n - 1 : 0;
    if (n_targets == 0 && !opts.want_last_logits) return res;
    if (opts.want_last_logits) res.last_logits.resize(hp.n_vocab);
    const std::vector<ops::LogitRowStats> stats =
        output_logit_stats(f, *impl_->output, xn, tokens, n_targets, hp.n_vocab, res.last_logits);
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
    return next_token_stats(f, *impl_->output, hp.n_vocab, E, tokens, hidden);
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
