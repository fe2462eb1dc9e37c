// apps/pkv/device_select.h — `--device cuda|cuda:N|cpu|auto` to a k-means assigner or a
// forward engine.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "pkv/kmeans/assigner.h"
#include "pkv/kvcache/attention_scorer.h"
#include "pkv/kvcache/cache_simulator.h"
#include "pkv/model/engine.h"

namespace pkv::dist {
class Comm;
}

namespace pkv::cli {

struct SelectedDevice {
    std::unique_ptr<KMeansAssigner> assigner;  ///< null: the CPU assigner
    std::string description;                   ///< "cuda:0 NVIDIA H200" or "cpu", recorded in outputs
    int gpu = -1;                              ///< the CUDA device index; -1: the CPU
};

/// "cpu": the CPU. "cuda" / "cuda:N": that GPU, or invalid_argument when pkv was built
/// without CUDA or no such device exists. "auto": the first GPU when there is one, else
/// the CPU, saying so on stderr.
/// `default_index` is the GPU "cuda" and "auto" take (modulo the device count), e.g. an
/// MPI rank's index on its host.
SelectedDevice select_device(const std::string& device, int default_index = 0);

/// The forward engine for `--device`: "cpu": an empty factory (the CPU reference engine).
/// "cuda" / "cuda:N": the CUDA engine on that GPU (bf16 weights), or invalid_argument
/// "--device cuda: pkv was built without CUDA" / "... no CUDA device"; "auto": the GPU
/// when there is one, else the CPU, saying which on stderr. `default_index` as above.
/// `description` receives "cpu" or "cuda:N <name>".
EngineFactory select_engine(const std::string& device, int default_index = 0, std::string* description = nullptr);

/// What `pkv analyze --device` runs on the GPU: the attention scorer and the cache
/// simulator. "cpu": both empty (the CPU references: accumulate_attention,
/// simulate_cache). "cuda" / "cuda:N": the CUDA ones on that GPU, or invalid_argument as
/// select_engine; "auto": the GPU when there is one, else the CPU, saying which on
/// stderr. `description` receives "cpu" or "cuda:N <name>".
void select_analyze_device(const std::string& device, AttentionScorerFactory& scorer, CacheSimulatorFactory& simulator,
                           std::string* description = nullptr);

/// "--devices all|0,1,...": one CUDA engine factory per listed GPU (an index may repeat:
/// two workers then share that GPU); invalid_argument without CUDA, without a GPU, or for
/// an index that does not exist.
std::vector<EngineFactory> select_engines(const std::string& list);

/// "--devices all|0,1,...": one assigner per listed GPU ("all": every GPU; an index
/// may repeat, two workers then share that GPU). invalid_argument when pkv was built
/// without CUDA, no GPU exists, or an index is missing.
/// `reduce` ("--reduce auto|nccl|host"): where a data-parallel problem adds its shards'
/// sums. With two or more GPUs, all distinct, and pkv built with NCCL, "auto" and "nccl"
/// put the assigners in one NCCL group (sums added on the GPUs; "auto" warns and adds
/// them on the host when NCCL fails to make the group); "nccl" is an invalid_argument
/// error where that is impossible; "host" never makes a group.
std::vector<SelectedDevice> select_devices(const std::string& list, const std::string& reduce = "auto");

/// Under MPI (comm.size() > 1), collective: when every rank holds one GPU, all distinct
/// (host name and PCI bus id), and pkv has NCCL, the ranks' assigners join one NCCL
/// group (reduce "auto" or "nccl"; "nccl" fails on every rank otherwise, naming why).
void join_rank_group(SelectedDevice& dev, const dist::Comm& comm, const std::string& reduce);

}  // namespace pkv::cli
