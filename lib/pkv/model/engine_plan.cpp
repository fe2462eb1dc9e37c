// pkv/model/engine_plan.cpp — host-side plans of a batched forward engine (engine_plan.h).
#include "pkv/model/engine_plan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>

#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/gguf/gguf.h"

namespace pkv {

const char* weight_type_name(WeightType t) {
    switch (t) {
        case WeightType::bf16: return "bf16";
        case WeightType::fp16: return "fp16";
        case WeightType::f32: return "f32";
    }
    return "?";
}

int weight_type_bytes(WeightType t) { return t == WeightType::f32 ? 4 : 2; }

PackedBatch pack_batch(const std::vector<std::vector<int32_t>>& sequences) {
    PackedBatch b;
    b.row0.reserve(sequences.size() + 1);
    size_t total = 0;
    for (const auto& s : sequences) total += s.size();
    b.tokens.reserve(total), b.pos.reserve(total), b.target.reserve(total);
    for (const auto& s : sequences) {
        b.row0.push_back(b.n_rows());
        const int n = static_cast<int>(s.size());
        b.max_len = std::max(b.max_len, n);
        for (int i = 0; i < n; ++i) {
            b.tokens.push_back(s[i]);
            b.pos.push_back(i);
            b.target.push_back(i + 1 < n ? s[i + 1] : -1);
        }
    }
    b.row0.push_back(b.n_rows());
    return b;
}

std::vector<AttentionTile> attention_tiles(const PackedBatch& b, int tile_rows) {
    PKV_ASSERT(tile_rows >= 1);
    std::vector<AttentionTile> tiles;
    for (int s = 0; s < b.n_seq(); ++s) {
        const int64_t n = b.row0[s + 1] - b.row0[s];
        for (int64_t q0 = 0; q0 < n; q0 += tile_rows)
            tiles.push_back({static_cast<int32_t>(b.row0[s]), static_cast<int32_t>(q0),
                             static_cast<int32_t>(std::min<int64_t>(tile_rows, n - q0))});
    }
    return tiles;
}

std::vector<Range> split_even(int64_t total, int64_t step) {
    PKV_ASSERT(total >= 0 && step >= 1);
    std::vector<Range> out;
    for (int64_t b = 0; b < total; b += step) out.push_back({b, std::min(step, total - b)});
    return out;
}

std::vector<Range> group_sequences(const std::vector<std::vector<int32_t>>& sequences, int64_t max_rows) {
    PKV_ASSERT(max_rows >= 1);
    std::vector<Range> out;
    int64_t rows = 0;
    for (size_t s = 0; s < sequences.size(); ++s) {
        const auto n = static_cast<int64_t>(sequences[s].size());
        if (out.empty() || rows + n > max_rows) {
            out.push_back({static_cast<int64_t>(s), 0});
            rows = 0;
        }
        ++out.back().count;
        rows += n;
    }
    return out;
}

int64_t padded_rows(int64_t rows, int64_t slab_rows) {
    PKV_ASSERT(rows >= 0 && slab_rows >= 1);
    return std::max<int64_t>(1, (rows + slab_rows - 1) / slab_rows) * slab_rows;
}

int default_slab_rows(const LlamaHparams& hp) {
    int slab = 1024;
    while (slab < 8192 && int64_t{2} * slab * std::max<int64_t>(hp.n_embd, 1) <= int64_t{4096} * 1024) slab *= 2;
    return slab;
}

int64_t vocab_chunk_rows(int64_t n_vocab, int64_t slab_rows, int64_t budget_bytes) {
    PKV_ASSERT(n_vocab >= 1 && slab_rows >= 1);
    const int64_t fit = budget_bytes / (slab_rows * static_cast<int64_t>(sizeof(float)));
    const int64_t chunk = std::max<int64_t>(256, fit / 256 * 256);
    return std::min(chunk, n_vocab);
}

int64_t activation_bytes_per_row(const LlamaHparams& hp, WeightType type) {
    const int64_t E = hp.n_embd, FF = hp.n_ff, QD = int64_t{hp.n_head} * hp.head_dim,
                  KD = int64_t{hp.n_head_kv} * hp.head_dim;
    // gate holds the fused q | k | v product's rows too (qkv_adjacent).
    const int64_t f32 = 4 * (4 * E + 2 * QD + 2 * KD + FF + std::max(FF, QD + 2 * KD));
    const int64_t wcopy = type == WeightType::f32 ? 0 : weight_type_bytes(type) * std::max({E, QD, FF});
    const int64_t capture = 2 * 2 * (3 * KD + QD);
    const int64_t cache = 4 * 2 * KD + 4 * 2 * int64_t{hp.n_head_kv};  // a cache hook's k_hat, v_hat, flush steps
    return f32 + wcopy + capture + cache + 3 * 4;                      // + token, position, target
}

int64_t rows_for_memory(int64_t budget_bytes, int64_t per_row_bytes, int64_t slab_rows, int64_t cap) {
    PKV_ASSERT(per_row_bytes >= 1 && slab_rows >= 1);
    if (budget_bytes <= 0) return 0;
    const int64_t rows = std::min(budget_bytes / per_row_bytes, cap);
    return rows / slab_rows * slab_rows;
}

namespace {

bool is_matrix(LayerPart p) {
    using P = LayerPart;
    return p == P::wq || p == P::wk || p == P::wv || p == P::wo || p == P::ffn_gate || p == P::ffn_up ||
           p == P::ffn_down;
}

}  // namespace

WeightLayout weight_layout(const LlamaModel& model, WeightType type) {
    const LlamaHparams& hp = model.hparams();
    const GgufFile& f = model.file();
    WeightLayout w;
    w.type = type;
    w.layer_index.assign(hp.n_layer, {});
    for (auto& a : w.layer_index) a.fill(-1);
    auto add = [&](const GgufTensorInfo* t, int layer, LayerPart part, bool matrix) {
        PKV_CHECK(t != nullptr, internal, "{}: a planned tensor is missing", f.path());
        DeviceTensor d;
        d.info = t;
        d.layer = layer;
        d.part = part;
        d.matrix = matrix;
        d.cols = static_cast<int64_t>(t->row_length());
        d.rows = static_cast<int64_t>(t->n_rows());
        d.bytes = d.rows * d.cols * (matrix ? weight_type_bytes(type) : 4);
        // wk right after wq and wv right after wk (as the plan lists them): one product of
        // the three reads them as one matrix. Every other tensor starts 256-byte aligned.
        const bool follows = !w.tensors.empty() && w.tensors.back().layer == layer &&
                             ((part == LayerPart::wk && w.tensors.back().part == LayerPart::wq) ||
                              (part == LayerPart::wv && w.tensors.back().part == LayerPart::wk));
        d.offset = follows ? w.tensors.back().offset + w.tensors.back().bytes : (w.total_bytes + 255) / 256 * 256;
        w.total_bytes = d.offset + d.bytes;
        w.tensors.push_back(d);
        return static_cast<int>(w.tensors.size()) - 1;
    };
    for (const TensorReq& r : model_tensor_plan(hp)) {
        const GgufTensorInfo* t = f.find_tensor(r.name);
        if (r.layer >= 0) w.layer_index[r.layer][static_cast<int>(r.part)] = add(t, r.layer, r.part, is_matrix(r.part));
        else if (r.name == "output_norm.weight") w.output_norm = add(t, -1, LayerPart::attn_norm, false);
        else if (r.name == "output.weight") w.output = add(t, -1, LayerPart::attn_norm, true);
    }
    if (hp.tied_output) w.output = add(f.find_tensor("token_embd.weight"), -1, LayerPart::attn_norm, true);
    w.total_bytes = (w.total_bytes + 255) / 256 * 256;
    PKV_CHECK(w.output >= 0 && w.output_norm >= 0, internal, "{}: no output matrix or output norm planned", f.path());
    return w;
}

bool qkv_adjacent(const WeightLayout& w, int layer) {
    const auto& idx = w.layer_index.at(static_cast<size_t>(layer));
    const int q = idx[static_cast<int>(LayerPart::wq)], k = idx[static_cast<int>(LayerPart::wk)],
              v = idx[static_cast<int>(LayerPart::wv)];
    if (q < 0 || k < 0 || v < 0) return false;
    const DeviceTensor &tq = w.tensors[static_cast<size_t>(q)], &tk = w.tensors[static_cast<size_t>(k)],
                       &tv = w.tensors[static_cast<size_t>(v)];
    return tq.matrix && tk.matrix && tv.matrix && tq.cols == tk.cols && tk.cols == tv.cols &&
           tk.offset == tq.offset + tq.bytes && tv.offset == tk.offset + tk.bytes;
}

void split_qkv_ref(const float* qkv, int64_t rows, int qd, int kd, const float* bq, const float* bk, const float* bv,
                   float* q, float* k, float* v) {
    const int64_t w = qd + 2 * int64_t{kd};
    auto part = [](const float* src, int cols, const float* bias, float* dst) {
        for (int c = 0; c < cols; ++c) dst[c] = bias ? src[c] + bias[c] : src[c];
    };
    for (int64_t r = 0; r < rows; ++r) {
        const float* x = qkv + r * w;
        part(x, qd, bq, q + r * qd);
        part(x + qd, kd, bk, k + r * kd);
        part(x + qd + kd, kd, bv, v + r * kd);
    }
}

void pack_rows(const GgufFile& f, const GgufTensorInfo& t, uint64_t row0, uint64_t n_rows, WeightType type, void* dst) {
    const uint64_t cols = t.row_length();
    // Blocks of rows so each thread holds at most ~1 Mi floats of scratch.
    const uint64_t per = std::max<uint64_t>(1, (uint64_t{1} << 20) / std::max<uint64_t>(cols, 1));
    const auto n_blocks = static_cast<int64_t>((n_rows + per - 1) / per);
    auto* out = static_cast<uint8_t*>(dst);
    const int tb = weight_type_bytes(type);
    std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1) if (n_blocks > 1)
    for (int64_t b = 0; b < n_blocks; ++b) {
        try {
            const uint64_t r = static_cast<uint64_t>(b) * per, n = std::min(per, n_rows - r);
            uint8_t* o = out + r * cols * static_cast<uint64_t>(tb);
            if (type == WeightType::f32) {
                f.dequantize_rows(t, row0 + r, n, reinterpret_cast<float*>(o));
                continue;
            }
            std::vector<float> tmp(n * cols);
            f.dequantize_rows(t, row0 + r, n, tmp.data());
            std::vector<uint16_t> h(tmp.size());
            if (type == WeightType::bf16) float_to_bf16_n(tmp.data(), h.data(), tmp.size());
            else float_to_half_n(tmp.data(), h.data(), tmp.size());
            std::memcpy(o, h.data(), h.size() * 2);
        } catch (...) {
#pragma omp critical(pkv_pack_rows_error)
            if (!error) error = std::current_exception();
        }
    }
    if (error) std::rethrow_exception(error);
}

void embed_rows(const GgufFile& f, const LlamaHparams& hp, const std::vector<int32_t>& tokens, float* out) {
    const GgufTensorInfo* t = f.find_tensor("token_embd.weight");
    PKV_CHECK(t != nullptr, not_found, "{}: tensor 'token_embd.weight' is missing", f.path());
    const size_t E = hp.n_embd;
    const auto n = static_cast<int64_t>(tokens.size());
    std::exception_ptr error;
    // Rows are independent: a large batch (tens of thousands of rows) is gathered on every core.
#pragma omp parallel for schedule(static) if (n >= 1024)
    for (int64_t i = 0; i < n; ++i) {
        try {
            float* row = out + static_cast<size_t>(i) * E;
            f.dequantize_rows(*t, static_cast<uint64_t>(tokens[static_cast<size_t>(i)]), 1, row);
            // As the CPU pass: Eigen's `x *= scale`, one float product per value.
            if (hp.embd_scale > 0.0f)
                for (size_t c = 0; c < E; ++c) row[c] *= hp.embd_scale;
        } catch (...) {
#pragma omp critical(pkv_embed_rows)
            if (!error) error = std::current_exception();
        }
    }
    if (error) std::rethrow_exception(error);
}

void check_engine_batch(const GgufFile& f, const LlamaHparams& hp, const std::vector<std::vector<int32_t>>& sequences,
                        const ForwardOptions& opts, bool has_sink) {
    PKV_CHECK(opts.pos0 == 0 && !opts.kv_cache, invalid_argument,
              "{}: an engine batch starts every sequence at position 0 and takes no cache hook", f.path());
    PKV_CHECK(!opts.attention, unsupported, "{}: an engine batch takes no attention hook (LlamaModel::forward does)",
              f.path());
    PKV_CHECK(opts.layers.empty() || opts.layers.size() == hp.n_layer, invalid_argument,
              "{}: forward capture layer mask: expected {} entries (one per layer), got {}", f.path(), hp.n_layer,
              opts.layers.size());
    PKV_CHECK(!opts.capture || has_sink, invalid_argument, "{}: forward: capture requested without a layer sink",
              f.path());
    for (const auto& tokens : sequences) {
        PKV_CHECK(!tokens.empty() && tokens.size() <= hp.n_ctx_train, out_of_range,
                  "{}: forward of {} tokens: expected 1 to {} (context_length)", f.path(), tokens.size(),
                  hp.n_ctx_train);
        PKV_CHECK(hp.sliding_window == 0 || !hp.swa_layer.empty() || tokens.size() <= hp.sliding_window, unsupported,
                  "{}: forward of {} tokens: expected at most attention.sliding_window = {} (pkv attends to the "
                  "whole sequence)",
                  f.path(), tokens.size(), hp.sliding_window);
        for (size_t i = 0; i < tokens.size(); ++i)
            PKV_CHECK(tokens[i] >= 0 && static_cast<uint32_t>(tokens[i]) < hp.n_vocab, out_of_range,
                      "{}: token {} at position {}: expected an id in [0, {})", f.path(), tokens[i], i, hp.n_vocab);
    }
}

void check_finite_results(const GgufFile& f, const std::vector<ForwardResult>& results, size_t begin, size_t end,
                          int64_t sequence0, const char* why) {
    for (size_t i = begin; i < end; ++i) {
        const ForwardResult& r = results[i];
        const int64_t seq = sequence0 + static_cast<int64_t>(i - begin);
        for (size_t p = 0; p < r.nll.size(); ++p)
            PKV_CHECK(std::isfinite(r.nll[p]), data_loss, "{}: sequence {}: the loss at position {} is {} ({})",
                      f.path(), seq, p, r.nll[p], why);
        for (size_t j = 0; j < r.hidden.size(); ++j)
            PKV_CHECK(std::isfinite(r.hidden[j]), data_loss, "{}: sequence {}: hidden value {} is {} ({})", f.path(),
                      seq, j, r.hidden[j], why);
    }
}

}  // namespace pkv
