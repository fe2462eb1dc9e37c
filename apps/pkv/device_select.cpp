#include "device_select.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>

#include <unistd.h>

#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/distributed/comm.h"

#ifdef PKV_HAVE_CUDA
#include "pkv/cuda/analyze_attention.h"
#include "pkv/cuda/analyze_sim.h"
#include "pkv/cuda/device.h"
#include "pkv/cuda/forward_engine.h"
#include "pkv/cuda/kmeans_assign.h"
#include "pkv/cuda/nccl_group.h"
#endif

namespace pkv::cli {

namespace {

template <typename T>
bool all_distinct(std::vector<T> v) {
    std::sort(v.begin(), v.end());
    return std::adjacent_find(v.begin(), v.end()) == v.end();
}

#ifdef PKV_HAVE_CUDA
// PKV_CUDA_BATCH_TOKENS: the CUDA engine's packed rows per batch (CudaEngineOptions::
// max_batch_tokens; unset: sized from free memory), e.g. to match a peer's batch in a benchmark.
int64_t engine_batch_tokens() {
    const char* v = std::getenv("PKV_CUDA_BATCH_TOKENS");
    if (v == nullptr || *v == '\0') return 0;
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(v, &end, 10);
    PKV_CHECK(errno == 0 && end != v && *end == '\0' && x > 0, invalid_argument,
              "PKV_CUDA_BATCH_TOKENS: expected a positive number of tokens, got '{}'", v);
    return x;
}
#endif

void check_reduce(const std::string& reduce) {
    PKV_CHECK(reduce == "auto" || reduce == "nccl" || reduce == "host", invalid_argument,
              "--reduce '{}': expected auto, nccl or host", reduce);
}

#ifdef PKV_HAVE_CUDA
// The assigner select_device() makes for GPU `gpu`, as member `m` of an NCCL group.
std::unique_ptr<KMeansAssigner> gpu_assigner(int gpu, const pkv::cuda::NcclMember& m = {}) {
    pkv::cuda::CudaAssignerOptions opt;
    opt.device = gpu;
    // Dump activations are binary16, so fp16 device copies of them are exact.
    opt.precision = pkv::cuda::InputPrecision::fp16;
    opt.nccl = m;
    return pkv::cuda::make_cuda_assigner(opt);
}
#endif

// The GPU index `--device` names (-1: the CPU), after the checks both selections share;
// `description` gets "cpu" or "cuda:N <name>".
int resolve_device(const std::string& device, int default_index, std::string& description) {
    description = "cpu";
    int index = -1;
    const bool want_cuda = device == "cuda" || device.rfind("cuda:", 0) == 0;
    PKV_CHECK(want_cuda || device == "cpu" || device == "auto", invalid_argument,
              "--device '{}': expected cpu, cuda, cuda:N or auto", device);
    if (device.rfind("cuda:", 0) == 0) {
        const std::string num = device.substr(5);
        PKV_CHECK(!num.empty() && num.find_first_not_of("0123456789") == std::string::npos && num.size() < 4,
                  invalid_argument, "--device '{}': expected cuda:N with N a device index", device);
        index = std::stoi(num);
    }
    if (device == "cpu") return -1;
#ifdef PKV_HAVE_CUDA
    const auto devs = pkv::cuda::devices();
    PKV_CHECK(!want_cuda || !devs.empty(), invalid_argument, "--device {}: no CUDA device", device);
    if (index < 0 && !devs.empty()) index = default_index % static_cast<int>(devs.size());
    if (devs.empty() || index >= static_cast<int>(devs.size())) {
        PKV_CHECK(!want_cuda, invalid_argument, "--device {}: no such CUDA device ({} found; `pkv devices` lists them)",
                  device, devs.size());
        log::info("--device auto: no CUDA device found, running on the CPU");
        return -1;
    }
    description = "cuda:" + std::to_string(index) + " " + devs[static_cast<size_t>(index)].name;
    if (device == "auto") log::info("--device auto: using {}", description);
    return index;
#else
    PKV_CHECK(!want_cuda, invalid_argument, "--device {}: pkv was built without CUDA (use --device cpu or auto)",
              device);
    log::info("--device auto: pkv was built without CUDA, running on the CPU");
    (void)default_index, (void)index;
    return -1;
#endif
}

}  // namespace

SelectedDevice select_device(const std::string& device, int default_index) {
    SelectedDevice out;
    const int index = resolve_device(device, default_index, out.description);
    if (index < 0) return out;
#ifdef PKV_HAVE_CUDA
    out.assigner = gpu_assigner(index);
    out.gpu = index;
#endif
    return out;
}

EngineFactory select_engine(const std::string& device, int default_index, std::string* description) {
    std::string desc;
    const int index = resolve_device(device, default_index, desc);
    if (description != nullptr) *description = desc;
    if (index < 0) return {};
#ifdef PKV_HAVE_CUDA
    const int64_t batch_tokens = engine_batch_tokens();
    return [index, batch_tokens](const LlamaModel& model) {
        pkv::cuda::CudaEngineOptions o;
        o.device = index;
        o.max_batch_tokens = batch_tokens;
        return pkv::cuda::make_cuda_engine(model, o);
    };
#else
    return {};
#endif
}

void select_analyze_device(const std::string& device, AttentionScorerFactory& scorer, CacheSimulatorFactory& simulator,
                           std::string* description) {
    std::string desc;
    const int index = resolve_device(device, 0, desc);
    if (description != nullptr) *description = desc;
    scorer = {};
    simulator = {};
    if (index < 0) return;
#ifdef PKV_HAVE_CUDA
    scorer = [index]() { return pkv::cuda::make_attention_scorer(index); };
    simulator = [index]() { return pkv::cuda::make_cache_simulator(index); };
#endif
}

#ifdef PKV_HAVE_CUDA
namespace {
// "all" or "0,2,...": GPU indices, each checked against the devices present.
std::vector<int> gpu_indices(const std::string& list) {
    const int count = static_cast<int>(pkv::cuda::devices().size());
    PKV_CHECK(count > 0, invalid_argument, "--devices {}: no CUDA device found", list);
    std::vector<int> idx;
    if (list == "all") {
        for (int i = 0; i < count; ++i) idx.push_back(i);
    } else {
        size_t pos = 0;
        while (pos <= list.size()) {
            const size_t end = std::min(list.find(',', pos), list.size());
            const std::string num = list.substr(pos, end - pos);
            PKV_CHECK(!num.empty() && num.find_first_not_of("0123456789") == std::string::npos && num.size() < 4,
                      invalid_argument, "--devices '{}': expected all or a comma-separated list of GPU indices", list);
            const int i = std::stoi(num);
            PKV_CHECK(i < count, invalid_argument,
                      "--devices {}: no CUDA device {} ({} found; `pkv devices` lists them)", list, i, count);
            idx.push_back(i);
            pos = end + 1;
        }
    }
    return idx;
}
}  // namespace
#endif

std::vector<EngineFactory> select_engines(const std::string& list) {
#ifdef PKV_HAVE_CUDA
    std::vector<EngineFactory> out;
    for (int i : gpu_indices(list)) out.push_back(select_engine("cuda:" + std::to_string(i)));
    return out;
#else
    fail(ErrorCode::invalid_argument, "--devices {}: pkv was built without CUDA", list);
#endif
}

std::vector<SelectedDevice> select_devices(const std::string& list, const std::string& reduce) {
    check_reduce(reduce);
#ifdef PKV_HAVE_CUDA
    const std::vector<int> idx = gpu_indices(list);
    std::vector<SelectedDevice> out;
    for (int i : idx) out.push_back(select_device("cuda:" + std::to_string(i)));
    const bool distinct = all_distinct(idx);
    const char* why = !pkv::cuda::built_with_nccl() ? "pkv was built without NCCL"
                      : idx.size() < 2              ? "needs two or more GPUs"
                      : !distinct                   ? "NCCL needs distinct GPUs"
                                                    : nullptr;
    PKV_CHECK(reduce != "nccl" || why == nullptr, invalid_argument, "--reduce nccl with --devices {}: {}", list, why);
    if (reduce == "host" || why != nullptr) return out;
    std::vector<pkv::cuda::NcclMember> members;
    try {
        members = pkv::cuda::nccl_local_group(idx);
    } catch (const Error& e) {
        // auto: the host combine gives the same centroids to the kernels' summation error.
        if (reduce == "nccl") throw;
        log::warn("--devices {}: no NCCL group ({}); data-parallel sums are added on the host", list, e.what());
        return out;
    }
    for (size_t i = 0; i < out.size(); ++i) out[i].assigner = gpu_assigner(idx[i], members[i]);
    return out;
#else
    fail(ErrorCode::invalid_argument, "--devices {}: pkv was built without CUDA", list);
#endif
}

void join_rank_group(SelectedDevice& dev, const dist::Comm& comm, const std::string& reduce) {
    check_reduce(reduce);
    if (comm.size() < 2 || reduce == "host") return;
#ifdef PKV_HAVE_CUDA
    // Every rank decides from the same gathered facts, so all take the same branch.
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    const std::string key =
        dev.gpu < 0 ? "" : std::string(host) + "/" + pkv::cuda::devices()[static_cast<size_t>(dev.gpu)].pci_bus_id;
    const std::vector<std::string> keys = comm.allgather(key);
    const bool all_gpu = std::none_of(keys.begin(), keys.end(), [](const std::string& k) { return k.empty(); });
    const bool distinct = all_distinct(keys);
    const char* why = !pkv::cuda::built_with_nccl() ? "pkv was built without NCCL"
                      : !all_gpu                    ? "a rank runs on the CPU"
                      : !distinct                   ? "two ranks share a GPU (NCCL needs one GPU a rank)"
                                                    : nullptr;
    PKV_CHECK(reduce != "nccl" || why == nullptr, invalid_argument, "--reduce nccl over {} ranks: {}", comm.size(),
              why);
    if (why != nullptr) return;
    std::string id = comm.rank() == 0 ? pkv::cuda::nccl_unique_id() : std::string();
    comm.broadcast(id);
    dev.assigner = gpu_assigner(dev.gpu, pkv::cuda::nccl_join(id, comm.size(), comm.rank(), dev.gpu));
#else
    PKV_CHECK(reduce != "nccl", invalid_argument, "--reduce nccl: pkv was built without CUDA");
#endif
}

}  // namespace pkv::cli
