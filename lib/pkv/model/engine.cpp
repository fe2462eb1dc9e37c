#include "pkv/model/engine.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/gguf/gguf.h"

namespace pkv {

const float* to_float(const EngineActivations& a, int tensor, int64_t cols, std::vector<float>& scratch) {
    const float* f[4] = {a.f32.k_pre, a.f32.k_post, a.f32.v, a.f32.q};
    const uint16_t* h[4] = {a.k_pre16, a.k_post16, a.v16, a.q16};
    PKV_CHECK(tensor >= 0 && tensor < 4, invalid_argument, "to_float: tensor {}: expected 0-3", tensor);
    if (f[tensor] != nullptr) return f[tensor];
    if (h[tensor] == nullptr) return nullptr;
    const size_t n = static_cast<size_t>(a.f32.n_tokens) * static_cast<size_t>(cols);
    scratch.resize(n);
    half_to_float_n(h[tensor], scratch.data(), n);
    return scratch.data();
}

bool ForwardEngine::supports_device_cache(const DeviceKvCache&) const { return false; }

BatchResult ForwardEngine::run_batch_device_cache(const std::vector<std::vector<int32_t>>&, const ForwardOptions&,
                                                  const EngineSink&, const DeviceKvCache&) {
    fail(ErrorCode::unsupported, "{}: this engine does not simulate a KV cache itself (run the cache hook instead)",
         description());
}

namespace {

class CpuEngine final : public ForwardEngine {
public:
    explicit CpuEngine(const LlamaModel& model) : model_(model) {}
    const LlamaHparams& hparams() const override { return model_.hparams(); }
    std::string description() const override {
#ifdef _OPENMP
        return "cpu (" + std::to_string(omp_get_max_threads()) + " threads)";
#else
        return "cpu (1 thread)";
#endif
    }
    int batch_sequences(int) const override { return 1; }
    BatchResult run_batch(const std::vector<std::vector<int32_t>>& sequences, const ForwardOptions& opts,
                          const EngineSink& sink, const BatchCacheHook& cache) override {
        PKV_CHECK(opts.pos0 == 0 && !opts.kv_cache, invalid_argument,
                  "{}: an engine batch starts every sequence at position 0 and takes its cache hook as run_batch's "
                  "`cache`",
                  model_.file().path());
        PKV_CHECK(!opts.attention, unsupported,
                  "{}: an engine batch takes no attention hook (LlamaModel::forward does)", model_.file().path());
        BatchResult out;
        out.reserve(sequences.size());
        for (size_t s = 0; s < sequences.size(); ++s) {
            EngineActivations e;
            e.sequence = static_cast<int>(s);
            ForwardOptions o = opts;
            // The model's own hooked path: eval through this engine gives the figures of a direct forward call.
            if (cache)
                o.kv_cache = [&cache, s](const KvHookInput& in, KvHookOutput& r) { cache(static_cast<int>(s), in, r); };
            LayerSink layer_sink;
            if (sink)
                layer_sink = [&](const LayerActivations& a) {
                    e.f32 = a;
                    sink(e);
                };
            out.push_back(model_.forward(sequences[s], o, layer_sink));
        }
        return out;
    }

private:
    const LlamaModel& model_;
};

}  // namespace

std::unique_ptr<ForwardEngine> make_cpu_engine(const LlamaModel& model) { return std::make_unique<CpuEngine>(model); }

}  // namespace pkv
