// pkv/kmeans/kernel_choice.cpp — the CUDA assigner's kernel choice (kernel_choice.h).
#include "pkv/kmeans/kernel_choice.h"

namespace pkv::kmeans_gpu {

const char* kernel_name(Kernel k) {
    switch (k) {
        case Kernel::fma: return "fma";
        case Kernel::mma: return "mma";
        case Kernel::fused: return "fused";
        case Kernel::onehot: return "onehot";
        case Kernel::onehot_wgmma: return "onehot-wgmma";
        case Kernel::wide: return "wide";
        case Kernel::wgmma: return "wgmma";
    }
    return "unknown";
}

Choice choose_kernel(const PassShape& s) {
    const int k = s.k, d = s.d;
    const bool mma = tensor_cores(s.rounded, d);
    const bool wgmma = s.wgmma && wgmma_arch(s.cc_major, s.cc_minor, s.sm90a_built);
    // k >= wide_min_k: the streaming kernel when d allows, sums by the sorted reduction;
    // below it the one-hot kernel (sums on tensor cores; segments start on a group);
    // else the general kernel, its sums sorted when k x d partials do not fit in
    // shared memory.
    const bool wide = mma && s.wide_assign && k >= s.wide_min_k && wide_ok(d);
    const bool wg = wide && wgmma && k >= kWgmmaMinK;
    const bool fused = mma && !wide && s.onehot_sums && s.fused_small_k && fused_ok(k, d);
    // The one-hot pass on wgmma needs sums (without them the mma.sync kernel assigns).
    const bool wg_onehot = mma && !wide && !fused && s.sums && s.onehot_sums && wgmma && wgmma_onehot_ok(k, d);
    // Also true where wg_onehot is (its k and d limits are narrower).
    const bool onehot = mma && !wide && !fused && s.onehot_sums && onehot_ok(k, d);

    Choice c;
    c.tensor_cores = mma;
    c.kernel = !mma        ? Kernel::fma
               : fused     ? Kernel::fused
               : wg_onehot ? Kernel::onehot_wgmma
               : onehot    ? Kernel::onehot
               : wg        ? Kernel::wgmma
               : wide      ? Kernel::wide
                           : Kernel::mma;
    c.wide_chunk = s.wide_chunk != 0 ? s.wide_chunk : wg && d > 64 ? 128 : 64;
    c.group_tiles = !s.sums     ? 1
                    : fused     ? kFusedGroupTiles
                    : wg_onehot ? kWgmmaOnehotGroupTiles
                    : onehot    ? onehot_group_tiles(k)
                                : 1;
    c.sorted = mma && s.sums && !onehot && !fused && (wide || !s.smem_sums);
    switch (c.kernel) {
        case Kernel::wgmma: c.name = c.sorted ? "wgmma+sorted" : "wgmma"; break;
        case Kernel::wide: c.name = c.sorted ? "wide+sorted" : "wide"; break;
        case Kernel::mma: c.name = c.sorted ? "mma+sorted" : "mma"; break;
        default: c.name = kernel_name(c.kernel); break;
    }
    return c;
}

}  // namespace pkv::kmeans_gpu
