// apps/pkv/device_select.h — `--device cuda|cuda:N|cpu|auto` to a k-means assigner.
#pragma once

#include <memory>
#include <string>

#include "pkv/kmeans/assigner.h"

namespace pkv::cli {

struct SelectedDevice {
    std::unique_ptr<KMeansAssigner> assigner;  ///< null: the CPU assigner
    std::string description;                   ///< "cuda:0 NVIDIA H200" or "cpu", recorded in outputs
};

/// "cpu": the CPU. "cuda" / "cuda:N": that GPU, or invalid_argument when pkv was built
/// without CUDA or no such device exists. "auto": the first GPU when there is one, else
/// the CPU, saying so on stderr.
SelectedDevice select_device(const std::string& device);

}  // namespace pkv::cli
