// The CUDA forward engine (forward_engine.h): weights on the device, the layer loop over
// packed rows, capture through page-locked double buffers, the streamed log-softmax.
#include "pkv/cuda/forward_engine.h"

#include <cublas_v2.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <utility>

#include "pkv/core/log.h"
#include "pkv/cuda/check.cuh"
#include "pkv/cuda/cuda_buffer.cuh"
#include "pkv/cuda/engine_sim_cache.h"
#include "pkv/cuda/forward_ops.cuh"
#include "pkv/cuda/phase_clock.cuh"
#include "pkv/gguf/gguf.h"
#include "pkv/model/engine_cache.h"

#define PKV_CUBLAS_CHECK(call)                                                          \
    do {                                                                                \
        const cublasStatus_t pkv_st_ = (call);                                          \
        if (pkv_st_ != CUBLAS_STATUS_SUCCESS)                                           \
            ::pkv::fail(::pkv::ErrorCode::cuda, "cublas: {} failed: {} ({}:{})", #call, \
                        cublasGetStatusString(pkv_st_), __FILE__, __LINE__);            \
    } while (0)

namespace pkv::cuda {

namespace {

using P = LayerPart;

constexpr int64_t kLogitsBudget = int64_t{256} << 20;  // bytes of one [slab, vocab chunk] logits block
constexpr int64_t kDefaultMaxRows = 65536;
constexpr int64_t kUploadElements = int64_t{1} << 22;  // weight values converted per host step

double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

/// The device, its weights and the cuBLAS handle, made once.
class CudaEngine final : public ForwardEngine {
public:
    CudaEngine(const LlamaModel& model, const CudaEngineOptions& o);
    ~CudaEngine() override;
    const LlamaHparams& hparams() const override { return hp_; }
    std::string description() const override { return description_; }
    int batch_sequences(int ctx) const override {
        return static_cast<int>(std::max<int64_t>(1, max_rows_ / std::max(ctx, 1)));
    }
    BatchResult run_batch(const std::vector<std::vector<int32_t>>& sequences, const ForwardOptions& opts,
                          const EngineSink& sink, const BatchCacheHook& cache) override;
    bool supports_device_cache(const DeviceKvCache& cache) const override {
        return EngineSimCache::supports(cache, hp_);
    }
    BatchResult run_batch_device_cache(const std::vector<std::vector<int32_t>>& sequences, const ForwardOptions& opts,
                                       const EngineSink& sink, const DeviceKvCache& cache) override;

private:
    struct Capture {
        DeviceBuffer<uint16_t> dev;    ///< [k_pre | k_post | v | q], each n rows
        PinnedBuffer<uint16_t> host;   ///< the same, copied
        cudaEvent_t copied = nullptr;  ///< the copy into `host` is done
        cudaEvent_t ready = nullptr;   ///< `dev` holds the layer
        int layer = -1;                ///< the layer `host` will hold; -1: free
    };

    /// run_batch's body: with the hook `cache`, the device cache `dev` (non-null) or neither.
    BatchResult run(const std::vector<std::vector<int32_t>>& sequences, const ForwardOptions& opts,
                    const EngineSink& sink, const BatchCacheHook& cache, const DeviceKvCache* dev);
    void upload_weights();
    const void* w(int layer, P part) const;  ///< device pointer; null when absent
    const float* wf(int layer, P part) const { return static_cast<const float*>(w(layer, part)); }
    void reserve(int64_t padded, int64_t rows, int max_len, int n_seq, bool want_last);
    /// y = x W^T in slabs; with 16-bit weights x is converted into wx_ first, unless
    /// `x_in_wx` says wx_ already holds this x (products sharing an input convert it once).
    void gemm(const float* x, int64_t padded, int64_t n_in, const void* weight, int64_t n_out, float* y,
              bool x_in_wx = false);
    void run_group(const std::vector<std::vector<int32_t>>& sequences, int64_t s_begin, int64_t s_count,
                   const ForwardOptions& opts, const EngineSink& sink, const BatchCacheHook& cache, BatchResult& out);
    /// cache: the hook (null: plain attention), whose sequence indices start at s_begin.
    void layer(int l, const PackedBatch& b, int64_t padded, int n_tiles, Capture* cap, const BatchCacheHook& cache,
               int64_t s_begin);
    void reserve_cache(int64_t rows, bool hook);
    /// The device cache of layer l (dev_cache_): simulated from k_ (post-RoPE, or kpre_) and
    /// v_ into k_hat_ ... v_flush_, with pre-RoPE keys brought to k_post + RoPE(k̃_pre − k_pre).
    void device_cache_layer(int l, int64_t n, const float* cos, const float* sin);
    void hook_layer(int l, const PackedBatch& b, const BatchCacheHook& cache, int64_t s_begin);
    void deliver(Capture& c, const PackedBatch& b, int64_t s_begin, const EngineSink& sink);
    /// With 16-bit weights, a non-finite loss or hidden value of the batch's results is refused
    /// (check_finite_results): binary16 attention operands may have overflowed.
    void check_finite(const PackedBatch& b, int64_t s_begin, const BatchResult& out) const;
    void logits(const PackedBatch& b, int64_t padded, const ForwardOptions& opts, int64_t s_begin, BatchResult& out);

    const LlamaModel& model_;
    const LlamaHparams& hp_;
    CudaEngineOptions opt_;
    std::string description_;
    WeightLayout layout_;
    std::vector<bool> qkv_fused_;  ///< per layer: q, k and v come from one product (qkv_adjacent)
    int64_t max_rows_ = 0, vocab_chunk_ = 0;
    int E_ = 0, QD_ = 0, KD_ = 0, FF_ = 0, HD_ = 0;
    cudaStream_t stream_ = nullptr, copy_stream_ = nullptr;
    cublasHandle_t blas_ = nullptr;
    DeviceBuffer<uint8_t> weights_;
    // Activations, `padded` rows (whole slabs).
    DeviceBuffer<float> x_, xn_, q_, k_, v_, att_, gate_, up_, proj_, logits_;
    DeviceBuffer<uint8_t> wx_;  ///< the weight-type copy of a product's input
    DeviceBuffer<int32_t> pos_, target_, amax_out_, argmax_;
    DeviceBuffer<AttentionTile> tiles_;
    DeviceBuffer<float> rope_cos_, rope_sin_, rope_cos_swa_, rope_sin_swa_, nll_out_, target_logit_;
    DeviceBuffer<double> max_, sum_;
    int rope_len_ = 0;
    PinnedBuffer<float> embd_host_, last_host_, nll_host_;
    PinnedBuffer<int32_t> amax_host_;
    Capture cap_[2];
    int64_t reserved_rows_ = -1;
    std::array<bool, 4> want_ = {true, true, true, true};  ///< the running batch's ForwardOptions::tensors
    // The cache hook's path: the layer's K (pre and post RoPE) and V as floats on the host,
    // the cache the hook returned, and its device copy.
    PinnedBuffer<float> hook_k_pre_, hook_k_post_, hook_v_;
    PackedLayerCache hook_cache_;
    DeviceBuffer<float> k_hat_, v_hat_;
    DeviceBuffer<int32_t> k_flush_, v_flush_;
    // The device cache's path (run_batch_device_cache): the description of the running call,
    // its per-layer driver, the simulation's workspace and the layer's pre-RoPE keys.
    const DeviceKvCache* dev_cache_ = nullptr;
    EngineSimCache sim_{hp_};
    std::unique_ptr<SimCacheWorkspace> sim_ws_;
    DeviceBuffer<float> kpre_;
    PhaseClock clock_;  ///< PKV_CUDA_PROFILE=1: GPU time per phase, printed when the engine goes
};

CudaEngine::CudaEngine(const LlamaModel& model, const CudaEngineOptions& o)
    : model_(model), hp_(model.hparams()), opt_(o) {
    E_ = static_cast<int>(hp_.n_embd), FF_ = static_cast<int>(hp_.n_ff), HD_ = static_cast<int>(hp_.head_dim);
    QD_ = static_cast<int>(hp_.n_head) * HD_, KD_ = static_cast<int>(hp_.n_head_kv) * HD_;
    const std::string& path = model.file().path();
    PKV_CHECK(HD_ <= fwd::kMaxHeadDim, unsupported, "{}: head_dim {}: the CUDA engine supports at most {}", path, HD_,
              fwd::kMaxHeadDim);
    PKV_CHECK(opt_.slab_rows >= 0, invalid_argument, "CUDA engine: slab_rows {}: expected >= 0", opt_.slab_rows);
    if (opt_.slab_rows == 0) opt_.slab_rows = default_slab_rows(hp_);
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();
        count = 0;
    }
    PKV_CHECK(count > 0, cuda, "cuda: no CUDA device (the CUDA engine needs a GPU; use --device cpu)");
    PKV_CHECK(opt_.device >= 0 && opt_.device < count, cuda, "cuda:{}: no such CUDA device ({} found)", opt_.device,
              count);
    PKV_CUDA_CHECK(cudaSetDevice(opt_.device));
    cudaDeviceProp prop{};
    PKV_CUDA_CHECK(cudaGetDeviceProperties(&prop, opt_.device));
    description_ =
        "cuda:" + std::to_string(opt_.device) + " " + prop.name + " (" + weight_type_name(opt_.weights) + " weights)";

    layout_ = weight_layout(model, opt_.weights);
    for (uint32_t l = 0; l < hp_.n_layer; ++l) qkv_fused_.push_back(qkv_adjacent(layout_, static_cast<int>(l)));
    const int64_t slab = opt_.slab_rows;
    vocab_chunk_ = vocab_chunk_rows(hp_.n_vocab, slab, kLogitsBudget);
    const int64_t per_row = activation_bytes_per_row(hp_, opt_.weights);
    const int64_t fixed = slab * vocab_chunk_ * 4;
    size_t free_b = 0, total_b = 0;
    PKV_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const auto free_bytes = static_cast<int64_t>(free_b);
    PKV_CHECK(layout_.total_bytes + fixed + slab * per_row <= free_bytes, cuda,
              "{}: {} has {:.2f} GiB free of {:.2f} GiB; the weights need {:.2f} GiB in {} and one batch slab {:.2f} "
              "GiB more (try --device cpu or another GPU)",
              path, description_, gib(free_bytes), gib(static_cast<double>(total_b)), gib(layout_.total_bytes),
              weight_type_name(opt_.weights), gib(fixed + slab * per_row));
    if (opt_.max_batch_tokens > 0) {
        max_rows_ = std::max<int64_t>(slab, opt_.max_batch_tokens / slab * slab);
    } else {
        const auto budget = static_cast<int64_t>(0.9 * static_cast<double>(free_bytes - layout_.total_bytes - fixed));
        max_rows_ = std::max<int64_t>(slab, rows_for_memory(budget, per_row, slab, kDefaultMaxRows));
    }

    PKV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    PKV_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
    for (Capture& c : cap_) {
        PKV_CUDA_CHECK(cudaEventCreateWithFlags(&c.copied, cudaEventDisableTiming));
        PKV_CUDA_CHECK(cudaEventCreateWithFlags(&c.ready, cudaEventDisableTiming));
    }
    PKV_CUBLAS_CHECK(cublasCreate(&blas_));
    PKV_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
    // Plain float products for f32 weights (no TF32), so they follow the CPU to rounding.
    PKV_CUBLAS_CHECK(
        cublasSetMathMode(blas_, opt_.weights == WeightType::f32 ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH));
    upload_weights();
    log::info("{}: {} weights on {} ({:.2f} GiB), batches of up to {} tokens", path, weight_type_name(opt_.weights),
              description_, gib(layout_.total_bytes), max_rows_);
}

CudaEngine::~CudaEngine() {
    // Nothing may still read or write the buffers when they go (after this body, on this device).
    cudaSetDevice(opt_.device);
    if (stream_) cudaStreamSynchronize(stream_);
    if (copy_stream_) cudaStreamSynchronize(copy_stream_);
    if (blas_) cublasDestroy(blas_);
    for (Capture& c : cap_) {
        if (c.copied) cudaEventDestroy(c.copied);
        if (c.ready) cudaEventDestroy(c.ready);
    }
    if (stream_) cudaStreamDestroy(stream_);
    if (copy_stream_) cudaStreamDestroy(copy_stream_);
}

// Tensor by tensor in bounded row blocks: host memory stays at a few blocks whatever the model.
void CudaEngine::upload_weights() {
    weights_.reserve(static_cast<size_t>(layout_.total_bytes));
    const GgufFile& f = model_.file();
    PinnedBuffer<uint8_t> stage[2];
    cudaEvent_t done[2] = {nullptr, nullptr};
    for (cudaEvent_t& e : done) PKV_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    int turn = 0;
    try {
        for (const DeviceTensor& t : layout_.tensors) {
            const WeightType type = t.matrix ? opt_.weights : WeightType::f32;
            const int64_t row_bytes = t.cols * weight_type_bytes(type);
            const int64_t per = std::max<int64_t>(1, kUploadElements / std::max<int64_t>(t.cols, 1));
            for (const Range& r : split_even(t.rows, per)) {
                // Two staging buffers: the host converts into one while the other is copied.
                PKV_CUDA_CHECK(cudaEventSynchronize(done[turn]));
                stage[turn].reserve(static_cast<size_t>(per * row_bytes));
                pack_rows(f, *t.info, static_cast<uint64_t>(r.begin), static_cast<uint64_t>(r.count), type,
                          stage[turn].get());
                PKV_CUDA_CHECK(cudaMemcpyAsync(weights_.get() + t.offset + r.begin * row_bytes, stage[turn].get(),
                                               static_cast<size_t>(r.count * row_bytes), cudaMemcpyHostToDevice,
                                               stream_));
                PKV_CUDA_CHECK(cudaEventRecord(done[turn], stream_));
                turn ^= 1;
            }
        }
        PKV_CUDA_CHECK(cudaStreamSynchronize(stream_));
    } catch (...) {
        cudaStreamSynchronize(stream_);
        for (cudaEvent_t e : done) cudaEventDestroy(e);
        throw;
    }
    for (cudaEvent_t e : done) cudaEventDestroy(e);
}

const void* CudaEngine::w(int layer, P part) const {
    const int i = layout_.layer_index[static_cast<size_t>(layer)][static_cast<int>(part)];
    return i < 0 ? nullptr : weights_.get() + layout_.tensors[static_cast<size_t>(i)].offset;
}

// Grow-only; freshly allocated activations are zeroed so padded rows hold finite values.
void CudaEngine::reserve(int64_t padded, int64_t rows, int max_len, int n_seq, bool want_last) {
    if (padded > reserved_rows_) {
        const auto P_ = static_cast<size_t>(padded);
        DeviceBuffer<float>* f32[] = {&x_, &xn_, &proj_};
        for (auto* b : f32) b->reserve(P_ * E_);
        q_.reserve(P_ * QD_), att_.reserve(P_ * QD_);
        k_.reserve(P_ * KD_), v_.reserve(P_ * KD_);
        gate_.reserve(P_ * std::max(FF_, QD_ + 2 * KD_)), up_.reserve(P_ * FF_);
        const size_t widest = static_cast<size_t>(std::max({E_, QD_, FF_}));
        if (opt_.weights != WeightType::f32) wx_.reserve(P_ * widest * weight_type_bytes(opt_.weights));
        for (auto* b : {&x_, &xn_, &proj_, &q_, &att_, &k_, &v_, &gate_, &up_})
            PKV_CUDA_CHECK(cudaMemsetAsync(b->get(), 0, b->capacity() * sizeof(float), stream_));
        if (wx_.get()) PKV_CUDA_CHECK(cudaMemsetAsync(wx_.get(), 0, wx_.capacity(), stream_));
        pos_.reserve(P_), target_.reserve(P_), argmax_.reserve(P_), amax_out_.reserve(P_);
        nll_out_.reserve(P_), target_logit_.reserve(P_), max_.reserve(P_), sum_.reserve(P_);
        logits_.reserve(static_cast<size_t>(opt_.slab_rows * vocab_chunk_));
        reserved_rows_ = padded;
    }
    const auto R = static_cast<size_t>(rows);
    embd_host_.reserve(R * E_);
    nll_host_.reserve(R), amax_host_.reserve(R);
    for (Capture& c : cap_) {
        c.dev.reserve(R * (3 * KD_ + QD_));
        c.host.reserve(R * (3 * KD_ + QD_));
    }
    if (want_last) last_host_.reserve(static_cast<size_t>(n_seq) * hp_.n_vocab);
    if (max_len > rope_len_) {
        // The angles as lib/pkv/core/rope computes them: double, rounded once to float.
        const RopeTable g = rope_table(rope_params(hp_), max_len);
        auto put = [&](DeviceBuffer<float>& d, const std::vector<float>& h) {
            d.reserve(h.size());
            PKV_CUDA_CHECK(cudaMemcpy(d.get(), h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
        };
        put(rope_cos_, g.cos), put(rope_sin_, g.sin);
        if (has_local_layers(hp_)) {
            const RopeTable s = rope_table(local_rope_params(hp_), max_len);
            put(rope_cos_swa_, s.cos), put(rope_sin_swa_, s.sin);
        }
        rope_len_ = max_len;
    }
}

// y[padded, n_out] = x · Wᵀ slab by slab: every call has the same shape whatever the
// batch, so cuBLAS runs the same algorithm and a row's result depends on that row alone.
void CudaEngine::gemm(const float* x, int64_t padded, int64_t n_in, const void* weight, int64_t n_out, float* y,
                      bool x_in_wx) {
    const void* in = x;
    cudaDataType_t type = CUDA_R_32F;
    if (opt_.weights != WeightType::f32) {
        if (!x_in_wx) fwd::convert(x, padded * n_in, opt_.weights, wx_.get(), stream_);
        in = wx_.get();
        type = opt_.weights == WeightType::bf16 ? CUDA_R_16BF : CUDA_R_16F;
    }
    const int64_t slab = opt_.slab_rows, elem = weight_type_bytes(opt_.weights);
    const float one = 1.0f, zero = 0.0f;
    for (int64_t r0 = 0; r0 < padded; r0 += slab) {
        const auto* xs = static_cast<const uint8_t*>(in) + r0 * n_in * elem;
        PKV_CUBLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n_out), static_cast<int>(slab),
                                      static_cast<int>(n_in), &one, weight, type, static_cast<int>(n_in), xs, type,
                                      static_cast<int>(n_in), &zero, y + r0 * n_out, CUDA_R_32F,
                                      static_cast<int>(n_out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
}

BatchResult CudaEngine::run_batch(const std::vector<std::vector<int32_t>>& sequences, const ForwardOptions& opts,
                                  const EngineSink& sink, const BatchCacheHook& cache) {
    return run(sequences, opts, sink, cache, nullptr);
}

BatchResult CudaEngine::run_batch_device_cache(const std::vector<std::vector<int32_t>>& sequences,
                                               const ForwardOptions& opts, const EngineSink& sink,
                                               const DeviceKvCache& cache) {
    EngineSimCache::check(cache, hp_, sequences, model_.file().path());
    return run(sequences, opts, sink, nullptr, &cache);
}

BatchResult CudaEngine::run(const std::vector<std::vector<int32_t>>& sequences, const ForwardOptions& opts,
                            const EngineSink& sink, const BatchCacheHook& cache, const DeviceKvCache* dev) {
    check_engine_batch(model_.file(), hp_, sequences, opts, static_cast<bool>(sink));
    PKV_CUDA_CHECK(cudaSetDevice(opt_.device));
    if (dev != nullptr && !sim_ws_) sim_ws_ = std::make_unique<SimCacheWorkspace>(opt_.device);
    BatchResult out(sequences.size());
    dev_cache_ = dev;
    try {
        for (const Range& g : group_sequences(sequences, max_rows_))
            run_group(sequences, g.begin, g.count, opts, sink, cache, out);
    } catch (...) {
        // A failing sink (or call) leaves work queued: let it finish before the buffers are reused.
        cudaStreamSynchronize(stream_);
        cudaStreamSynchronize(copy_stream_);
        for (Capture& c : cap_) c.layer = -1;
        dev_cache_ = nullptr;
        throw;
    }
    dev_cache_ = nullptr;
    return out;
}

void CudaEngine::run_group(const std::vector<std::vector<int32_t>>& sequences, int64_t s_begin, int64_t s_count,
                           const ForwardOptions& opts, const EngineSink& sink, const BatchCacheHook& cache,
                           BatchResult& out) {
    const std::vector<std::vector<int32_t>> group(sequences.begin() + s_begin, sequences.begin() + s_begin + s_count);
    const PackedBatch b = pack_batch(group);
    const int64_t n = b.n_rows(), padded = padded_rows(n, opt_.slab_rows);
    reserve(padded, n, b.max_len, b.n_seq(), opts.want_last_logits);
    const std::vector<AttentionTile> tiles = attention_tiles(b, fwd::kAttentionTileRows);
    tiles_.reserve(tiles.size());
    if (cache || dev_cache_) reserve_cache(n, static_cast<bool>(cache));
    if (dev_cache_) sim_.begin_group(*dev_cache_, b, s_begin);

    want_ = opts.tensors;
    clock_.start(stream_);
    // Inputs: embeddings gathered on the host, positions, next-token targets, tiles.
    embed_rows(model_.file(), hp_, b.tokens, embd_host_.get());
    PKV_CUDA_CHECK(cudaMemcpyAsync(x_.get(), embd_host_.get(), static_cast<size_t>(n) * E_ * sizeof(float),
                                   cudaMemcpyHostToDevice, stream_));
    PKV_CUDA_CHECK(cudaMemcpyAsync(pos_.get(), b.pos.data(), static_cast<size_t>(n) * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, stream_));
    PKV_CUDA_CHECK(cudaMemcpyAsync(target_.get(), b.target.data(), static_cast<size_t>(n) * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, stream_));
    PKV_CUDA_CHECK(cudaMemcpyAsync(tiles_.get(), tiles.data(), tiles.size() * sizeof(AttentionTile),
                                   cudaMemcpyHostToDevice, stream_));
    // The pageable sources above must stay until the copies are done: `b` and `tiles` live
    // to the end of this call, which synchronizes before returning.
    clock_.lap(PhaseClock::input, stream_);

    int pending = -1;  // the capture buffer whose layer the sink has yet to see
    int turn = 0;
    for (uint32_t l = 0; l < hp_.n_layer; ++l) {
        const bool captured = opts.capture && (opts.layers.empty() || opts.layers[l]);
        Capture* c = captured ? &cap_[turn] : nullptr;
        layer(static_cast<int>(l), b, padded, static_cast<int>(tiles.size()), c, cache, s_begin);
        // The previous captured layer is handed over while this one computes.
        if (pending >= 0) deliver(cap_[pending], b, s_begin, sink);
        pending = -1;
        if (c != nullptr) {
            c->layer = static_cast<int>(l);
            pending = turn;
            turn ^= 1;
        }
    }
    if (pending >= 0) deliver(cap_[pending], b, s_begin, sink);
    logits(b, padded, opts, s_begin, out);
    clock_.lap(PhaseClock::logits, stream_);
    clock_.collect();
    if (dev_cache_)
        for (int i = 0; i < b.n_seq(); ++i) {
            out[static_cast<size_t>(s_begin + i)].cache_k_bits = sim_.k_bits(i);
            out[static_cast<size_t>(s_begin + i)].cache_v_bits = sim_.v_bits(i);
        }
}

// Waits for the copy of one captured layer and calls the sink once per sequence.
void CudaEngine::deliver(Capture& c, const PackedBatch& b, int64_t s_begin, const EngineSink& sink) {
    PKV_CUDA_CHECK(cudaEventSynchronize(c.copied));
    const int64_t n = b.n_rows();
    const uint16_t* base = c.host.get();
    const uint16_t* kpre = base;
    const uint16_t* kpost = kpre + n * KD_;
    const uint16_t* v = kpost + n * KD_;
    const uint16_t* q = v + n * KD_;
    for (int s = 0; s < b.n_seq(); ++s) {
        const int64_t r0 = b.row0[s];
        EngineActivations a;
        a.sequence = static_cast<int>(s_begin + s);
        a.f32.layer = c.layer;
        a.f32.n_tokens = static_cast<int>(b.row0[s + 1] - r0);
        a.k_pre16 = want_[0] ? kpre + r0 * KD_ : nullptr;
        a.k_post16 = want_[1] ? kpost + r0 * KD_ : nullptr;
        a.v16 = want_[2] ? v + r0 * KD_ : nullptr;
        a.q16 = want_[3] ? q + r0 * QD_ : nullptr;
        sink(a);
    }
    c.layer = -1;
}

void CudaEngine::reserve_cache(int64_t rows, bool hook) {
    const auto nk = static_cast<size_t>(rows) * KD_, nf = static_cast<size_t>(rows) * hp_.n_head_kv;
    if (hook)
        for (auto* h : {&hook_k_pre_, &hook_k_post_, &hook_v_}) h->reserve(nk);
    else if (dev_cache_->keys_pre) kpre_.reserve(nk);
    k_hat_.reserve(nk), v_hat_.reserve(nk), k_flush_.reserve(nf), v_flush_.reserve(nf);
}

// The simulation runs on the legacy default stream, which does not order with stream_
// (non-blocking): stream_ must have written K and V first, and the call returns once the
// cache is written, so the attention queued after it reads the finished cache.
void CudaEngine::device_cache_layer(int l, int64_t n, const float* cos, const float* sin) {
    const DeviceKvCache& c = *dev_cache_;
    PKV_CUDA_CHECK(cudaStreamSynchronize(stream_));
    const float* k_src = c.keys_pre ? kpre_.get() : k_.get();
    if (!sim_.layer(l, k_src, v_.get(), k_hat_.get(), v_hat_.get(), k_flush_.get(), v_flush_.get(), *sim_ws_)) {
        // An exact layer: no row is ever read reconstructed (k_hat_ / v_hat_ stay unread).
        fwd::fill(k_flush_.get(), kNeverFlushed, n * hp_.n_head_kv, stream_);
        fwd::fill(v_flush_.get(), kNeverFlushed, n * hp_.n_head_kv, stream_);
        return;
    }
    if (c.keys_pre) {
        // pre_rope_recon_to_post: recon -= k_pre, RoPE at each row's position, += k_post.
        fwd::sub_inplace(k_hat_.get(), kpre_.get(), n * KD_, stream_);
        fwd::rope(k_hat_.get(), n, static_cast<int>(hp_.n_head_kv), HD_, cos, sin, static_cast<int>(hp_.n_rot / 2),
                  hp_.rope_layout == RopeLayout::interleaved, pos_.get(), stream_);
        fwd::add_inplace(k_hat_.get(), k_.get(), n * KD_, stream_);
    }
}

// The layer's K/V (already queued to hook_k_pre_, hook_k_post_, hook_v_) go through the hook on
// host threads; the cache it returns goes to the device before the cached attention reads it.
void CudaEngine::hook_layer(int l, const PackedBatch& b, const BatchCacheHook& cache, int64_t s_begin) {
    PKV_CUDA_CHECK(cudaStreamSynchronize(stream_));
    run_packed_cache_hook(cache, l, b.row0, static_cast<int>(s_begin), static_cast<int>(hp_.n_head_kv), HD_,
                          hook_k_pre_.get(), hook_k_post_.get(), hook_v_.get(), hook_cache_);
    const PackedLayerCache& c = hook_cache_;
    // From pageable memory: each copy returns once its source is staged, so hook_cache_ may be
    // refilled by the next layer (which synchronizes first anyway).
    PKV_CUDA_CHECK(
        cudaMemcpyAsync(k_hat_.get(), c.k_hat.data(), c.k_hat.size() * sizeof(float), cudaMemcpyHostToDevice, stream_));
    PKV_CUDA_CHECK(
        cudaMemcpyAsync(v_hat_.get(), c.v_hat.data(), c.v_hat.size() * sizeof(float), cudaMemcpyHostToDevice, stream_));
    PKV_CUDA_CHECK(cudaMemcpyAsync(k_flush_.get(), c.k_flush.data(), c.k_flush.size() * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, stream_));
    PKV_CUDA_CHECK(cudaMemcpyAsync(v_flush_.get(), c.v_flush.data(), c.v_flush.size() * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, stream_));
}

void CudaEngine::layer(int l, const PackedBatch& b, int64_t padded, int n_tiles, Capture* cap,
                       const BatchCacheHook& cache, int64_t s_begin) {
    const int64_t n = b.n_rows();
    const float eps = hp_.rms_eps;
    cudaStream_t s = stream_;
    // Attention sublayer.
    fwd::rms_norm(x_.get(), n, E_, wf(l, P::attn_norm), eps, xn_.get(), s);
    clock_.lap(PhaseClock::norm, s);
    if (qkv_fused_[static_cast<size_t>(l)]) {
        // One product over wq | wk | wv (adjacent in the layout): the narrow K and V products
        // alone leave most of a large GPU idle. Its rows go through gate_, unused until the FFN.
        gemm(xn_.get(), padded, E_, w(l, P::wq), QD_ + 2 * KD_, gate_.get());
        clock_.lap(PhaseClock::qkv, s);
        fwd::split_qkv(gate_.get(), n, QD_, KD_, wf(l, P::bq), wf(l, P::bk), wf(l, P::bv), q_.get(), k_.get(), v_.get(),
                       s);
    } else {
        gemm(xn_.get(), padded, E_, w(l, P::wq), QD_, q_.get());
        gemm(xn_.get(), padded, E_, w(l, P::wk), KD_, k_.get(), true);
        gemm(xn_.get(), padded, E_, w(l, P::wv), KD_, v_.get(), true);
        clock_.lap(PhaseClock::qkv, s);
        fwd::add_bias(q_.get(), n, QD_, wf(l, P::bq), s);
        fwd::add_bias(k_.get(), n, KD_, wf(l, P::bk), s);
        fwd::add_bias(v_.get(), n, KD_, wf(l, P::bv), s);
    }
    if (wf(l, P::q_norm) != nullptr) {  // rows of one head are contiguous: [n · heads, head_dim]
        fwd::rms_norm(q_.get(), n * hp_.n_head, HD_, wf(l, P::q_norm), eps, q_.get(), s);
        fwd::rms_norm(k_.get(), n * hp_.n_head_kv, HD_, wf(l, P::k_norm), eps, k_.get(), s);
    }
    clock_.lap(PhaseClock::rope, s);
    const auto kv_bytes = static_cast<size_t>(n) * KD_ * sizeof(float);
    if (cache) PKV_CUDA_CHECK(cudaMemcpyAsync(hook_k_pre_.get(), k_.get(), kv_bytes, cudaMemcpyDeviceToHost, s));
    if (dev_cache_ && dev_cache_->keys_pre)
        PKV_CUDA_CHECK(cudaMemcpyAsync(kpre_.get(), k_.get(), kv_bytes, cudaMemcpyDeviceToDevice, s));
    uint16_t* stage = cap ? cap->dev.get() : nullptr;
    if (cap != nullptr) {
        // The staging buffer's previous layer must be on its way to the host first.
        PKV_CUDA_CHECK(cudaStreamWaitEvent(s, cap->copied, 0));
        if (want_[0]) fwd::to_half(k_.get(), n * KD_, stage, s);
    }
    clock_.lap(PhaseClock::capture, s);
    const bool local = is_local_layer(hp_, static_cast<uint32_t>(l));
    const float* cs = local ? rope_cos_swa_.get() : rope_cos_.get();
    const float* sn = local ? rope_sin_swa_.get() : rope_sin_.get();
    const int n_pairs = static_cast<int>(hp_.n_rot / 2);
    const bool inter = hp_.rope_layout == RopeLayout::interleaved;
    fwd::rope(q_.get(), n, static_cast<int>(hp_.n_head), HD_, cs, sn, n_pairs, inter, pos_.get(), s);
    fwd::rope(k_.get(), n, static_cast<int>(hp_.n_head_kv), HD_, cs, sn, n_pairs, inter, pos_.get(), s);
    clock_.lap(PhaseClock::rope, s);
    if (cap != nullptr) {
        if (want_[1]) fwd::to_half(k_.get(), n * KD_, stage + n * KD_, s);
        if (want_[2]) fwd::to_half(v_.get(), n * KD_, stage + 2 * n * KD_, s);
        if (want_[3]) fwd::to_half(q_.get(), n * QD_, stage + 3 * n * KD_, s);
        PKV_CUDA_CHECK(cudaEventRecord(cap->ready, s));
        PKV_CUDA_CHECK(cudaStreamWaitEvent(copy_stream_, cap->ready, 0));
        // Only the tensors the sink takes cross the bus (adjacent ones in one copy): at small
        // models the link, not the GPU, bounds a capture of all four.
        const int64_t seg[5] = {0, n * KD_, 2 * n * KD_, 3 * n * KD_, 3 * n * KD_ + n * QD_};
        for (int i = 0; i < 4;) {
            if (!want_[static_cast<size_t>(i)]) {
                ++i;
                continue;
            }
            int j = i;
            while (j < 4 && want_[static_cast<size_t>(j)]) ++j;
            PKV_CUDA_CHECK(cudaMemcpyAsync(cap->host.get() + seg[i], stage + seg[i],
                                           static_cast<size_t>(seg[j] - seg[i]) * 2, cudaMemcpyDeviceToHost,
                                           copy_stream_));
            i = j;
        }
        PKV_CUDA_CHECK(cudaEventRecord(cap->copied, copy_stream_));
        clock_.lap(PhaseClock::capture, s);
    }
    const float scale = hp_.attn_scale > 0.0f ? hp_.attn_scale : 1.0f / std::sqrt(static_cast<float>(HD_));
    const int window = static_cast<int>(layer_window(hp_, static_cast<uint32_t>(l)));
    // With bf16 or fp16 weights attention takes binary16 operands: the cache a runtime keeps
    // in fp16, and 3 more bits than bf16 for the quantized caches eval compares with it.
    const WeightType attention_math = opt_.weights == WeightType::f32 ? WeightType::f32 : WeightType::fp16;
    if (cache || dev_cache_) {
        if (cache) {
            PKV_CUDA_CHECK(cudaMemcpyAsync(hook_k_post_.get(), k_.get(), kv_bytes, cudaMemcpyDeviceToHost, s));
            PKV_CUDA_CHECK(cudaMemcpyAsync(hook_v_.get(), v_.get(), kv_bytes, cudaMemcpyDeviceToHost, s));
            hook_layer(l, b, cache, s_begin);
        } else {
            device_cache_layer(l, n, cs, sn);
        }
        clock_.lap(PhaseClock::cache, s);
        fwd::attention_cached(q_.get(), k_.get(), v_.get(), k_hat_.get(), v_hat_.get(), k_flush_.get(), v_flush_.get(),
                              n, tiles_.get(), n_tiles, static_cast<int>(hp_.n_head), static_cast<int>(hp_.n_head_kv),
                              HD_, scale, window, attention_math, att_.get(), s);
    } else {
        fwd::attention(q_.get(), k_.get(), v_.get(), tiles_.get(), n_tiles, static_cast<int>(hp_.n_head),
                       static_cast<int>(hp_.n_head_kv), HD_, scale, window, attention_math, att_.get(), s);
    }
    clock_.lap(PhaseClock::attention, s);
    gemm(att_.get(), padded, QD_, w(l, P::wo), E_, proj_.get());
    fwd::add_bias(proj_.get(), n, E_, wf(l, P::bo), s);
    if (wf(l, P::post_attn_norm) != nullptr)
        fwd::rms_norm(proj_.get(), n, E_, wf(l, P::post_attn_norm), eps, proj_.get(), s);
    fwd::add_inplace(x_.get(), proj_.get(), n * E_, s);
    clock_.lap(PhaseClock::out_proj, s);
    // Feed-forward sublayer.
    fwd::rms_norm(x_.get(), n, E_, wf(l, P::ffn_norm), eps, xn_.get(), s);
    clock_.lap(PhaseClock::norm, s);
    gemm(xn_.get(), padded, E_, w(l, P::ffn_gate), FF_, gate_.get());
    gemm(xn_.get(), padded, E_, w(l, P::ffn_up), FF_, up_.get(), true);
    clock_.lap(PhaseClock::ffn_in, s);
    if (opt_.weights == WeightType::f32) {
        if (hp_.gelu_ffn) fwd::geglu_tanh(gate_.get(), up_.get(), n * FF_, s);
        else fwd::swiglu(gate_.get(), up_.get(), n * FF_, s);
        clock_.lap(PhaseClock::act, s);
        gemm(gate_.get(), padded, FF_, w(l, P::ffn_down), E_, proj_.get());
    } else {
        // Rounded straight into the product's input (rows past n keep earlier finite values).
        fwd::gated_to(gate_.get(), up_.get(), n * FF_, hp_.gelu_ffn, opt_.weights, wx_.get(), s);
        clock_.lap(PhaseClock::act, s);
        gemm(nullptr, padded, FF_, w(l, P::ffn_down), E_, proj_.get(), true);
    }
    if (wf(l, P::post_ffn_norm) != nullptr)
        fwd::rms_norm(proj_.get(), n, E_, wf(l, P::post_ffn_norm), eps, proj_.get(), s);
    fwd::add_inplace(x_.get(), proj_.get(), n * E_, s);
    clock_.lap(PhaseClock::ffn_down, s);
}

// Final norm, then per row slab and vocabulary chunk one product and one statistics pass:
// at most [slab, chunk] logits exist at a time.
void CudaEngine::logits(const PackedBatch& b, int64_t padded, const ForwardOptions& opts, int64_t s_begin,
                        BatchResult& out) {
    const int64_t n = b.n_rows();
    cudaStream_t s = stream_;
    const DeviceTensor& norm = layout_.tensors[static_cast<size_t>(layout_.output_norm)];
    fwd::rms_norm(x_.get(), n, E_, reinterpret_cast<const float*>(weights_.get() + norm.offset), hp_.rms_eps, xn_.get(),
                  s);
    if (opts.want_hidden) {
        PKV_CUDA_CHECK(cudaStreamSynchronize(s));
        std::vector<float> h(static_cast<size_t>(n) * E_);
        PKV_CUDA_CHECK(cudaMemcpy(h.data(), xn_.get(), h.size() * sizeof(float), cudaMemcpyDeviceToHost));
        for (int i = 0; i < b.n_seq(); ++i)
            out[static_cast<size_t>(s_begin + i)].hidden.assign(h.begin() + b.row0[i] * E_,
                                                                h.begin() + b.row0[i + 1] * E_);
    }
    const bool any_target =
        opts.want_nll && std::any_of(b.target.begin(), b.target.end(), [](int32_t t) { return t >= 0; });
    if (!any_target && !opts.want_last_logits) {
        PKV_CUDA_CHECK(cudaStreamSynchronize(s));
        check_finite(b, s_begin, out);
        return;
    }
    const DeviceTensor& ow = layout_.tensors[static_cast<size_t>(layout_.output)];
    const fwd::LogitStats st{max_.get(), sum_.get(), argmax_.get(), target_logit_.get()};
    fwd::logit_stats_reset(st, n, s);
    const void* in = xn_.get();
    cudaDataType_t type = CUDA_R_32F;
    if (opt_.weights != WeightType::f32) {
        fwd::convert(xn_.get(), padded * E_, opt_.weights, wx_.get(), s);
        in = wx_.get();
        type = opt_.weights == WeightType::bf16 ? CUDA_R_16BF : CUDA_R_16F;
    }
    const int64_t slab = opt_.slab_rows, elem = weight_type_bytes(opt_.weights), V = hp_.n_vocab;
    const float one = 1.0f, zero = 0.0f;
    for (int64_t r0 = 0; r0 < n; r0 += slab) {
        const int64_t rows = std::min(slab, n - r0);
        for (const Range& c : split_even(V, vocab_chunk_)) {
            const auto* wc = weights_.get() + ow.offset + c.begin * E_ * elem;
            // Always a full slab and, but for the last chunk, a full chunk: the same shapes in every batch.
            PKV_CUBLAS_CHECK(cublasGemmEx(
                blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(c.count), static_cast<int>(slab), E_, &one, wc, type,
                E_, static_cast<const uint8_t*>(in) + r0 * E_ * elem, type, E_, &zero, logits_.get(), CUDA_R_32F,
                static_cast<int>(c.count), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            if (any_target) {
                const fwd::LogitStats sr{st.max + r0, st.sum + r0, st.argmax + r0, st.target + r0};
                fwd::logit_stats_add(logits_.get(), rows, c.count, c.begin, target_.get() + r0, sr, s);
            }
            if (opts.want_last_logits)
                for (int i = 0; i < b.n_seq(); ++i) {
                    const int64_t last = b.row0[i + 1] - 1;
                    if (last < r0 || last >= r0 + rows) continue;
                    PKV_CUDA_CHECK(cudaMemcpyAsync(
                        last_host_.get() + static_cast<int64_t>(i) * V + c.begin, logits_.get() + (last - r0) * c.count,
                        static_cast<size_t>(c.count) * sizeof(float), cudaMemcpyDeviceToHost, s));
                }
        }
    }
    if (any_target) {
        fwd::logit_stats_finish(st, target_.get(), n, nll_out_.get(), amax_out_.get(), s);
        PKV_CUDA_CHECK(cudaMemcpyAsync(nll_host_.get(), nll_out_.get(), static_cast<size_t>(n) * sizeof(float),
                                       cudaMemcpyDeviceToHost, s));
        PKV_CUDA_CHECK(cudaMemcpyAsync(amax_host_.get(), amax_out_.get(), static_cast<size_t>(n) * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, s));
    }
    PKV_CUDA_CHECK(cudaStreamSynchronize(s));
    for (int i = 0; i < b.n_seq(); ++i) {
        ForwardResult& r = out[static_cast<size_t>(s_begin + i)];
        const int64_t r0 = b.row0[i], len = b.row0[i + 1] - r0;
        if (opts.want_nll) {
            r.nll.assign(nll_host_.get() + r0, nll_host_.get() + r0 + len - 1);
            r.argmax.assign(amax_host_.get() + r0, amax_host_.get() + r0 + len - 1);
        }
        if (opts.want_last_logits)
            r.last_logits.assign(last_host_.get() + static_cast<int64_t>(i) * V,
                                 last_host_.get() + static_cast<int64_t>(i + 1) * V);
    }
    check_finite(b, s_begin, out);
}

void CudaEngine::check_finite(const PackedBatch& b, int64_t s_begin, const BatchResult& out) const {
    if (opt_.weights == WeightType::f32) return;
    check_finite_results(model_.file(), out, static_cast<size_t>(s_begin), static_cast<size_t>(s_begin + b.n_seq()),
                         s_begin,
                         "on the GPU attention's operands are binary16, which overflows beyond 65504; --device cpu "
                         "computes in float");
}

}  // namespace

std::unique_ptr<ForwardEngine> make_cuda_engine(const LlamaModel& model, const CudaEngineOptions& options) {
    return std::make_unique<CudaEngine>(model, options);
}

}  // namespace pkv::cuda
