// The CUDA engine's device-resident KV cache (engine_sim_cache.h): per layer, the
// simulate_cache_batch_on_device calls that MethodCache's hook would make one head at a time.
#include "pkv/cuda/engine_sim_cache.h"

#include <algorithm>
#include <string>

#include "pkv/core/error.h"

namespace pkv::cuda {

namespace {

bool power_of_two(int d) { return d > 0 && (d & (d - 1)) == 0; }

}  // namespace

bool EngineSimCache::supports(const DeviceKvCache& c, const LlamaHparams& hp) {
    const int D = static_cast<int>(hp.head_dim);
    const bool pattern_ok = patternkv_on_device(D, c.params.patterns);
    return device_cache_method(c.params.method) && (!c.rotate || (power_of_two(D) && D <= 1024)) &&
           (c.params.method != KvMethod::patternkv || pattern_ok);
}

void EngineSimCache::check(const DeviceKvCache& c, const LlamaHparams& hp,
                           const std::vector<std::vector<int32_t>>& sequences, const std::string& path) {
    PKV_CHECK(supports(c, hp), unsupported,
              "{}: the CUDA engine does not simulate {}{} itself (head_dim {}): run the cache hook instead", path,
              kv_method_name(c.params.method), c.rotate ? " with rotation" : "", hp.head_dim);
    PKV_CHECK(c.keep_fp16.size() == hp.n_layer, invalid_argument,
              "{}: device cache: keep_fp16 has {} entries, expected {} (one per layer)", path, c.keep_fp16.size(),
              hp.n_layer);
    PKV_CHECK(c.prefill.size() == sequences.size(), invalid_argument,
              "{}: device cache: {} prefills for a batch of {} sequences: expected one per sequence", path,
              c.prefill.size(), sequences.size());
    for (size_t s = 0; s < sequences.size(); ++s)
        PKV_CHECK(c.prefill[s] >= 0 && c.prefill[s] <= static_cast<int64_t>(sequences[s].size()), invalid_argument,
                  "{}: device cache: sequence {}: prefill {} of {} tokens: expected 0 <= prefill <= n", path, s,
                  c.prefill[s], sequences[s].size());
    const size_t views = static_cast<size_t>(hp.n_layer) * hp.n_head_kv * 2;
    if (c.params.method != KvMethod::patternkv_table) {
        PKV_CHECK(c.tables.empty(), invalid_argument, "{}: device cache: {} table views for method {}: expected none",
                  path, c.tables.size(), kv_method_name(c.params.method));
        return;
    }
    PKV_CHECK(c.tables.size() == views, invalid_argument,
              "{}: device cache: {} table views: expected {} (layers {} x KV heads {} x K, V)", path, c.tables.size(),
              views, hp.n_layer, hp.n_head_kv);
    for (uint32_t l = 0; l < hp.n_layer; ++l) {
        if (c.keep_fp16[l]) continue;
        for (uint32_t i = 0; i < hp.n_head_kv * 2; ++i) {
            const TableHeadView& v = c.tables[static_cast<size_t>(l) * hp.n_head_kv * 2 + i];
            PKV_CHECK(v.patterns != nullptr && v.M >= 1, invalid_argument,
                      "{}: device cache: layer {} KV head {} {}: no patterns (M {}), and the layer is not kept in fp16",
                      path, l, i / 2, i % 2 ? "values" : "keys", v.M);
        }
    }
}

void EngineSimCache::begin_group(const DeviceKvCache& c, const PackedBatch& b, int64_t s_begin) {
    c_ = &c;
    plans_.clear();
    row0_.assign(b.row0.begin(), b.row0.end());
    n_.clear();
    prefill_.clear();
    for (int s = 0; s < b.n_seq(); ++s) {
        n_.push_back(b.row0[s + 1] - b.row0[s]);
        prefill_.push_back(c.prefill[static_cast<size_t>(s_begin + s)]);
    }
    bits_.assign(static_cast<size_t>(b.n_seq()) * 2, 0.0);
}

EngineSimCache::Planned& EngineSimCache::planned(int64_t ring, KvTensor tensor, int l) {
    const auto key = std::make_pair(ring, tensor == KvTensor::k ? 0 : 1);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    Planned p;
    SimBatch& batch = p.batch;
    const int H = static_cast<int>(hp_.n_head_kv), D = static_cast<int>(hp_.head_dim);
    batch.params = c_->params;
    batch.params.ring = 0;
    batch.params.table_k = batch.params.table_v = nullptr;
    batch.D = D;
    batch.rows = row0_.back();
    batch.row_stride = int64_t{H} * D;
    batch.rotate = c_->rotate;
    const bool table = c_->params.method == KvMethod::patternkv_table;
    for (int g = 0; g < H; ++g)
        for (size_t s = 0; s < n_.size(); ++s) {
            SimProblem q;
            q.row0 = row0_[s];
            q.col0 = int64_t{g} * D;
            q.n = n_[s];
            q.prefill = prefill_[s];
            q.ring = ring;
            q.tensor = tensor;
            q.table = table ? g : -1;
            batch.problems.push_back(q);
        }
    // The plan reads the pattern count (the same for every layer and head of a table) and
    // validates the views; layer() swaps in each layer's own.
    if (table)
        for (int g = 0; g < H; ++g)
            batch.tables.push_back(c_->tables[(static_cast<size_t>(l) * H + g) * 2 + (tensor == KvTensor::k ? 0 : 1)]);
    p.plan = plan_sim_batch(batch);
    return plans_.emplace(key, std::move(p)).first->second;
}

bool EngineSimCache::layer(int l, const float* d_k, const float* d_v, float* k_hat, float* v_hat, int32_t* k_flush,
                           int32_t* v_flush, SimCacheWorkspace& ws) {
    PKV_ASSERT(c_ != nullptr && l >= 0 && static_cast<uint32_t>(l) < hp_.n_layer);
    const int H = static_cast<int>(hp_.n_head_kv), D = static_cast<int>(hp_.head_dim);
    const int64_t ring = layer_window(hp_, static_cast<uint32_t>(l));
    const int n_seq = static_cast<int>(n_.size());
    if (c_->keep_fp16[static_cast<size_t>(l)] || c_->params.method == KvMethod::fp16) {
        for (int s = 0; s < n_seq; ++s) {
            const double b = static_cast<double>(H) * exact_bits(static_cast<double>(kept_tokens(n_[s], ring)) * D);
            bits_[static_cast<size_t>(s) * 2] += b;
            bits_[static_cast<size_t>(s) * 2 + 1] += b;
        }
        return false;
    }
    for (const KvTensor tensor : {KvTensor::k, KvTensor::v}) {
        Planned& p = planned(ring, tensor, l);
        const int t = tensor == KvTensor::k ? 0 : 1;
        if (!p.batch.tables.empty())
            for (int g = 0; g < H; ++g) p.batch.tables[g] = c_->tables[(static_cast<size_t>(l) * H + g) * 2 + t];
        try {
            simulate_cache_batch_on_device(p.batch, p.plan, t == 0 ? d_k : d_v, t == 0 ? k_hat : v_hat,
                                           t == 0 ? k_flush : v_flush, ws);
        } catch (const Error& e) {
            // The simulation names its problem (head g · sequences + sequence); say which layer.
            fail(e.code(), "layer {} {} ({} sequences per head): {}", l, t == 0 ? "keys" : "values", n_seq, e.what());
        }
        // Problem g · n_seq + s is head g of sequence s.
        for (size_t i = 0; i < p.plan.bits.size(); ++i)
            bits_[(i % static_cast<size_t>(n_seq)) * 2 + t] += p.plan.bits[i].total();
    }
    return true;
}

}  // namespace pkv::cuda
