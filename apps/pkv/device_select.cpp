#include "device_select.h"

#include "pkv/core/error.h"
#include "pkv/core/log.h"

#ifdef PKV_HAVE_CUDA
#include "pkv/cuda/device.h"
#include "pkv/cuda/kmeans_assign.h"
#endif

namespace pkv::cli {

SelectedDevice select_device(const std::string& device) {
    SelectedDevice out;
    out.description = "cpu";
    int index = 0;
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

}  // namespace pkv::cli
