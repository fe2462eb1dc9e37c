// The two KV sources of kv_source.h: a dump read through KvDumpReader, and the model
// run over text, holding the loaded sequences' activations as a dump stores them.
#include "pkv/pipeline/kv_source.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/core/log.h"
#include "pkv/core/progress.h"
#include "pkv/core/sha256.h"
#include "pkv/gguf/gguf.h"
#include "pkv/model/llama.h"
#include "pkv/pipeline/provenance.h"
#include "pkv/pipeline/text_input.h"
#include "pkv/tokenizer/tokenizer.h"

namespace pkv {

namespace {

class DumpSource final : public KvSource {
public:
    explicit DumpSource(const std::string& path) : r_(path) {}
    const std::string& path() const override { return r_.path(); }
    const std::vector<int32_t>& layers() const override { return r_.layers(); }
    int n_layer_model() const override { return r_.n_layer_model(); }
    const std::vector<KvDumpLayerInfo>& layer_info() const override { return r_.layer_info(); }
    int n_head() const override { return r_.n_head(); }
    int n_head_kv() const override { return r_.n_head_kv(); }
    int head_dim() const override { return r_.head_dim(); }
    int64_t n_tokens() const override { return r_.n_tokens(); }
    bool has(const std::string& dataset) const override { return r_.has(dataset); }
    std::vector<float> read_head(const std::string& dataset, int slot, int head, int64_t t0,
                                 int64_t count) const override {
        return r_.read_head(dataset, slot, head, t0, count);
    }
    KvDumpReader::Sequences sequences() const override { return r_.sequences(); }
    nlohmann::json model() const override { return r_.model(); }
    nlohmann::json provenance() const override { return r_.provenance(); }
    std::string dim_order() const override { return r_.dim_order(); }

private:
    KvDumpReader r_;
};

// The keys' and queries' HF half-split order (docs/formats/kv_dump.md): hf[i] = gguf[2i],
// hf[i + D/2] = gguf[2i + 1].
// Element-type free: floats from a CPU engine, binary16 bits from the CUDA engine.
template <typename T>
void to_hf_order(const T* src, T* dst, int64_t D) {
    for (int64_t i = 0; i < D / 2; ++i) {
        dst[i] = src[2 * i];
        dst[i + D / 2] = src[2 * i + 1];
    }
}

// One binary16 row of D values, in HF half-split order when `hf` (as to_hf_order).
void move_row(const uint16_t* src, uint16_t* dst, int64_t D, bool hf) {
    if (hf) to_hf_order(src, dst, D);
    else std::memcpy(dst, src, static_cast<size_t>(D) * sizeof(uint16_t));
}

class ModelSource final : public KvSource {
public:
    explicit ModelSource(const ModelSourceConfig& c) : c_(c) {
        check_model_and_inputs(c.model_path, c.text_paths, c.token_ids_path);
        PKV_CHECK(c.n_tokens >= 1, invalid_argument, "--tokens: expected at least 1, got {}", c.n_tokens);
        PKV_CHECK(c.ctx >= 1, invalid_argument, "--ctx: expected at least 1, got {}", c.ctx);
        PKV_CHECK(c.sample_tokens >= 0, invalid_argument, "--sample-tokens: expected 0 or more, got {}",
                  c.sample_tokens);
        file_ = GgufFile::open(c.model_path);
        model_ = std::make_unique<LlamaModel>(file_);
        const LlamaHparams& hp = model_->hparams();
        PKV_CHECK(static_cast<uint32_t>(c.ctx) <= hp.n_ctx_train, out_of_range,
                  "--ctx {}: longer than the model's context length {} ({}: {}.context_length)", c.ctx, hp.n_ctx_train,
                  c.model_path, hp.arch);
        for (int l : c.layers)
            PKV_CHECK(l >= 0 && l < static_cast<int>(hp.n_layer), out_of_range,
                      "--layers: layer {} is out of range: {} has layers 0-{}", l, c.model_path, hp.n_layer - 1);
        layers_.assign(c.layers.begin(), c.layers.end());
        if (layers_.empty())
            for (uint32_t l = 0; l < hp.n_layer; ++l) layers_.push_back(static_cast<int32_t>(l));
        std::sort(layers_.begin(), layers_.end());
        layers_.erase(std::unique(layers_.begin(), layers_.end()), layers_.end());
        info_ = layer_info_of(hp, layers_);
        native_hf_ = hp.rope_layout == RopeLayout::half_split;
        std::future<std::string> sha = sha256_file_async(c.model_path);  // while the engine loads the weights
        engine_ = c.engine ? c.engine(*model_) : make_cpu_engine(*model_);
        stream_ = token_stream(*file_, c.text_paths, c.token_ids_path, c.n_tokens, sources_);
        model_rec_ = model_json(hp, *file_, c.model_path, sha.get());
        pick_sequences();
        provenance_ = provenance_json(c.command, c.argv);
        provenance_.update({
            {"source", "model"},
            {"model", {{"file", c.model_path}, {"sha256", model_rec_.value("sha256", "")}, {"name", hp.name}}},
            {"texts", sources_json(sources_)},
            {"device", engine_->description()},
            {"settings",
             {{"tokens", c.n_tokens},
              {"ctx", c.ctx},
              {"capture", c.capture.to_string()},
              {"layers", layers_},
              {"dim_order", dim_order()},
              {"bos", c.token_ids_path.empty() && gguf_adds_bos(*file_)},
              {"input", c.token_ids_path.empty() ? "text" : "token_ids"}}},
            {"stream",
             {{"tokens", c.n_tokens},
              {"sequences", static_cast<int64_t>(all_starts_.size())},
              {"sample_tokens", c.sample_tokens},
              {"sampled_tokens", n_tokens_},
              {"sampled_sequences", static_cast<int64_t>(seq_.start.size())},
              {"seed", c.seed}}},
        });
    }

    const std::string& path() const override { return c_.model_path; }
    const std::vector<int32_t>& layers() const override { return layers_; }
    int n_layer_model() const override { return static_cast<int>(model_->hparams().n_layer); }
    const std::vector<KvDumpLayerInfo>& layer_info() const override { return info_; }
    int n_head() const override { return static_cast<int>(model_->hparams().n_head); }
    int n_head_kv() const override { return static_cast<int>(model_->hparams().n_head_kv); }
    int head_dim() const override { return static_cast<int>(model_->hparams().head_dim); }
    int64_t n_tokens() const override { return n_tokens_; }
    bool has(const std::string& dataset) const override {
        const int i = dataset_index(dataset);
        return i >= 0 && captured(i);
    }
    KvDumpReader::Sequences sequences() const override { return seq_; }
    nlohmann::json model() const override { return model_rec_; }
    nlohmann::json provenance() const override { return provenance_; }
    std::string dim_order() const override {
        return c_.hf_dim_order || native_hf_ ? kvdump::kDimOrderHf : kvdump::kDimOrderGguf;
    }
    bool streamed() const override { return true; }

    std::vector<float> read_head(const std::string& dataset, int slot, int head, int64_t t0,
                                 int64_t count) const override {
        const int i = dataset_index(dataset);
        PKV_CHECK(i >= 0 && captured(i), internal, "{}: {} was not captured", c_.model_path, dataset);
        const int H = i == 3 ? n_head() : n_head_kv();
        PKV_CHECK(slot >= 0 && slot < n_layers() && head >= 0 && head < H, internal,
                  "{}: {} slot {} head {} outside the stored layers or heads", c_.model_path, dataset, slot, head);
        PKV_CHECK(t0 >= t_lo_ && count >= 0 && t0 + count <= t_hi_, internal,
                  "{}: tokens [{}, {}) of {} are not loaded (loaded: [{}, {}))", c_.model_path, t0, t0 + count, dataset,
                  t_lo_, t_hi_);
        const int64_t D = head_dim(), n = t_hi_ - t_lo_;
        const uint16_t* src = data_[i].data() + ((static_cast<int64_t>(slot) * H + head) * n + (t0 - t_lo_)) * D;
        std::vector<float> out(static_cast<size_t>(count * D));
        half_to_float_n(src, out.data(), out.size());
        return out;
    }

    void load(size_t s0, size_t s1) override {
        PKV_CHECK(s0 <= s1 && s1 <= seq_.start.size(), internal, "{}: load of sequences [{}, {}) of {}", c_.model_path,
                  s0, s1, seq_.start.size());
        if (s0 == s0_ && s1 == s1_) return;
        for (auto& d : data_) d.clear();
        s0_ = s1_ = 0;
        t_lo_ = t_hi_ = 0;
        if (s0 == s1) return;
        const int64_t lo = seq_.start[s0], hi = seq_.start[s1 - 1] + seq_.length[s1 - 1], n = hi - lo;
        const int64_t D = head_dim();
        for (int i = 0; i < 4; ++i)
            if (captured(i))
                data_[i].assign(static_cast<size_t>(n_layers() * int64_t{i == 3 ? n_head() : n_head_kv()} * n * D), 0);
        std::vector<int> slot_of(model_->hparams().n_layer, -1);
        for (size_t s = 0; s < layers_.size(); ++s) slot_of[layers_[s]] = static_cast<int>(s);
        ForwardOptions opts;
        opts.capture = true;
        for (int i = 0; i < 4; ++i) opts.tensors[static_cast<size_t>(i)] = captured(i);
        opts.want_nll = false;  // only the activations are used: no logits are formed
        opts.layers.assign(model_->hparams().n_layer, false);
        for (int l : layers_) opts.layers[l] = true;
        const bool permute = c_.hf_dim_order && !native_hf_;
        std::vector<float> scratch[4], row(static_cast<size_t>(D));
        const int per_batch = std::max(1, engine_->batch_sequences(c_.ctx));
        Progress progress(c_.command + ": forward", static_cast<uint64_t>(n), "tok");
        for (size_t b0 = s0; b0 < s1; b0 += static_cast<size_t>(per_batch)) {
            const size_t b1 = std::min(s1, b0 + static_cast<size_t>(per_batch));
            std::vector<std::vector<int32_t>> batch;
            std::vector<int64_t> at;  // each batch sequence's first token in the loaded block
            for (size_t s = b0; s < b1; ++s) {
                const int64_t from = orig_start_[s];
                batch.emplace_back(stream_.begin() + from, stream_.begin() + from + seq_.length[s]);
                at.push_back(seq_.start[s] - lo);
            }
            engine_->run_batch(batch, opts, [&](const EngineActivations& a) {
                check_interrupted();
                const int slot = slot_of[a.f32.layer];
                const int64_t m = a.f32.n_tokens;
                const uint16_t* bits[4] = {a.k_pre16, a.k_post16, a.v16, a.q16};
                for (int i = 0; i < 4; ++i) {
                    if (!captured(i)) continue;
                    const int64_t H = i == 3 ? n_head() : n_head_kv();
                    const bool perm = permute && i != 2;
                    uint16_t* dst0 = data_[i].data() + (slot * H * n + at[a.sequence]) * D;
                    if (bits[i] != nullptr) {
                        // binary16 already: the bits are what float_to_half of their floats gives, so
                        // they are moved as they are, [token][head] to [head][token], on every core.
                        const uint16_t* src = bits[i];
#pragma omp parallel for collapse(2) schedule(static) if (m * H * D >= (int64_t{1} << 16))
                        for (int64_t h = 0; h < H; ++h)
                            for (int64_t t = 0; t < m; ++t)
                                move_row(src + (t * H + h) * D, dst0 + (h * n + t) * D, D, perm);
                        continue;
                    }
                    const float* x = to_float(a, i, H * D, scratch[i]);
                    PKV_CHECK(x != nullptr, internal, "{}: the engine gave no {}", c_.model_path,
                              kvdump::kActivations[i]);
                    // Engine rows are [token][head][dim]; the store is [slot][head][token][dim] as in a dump.
                    for (int64_t t = 0; t < m; ++t)
                        for (int64_t h = 0; h < H; ++h) {
                            const float* s = x + (t * H + h) * D;
                            if (perm) {
                                to_hf_order(s, row.data(), D);
                                s = row.data();
                            }
                            float_to_half_n(s, dst0 + (h * n + t) * D, static_cast<size_t>(D));
                        }
                }
            });
            for (size_t s = b0; s < b1; ++s) progress.advance(static_cast<uint64_t>(seq_.length[s]));
        }
        progress.finish();
        s0_ = s0;
        s1_ = s1;
        t_lo_ = lo;
        t_hi_ = hi;
    }

private:
    static int dataset_index(const std::string& name) {
        for (int i = 0; i < 4; ++i)
            if (name == kvdump::kActivations[i]) return i;
        return -1;
    }
    bool captured(int i) const {
        const CaptureSet& k = c_.capture;
        return i == 0 ? k.k_pre : i == 1 ? k.k_post : i == 2 ? k.v : k.q;
    }

    // The sequences of the stream (cut every ctx tokens) and, with sample_tokens, a seeded
    // uniform sample of them in stream order; the kept ones are renumbered to tile [0, T).
    void pick_sequences() {
        for (int64_t t0 = 0; t0 < c_.n_tokens; t0 += c_.ctx) all_starts_.push_back(t0);
        const auto len = [&](size_t s) { return std::min<int64_t>(c_.ctx, c_.n_tokens - all_starts_[s]); };
        std::vector<size_t> keep(all_starts_.size());
        std::iota(keep.begin(), keep.end(), size_t{0});
        if (c_.sample_tokens > 0 && c_.n_tokens > c_.sample_tokens) {
            std::vector<size_t> order = keep;
            std::mt19937_64 gen(c_.seed ^ 0x73616d706c65ULL);
            std::shuffle(order.begin(), order.end(), gen);
            keep.clear();
            int64_t taken = 0;
            for (size_t s : order)
                if (keep.empty() || taken + len(s) <= c_.sample_tokens) {
                    keep.push_back(s);
                    taken += len(s);
                }
            std::sort(keep.begin(), keep.end());
            log::info("{}: {} of {} tokens sampled ({} of {} sequences, --sample-tokens {})", c_.command, taken,
                      c_.n_tokens, keep.size(), all_starts_.size(), c_.sample_tokens);
        }
        for (size_t s : keep) {
            seq_.start.push_back(n_tokens_);
            seq_.length.push_back(static_cast<int32_t>(len(s)));
            orig_start_.push_back(all_starts_[s]);
            n_tokens_ += len(s);
        }
    }

    ModelSourceConfig c_;
    std::shared_ptr<GgufFile> file_;
    std::unique_ptr<LlamaModel> model_;
    std::unique_ptr<ForwardEngine> engine_;
    std::vector<int32_t> layers_;
    std::vector<KvDumpLayerInfo> info_;
    bool native_hf_ = false;
    std::vector<TextSource> sources_;
    std::vector<int32_t> stream_;
    nlohmann::json model_rec_, provenance_;
    std::vector<int64_t> all_starts_;  // every sequence of the stream
    KvDumpReader::Sequences seq_;      // the kept ones, renumbered
    std::vector<int64_t> orig_start_;  // the kept ones' starts in the stream
    int64_t n_tokens_ = 0;
    size_t s0_ = 0, s1_ = 0;  // loaded sequences
    int64_t t_lo_ = 0, t_hi_ = 0;
    std::vector<uint16_t> data_[4];  // [slot][head][loaded token][D] per dataset
};

}  // namespace

std::unique_ptr<KvSource> open_dump_source(const std::string& path) { return std::make_unique<DumpSource>(path); }

std::unique_ptr<KvSource> open_model_source(const ModelSourceConfig& config) {
    return std::make_unique<ModelSource>(config);
}

std::optional<RopeParams> dump_layer_rope(const nlohmann::json& m, const std::string& dim_order, int D,
                                          const KvDumpLayerInfo& layer) {
    if (!m.is_object() || !m.contains("rope_freq_base") || !m["rope_freq_base"].is_number()) return std::nullopt;
    if (!(layer.rope_base > 0.0)) return std::nullopt;
    const std::string scaling = m.value("rope_scaling", std::string("none"));
    if (scaling != "none" && scaling != "linear") return std::nullopt;
    RopeParams r;
    r.base = layer.rope_base;
    r.freq_scale = layer.window > 0 ? 1.0 : m.value("rope_freq_scale", 1.0);
    r.n_rot = m.value("n_rot", D);
    const bool hf = dim_order == kvdump::kDimOrderHf;
    const bool neox = m.value("rope_type", std::string("norm")) == "neox";
    r.layout = hf ? RopeLayout::half_split : RopeLayout::interleaved;
    if (r.n_rot < 2 || r.n_rot > D || r.n_rot % 2 != 0 || (hf && !neox && r.n_rot != D)) return std::nullopt;
    if (neox && !hf) return std::nullopt;  // a NEOX model's dump is always in HF order
    if (m.contains("rope_freq_factors") && m["rope_freq_factors"].is_array()) {
        r.freq_factors = m["rope_freq_factors"].get<std::vector<float>>();
        if (r.freq_factors.size() != static_cast<size_t>(r.n_rot / 2)) return std::nullopt;
    }
    return r;
}

}  // namespace pkv
