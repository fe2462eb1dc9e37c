// run_packed_cache_hook: the host half of a batched engine's cache hook hands every
// (sequence, KV head, tensor) its own rows and lays the returned caches out per packed row.
#include <map>
#include <mutex>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/model/engine_cache.h"

using namespace pkv;

namespace {

// Element (row, column) of a [rows, KD] tensor t (0: k_pre, 1: k_post, 2: v): distinct everywhere.
float value_at(int t, int64_t row, int64_t col) { return static_cast<float>(1000 * t + 10 * row) + 0.5f * col; }

struct Call {
    int n = 0;
    std::vector<float> x, pre;
};

}  // namespace

TEST_CASE("packed cache hook: one call per (sequence, head, tensor) with its rows, caches laid out per row",
          "[model][engine][cache]") {
    const std::vector<int64_t> row0 = {0, 3, 4, 8};  // sequences of 3, 1 and 4 rows
    const int HKV = 2, HD = 2, KD = HKV * HD, rows = 8, layer = 5, offset = 10;
    std::vector<float> t[3];
    for (int k = 0; k < 3; ++k) {
        t[k].resize(rows * KD);
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < KD; ++c) t[k][r * KD + c] = value_at(k, r, c);
    }
    std::map<std::tuple<int, int, bool>, Call> calls;
    std::mutex mu;
    const BatchCacheHook hook = [&](int seq, const KvHookInput& in, KvHookOutput& out) {
        CHECK(in.layer == layer);
        CHECK(in.head_dim == HD);
        CHECK((in.k_pre == nullptr) == in.value);
        Call c;
        c.n = in.n_tokens;
        c.x.assign(in.x, in.x + in.n_tokens * HD);
        if (in.k_pre) c.pre.assign(in.k_pre, in.k_pre + in.n_tokens * HD);
        {
            std::lock_guard<std::mutex> lock(mu);
            calls[{seq, in.kv_head, in.value}] = c;
        }
        if (seq == offset + 1 && in.kv_head == 0) return;  // this head stays exact
        out.recon.resize(static_cast<size_t>(in.n_tokens) * HD);
        out.flush_step.resize(static_cast<size_t>(in.n_tokens));
        for (int i = 0; i < in.n_tokens * HD; ++i) out.recon[i] = -in.x[i];
        for (int i = 0; i < in.n_tokens; ++i) out.flush_step[i] = 100 * seq + i;
    };
    PackedLayerCache pc;
    run_packed_cache_hook(hook, layer, row0, offset, HKV, HD, t[0].data(), t[1].data(), t[2].data(), pc);

    REQUIRE(calls.size() == 3 * HKV * 2);
    for (int s = 0; s < 3; ++s)
        for (int g = 0; g < HKV; ++g)
            for (bool value : {false, true}) {
                const Call& c = calls.at({offset + s, g, value});
                REQUIRE(c.n == row0[s + 1] - row0[s]);
                for (int i = 0; i < c.n; ++i)
                    for (int d = 0; d < HD; ++d) {
                        const int64_t r = row0[s] + i, col = g * HD + d;
                        CHECK(c.x[i * HD + d] == value_at(value ? 2 : 1, r, col));
                        if (!value) CHECK(c.pre[i * HD + d] == value_at(0, r, col));
                    }
                const bool exact = s == 1 && g == 0;
                for (int i = 0; i < c.n; ++i) {
                    const int64_t r = row0[s] + i;
                    const auto& flush = value ? pc.v_flush : pc.k_flush;
                    const auto& hat = value ? pc.v_hat : pc.k_hat;
                    CHECK(flush[g * rows + r] == (exact ? kNeverFlushed : 100 * (offset + s) + i));
                    for (int d = 0; d < HD; ++d)
                        CHECK(hat[r * KD + g * HD + d] == (exact ? 0.0f : -value_at(value ? 2 : 1, r, g * HD + d)));
                }
            }
}

TEST_CASE("packed cache hook: wrong sizes and failing hooks", "[model][engine][cache]") {
    const std::vector<int64_t> row0 = {0, 2, 5};
    std::vector<float> x(5 * 4, 1.0f);
    PackedLayerCache pc;
    const BatchCacheHook short_flush = [](int seq, const KvHookInput& in, KvHookOutput& out) {
        if (seq != 1 || in.value || in.kv_head != 1) return;
        out.recon.assign(static_cast<size_t>(in.n_tokens * in.head_dim), 0.0f);
        out.flush_step.assign(2, 0);
    };
    try {
        run_packed_cache_hook(short_flush, 3, row0, 0, 2, 2, x.data(), x.data(), x.data(), pc);
        FAIL("expected an error");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::internal);
        CHECK_THAT(e.what(), ContainsSubstring("sequence 1 layer 3 KV head 1 keys: expected recon of 6 and "
                                               "flush_step of 3 values, got 6 and 2"));
    }
    const BatchCacheHook throws = [](int seq, const KvHookInput&, KvHookOutput&) {
        if (seq == 0) throw std::runtime_error("hook failed");
    };
    CHECK_THROWS_WITH(run_packed_cache_hook(throws, 0, row0, 0, 2, 2, x.data(), x.data(), x.data(), pc), "hook failed");
}
