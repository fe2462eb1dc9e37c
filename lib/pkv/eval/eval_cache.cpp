// One method's cache per (layer, KV head, tensor); see eval_cache.h.
#include "pkv/eval/eval_cache.h"

#include <algorithm>

#include "pkv/core/error.h"
#include "pkv/quant/hadamard.h"

namespace pkv {

MethodCache::MethodCache(const KvSpec& spec, uint64_t seed, std::vector<bool> keep_fp16, const LlamaHparams& hp)
    : spec_(spec),
      params_(kv_spec_sim_params(spec, seed)),
      keep_(std::move(keep_fp16)),
      n_layer_(static_cast<int>(hp.n_layer)),
      n_head_kv_(static_cast<int>(hp.n_head_kv)),
      n_rot_(static_cast<int>(hp.n_rot)),
      rope_base_(hp.rope_freq_base),
      rope_scale_(hp.rope_freq_scale) {
    PKV_ASSERT(keep_.size() == static_cast<size_t>(n_layer_));
    bits_.assign(static_cast<size_t>(n_layer_) * n_head_kv_ * 2, 0.0);
}

void MethodCache::begin_sequence(int n, int64_t prefill) {
    PKV_ASSERT(n >= 1 && prefill >= 0 && prefill <= n);
    n_ = n;
    prefill_ = prefill;
    std::fill(bits_.begin(), bits_.end(), 0.0);
    if (spec_.keys_pre && (rope_.n_pos != n)) rope_ = ops::rope_table(n, 0, n_rot_, rope_base_, rope_scale_);
}

KvCacheHook MethodCache::hook() {
    return [this](const KvHookInput& in, KvHookOutput& out) { run(in, out); };
}

double MethodCache::key_bits() const {
    double s = 0.0;
    for (size_t i = 0; i < bits_.size(); i += 2) s += bits_[i];
    return s;
}

double MethodCache::value_bits() const {
    double s = 0.0;
    for (size_t i = 1; i < bits_.size(); i += 2) s += bits_[i];
    return s;
}

void MethodCache::run(const KvHookInput& in, KvHookOutput& out) {
    PKV_ASSERT(in.n_tokens == n_ && in.layer >= 0 && in.layer < n_layer_ && in.kv_head >= 0 &&
               in.kv_head < n_head_kv_);
    const int n = in.n_tokens, D = in.head_dim;
    const size_t nd = static_cast<size_t>(n) * D;
    double& bits = bits_[(static_cast<size_t>(in.layer) * n_head_kv_ + in.kv_head) * 2 + (in.value ? 1 : 0)];
    if (keep_[in.layer] || spec_.method == KvMethod::fp16) {
        bits = 16.0 * static_cast<double>(nd);
        return;  // exact head: empty output
    }
    const bool pre = spec_.keys_pre && !in.value;
    std::vector<float> x(pre ? in.k_pre : in.x, (pre ? in.k_pre : in.x) + nd);
    if (spec_.rotate) hadamard_rotate_rows(x.data(), n, D);
    SimResult r = simulate_cache(params_, in.value ? KvTensor::v : KvTensor::k, x.data(), n, D, prefill_);
    bits = r.bits.total();
    if (std::all_of(r.flush_step.begin(), r.flush_step.end(), [](int32_t s) { return s == kNeverQuantized; }))
        return;
    if (spec_.rotate) hadamard_rotate_rows(r.recon.data(), n, D, nullptr, true);
    if (pre) {
        // The cache holds the RoPE'd reconstruction: k_post + RoPE(k̃_pre - k_pre).
        for (size_t i = 0; i < nd; ++i) r.recon[i] -= in.k_pre[i];
        ops::rope_norm(r.recon.data(), n, 1, D, rope_, 0);
        for (size_t i = 0; i < nd; ++i) r.recon[i] += in.x[i];
    }
    out.recon = std::move(r.recon);
    out.flush_step = std::move(r.flush_step);
}

}  // namespace pkv
