// pkv/model/llama.cpp — the Llama forward pass: tensor validation, per-layer
// dequantization, and the blocked output projection with a streaming log-softmax.
#include "pkv/model/llama.h"

#include <algorithm>
#include <cmath>

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

/// One layer's weights in fp32, one buffer reused for every layer of a forward call.
struct LayerWeights {
    std::vector<float> buf;
    const float *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w_gate, *w_up, *w_down;

    void load(const GgufFile& f, const LayerTensors& t) {
        const GgufTensorInfo* parts[] = {t.attn_norm, t.wq, t.wk, t.wv, t.wo, t.ffn_norm, t.w_gate, t.w_up, t.w_down};
        const float** dst[] = {&attn_norm, &wq, &wk, &wv, &wo, &ffn_norm, &w_gate, &w_up, &w_down};
        size_t total = 0;
        for (const auto* p : parts) total += p->n_elements();
        buf.resize(total);
        size_t off = 0;
        for (size_t i = 0; i < 9; ++i) {
            f.dequantize_rows(*parts[i], 0, parts[i]->n_rows(), buf.data() + off);
            *dst[i] = buf.data() + off;
            off += parts[i]->n_elements();
        }
    }
};

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
    PKV_CHECK(opts.pos0 >= 0, invalid_argument, "{}: forward: pos0 must be >= 0, got {}", f.path(), opts.pos0);
    PKV_CHECK(opts.layers.empty() || opts.layers.size() == hp.n_layer, invalid_argument,
              "{}: forward: capture layer mask has {} entries, model has {} layers", f.path(), opts.layers.size(),
              hp.n_layer);
    PKV_CHECK(!opts.capture || sink, invalid_argument, "{}: forward: capture requested without a sink", f.path());
    for (int i = 0; i < n; ++i)
        PKV_CHECK(tokens[i] >= 0 && static_cast<uint32_t>(tokens[i]) < hp.n_vocab, out_of_range,
                  "{}: token {} at position {}: expected an id in [0, {})", f.path(), tokens[i], i, hp.n_vocab);

    const int E = static_cast<int>(hp.n_embd), H = static_cast<int>(hp.n_head), HKV = static_cast<int>(hp.n_head_kv);
    const int HD = static_cast<int>(hp.head_dim), FF = static_cast<int>(hp.n_ff);
    const int QD = H * HD, KD = HKV * HD;

    RowMatrix x(n, E);
    for (int i = 0; i < n; ++i) f.dequantize_rows(*impl_->tok_embd, static_cast<uint64_t>(tokens[i]), 1, x.row(i).data());

    const ops::RopeTable rope = ops::rope_table(n, opts.pos0, static_cast<int>(hp.n_rot), hp.rope_freq_base,
                                                hp.rope_freq_scale);
    RowMatrix xn, q, k, v, k_pre, att, proj, gate, up;
    att.resize(n, QD);
    {
        LayerWeights w;
        for (uint32_t l = 0; l < hp.n_layer; ++l) {
            w.load(f, impl_->layers[l]);
            ops::rms_norm(x, w.attn_norm, hp.rms_eps, xn);
            ops::matmul_wt(xn, w.wq, QD, q);
            ops::matmul_wt(xn, w.wk, KD, k);
            ops::matmul_wt(xn, w.wv, KD, v);
            const bool capture = opts.capture && (opts.layers.empty() || opts.layers[l]);
            if (capture) k_pre = k;
            ops::rope_norm(q.data(), n, H, HD, rope);
            ops::rope_norm(k.data(), n, HKV, HD, rope);
            if (capture) {
                LayerActivations a;
                a.layer = static_cast<int>(l);
                a.n_tokens = n;
                a.k_pre = k_pre.data();
                a.k_post = k.data();
                a.v = v.data();
                a.q = q.data();
                sink(a);
            }
            ops::causal_attention(q.data(), k.data(), v.data(), n, H, HKV, HD, att.data());
            ops::matmul_wt(att, w.wo, E, proj);
            x += proj;

            ops::rms_norm(x, w.ffn_norm, hp.rms_eps, xn);
            ops::matmul_wt(xn, w.w_gate, FF, gate);
            ops::matmul_wt(xn, w.w_up, FF, up);
            ops::swiglu_inplace(gate, up);
            ops::matmul_wt(gate, w.w_down, E, proj);
            x += proj;
        }
    }  // the layer buffer is released before the output projection needs its own
    q = k = v = k_pre = att = gate = up = proj = RowMatrix();

    std::vector<float> norm_w(E);
    f.dequantize_rows(*impl_->out_norm, 0, 1, norm_w.data());
    ops::rms_norm(x, norm_w.data(), hp.rms_eps, xn);

    ForwardResult res;
    const int n_targets = opts.want_nll ? n - 1 : 0;
    if (n_targets == 0 && !opts.want_last_logits) return res;
    // Rows of xn whose logits are needed: the n-1 rows with a next token, plus the
    // last row when its logits are wanted.
    const int row_begin = n_targets > 0 ? 0 : n - 1;
    const int row_end = opts.want_last_logits ? n : n_targets;
    std::vector<ops::LogitRowStats> stats(n_targets);
    if (opts.want_last_logits) res.last_logits.resize(hp.n_vocab);

    // The output matrix is dequantized block by block, once per call (49152 x 576 in
    // fp32 would be 113 MB), and each block meets every needed row in tiles of
    // kRowBlock rows, so neither the full fp32 matrix nor the full [n, n_vocab]
    // logits ever exist. Per-row log-sum-exp statistics are merged across blocks.
    constexpr int kRowBlock = 256;
    const int64_t n_vocab = hp.n_vocab;
    const int64_t vocab_block =
        std::min<int64_t>(n_vocab, std::max<int64_t>(256, (int64_t{1} << 22) / std::max(E, 1)));
    std::vector<float> wbuf(static_cast<size_t>(vocab_block) * E);
    RowMatrix logits;
    for (int64_t v0 = 0; v0 < n_vocab; v0 += vocab_block) {
        const int64_t nv = std::min(vocab_block, n_vocab - v0);
        f.dequantize_rows(*impl_->output, static_cast<uint64_t>(v0), static_cast<uint64_t>(nv), wbuf.data());
        for (int r0 = row_begin; r0 < row_end; r0 += kRowBlock) {
            const int nr = std::min(kRowBlock, row_end - r0);
            logits.resize(nr, nv);
            ops::matmul_wt(xn.row(r0).data(), nr, E, wbuf.data(), nv, logits.data());
#pragma omp parallel for schedule(static) if (nr >= 16)
            for (int r = 0; r < nr; ++r) {
                const int i = r0 + r;
                if (i < n_targets) stats[i].add_block(logits.row(r).data(), nv, v0, tokens[i + 1]);
            }
            if (opts.want_last_logits && r0 + nr == n)
                std::copy_n(logits.row(nr - 1).data(), nv, res.last_logits.begin() + v0);
        }
    }
    res.nll.resize(n_targets);
    res.argmax.resize(n_targets);
    for (int i = 0; i < n_targets; ++i) {
        res.nll[i] = static_cast<float>(stats[i].nll());
        res.argmax[i] = stats[i].argmax;
    }
    return res;
}

std::vector<int32_t> LlamaModel::greedy(const std::vector<int32_t>& prompt, int n_new) const {
    PKV_CHECK(n_new >= 0, invalid_argument, "{}: greedy: n_new must be >= 0, got {}", impl_->file->path(), n_new);
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
