#include "pkv/kvcache/pre_rope.h"

namespace pkv {

void pre_rope_recon_to_post(float* recon, const float* k_pre, const float* k_post, int64_t n, int D,
                            const RopeTable& rope) {
    const int64_t nd = n * D;
    for (int64_t i = 0; i < nd; ++i) recon[i] -= k_pre[i];
    rope_apply(recon, n, 1, D, rope, 0);
    for (int64_t i = 0; i < nd; ++i) recon[i] += k_post[i];
}

}  // namespace pkv
