// Internal: where the CUDA forward engine's GPU time goes, phase by phase.
//
// Off unless the environment sets PKV_CUDA_PROFILE=1: then the engine marks the compute
// stream with an event at the end of each phase (lap), the events of a batch are read once
// the batch is done (collect), and the destructor prints each phase's share of the summed
// GPU time on stderr. The phases are the intervals between consecutive marks on one
// stream, so they add up to the stream's busy-and-waiting time; time the stream spends
// waiting on the copy stream or on the host (a cache hook) lands in the phase that waited,
// and an idle stream (the host late to queue the next layer, e.g. blocked in the sink) lands
// in the phase queued next, the norms at a layer's start.
// Off, a lap is one branch.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <vector>

namespace pkv::cuda {

class PhaseClock {
public:
    enum Phase : int {
        input,
        norm,
        qkv,
        rope,
        capture,
        cache,
        attention,
        out_proj,
        ffn_in,
        act,
        ffn_down,
        logits,
        count
    };

    PhaseClock();
    ~PhaseClock();
    PhaseClock(const PhaseClock&) = delete;
    PhaseClock& operator=(const PhaseClock&) = delete;

    bool on() const { return on_; }
    /// Opens a batch: the next lap measures from here.
    void start(cudaStream_t s) {
        if (on_) mark(count, s);
    }
    /// The work queued on `s` since the previous mark belongs to phase p.
    void lap(Phase p, cudaStream_t s) {
        if (on_) mark(p, s);
    }
    /// Waits for the batch's last mark and adds its phases to the totals.
    void collect();

private:
    void mark(Phase p, cudaStream_t s);
    bool on_ = false;
    std::vector<cudaEvent_t> pool_;
    std::vector<int> phases_;  ///< phase of each used event; count opens an interval
    size_t used_ = 0;
    std::array<double, count> ms_{};
    int batches_ = 0;
};

}  // namespace pkv::cuda
