// pkv/kmeans/assigner.h — the assignment step of k-means as a pluggable component.
//
// The Lloyd loop in kmeans.h is written once; the data pass that maps every point
// to its nearest centroid goes through a KMeansAssigner. pkv ships a CPU assigner
// (CpuAssigner, Eigen GEMM) and a scalar reference (assign_ref). A GPU assigner
// implements the same interface in the CUDA library; nothing here needs CUDA types,
// so this header compiles everywhere.
//
// Shapes and units used throughout:
//   x          [n x d] row-major float, the points
//   centroids  [k x d] row-major float
//   labels     [n] int32 in [0, k)
//   dist2      [n] squared Euclidean distance of each point to its centroid
//   sums       [k x d] row-major double, per-cluster coordinate sums
//   counts     [k] int64, per-cluster point counts
// Ties (equal distances) go to the lowest centroid index.
#pragma once

#include <cstdint>
#include <vector>

namespace pkv {

/// One data set of a batched pass: n points [n x d] row-major at x.
struct AssignData {
    const float* x = nullptr;
    int64_t n = 0;
};

/// One problem's work in a batched pass (KMeansAssigner::assign_batch): the points of
/// data set `data` (an index into the begin_batch() list) against `centroids`.
/// Several tasks may name the same data set (k-means restarts do).
struct AssignTask {
    int data = 0;
    const float* centroids = nullptr;  ///< [k x d] in
    double* sums = nullptr;            ///< [k x d] out, overwritten; null: no sums this pass
    int64_t* counts = nullptr;         ///< [k] out, overwritten; null exactly when sums is null
    int32_t* labels = nullptr;         ///< [n] out; null when the caller does not need them
    float* dist2 = nullptr;            ///< [n] out; null when the caller does not need them
    /// Out: sum over the data set of the squared distance of every point to its
    /// centroid, in double. Deterministic; its summation order is the implementation's.
    double objective = 0.0;
};

/// An assigner's place in a group of assigners whose devices add sums among themselves
/// (a CudaAssigner with an NCCL communicator; see KMeansAssigner::sum_group()).
struct SumGroup {
    const void* id = nullptr;  ///< equal for every member of one group; nullptr: no group
    int size = 0;              ///< members of the group
    int rank = -1;             ///< this member, in [0, size)
    /// "NCCL 2.28.9" (recorded by the callers in their provenance)
    const char* engine = "";
};

/// Computes nearest-centroid labels (and, optionally fused, the per-cluster sums the
/// centroid update needs). Implementations must be deterministic: the same inputs
/// give the same outputs on every call.
class KMeansAssigner {
public:
    virtual ~KMeansAssigner() = default;

    /// Short name for logs ("cpu", "cuda", ...).
    virtual const char* name() const = 0;

    /// labels[i] = argmin_j ||x_i - c_j||² (lowest j on ties) and dist2[i] = that
    /// squared distance, for i in [0, n). Both outputs are required.
    /// Implementations that use the expanded form ||x||² - 2 x·c + ||c||² must clamp
    /// dist2 at 0 (cancellation can make it slightly negative); near-ties may then
    /// resolve differently from the exact reference (see assign_ref).
    virtual void assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                        float* dist2) = 0;

    /// One full Lloyd data pass: assign() plus the per-cluster sums and counts of the
    /// new labels (overwritten, not added to). The default calls assign() and then
    /// accumulate_centroid_sums(); a device implementation can fuse both so the data is
    /// read once. Sums must end in double and counts in int64 (partial sums inside a
    /// kernel may be float as long as they are combined in double).
    virtual void assign_accumulate(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                                   float* dist2, double* sums, int64_t* counts);

    /// Announces the data sets of a batch; until the matching end_batch() every
    /// assign_batch() refers to them by index (contents unchanged), so an
    /// implementation may upload or pack them once. The Lloyd loop brackets every pass
    /// over its data, a single problem's included (a batch of one data set), with
    /// begin_batch()/end_batch(). The default remembers the list (batch_data_);
    /// an override that keeps the default assign_batch() calls it.
    virtual void begin_batch(const std::vector<AssignData>& data, int d);

    /// Releases what begin_batch() prepared (the default forgets the list). Must not
    /// throw.
    virtual void end_batch() noexcept;

    /// One pass over every task (k centroids each, all of dimension d): labels, dist2,
    /// sums and counts as assign()/assign_accumulate() define them, only where the task
    /// asks for them, and always the objective. The default loops over the tasks with
    /// assign_accumulate() (or assign() when sums is null) into scratch labels/dist2
    /// where the task gives none, and sums dist2 in index order in double. A device
    /// implementation processes the whole batch in one launch sequence. A task's
    /// outputs must not depend on the other tasks of the batch.
    virtual void assign_batch(std::vector<AssignTask>& tasks, int k);

    /// Passes this assigner can keep in flight at once through submit_batch(), one a
    /// slot. 1 (the default): submit_batch() finishes its pass before it returns. With 2
    /// or more the Lloyd loop (kmeans_batch) splits its runs into that many groups and
    /// updates one group's centroids on the host while the other groups' passes run.
    virtual int pipeline_depth() const { return 1; }

    /// assign_batch(tasks, k) in slot `slot` (in [0, pipeline_depth())), possibly still
    /// running when this returns: the tasks' outputs and objectives are set once
    /// collect_batch(slot) has returned, and until then `tasks` and every buffer its
    /// entries name must stay alive and unchanged. Passes run in the order submitted; a
    /// slot holds one pass at a time. The default calls assign_batch().
    virtual void submit_batch(std::vector<AssignTask>& tasks, int k, int slot);

    /// Waits for the pass submitted in `slot`; throws what it failed with. The default
    /// does nothing.
    virtual void collect_batch(int slot);

    /// Most points of dimension d this assigner keeps resident for a pass (a device's
    /// memory); more are still handled (streamed, slower). kmeans_batch_multi() runs a
    /// larger problem data parallel over all its assigners. Default: no limit.
    virtual int64_t max_resident_rows(int d) const { return INT64_MAX; }

    /// The group this assigner adds sums with on its devices; id nullptr (the default)
    /// when none. ShardedAssigner and dist::RankShardedAssigner use it when exactly the
    /// group's members hold the shards of a problem.
    virtual SumGroup sum_group() const { return {}; }

    /// begin_batch() as a member of sum_group(): every member of the group calls it
    /// (concurrently: each from its own thread or process) with its own rows of the
    /// same data sets in the same order, a member possibly holding 0 rows of a set.
    /// Until end_batch(), every member's assign_batch() (all called with the same tasks
    /// and k) returns in sums and counts the totals over all members' rows; objectives,
    /// labels and distances stay the member's own. A set's fixed-point scale is agreed
    /// over the group (its whole n and max|x|), so when the members hold consecutive row
    /// ranges starting at multiples of 8192 (shard_row), the sums are bitwise those of
    /// one assigner holding all rows. The default throws internal (no group).
    virtual void begin_group_batch(const std::vector<AssignData>& data, int d);

protected:
    /// The data sets of the current begin_batch() (empty outside one) and their d.
    std::vector<AssignData> batch_data_;
    int batch_d_ = 0;
};

/// CPU assigner: scores s_ij = ||c_j||² - 2 x_i·c_j from a fused AVX2/FMA dot +
/// argmin kernel (6 points x 16 centroids in registers, no score matrix; builds
/// without AVX2 fall back to an Eigen GEMM over blocks of rows), the lowest index
/// winning exact ties of the computed scores, then dist2 recomputed directly as
/// ||x_i - c_label||² in float while the block is in cache. The recomputation gives
/// distances that are never negative and free of the expanded form's cancellation,
/// so no clamping is needed. The argmin itself still comes from the expanded form:
/// two centroids whose true distances differ by less than a few float ulps of
/// ||x||·||c|| may be swapped relative to assign_ref.
/// Blocks of rows are processed in parallel with OpenMP; each dot product is summed
/// in a fixed order, so results do not depend on the block size or thread count.
class CpuAssigner final : public KMeansAssigner {
public:
    /// block_rows: rows per parallel block; 0 picks the default (see assign_cpu.cpp).
    explicit CpuAssigner(int64_t block_rows = 0);
    const char* name() const override { return "cpu"; }
    void assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                float* dist2) override;

private:
    int64_t block_rows_;
};

/// Reference assignment: for every point, scalar loops over all centroids computing
/// sum_i (x_i - c_i)² in double; strict '<' keeps the lowest index on ties.
/// dist2 (nullable) receives the double distances. O(n k d), single-threaded per
/// point; meant for tests and small problems.
void assign_ref(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels, double* dist2);

/// sums[j] = sum of x_i over i with labels[i] == j (double), counts[j] = their number
/// (int64; a float count would stop growing at 2^24 points). Both arrays are
/// overwritten. Each (cluster, dim) sum adds the points in index order, so the result
/// is bitwise independent of the thread count. Labels outside [0, k) throw internal.
void accumulate_centroid_sums(const float* x, int64_t n, int d, const int32_t* labels, int k, double* sums,
                              int64_t* counts);

}  // namespace pkv
