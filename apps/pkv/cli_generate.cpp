// `pkv generate`: greedy continuation of a prompt, a quick check that a model runs
// correctly under pkv. `pkv devices`: the GPUs pkv can use.
#include <cstdio>

#include "commands.h"
#include "pkv/pipeline/generate.h"
#ifdef PKV_HAVE_CUDA
#include "pkv/cuda/device.h"
#include "pkv/cuda/kmeans_assign.h"
#include "pkv/cuda/nccl_group.h"
#endif

namespace pkv::cli {

Command add_generate(CLI::App& root) {
    struct Args {
        std::string model, prompt;
        int n = 16;
        bool ids = false;
    };
    auto args = std::make_shared<Args>();
    auto* app = root.add_subcommand("generate", "greedy continuation of a prompt (a correctness check)");
    app->add_option("--model,-m", args->model, "GGUF model")->required()->check(CLI::ExistingFile);
    app->add_option("--prompt,-p", args->prompt, "prompt text (special tokens such as <|im_start|> are parsed)")
        ->required();
    app->add_option("--n", args->n, "new tokens")->capture_default_str();
    app->add_flag("--ids", args->ids, "also print the token ids");
    return {app, [args]() {
                const GreedyResult r = generate_greedy(args->model, args->prompt, args->n);
                std::printf("%s%s\n", args->prompt.c_str(), r.text.c_str());
                if (args->ids) {
                    std::string s = "prompt ids:";
                    for (int id : r.prompt_ids) s += " " + std::to_string(id);
                    s += "\nnew ids:";
                    for (int id : r.new_ids) s += " " + std::to_string(id);
                    std::printf("%s\n", s.c_str());
                }
                return 0;
            }};
}

Command add_devices(CLI::App& root) {
    auto* app = root.add_subcommand("devices", "list the CUDA devices pkv can use");
    return {app, []() {
#ifdef PKV_HAVE_CUDA
                const auto devs = pkv::cuda::devices();
                if (devs.empty()) std::printf("no CUDA device (pkv built with CUDA; GPU work falls back to the CPU)\n");
                // k-means for k >= 256 on Hopper's warpgroup MMA (sm_90a code) or on mma.sync.
                for (const auto& d : devs)
                    std::printf("cuda:%d  %s  sm_%d%d  %.1f GiB  %d SMs  %s  k-means: %s\n", d.index, d.name.c_str(),
                                d.cc_major, d.cc_minor, d.total_memory / 1073741824.0, d.multiprocessors,
                                d.pci_bus_id.c_str(), pkv::cuda::wgmma_supported(d.index) ? "wgmma" : "mma.sync");
                // Data-parallel sums on the GPUs (calibrate --reduce) need NCCL.
                std::printf("nccl: %s\n", pkv::cuda::built_with_nccl() ? ("yes, " + pkv::cuda::nccl_version()).c_str()
                                                                       : "no (pkv built without NCCL)");
#else
                std::printf("pkv was built without CUDA: CPU only\n");
#endif
                return 0;
            }};
}

}  // namespace pkv::cli
