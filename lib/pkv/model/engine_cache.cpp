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
    const KvHookOutput o =
        call_kv_hook([&](const KvHookInput& in, KvHookOutput& res) { hook(seq, in, res); }, layer, g, value, n, HD, KD,
                     k_post + r0 * KD, value ? nullptr : k_pre + r0 * KD, v + r0 * KD, seq);
    int32_t* flush = (value ? out.v_flush : out.k_flush).data() + int64_t{g} * rows + r0;
    if (o.recon.empty()) {
        std::fill_n(flush, n, kNeverFlushed);
        return;
    }
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
