// pkv/kmeans/kernel_choice.h — which kernel the CUDA assigner (cuda/pkv/cuda/
// kmeans_assign.h) runs for a batched pass, as a plain function of the pass's shape,
// the assigner's options and the device's compute capability.
//
// No CUDA types and no CUDA calls: the CPU-only build compiles and tests the choice,
// and the CUDA library calls the same function before it launches anything. The
// kernels' own limits on k and d live here too, so that the choice and the launchers'
// preconditions (kmeans_assign.cuh) read one set of numbers.
#pragma once

namespace pkv::kmeans_gpu {

/// The largest d the tensor-core kernels take (fp16 / bf16 input; fp32 input, and d
/// above this, take the fp32 FMA kernel).
constexpr int kMmaMaxDim = 128;
/// The largest k the one-hot kernel takes.
constexpr int kOnehotMaxK = 128;
/// The largest k the one-hot kernel takes on wgmma: one warpgroup product of 64
/// centroids.
constexpr int kWgmmaOnehotMaxK = 64;
/// The smallest k the wide kernel runs on wgmma.
constexpr int kWgmmaMinK = 256;
/// Tiles per group of the fused kernel's sums (4096 rows: a warp's fp32 partial covers
/// 512 of them).
constexpr int kFusedGroupTiles = 16;
/// Tiles per group of the one-hot kernel's sums on wgmma (4096 rows: a warpgroup's fp32
/// partial covers 2048).
constexpr int kWgmmaOnehotGroupTiles = 16;

/// The largest k the fused kernel takes at dimension d: 32 where d <= 64 (two blocks of
/// 16 centroids, whose sums then take the registers a lane that 16 centroids x 128
/// columns take), else 16.
constexpr int fused_max_k(int d) { return d <= 64 ? 32 : 16; }

/// The row widths of the kernels that stage points with cp.async (one-hot, fused,
/// wide): 32 < d <= kMmaMaxDim, d a multiple of 8 (16-byte rows).
constexpr bool staged_dim(int d) { return d % 8 == 0 && d > 32 && d <= kMmaMaxDim; }

/// True when the one-hot kernel (kmeans_mma_onehot.cu) takes (k, d).
constexpr bool onehot_ok(int k, int d) { return k <= kOnehotMaxK && staged_dim(d); }

/// True when the fused kernel (kmeans_mma_fused.cu) takes (k, d).
constexpr bool fused_ok(int k, int d) { return k <= fused_max_k(d) && staged_dim(d); }

/// True when the wide kernel (kmeans_mma_wide.cu) takes d (any k; the choice below
/// picks it for large k).
constexpr bool wide_ok(int d) { return staged_dim(d); }

/// True when the one-hot kernel on wgmma (kmeans_onehot_sm90a.cu) takes (k, d); the
/// device must also pass wgmma_arch().
constexpr bool wgmma_onehot_ok(int k, int d) { return k <= kWgmmaOnehotMaxK && staged_dim(d); }

/// Tiles per group of the one-hot kernel's sums for k (a group's fp32 partials are
/// flushed to the int64 sums once; more tiles, fewer device atomics).
constexpr int onehot_group_tiles(int k) { return k <= 32 ? 8 : k <= 64 ? 16 : 32; }

/// True when the sm_90a kernels run on a device of compute capability
/// cc_major.cc_minor: the build has them and the device is 9.0, the only one their
/// arch-specific code runs on.
constexpr bool wgmma_arch(int cc_major, int cc_minor, bool sm90a_built) {
    return sm90a_built && cc_major == 9 && cc_minor == 0;
}

/// True when a pass over points of dimension d runs on tensor cores: fp16 or bf16
/// input (`rounded`) and d <= kMmaMaxDim.
constexpr bool tensor_cores(bool rounded, int d) { return rounded && d <= kMmaMaxDim; }

/// The assignment kernels of a pass. The names are CudaPassTiming::kernel's.
enum class Kernel {
    fma,           ///< "fma": fp32 FMA, one launch a task
    mma,           ///< "mma": the general tensor-core kernel
    fused,         ///< "fused": one-hot sums, every warp its own pipeline
    onehot,        ///< "onehot": one-hot sums on mma.sync
    onehot_wgmma,  ///< "onehot-wgmma": one-hot sums on Hopper's warpgroup MMA
    wide,          ///< "wide": centroids streamed in chunks, mma.sync
    wgmma,         ///< "wgmma": the wide kernel's products on warpgroup MMA
};

/// What the choice depends on. The number of rows does not enter it.
struct PassShape {
    int d = 0;
    int k = 0;
    bool rounded = false;  ///< fp16 or bf16 input (InputPrecision other than fp32)
    bool sums = false;     ///< some task of the pass asks for centroid sums
    /// The general tensor-core kernel keeps k x d partial sums in shared memory
    /// (cuda::detail::mma_smem_sums(k, d), a property of that kernel's launch).
    bool smem_sums = true;
    int cc_major = 0, cc_minor = 0;  ///< the device's compute capability
    bool sm90a_built = false;        ///< this build has the sm_90a (wgmma) kernels
    // CudaAssignerOptions (kmeans_assign.h documents each; the same defaults).
    bool onehot_sums = true;
    bool fused_small_k = true;
    bool wide_assign = true;
    bool wgmma = true;
    int wide_min_k = 96;
    int wide_chunk = 0;
};

/// The kernel of a pass and how it runs.
struct Choice {
    Kernel kernel = Kernel::fma;
    bool tensor_cores = false;  ///< tensor_cores(rounded, d): every kernel but fma
    /// The sums come from the sorted reduction after the kernel (which writes labels):
    /// always after wide / wgmma, after mma when its partials do not fit shared memory;
    /// only in a pass with sums.
    bool sorted = false;
    /// Tiles per group of the sums (segments start on a group): > 1 only for the fused
    /// and one-hot kernels in a pass with sums.
    int group_tiles = 1;
    /// Centroids per shared-memory chunk of the wide / wgmma kernels (64 or 128).
    int wide_chunk = 64;
    /// CudaPassTiming::kernel: the kernel's name, "+sorted" when `sorted`.
    const char* name = "fma";
};

/// The kernel the CUDA assigner launches for a pass of this shape.
Choice choose_kernel(const PassShape& s);

/// "fma", "mma", "fused", "onehot", "onehot-wgmma", "wide" or "wgmma".
const char* kernel_name(Kernel k);

}  // namespace pkv::kmeans_gpu
