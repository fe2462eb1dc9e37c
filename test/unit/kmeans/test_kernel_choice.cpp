// The CUDA assigner's kernel choice (pkv/kmeans/kernel_choice.h), checked without a
// device: every boundary of k, d, the compute capability and the options, as the
// assigner launches today.
#include <string>

#include "catch.h"
#include "pkv/kmeans/kernel_choice.h"

using pkv::kmeans_gpu::Choice;
using pkv::kmeans_gpu::choose_kernel;
using pkv::kmeans_gpu::Kernel;
using pkv::kmeans_gpu::PassShape;

namespace {

// fp16 points, a pass with sums, partials that fit shared memory, an sm_90a build on a
// compute capability 9.0 device, default options.
PassShape hopper(int d, int k) {
    PassShape s;
    s.d = d;
    s.k = k;
    s.rounded = true;
    s.sums = true;
    s.smem_sums = true;
    s.cc_major = 9;
    s.cc_minor = 0;
    s.sm90a_built = true;
    return s;
}

PassShape ampere(int d, int k) {
    PassShape s = hopper(d, k);
    s.cc_major = 8;
    return s;
}

std::string name_of(const PassShape& s) { return choose_kernel(s).name; }

}  // namespace

TEST_CASE("kernel choice: the defaults on a cc 9.0 device, by k", "[kmeans][kernel_choice]") {
    // d = 128: fused up to 16, one-hot on wgmma up to 64, one-hot to 95, wide from
    // wide_min_k = 96, its wgmma form from 256.
    const Choice c16 = choose_kernel(hopper(128, 16));
    CHECK(c16.kernel == Kernel::fused);
    CHECK(std::string(c16.name) == "fused");
    CHECK(c16.tensor_cores);
    CHECK_FALSE(c16.sorted);
    CHECK(c16.group_tiles == 16);
    CHECK(choose_kernel(hopper(128, 1)).kernel == Kernel::fused);

    const Choice c17 = choose_kernel(hopper(128, 17));
    CHECK(c17.kernel == Kernel::onehot_wgmma);
    CHECK(std::string(c17.name) == "onehot-wgmma");
    CHECK(c17.group_tiles == 16);
    CHECK_FALSE(c17.sorted);
    CHECK(choose_kernel(hopper(128, 64)).kernel == Kernel::onehot_wgmma);

    const Choice c65 = choose_kernel(hopper(128, 65));
    CHECK(c65.kernel == Kernel::onehot);
    CHECK(std::string(c65.name) == "onehot");
    CHECK(c65.group_tiles == 32);
    CHECK_FALSE(c65.sorted);
    CHECK(choose_kernel(hopper(128, 95)).kernel == Kernel::onehot);

    const Choice c96 = choose_kernel(hopper(128, 96));
    CHECK(c96.kernel == Kernel::wide);
    CHECK(std::string(c96.name) == "wide+sorted");
    CHECK(c96.sorted);
    CHECK(c96.group_tiles == 1);
    CHECK(c96.wide_chunk == 64);
    CHECK(name_of(hopper(128, 255)) == "wide+sorted");

    const Choice c256 = choose_kernel(hopper(128, 256));
    CHECK(c256.kernel == Kernel::wgmma);
    CHECK(std::string(c256.name) == "wgmma+sorted");
    CHECK(c256.sorted);
    CHECK(c256.wide_chunk == 128);  // d > 64
    CHECK(name_of(hopper(128, 1024)) == "wgmma+sorted");
    CHECK(choose_kernel(hopper(64, 256)).wide_chunk == 64);  // d <= 64
    CHECK(choose_kernel(hopper(72, 256)).wide_chunk == 128);
}

TEST_CASE("kernel choice: the fused kernel's k limit follows d", "[kmeans][kernel_choice]") {
    CHECK(pkv::kmeans_gpu::fused_max_k(64) == 32);
    CHECK(pkv::kmeans_gpu::fused_max_k(72) == 16);
    CHECK(choose_kernel(hopper(64, 32)).kernel == Kernel::fused);
    CHECK(choose_kernel(hopper(64, 33)).kernel == Kernel::onehot_wgmma);
    CHECK(choose_kernel(hopper(40, 32)).kernel == Kernel::fused);
    CHECK(choose_kernel(hopper(72, 16)).kernel == Kernel::fused);
    CHECK(choose_kernel(hopper(72, 17)).kernel == Kernel::onehot_wgmma);
    CHECK(choose_kernel(ampere(64, 32)).kernel == Kernel::fused);
    CHECK(choose_kernel(ampere(64, 33)).kernel == Kernel::onehot);
}

TEST_CASE("kernel choice: without wgmma the one-hot kernel runs on mma.sync", "[kmeans][kernel_choice]") {
    // Compute capability other than 9.0, a build without sm_90a, or the option off.
    PassShape no_build = hopper(128, 17);
    no_build.sm90a_built = false;
    PassShape no_option = hopper(128, 17);
    no_option.wgmma = false;
    PassShape blackwell = hopper(128, 17);
    blackwell.cc_major = 10;
    PassShape cc91 = hopper(128, 17);
    cc91.cc_minor = 1;
    for (const PassShape& s : {ampere(128, 17), no_build, no_option, blackwell, cc91}) {
        const Choice c = choose_kernel(s);
        CHECK(c.kernel == Kernel::onehot);
        CHECK(c.group_tiles == 8);
    }
    // The one-hot kernel's groups: 8 tiles up to k = 32, 16 up to 64, then 32.
    CHECK(choose_kernel(ampere(128, 32)).group_tiles == 8);
    CHECK(choose_kernel(ampere(128, 33)).group_tiles == 16);
    CHECK(choose_kernel(ampere(128, 64)).group_tiles == 16);
    CHECK(choose_kernel(ampere(128, 65)).group_tiles == 32);
    CHECK(choose_kernel(ampere(128, 16)).kernel == Kernel::fused);
    // The wide kernel stays on mma.sync, chunks of 64.
    const Choice w = choose_kernel(ampere(128, 256));
    CHECK(w.kernel == Kernel::wide);
    CHECK(std::string(w.name) == "wide+sorted");
    CHECK(w.wide_chunk == 64);
    PassShape off = hopper(128, 1024);
    off.wgmma = false;
    CHECK(name_of(off) == "wide+sorted");
    CHECK(pkv::kmeans_gpu::wgmma_arch(9, 0, true));
    CHECK_FALSE(pkv::kmeans_gpu::wgmma_arch(9, 0, false));
    CHECK_FALSE(pkv::kmeans_gpu::wgmma_arch(8, 9, true));
}

TEST_CASE("kernel choice: a pass without sums", "[kmeans][kernel_choice]") {
    const auto no_sums = [](int d, int k) {
        PassShape s = hopper(d, k);
        s.sums = false;
        return choose_kernel(s);
    };
    CHECK(no_sums(128, 16).kernel == Kernel::fused);
    CHECK(no_sums(128, 16).group_tiles == 1);
    // The one-hot kernel on wgmma needs sums: mma.sync assigns.
    CHECK(no_sums(128, 17).kernel == Kernel::onehot);
    CHECK(no_sums(128, 64).kernel == Kernel::onehot);
    CHECK(no_sums(128, 64).group_tiles == 1);
    const Choice w = no_sums(128, 96);
    CHECK(w.kernel == Kernel::wide);
    CHECK_FALSE(w.sorted);
    CHECK(std::string(w.name) == "wide");
    CHECK(std::string(no_sums(128, 256).name) == "wgmma");
    PassShape general = hopper(128, 16);
    general.sums = false;
    general.onehot_sums = false;
    general.smem_sums = false;
    CHECK(name_of(general) == "mma");
}

TEST_CASE("kernel choice: the options turn kernels off", "[kmeans][kernel_choice]") {
    PassShape s = hopper(128, 16);
    s.fused_small_k = false;
    CHECK(choose_kernel(s).kernel == Kernel::onehot_wgmma);
    s.cc_major = 8;
    CHECK(choose_kernel(s).kernel == Kernel::onehot);
    CHECK(choose_kernel(s).group_tiles == 8);

    // onehot_sums = false: the general kernel, its sums in shared memory or sorted.
    s = hopper(128, 16);
    s.onehot_sums = false;
    CHECK(choose_kernel(s).kernel == Kernel::mma);
    CHECK(name_of(s) == "mma");
    CHECK(choose_kernel(s).group_tiles == 1);
    s.smem_sums = false;
    CHECK(name_of(s) == "mma+sorted");
    CHECK(choose_kernel(s).sorted);

    // wide_assign = false: the one-hot kernel up to its k limit of 128, then the general one.
    s = hopper(128, 128);
    s.wide_assign = false;
    CHECK(choose_kernel(s).kernel == Kernel::onehot);
    CHECK(choose_kernel(s).group_tiles == 32);
    s.k = 129;
    CHECK(name_of(s) == "mma");
    s.k = 256;
    s.smem_sums = false;
    CHECK(name_of(s) == "mma+sorted");

    // wide_min_k moves the wide kernel's start.
    s = hopper(128, 64);
    s.wide_min_k = 64;
    CHECK(name_of(s) == "wide+sorted");
    s.k = 63;
    CHECK(choose_kernel(s).kernel == Kernel::onehot_wgmma);
    s.wide_min_k = 8;
    s.k = 16;  // below the fused limit, but the wide kernel comes first
    CHECK(choose_kernel(s).kernel == Kernel::wide);
    s = hopper(128, 150);
    s.wide_min_k = 200;
    CHECK(name_of(s) == "mma");
    s.smem_sums = false;
    CHECK(name_of(s) == "mma+sorted");

    // wide_chunk set: taken as it is.
    s = hopper(128, 256);
    s.wide_chunk = 64;
    CHECK(choose_kernel(s).wide_chunk == 64);
    s = ampere(64, 128);
    s.wide_chunk = 128;
    CHECK(choose_kernel(s).wide_chunk == 128);
    CHECK(choose_kernel(s).kernel == Kernel::wide);
}

TEST_CASE("kernel choice: d and the input precision", "[kmeans][kernel_choice]") {
    // The staged kernels need 32 < d <= 128, d a multiple of 8; other d up to 128 take
    // the general kernel, larger d and fp32 input the FMA kernel.
    for (int d : {8, 16, 32, 33, 100, 127}) {
        INFO("d = " << d);
        const Choice c = choose_kernel(hopper(d, 16));
        CHECK(c.kernel == Kernel::mma);
        CHECK(c.tensor_cores);
        CHECK(choose_kernel(hopper(d, 1024)).kernel == Kernel::mma);
    }
    for (int d : {40, 120, 128}) {
        INFO("d = " << d);
        CHECK(choose_kernel(hopper(d, 16)).kernel == Kernel::fused);
        CHECK(choose_kernel(hopper(d, 256)).kernel == Kernel::wgmma);
    }
    for (int d : {129, 136, 256}) {
        INFO("d = " << d);
        const Choice c = choose_kernel(hopper(d, 16));
        CHECK(c.kernel == Kernel::fma);
        CHECK_FALSE(c.tensor_cores);
        CHECK_FALSE(c.sorted);
        CHECK(c.group_tiles == 1);
        CHECK(std::string(c.name) == "fma");
    }
    PassShape fp32 = hopper(64, 16);
    fp32.rounded = false;
    CHECK(choose_kernel(fp32).kernel == Kernel::fma);
    fp32.k = 256;
    fp32.smem_sums = false;
    CHECK(name_of(fp32) == "fma");
    CHECK_FALSE(choose_kernel(fp32).sorted);
    CHECK(pkv::kmeans_gpu::tensor_cores(true, 128));
    CHECK_FALSE(pkv::kmeans_gpu::tensor_cores(true, 129));
    CHECK_FALSE(pkv::kmeans_gpu::tensor_cores(false, 64));
    // The general kernel's sums: in shared memory where they fit, else sorted.
    PassShape big = hopper(100, 512);
    big.smem_sums = false;
    CHECK(name_of(big) == "mma+sorted");
    big.smem_sums = true;
    CHECK(name_of(big) == "mma");
}
