// One method's attention through the runtime's packed cache, layer by layer; see eval_runtime.h.
#include "pkv/pipeline/eval_runtime.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "pkv/core/error.h"
#include "pkv/core/threads.h"
#include "pkv/model/ops.h"
#include "pkv/pipeline/eval_cache.h"
#include "pkv/runtime/packed_cache.h"
#include "pkv/runtime/pattern_table_reader.h"

namespace pkv {

namespace {

// What the refusal names: the methods and options the packed cache holds.
constexpr const char* kRuntimeHolds =
    "the packed cache holds fp16, kivi:B and patternkv-table:B:T (B 2, 3 or 4; post-RoPE keys, no rotation)";

// Why `spec` cannot run through the packed cache; empty when it can.
std::string runtime_refusal(const KvSpec& s) {
    switch (s.method) {
        case KvMethod::patternkv:
            return "online patternkv mines its patterns from each prompt; use a calibrated table (patternkv-table)";
        case KvMethod::q4_0:
        case KvMethod::q8_0:
        case KvMethod::fp8: return std::string(s.method_name) + " has no packed layout";
        default: break;
    }
    if (s.rotate) return "rotated heads (:rot / :rotv64) are not held";
    if (s.keys_pre) return "pre-RoPE keys (:pre) are not held (the cache holds keys after RoPE)";
    if (s.sinks != 0) return "exact sink tokens (:sinkN) are not held";
    if (s.outliers != 0) return "exact outliers (:outN) are not held";
    // patternkv-table:auto takes its width from the table: checked again once it is read.
    if (s.method != KvMethod::fp16 && !s.table_auto && s.bits != 2 && s.bits != 3 && s.bits != 4)
        return fmt::format("code width {} is not packed (expected 2, 3 or 4)", s.bits);
    if (s.method != KvMethod::fp16 && s.window % s.group != 0)
        return fmt::format("group {} does not divide window {} (a block holds whole key groups)", s.group, s.window);
    return {};
}

pkv_rt::CacheConfig layer_config(const KvSpec& spec, bool exact, const AttentionHookInput& in,
                                 const pkv_rt::PatternTable* table) {
    pkv_rt::CacheConfig c;
    c.method = exact        ? pkv_rt::CacheMethod::fp16
               : spec.table ? pkv_rt::CacheMethod::patternkv_table
                            : pkv_rt::CacheMethod::kivi;
    c.n_layer = 1;
    c.n_head = in.n_head;
    c.n_head_kv = in.n_head_kv;
    c.head_dim = in.head_dim;
    c.n_seq = 1;
    c.max_tokens = in.n_tokens;
    c.window = spec.window;
    c.group = spec.group;
    c.bits = exact ? 2 : spec.bits;  // an fp16 cache has no codes
    if (c.method == pkv_rt::CacheMethod::patternkv_table) {
        c.k_patterns = table->n_k_patterns();
        c.v_patterns = table->n_v_patterns();
    }
    return c;
}

// 16-byte aligned floats, as decode_attention_ref wants its query and output.
struct alignas(16) Quad {
    float f[4];
};

}  // namespace

void check_runtime_spec(const KvSpec& spec, const LlamaHparams& hp, const std::string& model_path) {
    const std::string why = runtime_refusal(spec);
    PKV_CHECK(why.empty(), unsupported, "--kv '{}': --engine runtime cannot run it: {} ({})", spec.text, why,
              kRuntimeHolds);
    // A sliding_window without local layers only caps the length (every layer attends to all of it).
    PKV_CHECK(!has_local_layers(hp), unsupported,
              "--kv '{}': --engine runtime cannot run {}: it has sliding-window layers (window {}), which the packed "
              "cache does not hold (it keeps every token)",
              spec.text, model_path, hp.sliding_window);
}

std::shared_ptr<const pkv_rt::PatternTable> open_runtime_table(const KvSpec& spec, const LlamaHparams& hp,
                                                               const std::string& model_sha256) {
    pkv_rt::RuntimeDecl decl;
    decl.model_sha256 = model_sha256;
    decl.arch = hp.arch;
    decl.n_layer = static_cast<int>(hp.n_layer);
    decl.n_head = static_cast<int>(hp.n_head);
    decl.n_head_kv = static_cast<int>(hp.n_head_kv);
    decl.head_dim = static_cast<int>(hp.head_dim);
    decl.key_basis = pkv_rt::KeyBasis::post_rope;
    decl.key_dim_order =
        hp.rope_layout == RopeLayout::half_split ? pkv_rt::DimOrder::hf_half_split : pkv_rt::DimOrder::gguf_interleaved;
    decl.rotation = pkv_rt::Rotation::none;
    decl.bits = spec.bits;
    try {
        return std::make_shared<const pkv_rt::PatternTable>(pkv_rt::PatternTable::open(spec.table_path, decl));
    } catch (const pkv_rt::TableError& e) {
        fail(ErrorCode::invalid_argument, "--kv '{}': --engine runtime: {}", spec.text, e.what());
    }
}

RuntimeAttention::RuntimeAttention(const KvSpec& spec, std::vector<bool> keep_fp16, const LlamaHparams& hp,
                                   std::shared_ptr<const pkv_rt::PatternTable> table)
    : spec_(spec), keep_(std::move(keep_fp16)), n_head_kv_(static_cast<int>(hp.n_head_kv)), table_(std::move(table)) {
    PKV_ASSERT(keep_.size() == hp.n_layer);
    PKV_ASSERT(!spec_.table || table_);
    bits_.assign(static_cast<size_t>(hp.n_layer) * hp.n_head_kv * 2, 0.0);
}

RuntimeAttention::~RuntimeAttention() = default;

void RuntimeAttention::begin_sequence(int n, int64_t prefill) {
    PKV_ASSERT(n >= 1 && prefill >= 0 && prefill <= n);
    n_ = n;
    prefill_ = prefill;
    std::fill(bits_.begin(), bits_.end(), 0.0);
}

AttentionHook RuntimeAttention::hook() {
    return [this](const AttentionHookInput& in) { run_layer(in); };
}

double RuntimeAttention::key_bits() const { return sum_tensor_bits(bits_, 0); }
double RuntimeAttention::value_bits() const { return sum_tensor_bits(bits_, 1); }

void RuntimeAttention::run_layer(const AttentionHookInput& in) {
    PKV_ASSERT(in.n_tokens == n_ && in.n_head_kv == n_head_kv_ && in.window == 0);
    PKV_ASSERT(in.layer >= 0 && static_cast<size_t>(in.layer) < keep_.size());
    const int HKV = in.n_head_kv, P = static_cast<int>(prefill_);
    // Tasks: each KV head's cache and decode steps (the long ones, first), then the prompt's
    // queries in row blocks; workers take the next task until none is left.
    constexpr int kPromptRows = 64;
    const int n_tasks = HKV + (P + kPromptRows - 1) / kPromptRows;
    const int workers = std::max(1, std::min(omp_get_max_threads(), n_tasks));
    std::atomic<int> next{0};
    each_in_thread(static_cast<size_t>(workers), [&](size_t) {
        for (int task = next++; task < n_tasks; task = next++) {
            if (task < HKV) {
                run_head(in, task);
                continue;
            }
            // The prompt's queries see exact K/V: none of it is quantized before step P.
            const int r0 = (task - HKV) * kPromptRows, r1 = std::min(P, r0 + kPromptRows);
            ops::RowMatrix scratch;
            ops::causal_attention_rows(in.q, in.k, in.v, in.n_head, HKV, in.head_dim, in.out, r0, r1, scratch, 256,
                                       in.kq_scale, 0);
        }
    });
}

void RuntimeAttention::run_head(const AttentionHookInput& in, int g) {
    const int n = in.n_tokens, HKV = in.n_head_kv, D = in.head_dim, gs = in.n_head / HKV;
    const int64_t QD = int64_t{in.n_head} * D, KD = int64_t{HKV} * D, GD = int64_t{gs} * D;
    const int P = static_cast<int>(prefill_);
    const bool exact = keep_[static_cast<size_t>(in.layer)] || spec_.method == KvMethod::fp16;
    try {
        // One cache per KV head (its gs query heads are contiguous in a query row), so heads
        // run on their own threads.
        pkv_rt::CacheConfig c = layer_config(spec_, exact, in, table_.get());
        c.n_head = gs;
        c.n_head_kv = 1;
        pkv_rt::PackedCache cache(c);
        if (!exact && spec_.table) {
            const pkv_rt::HeadView v = table_->head(in.layer, g);
            cache.set_patterns(0, 0, pkv_rt::KvPart::k, v.k_patterns, v.n_k_patterns, v.k_clip, 0.0, v.assign);
            cache.set_patterns(0, 0, pkv_rt::KvPart::v, v.v_patterns, v.n_v_patterns, v.v_clip,
                               static_cast<double>(v.v_gate_z), v.assign);
        }
        std::vector<float> k(static_cast<size_t>(P) * D), v(k.size());
        for (int i = 0; i < P; ++i) {
            std::copy_n(in.k + i * KD + int64_t{g} * D, D, k.data() + int64_t{i} * D);
            std::copy_n(in.v + i * KD + int64_t{g} * D, D, v.data() + int64_t{i} * D);
        }
        cache.append(0, 0, k.data(), v.data(), P);
        cache.end_prefill(0);
        // decode_attention_ref scales by 1/sqrt(D): a model's own scale goes into the query.
        const float q_mul = in.kq_scale > 0.0f ? in.kq_scale * std::sqrt(static_cast<float>(D)) : 1.0f;
        std::vector<Quad> q_buf(static_cast<size_t>((GD + 3) / 4)), out_buf(q_buf.size());
        float* q = q_buf.front().f;
        float* out = out_buf.front().f;
        for (int t = P; t < n; ++t) {
            cache.append(0, 0, in.k + t * KD + int64_t{g} * D, in.v + t * KD + int64_t{g} * D, 1);
            const float* qt = in.q + t * QD + g * GD;
            for (int64_t i = 0; i < GD; ++i) q[i] = q_mul == 1.0f ? qt[i] : qt[i] * q_mul;
            cache.decode_attention_ref(0, q, 1, out);
            std::copy_n(out, GD, in.out + t * QD + g * GD);
        }
        cache.flush(0);  // the final state, as the simulation's bits count it
        for (int p = 0; p < 2; ++p)
            bits_[(static_cast<size_t>(in.layer) * HKV + g) * 2 + p] =
                cache.counted_bits(0, 0, 0, static_cast<pkv_rt::KvPart>(p)).total();
    } catch (const pkv_rt::CacheError& e) {
        fail(ErrorCode::invalid_argument, "--kv '{}': --engine runtime, layer {} KV head {}: {}", spec_.text, in.layer,
             g, e.what());
    }
}

}  // namespace pkv
