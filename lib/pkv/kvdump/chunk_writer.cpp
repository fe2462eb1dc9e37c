// The KV dump writer's chunk pipeline (chunk_writer.h).
#include "pkv/kvdump/chunk_writer.h"

#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <new>
#include <thread>

#include "pkv/core/error.h"
#include "pkv/kvdump/h5.h"

namespace pkv::kvdump_detail {

namespace {

double since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void rethrow_worker_error(const std::exception_ptr& e, const std::string& where, const char* name) {
    try {
        std::rethrow_exception(e);
    } catch (const Error&) {
        throw;
    } catch (const std::bad_alloc&) {
        fail(ErrorCode::out_of_range, "{}: out of memory in the {}", where, name);
    } catch (const std::exception& x) {
        fail(ErrorCode::internal, "{}: {} failed: {}", where, name, x.what());
    }
}

void encode_chunk(const uint16_t* in, size_t n, int level, std::vector<uint8_t>& shuffled, std::vector<uint8_t>& out) {
    // HDF5's shuffle for 2-byte elements: every element's first byte, then every second byte.
    shuffled.resize(2 * n);
    const uint8_t* b = reinterpret_cast<const uint8_t*>(in);
    uint8_t* lo = shuffled.data();
    uint8_t* hi = shuffled.data() + n;
    for (size_t i = 0; i < n; ++i) {
        lo[i] = b[2 * i];
        hi[i] = b[2 * i + 1];
    }
    // Unlike HDF5's filter, which gives up and stores the chunk unfiltered when deflate
    // does not shrink it, the stream is kept whole: a chunk then always has filter mask 0,
    // which pkv's reader requires of a deflated dataset.
    uLongf len = compressBound(static_cast<uLong>(shuffled.size()));
    out.resize(len);
    const int rc = compress2(out.data(), &len, shuffled.data(), static_cast<uLong>(shuffled.size()), level);
    PKV_CHECK(rc == Z_OK, io, "deflate of a {}-byte chunk at level {} failed: zlib error {}", shuffled.size(), level,
              rc);
    out.resize(len);
}

struct ChunkPipeline::Impl {
    std::string where;
    int compress = 0;
    uint64_t queue_bytes = 0;
    std::function<void(uint64_t)> before_encode;

    mutable std::mutex mu;
    std::condition_variable cv_encode;  // encoders: a job to encode, or stop
    std::condition_variable cv_write;   // writer: the front job is ready, or stop
    std::condition_variable cv_space;   // submit/drain: bytes were written, or failure
    struct Slot {
        std::unique_ptr<Job> job;
        uint64_t index = 0, bytes = 0;
        bool ready = false;
    };
    std::deque<std::unique_ptr<Slot>> queue;  // submission order; the writer pops the front
    std::deque<Slot*> to_encode;
    // Buffers of written jobs, for the next ones: fresh pages would be faulted in and
    // zeroed for every chunk row, which costs as much as copying the data into them.
    std::vector<std::vector<uint16_t>> free_buffers;
    uint64_t free_bytes = 0;
    uint64_t queued_bytes = 0, submitted = 0;
    bool stopping = false;
    std::exception_ptr error;
    ChunkPipelineStats st;
    std::vector<std::thread> threads;

    void fail_with(std::exception_ptr e) {
        std::lock_guard<std::mutex> lock(mu);
        if (!error) error = e;
        stopping = true;
        cv_encode.notify_all();
        cv_write.notify_all();
        cv_space.notify_all();
    }

    void encoder() {
        std::vector<uint8_t> shuffled;
        try {
            for (;;) {
                Slot* s = nullptr;
                {
                    std::unique_lock<std::mutex> lock(mu);
                    cv_encode.wait(lock, [&] { return stopping || !to_encode.empty(); });
                    if (stopping) return;
                    s = to_encode.front();
                    to_encode.pop_front();
                }
                const auto t0 = std::chrono::steady_clock::now();
                if (before_encode) before_encode(s->index);
                Job& j = *s->job;
                j.encoded.resize(j.offsets.size());
                for (size_t c = 0; c < j.offsets.size(); ++c)
                    encode_chunk(j.data.data() + c * j.chunk_elems, j.chunk_elems, compress, shuffled, j.encoded[c]);
                const double dt = since(t0);
                std::lock_guard<std::mutex> lock(mu);
                st.encode_seconds += dt;
                s->ready = true;
                cv_write.notify_all();
            }
        } catch (...) {
            fail_with(std::current_exception());
        }
    }

    void writer() {
        h5::silence_errors();
        try {
            for (;;) {
                Slot* s = nullptr;
                {
                    std::unique_lock<std::mutex> lock(mu);
                    cv_write.wait(lock, [&] { return stopping || (!queue.empty() && queue.front()->ready); });
                    if (!queue.empty() && queue.front()->ready && !error) s = queue.front().get();
                    else return;  // stopping with nothing ready, or after a failure
                }
                const auto t0 = std::chrono::steady_clock::now();
                Job& j = *s->job;
                uint64_t stored = 0;
                for (size_t c = 0; c < j.offsets.size(); ++c) {
                    const bool enc = compress > 0;
                    const void* buf = enc ? static_cast<const void*>(j.encoded[c].data())
                                          : static_cast<const void*>(j.data.data() + c * j.chunk_elems);
                    const size_t n = enc ? j.encoded[c].size() : j.chunk_elems * 2;
                    if (H5Dwrite_chunk(j.dset, H5P_DEFAULT, 0, j.offsets[c].data(), n, buf) < 0)
                        h5::fail_h5(ErrorCode::io, where + "::" + j.name,
                                    "cannot write the chunk at token " + std::to_string(j.offsets[c][2]));
                    stored += n;
                }
                const double dt = since(t0);
                std::unique_ptr<Slot> done;
                {
                    std::lock_guard<std::mutex> lock(mu);
                    const uint64_t cap = j.data.capacity() * 2;
                    if (free_bytes + cap <= std::min<uint64_t>(queue_bytes, uint64_t{64} << 20)) {
                        free_bytes += cap;
                        free_buffers.push_back(std::move(j.data));
                    }
                    st.write_seconds += dt;
                    st.jobs += 1;
                    st.chunks += j.offsets.size();
                    st.raw_bytes += j.offsets.size() * j.chunk_elems * 2;
                    st.stored_bytes += stored;
                    queued_bytes -= s->bytes;
                    done = std::move(queue.front());
                    queue.pop_front();
                    cv_space.notify_all();
                }
                // Freed outside the lock: large buffers go back to the system here.
            }
        } catch (...) {
            fail_with(std::current_exception());
        }
    }

    void rethrow_locked() const {
        if (error) rethrow_worker_error(error, where, "chunk writer");
    }

    void stop_and_join() {
        {
            std::lock_guard<std::mutex> lock(mu);
            stopping = true;
            cv_encode.notify_all();
            cv_write.notify_all();
        }
        for (auto& t : threads)
            if (t.joinable()) t.join();
        threads.clear();
    }
};

ChunkPipeline::ChunkPipeline(std::string where, int compress, int threads, uint64_t queue_bytes,
                             std::function<void(uint64_t)> before_encode)
    : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    m.where = std::move(where);
    m.compress = compress;
    m.queue_bytes = queue_bytes;
    m.before_encode = std::move(before_encode);
    // With no filters there is nothing to encode: the writer thread alone overlaps the
    // file writes with the caller.
    const int encoders = compress > 0 ? std::max(1, threads) : 0;
    try {
        for (int i = 0; i < encoders; ++i) m.threads.emplace_back([&m] { m.encoder(); });
        m.threads.emplace_back([&m] { m.writer(); });
    } catch (...) {
        m.stop_and_join();
        throw;
    }
}

ChunkPipeline::~ChunkPipeline() { impl_->stop_and_join(); }

std::vector<uint16_t> ChunkPipeline::take_buffer(size_t n) {
    Impl& m = *impl_;
    {
        std::lock_guard<std::mutex> lock(m.mu);
        for (size_t i = m.free_buffers.size(); i-- > 0;) {
            if (m.free_buffers[i].capacity() < n) continue;
            std::vector<uint16_t> b = std::move(m.free_buffers[i]);
            m.free_buffers.erase(m.free_buffers.begin() + static_cast<std::ptrdiff_t>(i));
            m.free_bytes -= b.capacity() * 2;
            b.resize(n);
            return b;
        }
    }
    return std::vector<uint16_t>(n);
}

void ChunkPipeline::submit(std::unique_ptr<Job> job) {
    Impl& m = *impl_;
    auto slot = std::make_unique<Impl::Slot>();
    slot->bytes = job->data.size() * 2;
    slot->job = std::move(job);
    std::unique_lock<std::mutex> lock(m.mu);
    m.rethrow_locked();
    if (m.queued_bytes > 0 && m.queued_bytes + slot->bytes > m.queue_bytes) {
        const auto t0 = std::chrono::steady_clock::now();
        m.st.waits += 1;
        m.cv_space.wait(
            lock, [&] { return m.error || m.queued_bytes == 0 || m.queued_bytes + slot->bytes <= m.queue_bytes; });
        m.st.wait_seconds += since(t0);
        m.rethrow_locked();
    }
    slot->index = m.submitted++;
    m.queued_bytes += slot->bytes;
    m.st.peak_queue_bytes = std::max(m.st.peak_queue_bytes, m.queued_bytes);
    Impl::Slot* s = slot.get();
    if (m.compress > 0) {
        m.to_encode.push_back(s);
        m.cv_encode.notify_one();
    } else {
        s->ready = true;
    }
    m.queue.push_back(std::move(slot));
    m.cv_write.notify_all();
}

void ChunkPipeline::drain() {
    Impl& m = *impl_;
    {
        std::unique_lock<std::mutex> lock(m.mu);
        m.cv_space.wait(lock, [&] { return m.error || m.queue.empty(); });
        m.rethrow_locked();
    }
    m.stop_and_join();
    std::lock_guard<std::mutex> lock(m.mu);
    m.rethrow_locked();
}

void ChunkPipeline::check() const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->rethrow_locked();
}

ChunkPipelineStats ChunkPipeline::stats() const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    return impl_->st;
}

}  // namespace pkv::kvdump_detail
