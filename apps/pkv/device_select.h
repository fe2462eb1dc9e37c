// apps/pkv/device_select.h — `--device cuda|cuda:N|cpu|auto` to a k-means assigner.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "pkv/kmeans/assigner.h"

namespace pkv::cli {

struct SelectedDevice {
    std::unique_ptr<KMeansAssigner> assigner;  ///< null: the CPU assigner
    std::string description;                   ///< "cuda:0 NVIDIA H200" or "cpu", recorded in outputs
};

/// "cpu": the CPU. "cuda" / "cuda:N": that GPU, or invalid_argument when pkv was built
/// without CUDA or no such device exists. "auto": the first GPU when there is one, else
/// the CPU, saying so on stderr.
/// `default_index` is the GPU "cuda" and "auto" take (modulo the device count), e.g. an
/// MPI rank's index on its host.
SelectedDevice select_device(const std::string& device, int default_index = 0);

/// "--devices all|0,1,...": one assigner per listed GPU ("all": every GPU; an index
/// may repeat, two workers then share that GPU). invalid_argument when pkv was built
/// without CUDA, no GPU exists, or an index is missing.
std::vector<SelectedDevice> select_devices(const std::string& list);

}  // namespace pkv::cli
