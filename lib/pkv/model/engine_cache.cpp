// The host half of a batched engine's KV cache hook (engine_cache.h).
#include "pkv/model/engine_cache.h"

#include <algorithm>

#include "pkv/core/error.h"
#include "pkv/model/region_errors.h"

namespace pkv {

namespace {

// One (sequence, KV head, tensor): gather the head's rows, call the hook, scatter its cache.
void run_item(const BatchCacheHook& hook, int layer, int seq, int64_t r0, int n, int g, bool value, int HD, int64_t KD,
              int64_t rows, const float* k_pre, const float* k_post, const float* v, PackedLayerCache& out) {
    const float* src = value ? v : k_post;
    std::vector<float> x(static_cast<size_t>(n) * HD), pre;
    for (int i = 0; i < n; ++i) std::copy_n(src + (r0 + i) * KD + int64_t{g} * HD, HD, x.data() + int64_t{i} * HD);
    if (!value) {
        pre.resize(x.size());
        for (int i = 0; i < n; ++i)
            std::copy_n(k_pre + (r0 + i) * KD + int64_t{g} * HD, HD, pre.data() + int64_t{i} * HD);
    }
    KvHookInput in;
    in.layer = layer;
    in.kv_head = g;
    in.value = value;
    in.n_tokens = n;
    in.head_dim = HD;
    in.x = x.data();
    in.k_pre = value ? nullptr : pre.data();
    KvHookOutput o;
    hook(seq, in, o);
    int32_t* flush = (value ? out.v_flush : out.k_flush).data() + int64_t{g} * rows + r0;
    if (o.recon.empty() && o.flush_step.empty()) {
        std::fill_n(flush, n, kNeverFlushed);
        return;
    }
    PKV_CHECK(o.recon.size() == x.size() && o.flush_step.size() == static_cast<size_t>(n), internal,
              "KV cache hook, sequence {} layer {} KV head {} {}: expected recon of {} and flush_step of {} values, "
              "got {} and {}",
              seq, layer, g, value ? "values" : "keys", x.size(), n, o.recon.size(), o.flush_step.size());
    float* hat = (value ? out.v_hat : out.k_hat).data();
    for (int i = 0; i < n; ++i)
        std::copy_n(o.recon.data() + int64_t{i} * HD, HD, hat + (r0 + i) * KD + int64_t{g} * HD);
    std::copy_n(o.flush_step.data(), n, flush);
}

}  // namespace

void run_packed_cache_hook(const BatchCacheHook& hook, int layer, const std::vector<int64_t>& row0, int seq_offset,
                           int n_head_kv, int head_dim, const float* k_pre, const float* k_post, const float* v,
                           PackedLayerCache& out) {
    PKV_CHECK(row0.size() >= 2 && n_head_kv >= 1 && head_dim >= 1, invalid_argument,
              "run_packed_cache_hook: {} row offsets, {} KV heads, head_dim {}: expected >= 2, >= 1, >= 1", row0.size(),
              n_head_kv, head_dim);
    const int n_seq = static_cast<int>(row0.size()) - 1;
    const int64_t rows = row0.back(), KD = int64_t{n_head_kv} * head_dim;
    out.k_hat.assign(static_cast<size_t>(rows * KD), 0.0f);
    out.v_hat.assign(static_cast<size_t>(rows * KD), 0.0f);
    out.k_flush.assign(static_cast<size_t>(rows * n_head_kv), kNeverFlushed);
    out.v_flush.assign(static_cast<size_t>(rows * n_head_kv), kNeverFlushed);
    const int items = n_seq * n_head_kv * 2;
    RegionErrors errors;
#pragma omp parallel for schedule(dynamic, 1)
    for (int item = 0; item < items; ++item)
        errors.guarded([&] {
            const int s = item / (2 * n_head_kv), g = (item / 2) % n_head_kv;
            const int64_t r0 = row0[static_cast<size_t>(s)];
            const int n = static_cast<int>(row0[static_cast<size_t>(s) + 1] - r0);
            run_item(hook, layer, seq_offset + s, r0, n, g, item % 2 == 1, head_dim, KD, rows, k_pre, k_post, v, out);
        });
    errors.rethrow();
}

}  // namespace pkv
