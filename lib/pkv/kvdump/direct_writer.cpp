// The uncompressed KV dump's write path (direct_writer.h).
#include "pkv/kvdump/direct_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <new>
#include <thread>

#include "pkv/core/error.h"
#include "pkv/kvdump/chunk_writer.h"
#include "pkv/kvdump/h5.h"

namespace pkv::kvdump_detail {

namespace {

double since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Dataset {
    std::string name;
    int L = 0, H = 0, D = 0;
    int64_t T = 0;
    int64_t padded = 0;   // tokens per (layer, head) in the file: whole chunks
    uint64_t offset = 0;  // of element [0, 0, 0, 0], bytes from the file's start
};

// One head of one dataset for a window; `pending` counts the call's tasks not yet gathered.
struct Task {
    const Dataset* ds = nullptr;
    const DirectWriter::Fill* fill = nullptr;
    int slot = 0, head = 0;
    int64_t t0 = 0;
    int n = 0;
};

}  // namespace

struct DirectWriter::Impl {
    std::string path;
    int fd = -1;
    bool writeback = false;
    std::vector<Dataset> datasets;

    mutable std::mutex mu;
    std::condition_variable cv_task;      // workers: a task, or stop
    std::condition_variable cv_gathered;  // the caller: its tasks gathered, or failure
    std::condition_variable cv_idle;      // drain: nothing queued or running
    std::deque<Task> tasks;
    int64_t pending = 0;  // tasks of the current write() call not yet gathered
    int running = 0;      // tasks a worker holds
    bool stopping = false;
    std::exception_ptr error;
    DirectWriterStats st;
    std::vector<std::thread> threads;

    void fail_with(std::exception_ptr e) {
        std::lock_guard<std::mutex> lock(mu);
        if (!error) error = e;
        stopping = true;
        cv_task.notify_all();
        cv_gathered.notify_all();
        cv_idle.notify_all();
    }

    // Writes all of [buf, buf + len) at `off`: pwrite may write less than asked.
    void write_all(const Dataset& ds, const uint8_t* buf, size_t len, uint64_t off, int64_t token) {
        const uint64_t start = off;
        const size_t total = len;
        while (len > 0) {
            const ssize_t w = pwrite(fd, buf, len, static_cast<off_t>(off));
            if (w < 0 && errno == EINTR) continue;
            PKV_CHECK(w > 0, io, "{}::{}: cannot write the tokens from {}: {}", path, ds.name, token,
                      w < 0 ? std::strerror(errno) : "the device accepted no bytes");
            buf += w, off += static_cast<uint64_t>(w), len -= static_cast<size_t>(w);
        }
#ifdef SYNC_FILE_RANGE_WRITE
        // Start the disk on these pages now; the final fsync then waits for little.
        if (writeback) sync_file_range(fd, static_cast<off_t>(start), static_cast<off_t>(total), SYNC_FILE_RANGE_WRITE);
#else
        (void)start, (void)total;
#endif
    }

    void run(Task& t, std::vector<uint16_t>& buf, DirectWriterStats& local, bool& gathered) {
        const Dataset& ds = *t.ds;
        const size_t D = static_cast<size_t>(ds.D);
        const auto t_gather = std::chrono::steady_clock::now();
        if (buf.size() < static_cast<size_t>(t.n) * D) buf.resize(static_cast<size_t>(t.n) * D);
        for (int i = 0; i < t.n; ++i)
            (*t.fill)(static_cast<size_t>(i), static_cast<size_t>(t.head), buf.data() + i * D);
        local.gather_seconds += since(t_gather);
        {
            // The caller's rows are no longer read: its write() may return.
            std::lock_guard<std::mutex> lock(mu);
            gathered = true;
            if (--pending == 0) cv_gathered.notify_all();
        }
        const auto t_write = std::chrono::steady_clock::now();
        const uint64_t row = D * 2;
        // Chunks [1, 1, Tc, D] back to back in chunk order: a head's tokens are one run of bytes.
        const uint64_t at =
            ds.offset + ((static_cast<uint64_t>(t.slot) * static_cast<uint64_t>(ds.H) + static_cast<uint64_t>(t.head)) *
                             static_cast<uint64_t>(ds.padded) +
                         static_cast<uint64_t>(t.t0)) *
                            row;
        write_all(ds, reinterpret_cast<const uint8_t*>(buf.data()), static_cast<size_t>(t.n) * row, at, t.t0);
        ++local.writes;
        local.write_seconds += since(t_write);
        local.bytes += static_cast<uint64_t>(t.n) * row;
        local.tasks += 1;
    }

    void worker() {
        h5::silence_errors();
        std::vector<uint16_t> buf;
        bool gathered = true;
        try {
            for (;;) {
                Task t;
                {
                    std::unique_lock<std::mutex> lock(mu);
                    cv_task.wait(lock, [&] { return stopping || !tasks.empty(); });
                    if (stopping) {
                        st.buffer_bytes += buf.capacity() * 2;
                        return;
                    }
                    t = tasks.front();
                    tasks.pop_front();
                    ++running;
                }
                DirectWriterStats local;
                gathered = false;
                run(t, buf, local, gathered);
                std::lock_guard<std::mutex> lock(mu);
                st.tasks += local.tasks, st.writes += local.writes, st.bytes += local.bytes;
                st.gather_seconds += local.gather_seconds, st.write_seconds += local.write_seconds;
                --running;
                if (running == 0 && tasks.empty()) cv_idle.notify_all();
            }
        } catch (...) {
            {
                // A task that failed before it gathered still counts for its caller.
                std::lock_guard<std::mutex> lock(mu);
                --running;
                if (!gathered && --pending == 0) cv_gathered.notify_all();
            }
            fail_with(std::current_exception());
        }
    }

    void rethrow_locked() const {
        if (error) rethrow_worker_error(error, path, "activation writer");
    }

    void stop_and_join() {
        {
            std::lock_guard<std::mutex> lock(mu);
            stopping = true;
            cv_task.notify_all();
        }
        for (auto& t : threads)
            if (t.joinable()) t.join();
        threads.clear();
    }
};

DirectWriter::DirectWriter(std::string path, int threads, bool start_writeback) : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    m.path = std::move(path);
    m.writeback = start_writeback;
    PKV_CHECK(threads >= 1, internal, "{}: activation writer: expected at least one thread, got {}", m.path, threads);
    m.fd = open(m.path.c_str(), O_WRONLY | O_CLOEXEC);
    PKV_CHECK(m.fd >= 0, io, "{}: cannot open for writing activations: {}", m.path, std::strerror(errno));
    try {
        for (int i = 0; i < threads; ++i) m.threads.emplace_back([&m] { m.worker(); });
    } catch (...) {
        m.stop_and_join();
        close(m.fd);
        throw;
    }
}

DirectWriter::~DirectWriter() {
    impl_->stop_and_join();
    if (impl_->fd >= 0) close(impl_->fd);
}

int DirectWriter::add_dataset(hid_t file, hid_t dset, const std::string& name, int L, int H, int64_t T, int D,
                              int64_t Tc) {
    Impl& m = *impl_;
    const std::string where = m.path + "::" + name;
    hsize_t userblock = 0;
    {
        h5::Id fcpl(H5Fget_create_plist(file));
        if (!fcpl || H5Pget_userblock(fcpl.get(), &userblock) < 0)
            h5::fail_h5(ErrorCode::io, where, "cannot read the file's creation properties");
    }
    Dataset ds;
    ds.name = name, ds.L = L, ds.H = H, ds.T = T, ds.D = D;
    const int64_t per_head = (T + Tc - 1) / Tc;
    ds.padded = per_head * Tc;
    const uint64_t chunk_bytes = static_cast<uint64_t>(Tc) * static_cast<uint64_t>(D) * 2;
    const uint64_t n_chunks = static_cast<uint64_t>(L) * static_cast<uint64_t>(H) * static_cast<uint64_t>(per_head);
    H5D_chunk_index_t index{};
    PKV_CHECK(H5Dget_chunk_index_type(dset, &index) >= 0 && index == H5D_CHUNK_IDX_NONE, internal,
              "{}: expected chunks allocated at creation in the implicit index, got index type {}", where,
              static_cast<int>(index));
    // The implicit index stores chunk i at base + i * chunk_bytes: two lookups confirm it
    // (each walks every chunk, so looking up all of them would take minutes).
    auto address = [&](uint64_t i) {
        const uint64_t lh = i / static_cast<uint64_t>(per_head), c = i % static_cast<uint64_t>(per_head);
        const hsize_t at[4] = {lh / static_cast<uint64_t>(H), lh % static_cast<uint64_t>(H), c * Tc, 0};
        unsigned mask = 0;
        haddr_t addr = HADDR_UNDEF;
        hsize_t size = 0;
        if (H5Dget_chunk_info_by_coord(dset, at, &mask, &addr, &size) < 0)
            h5::fail_h5(ErrorCode::io, where, "cannot locate chunk " + std::to_string(i));
        PKV_CHECK(addr != HADDR_UNDEF && size == chunk_bytes && mask == 0, internal,
                  "{}: chunk {}: expected {} allocated unfiltered bytes, got {}{}", where, i, chunk_bytes, size,
                  addr == HADDR_UNDEF ? " (not allocated)" : "");
        return static_cast<uint64_t>(addr) + userblock;
    };
    ds.offset = address(0);
    const uint64_t last = address(n_chunks - 1);
    PKV_CHECK(last == ds.offset + (n_chunks - 1) * chunk_bytes, internal,
              "{}: chunks are not back to back: chunk {} is at byte {}, expected {}", where, n_chunks - 1, last,
              ds.offset + (n_chunks - 1) * chunk_bytes);
    const uint64_t bytes = n_chunks * chunk_bytes;
#ifdef FALLOC_FL_KEEP_SIZE
    // Reserve the blocks now: a disk too small fails here, in one line, not mid-run.
    if (fallocate(m.fd, 0, static_cast<off_t>(ds.offset), static_cast<off_t>(bytes)) != 0) {
        const int err = errno;
        PKV_CHECK(err == EOPNOTSUPP || err == ENOSYS || err == EINVAL, io,
                  "{}: cannot reserve {:.1f} MiB on disk for the activations: {}", where,
                  static_cast<double>(bytes) / 1048576.0, std::strerror(err));
    }
#endif
    // The tail chunk's rows past the last token are part of the stored chunk: zeros, as
    // the other write paths store them.
    if (ds.padded > T) {
        const std::vector<uint8_t> zeros(static_cast<size_t>(ds.padded - T) * static_cast<size_t>(D) * 2, 0);
        for (uint64_t lh = 0; lh < static_cast<uint64_t>(L) * static_cast<uint64_t>(H); ++lh) {
            m.write_all(ds, zeros.data(), zeros.size(),
                        ds.offset + (lh * static_cast<uint64_t>(ds.padded) + static_cast<uint64_t>(T)) *
                                        static_cast<uint64_t>(D) * 2,
                        T);
            std::lock_guard<std::mutex> lock(m.mu);
            m.st.bytes += zeros.size();
            m.st.writes += 1;
        }
    }
    m.datasets.push_back(std::move(ds));
    return static_cast<int>(m.datasets.size()) - 1;
}

void DirectWriter::write(int slot, int64_t t0, int n, const std::vector<Part>& parts) {
    Impl& m = *impl_;
    const auto t_start = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lock(m.mu);
    m.rethrow_locked();
    PKV_ASSERT(m.pending == 0);
    for (const Part& p : parts) {
        PKV_ASSERT(p.ds >= 0 && p.ds < static_cast<int>(m.datasets.size()));
        const Dataset& ds = m.datasets[static_cast<size_t>(p.ds)];
        PKV_ASSERT(slot >= 0 && slot < ds.L && t0 >= 0 && n > 0 && t0 + n <= ds.T);
        for (int h = 0; h < ds.H; ++h) m.tasks.push_back({&ds, &p.fill, slot, h, t0, n});
        m.pending += ds.H;
    }
    m.cv_task.notify_all();
    m.cv_gathered.wait(lock, [&] { return m.pending == 0 || m.error; });
    if (m.error) {
        // The tasks not started are dropped; the ones gathering still read `parts`.
        m.pending -= static_cast<int64_t>(m.tasks.size());
        m.tasks.clear();
        m.cv_gathered.wait(lock, [&] { return m.pending <= 0; });
        m.rethrow_locked();
    }
    m.st.wait_seconds += since(t_start);
}

void DirectWriter::drain() {
    Impl& m = *impl_;
    {
        std::unique_lock<std::mutex> lock(m.mu);
        m.cv_idle.wait(lock, [&] { return m.error || (m.tasks.empty() && m.running == 0); });
        m.rethrow_locked();
    }
    m.stop_and_join();
    std::lock_guard<std::mutex> lock(m.mu);
    m.rethrow_locked();
}

void DirectWriter::check() const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->rethrow_locked();
}

DirectWriterStats DirectWriter::stats() const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    return impl_->st;
}

}  // namespace pkv::kvdump_detail
