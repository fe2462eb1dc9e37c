// Parity of each CUDA forward kernel (pkv/cuda/forward_ops.h) with the CPU function it
// twins. Tolerances, per element:
//   rms_norm              |gpu - cpu| <= 1e-6 · |cpu| + 1e-7 (sums in double on both sides;
//                         the rounding of the product is the only difference)
//   rope_apply            bit for bit (same float table, products rounded one by one)
//   swiglu / geglu_tanh   |gpu - cpu| <= 4e-6 · |cpu| + 1e-7 (expf/tanhf against Eigen's)
//   split_qkv             bit for bit (one float sum per value, or a copy)
//   gated_activation_to   bit for bit against the float kernel, then rounded on the host
//   causal_attention      f32: |gpu - cpu| <= 2e-5 · (largest |v|) (float sums in another
//                         order). fp16 / bf16 (tensor cores): against the CPU function on
//                         q, k, v rounded to the type first, |gpu - cpu| <= (2u + 2e-5) ·
//                         (largest |v|), u the type's unit roundoff (2^-11, 2^-8): the kernel
//                         also rounds the probabilities (relative error <= u each) before
//                         the product with V, while their sum stays in float.
//   logit_row_stats       |nll gpu - nll cpu| <= 2e-5 nats; argmax equal
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "catch.h"
#include "cuda_test_util.h"
#include "pkv/core/half.h"
#include "pkv/core/rope.h"
#include "pkv/cuda/device.h"
#include "pkv/cuda/forward_ops.h"
#include "pkv/model/engine_plan.h"
#include "pkv/model/ops.h"

namespace {

#define PKV_REQUIRE_GPU_FWD() \
    if (pkv::cuda::device_count() == 0) PKV_SKIP("no CUDA device: GPU forward kernel parity test not run")

std::vector<float> normal(size_t n, uint32_t seed, float sd = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, sd);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

}  // namespace

TEST_CASE("cuda rms_norm twins ops::rms_norm", "[cuda][forward][parity]") {
    PKV_REQUIRE_GPU_FWD();
    for (int cols : {8, 64, 100, 576, 4096}) {
        CAPTURE(cols);
        const int64_t rows = 37;
        const auto x = normal(static_cast<size_t>(rows) * cols, 1, 3.0f);
        const auto w = normal(static_cast<size_t>(cols), 2);
        std::vector<float> ref(x.size()), gpu(x.size());
        pkv::ops::rms_norm(x.data(), rows, cols, w.data(), 1e-6f, ref.data());
        pkv::cuda::rms_norm(x.data(), rows, cols, w.data(), 1e-6f, gpu.data());
        for (size_t i = 0; i < x.size(); ++i) REQUIRE(std::fabs(gpu[i] - ref[i]) <= 1e-6f * std::fabs(ref[i]) + 1e-7f);
    }
}

TEST_CASE("cuda rope_apply twins pkv::rope_apply to one rounding", "[cuda][forward][parity]") {
    PKV_REQUIRE_GPU_FWD();
    for (auto layout : {pkv::RopeLayout::interleaved, pkv::RopeLayout::half_split}) {
        pkv::RopeParams p;
        p.n_rot = 24;  // partial rotation of head_dim 32
        p.base = 500000.0;
        p.freq_scale = 0.5;
        p.layout = layout;
        p.freq_factors.assign(12, 1.0f);
        for (int i = 6; i < 12; ++i) p.freq_factors[i] = 1.0f + 0.5f * i;
        const int heads = 3, hd = 32, n = 300;
        const pkv::RopeTable table = pkv::rope_table(p, 400);
        // Two sequences packed: positions 0..199 and 0..99.
        std::vector<int32_t> pos(n);
        for (int r = 0; r < n; ++r) pos[r] = r < 200 ? r : r - 200;
        const auto x = normal(static_cast<size_t>(n) * heads * hd, 3, 2.0f);
        std::vector<float> ref = x, gpu = x;
        pkv::rope_apply(ref.data(), 200, heads, hd, table, 0);
        pkv::rope_apply(ref.data() + 200 * heads * hd, 100, heads, hd, table, 0);
        pkv::cuda::rope_apply(gpu.data(), n, heads, hd, table, pos.data());
        // The kernel rounds each product; a host compiler may fuse one product into the
        // subtraction (an FMA), so the two differ by at most a rounding of the larger product.
        for (size_t r = 0; r < ref.size() / hd; ++r) {
            float m = 0.0f;
            for (int c = 0; c < hd; ++c) m = std::max(m, std::fabs(x[r * hd + c]));
            for (int c = 0; c < hd; ++c) REQUIRE(std::fabs(gpu[r * hd + c] - ref[r * hd + c]) <= 2.4e-7f * m);
        }
    }
}

TEST_CASE("cuda split_qkv twins split_qkv_ref", "[cuda][forward][parity]") {
    PKV_REQUIRE_GPU_FWD();
    // The 8B shape's widths over a few rows, and an odd one (head_dim 18, one KV head).
    for (const auto& [qd, kd, rows] : {std::array<int, 3>{4096, 1024, 37}, std::array<int, 3>{54, 18, 1001}}) {
        CAPTURE(qd, kd, rows);
        const auto R = static_cast<size_t>(rows);
        const auto x = normal(R * (qd + 2 * kd), 21, 3.0f);
        const auto bq = normal(static_cast<size_t>(qd), 22), bk = normal(static_cast<size_t>(kd), 23),
                   bv = normal(static_cast<size_t>(kd), 24);
        for (const bool bias : {true, false}) {
            CAPTURE(bias);
            std::vector<float> q(R * qd), k(R * kd), v(R * kd), gq = q, gk = k, gv = v;
            const float* b[3] = {bias ? bq.data() : nullptr, bias ? bk.data() : nullptr, bias ? bv.data() : nullptr};
            pkv::split_qkv_ref(x.data(), rows, qd, kd, b[0], b[1], b[2], q.data(), k.data(), v.data());
            pkv::cuda::split_qkv(x.data(), rows, qd, kd, b[0], b[1], b[2], gq.data(), gk.data(), gv.data());
            CHECK(gq == q);
            CHECK(gk == k);
            CHECK(gv == v);
        }
    }
}

TEST_CASE("cuda gated_activation_to rounds the float kernels' values", "[cuda][forward][parity]") {
    PKV_REQUIRE_GPU_FWD();
    const size_t n = 50021;
    const auto g = normal(n, 6, 4.0f), u = normal(n, 7);
    for (const bool gelu : {false, true})
        for (const pkv::WeightType type : {pkv::WeightType::bf16, pkv::WeightType::fp16}) {
            CAPTURE(gelu, pkv::weight_type_name(type));
            std::vector<float> f = g;
            if (gelu) pkv::cuda::geglu_tanh_inplace(f.data(), u.data(), static_cast<int64_t>(n));
            else pkv::cuda::swiglu_inplace(f.data(), u.data(), static_cast<int64_t>(n));
            std::vector<uint16_t> want(n), got(n);
            if (type == pkv::WeightType::bf16) pkv::float_to_bf16_n(f.data(), want.data(), n);
            else pkv::float_to_half_n(f.data(), want.data(), n);
            pkv::cuda::gated_activation_to(g.data(), u.data(), static_cast<int64_t>(n), gelu, type, got.data());
            CHECK(got == want);
        }
}

TEST_CASE("cuda swiglu and geglu_tanh twin the ops", "[cuda][forward][parity]") {
    PKV_REQUIRE_GPU_FWD();
    const size_t n = 100003;
    const auto g = normal(n, 4, 4.0f), u = normal(n, 5);
    std::vector<float> ref = g, gpu = g;
    pkv::ops::swiglu_inplace(ref.data(), u.data(), static_cast<int64_t>(n));
    pkv::cuda::swiglu_inplace(gpu.data(), u.data(), static_cast<int64_t>(n));
    // expf on the device and Eigen's vectorised exp differ by a few units in the last place; near
    // zero (g far below 0) that is a few 1e-7 absolute.
    for (size_t i = 0; i < n; ++i) REQUIRE(std::fabs(gpu[i] - ref[i]) <= 4e-6f * std::fabs(ref[i]) + 1e-6f);
    ref = g, gpu = g;
    pkv::ops::geglu_tanh_inplace(ref.data(), u.data(), static_cast<int64_t>(n));
    pkv::cuda::geglu_tanh_inplace(gpu.data(), u.data(), static_cast<int64_t>(n));
    // GELU(g)·u = 0.5·g·(1 + tanh(z))·u: where tanh saturates towards -1 the sum cancels, and a few
    // units in the last place of tanh (about 1.2e-7 each, relative to 1) become absolute errors
    // scaled by |0.5·g·u|; four of them are allowed on top of the bound above.
    double worst = 0.0;
    for (size_t i = 0; i < n; ++i) {
        const float bound = 4e-6f * std::fabs(ref[i]) + 4.8e-7f * std::fabs(0.5f * g[i] * u[i]) + 1e-6f;
        worst = std::max(worst, static_cast<double>(std::fabs(gpu[i] - ref[i]) / bound));
    }
    std::fprintf(stderr, "measured: geglu_tanh worst error %.3g of its bound\n", worst);
    REQUIRE(worst <= 1.0);
}

TEST_CASE("cuda causal_attention twins ops::causal_attention_rows per sequence", "[cuda][forward][parity]") {
    PKV_REQUIRE_GPU_FWD();
    struct Case {
        int n_head, n_head_kv, head_dim, window;
        float scale;
    };
    // Groups of 1 to 8 query heads (more than a block's four: two blocks per KV head), head_dim
    // padded to 64, 128 and 256, and 18 (not a multiple of 4: no vector loads).
    const Case cases[] = {{4, 2, 16, 0, 0.0f},  {8, 1, 64, 0, 0.0f},   {4, 4, 80, 9, 0.0f}, {2, 1, 256, 0, 0.0625f},
                          {6, 3, 12, 33, 0.3f}, {4, 1, 128, 40, 0.0f}, {3, 1, 18, 0, 0.0f}};
    const std::vector<int> lengths = {1, 70, 16, 129, 33};
    int rows = 0;
    for (int n : lengths) rows += n;
    for (const pkv::WeightType math : {pkv::WeightType::f32, pkv::WeightType::fp16, pkv::WeightType::bf16}) {
        for (const Case& c : cases) {
            CAPTURE(pkv::weight_type_name(math), c.n_head, c.n_head_kv, c.head_dim, c.window, c.scale);
            const int qd = c.n_head * c.head_dim, kd = c.n_head_kv * c.head_dim;
            const auto q = normal(static_cast<size_t>(rows) * qd, 6, 2.0f);
            const auto k = normal(static_cast<size_t>(rows) * kd, 7, 2.0f);
            const auto v = normal(static_cast<size_t>(rows) * kd, 8);
            // The reference sees the operands the tensor cores see.
            const auto qr = pkv_test::rounded(q, math), kr = pkv_test::rounded(k, math),
                       vr = pkv_test::rounded(v, math);
            std::vector<float> ref(q.size()), gpu(q.size());
            pkv::ops::RowMatrix scratch;
            int r0 = 0;
            for (int n : lengths) {
                pkv::ops::causal_attention_rows(qr.data() + int64_t{r0} * qd, kr.data() + int64_t{r0} * kd,
                                                vr.data() + int64_t{r0} * kd, c.n_head, c.n_head_kv, c.head_dim,
                                                ref.data() + int64_t{r0} * qd, 0, n, scratch, 32, c.scale, c.window);
                r0 += n;
            }
            pkv::cuda::causal_attention(q.data(), k.data(), v.data(), lengths, c.n_head, c.n_head_kv, c.head_dim,
                                        gpu.data(), c.scale, c.window, 0, math);
            float vmax = 0.0f;
            for (float x : v) vmax = std::max(vmax, std::fabs(x));
            double worst = 0.0;
            for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, double(std::fabs(gpu[i] - ref[i])));
            const double tol = (2.0 * pkv_test::unit_roundoff(math) + 2e-5) * vmax;
            std::fprintf(stderr, "measured: causal_attention %s heads %d/%d head_dim %d worst %.3g of %.3g\n",
                         pkv::weight_type_name(math), c.n_head, c.n_head_kv, c.head_dim, worst, tol);
            CHECK(worst <= tol);
        }
    }
}

TEST_CASE("cuda logit_row_stats twins ops::LogitRowStats", "[cuda][forward][parity]") {
    PKV_REQUIRE_GPU_FWD();
    const int64_t rows = 19, V = 5000;
    auto logits = normal(static_cast<size_t>(rows * V), 9, 3.0f);
    logits[3 * V + 4000] = logits[3 * V + 17] = 40.0f;  // a tie across chunks: the first column wins
    std::vector<int32_t> targets(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) targets[static_cast<size_t>(r)] = static_cast<int32_t>((r * 263) % V);
    for (int64_t chunk : {int64_t{5000}, int64_t{1024}, int64_t{777}}) {
        CAPTURE(chunk);
        std::vector<float> nll(static_cast<size_t>(rows));
        std::vector<int32_t> amax(static_cast<size_t>(rows));
        pkv::cuda::logit_row_stats(logits.data(), rows, V, chunk, targets.data(), nll.data(), amax.data());
        for (int64_t r = 0; r < rows; ++r) {
            pkv::ops::LogitRowStats st;
            st.add_block(logits.data() + r * V, V, 0, targets[static_cast<size_t>(r)]);
            CHECK(std::fabs(nll[static_cast<size_t>(r)] - st.nll()) <= 2e-5);
            CHECK(amax[static_cast<size_t>(r)] == st.argmax);
        }
        CHECK(amax[3] == 17);
    }
}
