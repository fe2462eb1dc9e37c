// pkv/kmeans/assign_batch.cpp — the default batched pass of KMeansAssigner: one
// problem after another through the single-problem API.
#include <vector>

#include "pkv/core/error.h"
#include "pkv/kmeans/assigner.h"

namespace pkv {

void KMeansAssigner::begin_batch(const std::vector<AssignData>& data, int d) {
    batch_data_ = data;
    batch_d_ = d;
}

void KMeansAssigner::begin_group_batch(const std::vector<AssignData>&, int) {
    fail(ErrorCode::internal, "{} assigner: begin_group_batch() without a sum group", name());
}

void KMeansAssigner::end_batch() noexcept { batch_data_.clear(); }

void KMeansAssigner::assign_batch(std::vector<AssignTask>& tasks, int k) {
    std::vector<int32_t> scratch_labels;
    std::vector<float> scratch_dist2;
    for (AssignTask& t : tasks) {
        PKV_CHECK(t.data >= 0 && static_cast<size_t>(t.data) < batch_data_.size(), internal,
                  "{} assigner: task names data set {}, {} announced", name(), t.data, batch_data_.size());
        PKV_CHECK((t.sums == nullptr) == (t.counts == nullptr), internal,
                  "{} assigner: sums and counts must both be given or both be null", name());
        const AssignData& ds = batch_data_[static_cast<size_t>(t.data)];
        int32_t* labels = t.labels;
        float* dist2 = t.dist2;
        if (!labels) {
            scratch_labels.resize(static_cast<size_t>(ds.n));
            labels = scratch_labels.data();
        }
        if (!dist2) {
            scratch_dist2.resize(static_cast<size_t>(ds.n));
            dist2 = scratch_dist2.data();
        }
        if (t.sums) assign_accumulate(ds.x, ds.n, batch_d_, t.centroids, k, labels, dist2, t.sums, t.counts);
        else assign(ds.x, ds.n, batch_d_, t.centroids, k, labels, dist2);
        double s = 0.0;
        for (int64_t i = 0; i < ds.n; ++i) s += dist2[i];
        t.objective = s;
    }
}

void KMeansAssigner::submit_batch(std::vector<AssignTask>& tasks, int k, int slot) {
    PKV_CHECK(slot >= 0 && slot < pipeline_depth(), internal, "{} assigner: slot {} of {}", name(), slot,
              pipeline_depth());
    assign_batch(tasks, k);
}

void KMeansAssigner::collect_batch(int) {}

}  // namespace pkv
