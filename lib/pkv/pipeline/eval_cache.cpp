// One method's cache per (layer, KV head, tensor); see eval_cache.h.
#include "pkv/pipeline/eval_cache.h"

#include <algorithm>

#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/kvcache/pre_rope.h"
#include "pkv/quant/hadamard.h"

namespace pkv {

MethodCache::MethodCache(const KvSpec& spec, uint64_t seed, std::vector<bool> keep_fp16, const LlamaHparams& hp,
                         std::shared_ptr<const PatternTable> table)
    : spec_(spec),
      params_(kv_spec_sim_params(spec, seed)),
      keep_(std::move(keep_fp16)),
      n_layer_(static_cast<int>(hp.n_layer)),
      n_head_kv_(static_cast<int>(hp.n_head_kv)) {
    PKV_ASSERT(keep_.size() == static_cast<size_t>(n_layer_));
    bits_.assign(static_cast<size_t>(n_layer_) * n_head_kv_ * 2, 0.0);
    for (uint32_t l = 0; l < hp.n_layer; ++l) {
        ring_.push_back(layer_window(hp, l));
        // Global layers share ropes_[0]; local layers (their own base) ropes_[1].
        rope_of_.push_back(is_local_layer(hp, l) ? 1 : 0);
    }
    rope_params_.push_back(rope_params(hp));
    if (has_local_layers(hp)) rope_params_.push_back(local_rope_params(hp));
    ropes_.resize(rope_params_.size());
    table_ = std::move(table);
    PKV_ASSERT(!spec_.table || table_);
    if (table_) {
        views_.resize(bits_.size());
        const int D = static_cast<int>(hp.head_dim);
        const bool l2 = table_->assign == ptable::kAssignL2;
        for (size_t li = 0; li < table_->layers.size(); ++li) {
            const PatternLayer& L = table_->layers[li];
            if (L.layer >= n_layer_) continue;
            for (int h = 0; h < n_head_kv_; ++h) {
                const size_t i = (static_cast<size_t>(L.layer) * n_head_kv_ + h) * 2;
                views_[i] = {L.k_patterns.data() + static_cast<int64_t>(h) * table_->k_patterns * D,
                             table_->k_patterns,
                             L.k_clip[h],
                             ptable::kDefaultGateZ,
                             l2,
                             table_->head_bits(li, h, false)};
                views_[i + 1] = {L.v_patterns.data() + static_cast<int64_t>(h) * table_->v_patterns * D,
                                 table_->v_patterns,
                                 L.v_clip[h],
                                 L.v_gate_z[h],
                                 l2,
                                 table_->head_bits(li, h, true)};
            }
        }
    }
}

void check_table_for_eval(const KvSpec& spec, const PatternTable& t, const LlamaHparams& hp,
                          const std::string& model_sha256, const std::vector<bool>& keep_fp16) {
    const std::string& p = spec.table_path;
    PKV_CHECK(t.model.sha256 == model_sha256, invalid_argument,
              "--kv '{}': {} was calibrated on model sha256 {}, not on this model ({})", spec.text, p,
              t.model.sha256.substr(0, 16), model_sha256.substr(0, 16));
    PKV_CHECK(t.model.n_head_kv == static_cast<int>(hp.n_head_kv) && t.model.head_dim == static_cast<int>(hp.head_dim),
              invalid_argument, "--kv '{}': {} has n_head_kv {} / head_dim {}, the model {} / {}", spec.text, p,
              t.model.n_head_kv, t.model.head_dim, hp.n_head_kv, hp.head_dim);
    const std::string basis = spec.keys_pre ? ptable::kBasisPre : ptable::kBasisPost;
    PKV_CHECK(t.key_basis == basis, invalid_argument,
              "--kv '{}': {} holds {} key patterns but the spec quantizes {} keys{}", spec.text, p, t.key_basis, basis,
              spec.keys_pre ? "" : " (add :pre)");
    // The model's own order: GGUF's interleaved pairs, or HF's half split for NEOX models
    // (whose GGUF rows are not permuted, so the two orders coincide).
    const bool neox = hp.rope_layout == RopeLayout::half_split;
    const char* native = neox ? "hf_half_split" : "gguf_interleaved";
    PKV_CHECK(t.key_dim_order == native, invalid_argument,
              "--kv '{}': {} has key dim order {}, but the model computes {} keys (export the table with --key-order "
              "{})",
              spec.text, p, t.key_dim_order, native, neox ? "hf" : "gguf");
    const bool rotated = t.rotation != ptable::kRotationNone;
    PKV_CHECK(rotated == spec.rotate && t.rotation_seed == 0, invalid_argument,
              "--kv '{}': {} is in the {} basis but the spec {} rotate (:rot)", spec.text, p, t.rotation,
              spec.rotate ? "does" : "does not");
    PKV_CHECK(!t.has_allocation() || spec.table_auto, invalid_argument,
              "--kv '{}': {} records a width per KV head (budget {} bits per element): evaluate it with "
              "patternkv-table:auto:{}",
              spec.text, p, t.alloc_budget, p);
    PKV_CHECK(spec.table_auto || t.bits == spec.bits, invalid_argument,
              "--kv '{}': {} was fitted for {}-bit residuals, not {}", spec.text, p, t.bits, spec.bits);
    for (size_t l = 0; l < keep_fp16.size(); ++l)
        PKV_CHECK(keep_fp16[l] || std::any_of(t.layers.begin(), t.layers.end(),
                                              [&](const PatternLayer& L) { return L.layer == static_cast<int>(l); }),
                  invalid_argument, "--kv '{}': {} has no patterns for layer {} (calibrate it or keep it in fp16)",
                  spec.text, p, l);
    // Patterns of a sliding-window layer were mined on keys of a ring of W tokens and a
    // local RoPE base: they do not describe a global layer, nor one of another window.
    if (t.layer_geometry)
        for (const PatternLayer& L : t.layers) {
            if (L.layer < 0 || L.layer >= static_cast<int>(hp.n_layer)) continue;
            const int model_w = static_cast<int>(layer_window(hp, static_cast<uint32_t>(L.layer)));
            if (L.window == model_w) continue;
            const auto how = [](int w) { return w > 0 ? fmt::format("sliding window {}", w) : std::string("global"); };
            fail(ErrorCode::invalid_argument, "--kv '{}': {}: layer {} was calibrated {}, but the model's layer {} {}",
                 spec.text, p, L.layer, L.window > 0 ? "with " + how(L.window) : "as a global layer", L.layer,
                 model_w > 0 ? "has " + how(model_w) : "is global");
        }
    if (spec.outliers != 0 && spec.outliers != t.outliers)
        log::warn("--kv '{}': {} was fitted with {} exact outliers per group, the spec holds out {}", spec.text, p,
                  t.outliers, spec.outliers);
    if (t.group != spec.group || t.window != spec.window)
        log::warn("--kv '{}': {} was fitted with group {} / window {}, the spec uses {} / {}", spec.text, p, t.group,
                  t.window, spec.group, spec.window);
}

double cached_elements(const LlamaHparams& hp, int64_t n) {
    double e = 0.0;
    for (uint32_t l = 0; l < hp.n_layer; ++l) e += static_cast<double>(kept_tokens(n, layer_window(hp, l)));
    return e * hp.n_head_kv * hp.head_dim;
}

void check_spec_for_window(const KvSpec& spec, const LlamaHparams& hp, const std::string& model_path) {
    if (!has_local_layers(hp) || !kv_method_keeps_window(spec.method)) return;
    check_window_fits_ring(fmt::format("--kv '{}'", spec.text), spec.window, hp.sliding_window,
                           model_path + "'s local layers");
}

void MethodCache::begin_sequence(int n, int64_t prefill) {
    PKV_ASSERT(n >= 1 && prefill >= 0 && prefill <= n);
    n_ = n;
    prefill_ = prefill;
    std::fill(bits_.begin(), bits_.end(), 0.0);
    if (spec_.keys_pre)
        for (size_t i = 0; i < ropes_.size(); ++i)
            if (ropes_[i].n_pos != n) ropes_[i] = rope_table(rope_params_[i], n);
}

DeviceKvCache MethodCache::device_cache(std::vector<int64_t> prefill) const {
    DeviceKvCache c;
    c.params = params_;
    c.rotate = spec_.rotate;
    c.keys_pre = spec_.keys_pre;
    c.keep_fp16 = keep_;
    c.prefill = std::move(prefill);
    c.tables = views_;
    c.keep_alive = table_;
    return c;
}

KvCacheHook MethodCache::hook() {
    return [this](const KvHookInput& in, KvHookOutput& out) { run(in, out); };
}

double sum_tensor_bits(const std::vector<double>& bits, int tensor) {
    double s = 0.0;
    for (size_t i = static_cast<size_t>(tensor); i < bits.size(); i += 2) s += bits[i];
    return s;
}

double MethodCache::key_bits() const { return sum_tensor_bits(bits_, 0); }
double MethodCache::value_bits() const { return sum_tensor_bits(bits_, 1); }

void MethodCache::run(const KvHookInput& in, KvHookOutput& out) {
    PKV_ASSERT(in.n_tokens == n_ && in.layer >= 0 && in.layer < n_layer_ && in.kv_head >= 0 && in.kv_head < n_head_kv_);
    const int n = in.n_tokens, D = in.head_dim;
    const size_t nd = static_cast<size_t>(n) * D;
    double& bits = bits_[(static_cast<size_t>(in.layer) * n_head_kv_ + in.kv_head) * 2 + (in.value ? 1 : 0)];
    const int64_t ring = ring_[in.layer];
    if (keep_[in.layer] || spec_.method == KvMethod::fp16) {
        bits = exact_bits(static_cast<double>(kept_tokens(n, ring)) * D);
        return;  // exact head: empty output
    }
    const bool pre = spec_.keys_pre && !in.value;
    std::vector<float> x(pre ? in.k_pre : in.x, (pre ? in.k_pre : in.x) + nd);
    // rotv64 rotates a value head as D/64 independent 64-element rows (llama.cpp's V rotation).
    const int rb = spec_.rotate && in.value && spec_.rotate_v_block > 0 ? spec_.rotate_v_block : D;
    const int64_t rrows = static_cast<int64_t>(n) * (D / rb);
    if (spec_.rotate) hadamard_rotate_rows(x.data(), rrows, rb);
    SimParams sp = params_;
    sp.ring = ring;
    if (table_) {
        const size_t i = (static_cast<size_t>(in.layer) * n_head_kv_ + in.kv_head) * 2;
        sp.table_k = &views_[i];
        sp.table_v = &views_[i + 1];
    }
    SimResult r = simulate_cache(sp, in.value ? KvTensor::v : KvTensor::k, x.data(), n, D, prefill_);
    bits = r.bits.total();
    if (std::all_of(r.flush_step.begin(), r.flush_step.end(), [](int32_t s) { return s == kNeverQuantized; })) return;
    if (spec_.rotate) hadamard_rotate_rows(r.recon.data(), rrows, rb, nullptr, true);
    if (pre) pre_rope_recon_to_post(r.recon.data(), in.k_pre, in.x, n, D, ropes_[rope_of_[in.layer]]);
    out.recon = std::move(r.recon);
    out.flush_step = std::move(r.flush_step);
}

}  // namespace pkv
