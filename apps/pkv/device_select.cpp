#include "device_select.h"

#include <algorithm>

#include "pkv/core/error.h"
#include "pkv/core/log.h"

#ifdef PKV_HAVE_CUDA
#include "pkv/cuda/device.h"
#include "pkv/cuda/kmeans_assign.h"
#endif

namespace pkv::cli {

SelectedDevice select_device(const std::string& device, int default_index) {
    SelectedDevice out;
    out.description = "cpu";
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
    if (device == "cpu") return out;
#ifdef PKV_HAVE_CUDA
    const auto devs = pkv::cuda::devices();
    if (index < 0 && !devs.empty()) index = default_index % static_cast<int>(devs.size());
    if (devs.empty() || index >= static_cast<int>(devs.size())) {
        PKV_CHECK(!want_cuda, invalid_argument, "--device {}: no such CUDA device ({} found; `pkv devices` lists them)",
                  device, devs.size());
        log::info("--device auto: no CUDA device found, running on the CPU");
        return out;
    }
    pkv::cuda::CudaAssignerOptions opt;
    opt.device = index;
    // Dump activations are binary16, so fp16 device copies of them are exact.
    opt.precision = pkv::cuda::InputPrecision::fp16;
    out.assigner = pkv::cuda::make_cuda_assigner(opt);
    out.description = "cuda:" + std::to_string(index) + " " + devs[static_cast<size_t>(index)].name;
    if (device == "auto") log::info("--device auto: using {}", out.description);
#else
    PKV_CHECK(!want_cuda, invalid_argument, "--device {}: pkv was built without CUDA (use --device cpu or auto)", device);
    log::info("--device auto: pkv was built without CUDA, running on the CPU");
#endif
    return out;
}

std::vector<SelectedDevice> select_devices(const std::string& list) {
#ifdef PKV_HAVE_CUDA
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
            PKV_CHECK(i < count, invalid_argument, "--devices {}: no CUDA device {} ({} found; `pkv devices` lists them)",
                      list, i, count);
            idx.push_back(i);
            pos = end + 1;
        }
    }
    std::vector<SelectedDevice> out;
    for (int i : idx) out.push_back(select_device("cuda:" + std::to_string(i)));
    return out;
#else
    fail(ErrorCode::invalid_argument, "--devices {}: pkv was built without CUDA", list);
#endif
}

}  // namespace pkv::cli
