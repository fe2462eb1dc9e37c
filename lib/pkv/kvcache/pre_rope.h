// pkv/kvcache/pre_rope.h — caches that quantize keys before RoPE.
//
// A runtime that caches pre-RoPE keys applies RoPE when it reads them, so attention
// sees RoPE_t(k̃_pre). RoPE is linear, so that equals k_post + RoPE_t(k̃_pre − k_pre):
// computing it from the exact post-RoPE keys keeps the error term small and the exact
// part bit-identical to what the model computed. `pkv eval` (the cache it hands the
// model) and `pkv analyze` (scoring pre-RoPE keys with post-RoPE queries) both use this.
#pragma once

#include <cstdint>

#include "pkv/core/rope.h"

namespace pkv {

/// recon: [n, D] reconstruction of one head's pre-RoPE keys of one sequence (row t at
/// position t), in the model's basis. On return it holds k_post + RoPE_t(recon − k_pre).
/// k_pre, k_post: the exact keys, [n, D]. rope: a table of at least n positions from 0.
void pre_rope_recon_to_post(float* recon, const float* k_pre, const float* k_post, int64_t n, int D,
                            const RopeTable& rope);

}  // namespace pkv
