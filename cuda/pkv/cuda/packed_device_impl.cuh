// Internal: the state of a PackedCacheDevice (packed_attention.h), shared by the mirror's
// upload code (packed_cache_device.cu) and the attention kernels (packed_attention.cu).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pkv/cuda/cuda_buffer.cuh"
#include "pkv/cuda/packed_attention.h"

namespace pkv::cuda {

/// Tokens per tile of the fp16 method (which has no blocks): the unit of its splits.
constexpr int kFp16Tile = 128;

/// The quantizer parameters of one (layer, KV head), as the host cache holds them.
struct PackedHeadParams {
    double gate_z = 0.0;
    float k_clip = 1.0f, v_clip = 1.0f;
    int k_l2 = 0, v_l2 = 0;  // 1: Assign::l2, 0: minmax
};

struct PackedCacheDevice::Impl {
    pkv_rt::CacheConfig cfg;
    pkv_rt::BlockLayout layout[2];
    int64_t B = 0, W = 0;  // blocks per (layer, seq, head, part); ring slots
    int device = 0, sms = 1;
    size_t smem_optin = 48 * 1024;

    DeviceBuffer<uint8_t> blocks[2];  // [L, S, H, B] blocks of layout[p].bytes
    DeviceBuffer<uint16_t> ring;      // [L, S, H, 2, W, D] binary16
    DeviceBuffer<float> patterns[2];  // [L, H, M, D]
    int64_t block_bytes[2] = {0, 0}, ring_elems = 0, pattern_elems[2] = {0, 0};

    std::vector<int64_t> counts;                 // [L, S, 3]: n, nK, nV (the host's copy of what the device holds)
    DeviceBuffer<int64_t> d_counts;              // the same on the device, read by the kernels
    DeviceBuffer<PackedHeadParams> head_params;  // [L, H], for device appends
    DeviceBuffer<float> flush_scratch;           // [S, H, 2, R, D] residuals, then [S, H, R/G, D] K grids
    DeviceBuffer<int> d_fault;                   // set by a device append that met a bad row or group
    std::vector<uint8_t> prefill;                // [S]
    bool loaded = false;                         // an upload() happened (sync() needs one first)
    int64_t last_bytes = 0;
    const char* last_kernel = "";  // the split kernel of the last decode_attention
    bool general_only = false;     // PKV_DECODE_KERNEL=general when made: no warp kernels
    bool use_mma = true;           // false with PKV_DECODE_KERNEL=lanes when made: no tensor-core path

    // Scratch of decode_attention: host-array staging and the splits' partial results.
    DeviceBuffer<float> q, out, qc, part;

    int64_t count(int layer, int seq, int k) const {
        return counts[(static_cast<size_t>(layer) * static_cast<size_t>(cfg.n_seq) + static_cast<size_t>(seq)) * 3 +
                      static_cast<size_t>(k)];
    }
    int tile() const { return cfg.method == pkv_rt::CacheMethod::fp16 ? kFp16Tile : cfg.window; }
};

[[noreturn]] void packed_device_fail(const std::string& what);

/// What a split kernel of decode_attention_device needs to know of the cache, the layer,
/// the split plan and (the general kernel) its shared memory: make_geo (packed_attention.cu).
struct SplitGeo {
    int D, R, G, Gv, bits, Q, H, Hq, S, Mk, Mv, tile, groups, tiles_per_split, splits;
    bool table;
    bool mma;  // the quantized warp kernel may take its tensor-core path (2 bits, flushed splits)
    int64_t B, W, layer;
    int64_t kbytes, vbytes, row_bytes, k_params, v_params, k_index, v_index, v_gate;
    int kbuf, vbuf;  // bytes between the two staging buffers of K and of V
    // shared memory offsets in bytes
    int sm_q, sm_qc, sm_kblk, sm_vblk, sm_qs, sm_qz, sm_sc, sm_stat, sm_pw, sm_acc, sm_total;
};

/// The arrays a split kernel reads: the layer's K and V blocks and ring, the counts, the
/// queries [S, Hq, D] and q·c [S, Hq, Mk] (patternkv-table); and part, the records
/// [S, Hq, splits, 2 + D + Mv] (m, l, acc, pattern weights; Mv 0 but for patternkv-table)
/// it writes for the combine kernel.
struct SplitArrays {
    const uint8_t* kblocks;
    const uint8_t* vblocks;
    const uint16_t* ring;
    const int64_t* counts;
    const float* q;
    const float* qc;
    float* part;
};

/// Launches the fp16 warp split kernel (packed_attention_fp16.cu) on `st`; false (nothing
/// launched) for a head_dim other than 64 or 128 or a GQA group other than 1, 2 or 4,
/// which the general kernel takes.
bool launch_fp16_split(const SplitGeo& g, const SplitArrays& a, cudaStream_t st);

/// Launches the quantized warp split kernel (packed_attention_quant.cu) on `st`; false
/// (nothing launched) where the general kernel must serve: bits other than 2 or 4, head_dim
/// other than 64 or 128, GQA other than 1, 2 or 4, R or G not a multiple of 32, a V group
/// smaller than a lane's 32 / bits channels, or more than 48 KB of shared memory.
/// At 2 bits with g.mma (the default; PKV_DECODE_KERNEL=lanes turns it off), a split's whole
/// flushed blocks take the kernel's tensor-core path (packed_mma.cuh) and the ring tokens
/// after them the lanes' path, which carries each warp's softmax on.
bool launch_quant_split(const SplitGeo& g, const SplitArrays& a, cudaStream_t st);

/// Whether a launch_quant_split of `g` may take the tensor-core path (over its splits' whole
/// flushed blocks): 2 bits, g.mma.
inline bool quant_uses_mma(const SplitGeo& g) { return g.mma && g.bits == 2; }

/// Copies the host cache's per-head quantizer parameters to m.head_params (bytes copied).
int64_t upload_head_params(PackedCacheDevice::Impl& m, const pkv_rt::PackedCache& host);

}  // namespace pkv::cuda
