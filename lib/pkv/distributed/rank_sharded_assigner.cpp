#include "pkv/distributed/rank_sharded_assigner.h"

#include <algorithm>
#include <cstring>
#include <exception>

#include "pkv/core/error.h"
#include "pkv/distributed/comm.h"
#include "pkv/kmeans/sharded_assigner.h"

namespace pkv::dist {

namespace {

// What the leader broadcasts; the followers act on each in the order sent.
enum class Msg : int32_t { begin = 1, pass = 2, end = 3, release = 4 };
constexpr int32_t kWantSums = 1, kWantLabels = 2, kWantDist2 = 4;

struct Writer {
    std::string s;
    template <typename T>
    void put(const T& v) {
        s.append(reinterpret_cast<const char*>(&v), sizeof(T));
    }
    void bytes(const void* p, size_t n) { s.append(static_cast<const char*>(p), n); }
};

struct Reader {
    const std::string& s;
    size_t off = 0;
    void bytes(void* p, size_t n) {
        PKV_CHECK(off + n <= s.size(), internal, "rank-sharded assigner: message of {} bytes cut at {}", s.size(),
                  off + n);
        std::memcpy(p, s.data() + off, n);
        off += n;
    }
    template <typename T>
    T get() {
        T v;
        bytes(&v, sizeof(T));
        return v;
    }
};

template <typename T>
std::string as_bytes(const T* p, int64_t n) {
    return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n) * sizeof(T));
}

// The ranks' rows of a data set of n rows into rank 0's out (its own rows, from 0, are
// there already); a follower's out holds its shard.
template <typename T>
void gather_rows(const Comm& comm, T* out, int64_t n, const char* what) {
    const int R = comm.size(), me = comm.rank();
    const int64_t mine = shard_row(n, me + 1, R) - shard_row(n, me, R);
    const std::vector<std::string> parts = comm.gather(me == 0 ? std::string() : as_bytes(out, mine));
    for (int r = 1; me == 0 && r < R; ++r) {
        const std::string& p = parts[static_cast<size_t>(r)];
        const int64_t b = shard_row(n, r, R), e = shard_row(n, r + 1, R);
        PKV_CHECK(p.size() == static_cast<size_t>(e - b) * sizeof(T), internal,
                  "rank-sharded assigner: rank {} sent {} bytes of {}, expected {} rows", r, p.size(), what, e - b);
        std::memcpy(out + b, p.data(), p.size());
    }
}

}  // namespace

RankShardedAssigner::RankShardedAssigner(KMeansAssigner* local, const Comm& comm)
    : local_(local ? local : &cpu_), comm_(comm) {
    const SumGroup g = local_->sum_group();
    group_ = g.id != nullptr && g.size == comm_.size() && g.rank == comm_.rank() && comm_.size() > 1;
}

void RankShardedAssigner::set_problems(const std::vector<AssignData>& problems) { problems_ = problems; }

void RankShardedAssigner::begin_local(const std::vector<AssignData>& mine, int d) {
    local_began_ = group_ || !mine.empty();
    if (group_) local_->begin_group_batch(mine, d);
    else if (!mine.empty()) local_->begin_batch(mine, d);
}

void RankShardedAssigner::assign(const float* x, int64_t n, int d, const float* centroids, int k, int32_t* labels,
                                 float* dist2) {
    begin_batch({AssignData{x, n}}, d);
    std::vector<AssignTask> tasks(1);
    tasks[0].centroids = centroids;
    tasks[0].labels = labels;
    tasks[0].dist2 = dist2;
    assign_batch(tasks, k);
    end_batch();
}

void RankShardedAssigner::begin_batch(const std::vector<AssignData>& data, int d) {
    PKV_CHECK(comm_.rank() == 0, internal, "rank-sharded assigner: begin_batch() on rank {} (only the leader)",
              comm_.rank());
    batch_data_ = data;
    batch_d_ = d;
    const int R = comm_.size();
    // A set is one of the registered problems (the followers hold their rows) or is sent.
    Writer w;
    w.put(Msg::begin);
    w.put(static_cast<int32_t>(d));
    w.put(static_cast<int64_t>(data.size()));
    std::vector<int32_t> reg(data.size(), -1);
    set_n_.assign(data.size(), 0);
    for (size_t i = 0; i < data.size(); ++i) {
        for (size_t j = 0; j < problems_.size() && reg[i] < 0; ++j)
            if (problems_[j].x == data[i].x && problems_[j].n == data[i].n) reg[i] = static_cast<int32_t>(j);
        set_n_[i] = data[i].n;
        w.put(reg[i]);
        w.put(data[i].n);
    }
    comm_.broadcast(w.s);
    for (size_t i = 0; i < data.size(); ++i) {
        if (reg[i] >= 0) continue;
        std::vector<std::string> parts(static_cast<size_t>(R));
        for (int r = 1; r < R; ++r) {
            const int64_t b = shard_row(data[i].n, r, R), e = shard_row(data[i].n, r + 1, R);
            parts[static_cast<size_t>(r)] = as_bytes(data[i].x + b * d, (e - b) * d);
        }
        comm_.scatter(parts);
    }
    begin_local(shard_slices(data, d, 0, R, local_index_, group_), d);
}

void RankShardedAssigner::end_batch() noexcept {
    // Once an exception is under way the job is ending (Comm::abort): send nothing more.
    if (comm_.rank() == 0 && std::uncaught_exceptions() == 0) {
        try {
            Writer w;
            w.put(Msg::end);
            comm_.broadcast(w.s);
        } catch (...) {
        }
    }
    if (local_began_) local_->end_batch();
    local_began_ = false;
    local_index_.clear();
    set_n_.clear();
    batch_data_.clear();
}

void RankShardedAssigner::assign_batch(std::vector<AssignTask>& tasks, int k) {
    PKV_CHECK(comm_.rank() == 0, internal, "rank-sharded assigner: assign_batch() on rank {} (only the leader)",
              comm_.rank());
    const size_t kd = static_cast<size_t>(k) * static_cast<size_t>(batch_d_);
    Writer w;
    w.put(Msg::pass);
    w.put(static_cast<int32_t>(k));
    w.put(static_cast<int64_t>(tasks.size()));
    for (const AssignTask& t : tasks) {
        PKV_CHECK(t.centroids != nullptr, invalid_argument, "rank-sharded assigner: null centroids");
        w.put(static_cast<int32_t>(t.data));
        w.put(
            static_cast<int32_t>((t.sums ? kWantSums : 0) | (t.labels ? kWantLabels : 0) | (t.dist2 ? kWantDist2 : 0)));
        w.bytes(t.centroids, kd * sizeof(float));
    }
    comm_.broadcast(w.s);
    run_pass(tasks, k);
}

void RankShardedAssigner::release() {
    Writer w;
    w.put(Msg::release);
    comm_.broadcast(w.s);
}

namespace {

// Decodes the rest of a begin message on a follower (after d): fills set_n and
// local_index and returns this rank's local batch, made of its shards of registered
// problems and of the rows the leader scatters (kept alive in sent).
std::vector<AssignData> follower_batch(Reader& rd, int d, const Comm& comm, const std::vector<AssignData>& shards,
                                       bool group, std::vector<std::vector<float>>& sent, std::vector<int64_t>& set_n,
                                       std::vector<int>& local_index) {
    const int R = comm.size(), me = comm.rank();
    const auto ns = static_cast<size_t>(rd.get<int64_t>());
    std::vector<int32_t> reg(ns);
    set_n.assign(ns, 0);
    for (size_t i = 0; i < ns; ++i) {
        reg[i] = rd.get<int32_t>();
        set_n[i] = rd.get<int64_t>();
    }
    sent.assign(ns, {});
    std::vector<AssignData> mine;
    local_index.assign(ns, -1);
    for (size_t i = 0; i < ns; ++i) {
        const int64_t b = shard_row(set_n[i], me, R), e = shard_row(set_n[i], me + 1, R);
        AssignData rows;
        if (reg[i] >= 0) {
            PKV_CHECK(static_cast<size_t>(reg[i]) < shards.size() && shards[static_cast<size_t>(reg[i])].n == e - b,
                      internal, "rank {}: problem {} holds {} rows, the leader expects {}", me, reg[i],
                      static_cast<size_t>(reg[i]) < shards.size() ? shards[static_cast<size_t>(reg[i])].n : -1, e - b);
            rows = shards[static_cast<size_t>(reg[i])];
        } else {
            const std::string part = comm.scatter({});
            PKV_CHECK(part.size() == static_cast<size_t>((e - b) * d) * sizeof(float), internal,
                      "rank {}: received {} bytes of data set {}, expected {} rows", me, part.size(), i, e - b);
            sent[i].resize(part.size() / sizeof(float));
            std::memcpy(sent[i].data(), part.data(), part.size());
            rows = AssignData{sent[i].data(), e - b};
        }
        if (rows.n == 0 && !group) continue;
        local_index[i] = static_cast<int>(mine.size());
        mine.push_back(rows);
    }
    return mine;
}

// What a follower's pass reads and writes: the tasks point into the other members.
struct PassBuffers {
    std::vector<AssignTask> tasks;
    std::vector<std::vector<float>> cent, dist2;
    std::vector<std::vector<double>> sums;
    std::vector<std::vector<int64_t>> counts;
    std::vector<std::vector<int32_t>> labels;
};

// Decodes the rest of a pass message on a follower (after k): each task's data set and
// centroids, with the outputs the leader wants sized for this rank's shard.
void read_pass(Reader& rd, int k, int d, const std::vector<int64_t>& set_n, const Comm& comm, PassBuffers& b) {
    const int R = comm.size(), me = comm.rank();
    const auto nt = static_cast<size_t>(rd.get<int64_t>());
    const size_t kd = static_cast<size_t>(k) * static_cast<size_t>(d);
    b.tasks.resize(nt);
    b.cent.resize(nt);
    b.dist2.resize(nt);
    b.sums.resize(nt);
    b.counts.resize(nt);
    b.labels.resize(nt);
    for (size_t ti = 0; ti < nt; ++ti) {
        AssignTask& t = b.tasks[ti];
        t.data = rd.get<int32_t>();
        const int32_t want = rd.get<int32_t>();
        PKV_CHECK(t.data >= 0 && static_cast<size_t>(t.data) < set_n.size(), internal,
                  "rank {}: task {} names data set {}", me, ti, t.data);
        b.cent[ti].resize(kd);
        rd.bytes(b.cent[ti].data(), kd * sizeof(float));
        t.centroids = b.cent[ti].data();
        const int64_t n = set_n[static_cast<size_t>(t.data)];
        const auto rows = static_cast<size_t>(shard_row(n, me + 1, R) - shard_row(n, me, R));
        if (want & kWantSums) {
            b.sums[ti].resize(kd);
            b.counts[ti].resize(static_cast<size_t>(k));
            t.sums = b.sums[ti].data();
            t.counts = b.counts[ti].data();
        }
        if (want & kWantLabels) {
            b.labels[ti].resize(rows);
            t.labels = b.labels[ti].data();
        }
        if (want & kWantDist2) {
            b.dist2[ti].resize(rows);
            t.dist2 = b.dist2[ti].data();
        }
    }
}

}  // namespace

void RankShardedAssigner::serve(const std::vector<AssignData>& shards) {
    const int me = comm_.rank();
    PKV_CHECK(me > 0, internal, "rank-sharded assigner: serve() on the leader");
    std::vector<std::vector<float>> sent;  // sets the leader scattered (not registered problems)
    for (;;) {
        std::string m;
        comm_.broadcast(m);
        Reader rd{m};
        const Msg type = rd.get<Msg>();
        if (type == Msg::release) return;
        if (type == Msg::end) {
            if (local_began_) local_->end_batch();
            local_began_ = false;
            sent.clear();
            continue;
        }
        if (type == Msg::begin) {
            const int d = rd.get<int32_t>();
            const std::vector<AssignData> mine =
                follower_batch(rd, d, comm_, shards, group_, sent, set_n_, local_index_);
            batch_d_ = d;
            begin_local(mine, d);
            continue;
        }
        PKV_CHECK(type == Msg::pass, internal, "rank {}: unknown message {}", me, static_cast<int>(type));
        const int k = rd.get<int32_t>();
        PassBuffers buffers;
        read_pass(rd, k, batch_d_, set_n_, comm_, buffers);
        run_pass(buffers.tasks, k);
    }
}

// Both sides, the same collectives in the same order. The leader's outputs span whole
// data sets and its shard starts at row 0; a follower's span its shard.
void RankShardedAssigner::run_pass(std::vector<AssignTask>& tasks, int k) {
    const size_t kd = static_cast<size_t>(k) * static_cast<size_t>(batch_d_);
    std::vector<AssignTask> mine;
    std::vector<size_t> which;
    for (size_t ti = 0; ti < tasks.size(); ++ti) {
        AssignTask& t = tasks[ti];
        PKV_CHECK(t.data >= 0 && static_cast<size_t>(t.data) < local_index_.size(), internal,
                  "rank-sharded assigner: task {} names data set {}", ti, t.data);
        t.objective = 0.0;
        if (t.sums) {
            std::fill(t.sums, t.sums + kd, 0.0);
            std::fill(t.counts, t.counts + k, int64_t{0});
        }
        const int local = local_index_[static_cast<size_t>(t.data)];
        if (local < 0) continue;  // no rows of this data set here: zeros go into the sums
        AssignTask u = t;
        u.data = local;
        mine.push_back(u);
        which.push_back(ti);
    }
    if (!mine.empty()) local_->assign_batch(mine, k);
    for (size_t i = 0; i < mine.size(); ++i) tasks[which[i]].objective = mine[i].objective;
    for (AssignTask& t : tasks) {
        comm_.sum(&t.objective, 1);
        if (t.sums && !group_) {  // a group's ranks already hold the totals
            comm_.sum(t.sums, kd);
            comm_.sum(t.counts, static_cast<size_t>(k));
        }
        const int64_t n = set_n_[static_cast<size_t>(t.data)];
        if (t.labels) gather_rows(comm_, t.labels, n, "labels");
        if (t.dist2) gather_rows(comm_, t.dist2, n, "distances");
    }
}

}  // namespace pkv::dist
