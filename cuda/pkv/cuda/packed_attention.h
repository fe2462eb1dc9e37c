// pkv/cuda/packed_attention.h — a device mirror of a pkv_rt::PackedCache and split-K decode
// attention over it (patternkv-table, kivi, fp16). No CUDA types: tests and apps include it
// with the host compiler.
//
// Layout. The mirror holds the cache's arrays byte for byte as docs/formats/packed_cache.md
// lays them out (K blocks, V blocks, the fp16 ring, fp32 patterns), at the same offsets, so
// a kernel reads a block of (layer, seq, KV head, part) at the byte offset the host's
// PackedCache::block gives. The per-(layer, seq) counts n, nK, nV live beside them.
//
// Upload. upload() copies every array; sync() copies what appends changed since the last
// upload/sync (blocks flushed since, the ring slots of new tokens, a KIVI V block partly
// filled), falling back to a full copy of a (layer, seq) whose counts went backwards.
// set_state() sets counts without a host cache, for benchmarks that fill the device arrays
// themselves (device_array()).
//
// Attention. decode_attention() computes what PackedCache::decode_attention_ref computes:
// one query per sequence, q and out [n_seq, n_head, D] floats, query head i reading KV head
// i / (n_head / n_head_kv). Three kernels:
//   1. q·c_p for every key pattern p, once per query (patternkv-table);
//   2. one thread block per (split, KV head, seq) serving every query head of that KV head,
//      so each block is read once; it copies each R-token block to shared memory with
//      128-bit loads, scores keys as Σ_d (q_d s_d) code_d + Σ_d q_d z_d + q·c[idx], keeps a
//      running softmax (max, sum), and accumulates values as Σ (a s) code + a z from the
//      codes, per pattern Σ_{idx = p, gate} a, and the ring's fp16 rows exactly; fp32 sums;
//   3. a combine merging the splits' (max, sum, acc, pattern weights) and adding
//      Σ_p w_p c_p once per query.
// Warp kernels take the place of 2 where they apply: fp16 at head_dim 64 or 128 with GQA 1,
// 2 or 4 (packed_attention_fp16.cu), and KIVI and patternkv-table at 2 or 4 bits, head_dim 64
// or 128, GQA 1, 2 or 4, R and G multiples of 32 (packed_attention_quant.cu): each warp its
// own run of tokens and running softmax, the warps merged once per block, no barrier
// between a warp's loads and their use. PKV_DECODE_KERNEL=general in the environment when a
// device cache is made forces the general kernel on it (for comparisons). At 2 bits the
// quantized warp kernel takes its tensor-core path over a split's whole flushed blocks
// (packed_mma.cuh; ring tokens after them stay on the lanes' path); =lanes keeps it on the
// lanes' path throughout (for comparisons). last_split_kernel() says which
// one ran ("general", "fp16-warp", "quant-warp", "quant-mma").
// Splits: whole R-token blocks (fp16: 128-token tiles) per split, their number chosen from
// the longest sequence and the multiprocessor count (splits = 0), or given.
//
// Device appends. append() / append_device() run one decode step of every sequence on the
// device: what the previous step completed is flushed (pattern choice, residual, group grids,
// packed codes, gate bits: the bytes PackedCache writes, bit for bit), then the new token goes
// to the fp16 ring, as PackedCache::append of one token per sequence does after end_prefill.
// The prefill stays on the host (upload() or sync() after it); after device appends the
// host cache is behind, so a later sync() or upload() from it rewinds the mirror to it.
//
// Limits: head_dim 64, 128 or 256; n_head / n_head_kv 1, 2, 4 or 8; shared memory for one
// K and one V block plus (R / G) x GQA x D floats of q·s must fit the device (R = G = 128,
// D = 128, 2 bits, GQA 4, M = 32: 19 KiB). Others are refused with a CacheError naming the limit.
//
// Errors: pkv_rt::CacheError for invalid input (one line: "packed cache (device): <call>:
// ..."), pkv::Error(cuda) for CUDA failures. Not thread-safe; calls on one object run on
// its device in order.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "pkv/runtime/packed_cache.h"

namespace pkv::cuda {

/// Which device array device_array() returns.
enum class PackedArray { k_blocks, v_blocks, ring, k_patterns, v_patterns };

class PackedCacheDevice {
public:
    /// Allocates every array of a cache of configuration c on `device` (zeroed, no tokens).
    /// Throws CacheError for a configuration block_layout refuses or the kernels cannot run.
    explicit PackedCacheDevice(const pkv_rt::CacheConfig& c, int device = 0);
    ~PackedCacheDevice();
    PackedCacheDevice(PackedCacheDevice&&) noexcept;
    PackedCacheDevice& operator=(PackedCacheDevice&&) noexcept;

    const pkv_rt::CacheConfig& config() const;

    /// Copies every array and count of `host`, which must have this configuration (a
    /// CacheError names the first field that differs).
    void upload(const pkv_rt::PackedCache& host);
    /// Copies what changed in `host` since the last upload() or sync() (same checks).
    void sync(const pkv_rt::PackedCache& host);
    /// Bytes the last upload() or sync() copied to the device.
    int64_t last_upload_bytes() const;

    /// Sets the counts of (layer, seq) without a host cache: n tokens, the first nk of K and
    /// nv of V quantized, out of its prefill. Refuses n > max_tokens, nk not a multiple of
    /// R, nk or nv > n, ring tokens beyond the ring's slots (n - nk > R or n - nv > R + 1).
    void set_state(int layer, int seq, int64_t n, int64_t nk, int64_t nv);
    /// The device pointer of one array (a benchmark fills it); its size in bytes in *bytes.
    void* device_array(PackedArray a, int64_t* bytes = nullptr) const;

    /// One decode step of every sequence over `layer` (see the top): k and v are
    /// [n_seq, n_head_kv, D] floats, host arrays. Refuses a sequence in its prefill or with
    /// max_tokens tokens, and (after the step, which it waits for) a row that is not a finite
    /// binary16 value or a group whose grid leaves binary16's range, as the host refuses them;
    /// the device cache is then unusable (fault()) until the next upload().
    void append(int layer, const float* k, const float* v);
    /// The same on device arrays, queued on `stream` without synchronising: what a runtime's
    /// decode step calls. A bad row sets fault() instead of throwing.
    void append_device(int layer, const float* k_dev, const float* v_dev, void* stream = nullptr);
    /// Whether a device append met a row or group it could not store (waits for the device).
    bool fault() const;
    /// A copy of one device array, as device_array() describes it (tests compare its bytes
    /// with the host cache's).
    std::vector<uint8_t> download(PackedArray a) const;

    /// Decode attention of one query per sequence over `layer`, host arrays (see the top).
    /// splits <= 0: chosen. Refuses n_q != n_seq, q or out not 16-byte aligned, a sequence in
    /// its prefill or without tokens.
    void decode_attention(int layer, const float* q, int64_t n_q, float* out, int splits = 0);
    /// The same on device arrays, queued on `stream` (a cudaStream_t; null: the default
    /// stream) without synchronising: what a runtime's decode step calls.
    void decode_attention_device(int layer, const float* q_dev, int64_t n_q, float* out_dev, int splits = 0,
                                 void* stream = nullptr);
    /// The split count decode_attention chooses for `layer` (per sequence and KV head).
    int choose_splits(int layer) const;
    /// Bytes one decode_attention over `layer` reads from the cache (blocks it stages, ring
    /// rows, patterns), for bandwidth figures.
    int64_t bytes_read(int layer) const;
    /// Which split kernel the last decode_attention ran: "general", "fp16-warp" or
    /// "quant-warp" ("" before any), for tests and benchmarks.
    const char* last_split_kernel() const;

    struct Impl;  ///< internal (packed_device_impl.cuh): the device arrays and counts

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace pkv::cuda
