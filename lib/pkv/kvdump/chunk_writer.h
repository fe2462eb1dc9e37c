// pkv/kvdump/chunk_writer.h — the KV dump writer's chunk pipeline: whole HDF5 chunks
// encoded on worker threads and written in order by one thread with HDF5's direct
// chunk write (H5Dwrite_chunk). Internal to the writer (kv_dump.cpp); the encoder is
// public for tests and the writer benchmark (bench/dump_writer.cpp).
//
// Flow: the caller's thread (KvDumpWriter::write_layer*) fills chunk buffers and
// submits each full one as a job. With compress > 0, `threads` encoder threads turn a
// job's chunks into what HDF5's shuffle then deflate filters store; one writer thread
// takes jobs in submission order, as soon as the next one is encoded, and writes each
// chunk. Because the order is the submission order, the file is the same whatever the
// thread count. submit() blocks while more than `queue_bytes` of raw chunk data are
// submitted and not yet written (back-pressure: host memory stays flat in tokens; one
// job always gets through, so a job larger than the bound does not deadlock).
//
// Errors: the first failure of any thread (an encoder, the writer, HDF5) is kept; from
// then on submit() and drain() rethrow it on the caller's thread, as one pkv::Error
// (a non-pkv exception becomes internal, bad_alloc out_of_range naming memory). The threads stop at
// the next job. The destructor stops and joins them without throwing.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace pkv::kvdump_detail {

/// Shuffle (element size 2) then zlib deflate at `level` (1..9) of `n` binary16 values,
/// as HDF5's H5Z_FILTER_SHUFFLE and H5Z_FILTER_DEFLATE store a chunk; `shuffled` is
/// scratch. The result may be a few bytes longer than the input for incompressible
/// data (still a valid stream; HDF5 inflates it). io error when zlib fails.
void encode_chunk(const uint16_t* in, size_t n, int level, std::vector<uint8_t>& shuffled, std::vector<uint8_t>& out);

/// Rethrows a worker thread's failure `e` on the caller's thread as one pkv::Error: a
/// pkv::Error as it is, bad_alloc as out_of_range "<where>: out of memory in the <name>",
/// anything else as internal "<where>: <name> failed: <what>".
[[noreturn]] void rethrow_worker_error(const std::exception_ptr& e, const std::string& where, const char* name);

/// Where the pipeline's time went (seconds are wall time on the thread named).
struct ChunkPipelineStats {
    uint64_t jobs = 0, chunks = 0;
    uint64_t raw_bytes = 0;     ///< binary16 bytes of the chunks written
    uint64_t stored_bytes = 0;  ///< bytes handed to H5Dwrite_chunk
    double encode_seconds = 0;  ///< summed over the encoder threads
    double write_seconds = 0;   ///< the writer thread inside H5Dwrite_chunk
    double wait_seconds = 0;    ///< the caller blocked in submit() on a full queue
    uint64_t waits = 0;         ///< submit() calls that blocked
    uint64_t peak_queue_bytes = 0;
};

class ChunkPipeline {
public:
    /// One job: `n_chunks` chunks of `chunk_elems` binary16 values each, back to back in
    /// `data`, to be written to dataset `dset` at the chunk offsets in `offsets`
    /// (rank 4 each, n_chunks of them). `name` is used in messages.
    struct Job {
        hid_t dset = -1;
        std::string name;
        std::vector<std::vector<hsize_t>> offsets;
        size_t chunk_elems = 0;
        std::vector<uint16_t> data;
        // Filled by the encoder (compress > 0): one stored chunk each.
        std::vector<std::vector<uint8_t>> encoded;
    };

    /// `where` names the file in messages; `before_encode` (may be empty) runs on the
    /// encoder thread before each job with its submission index (tests inject faults).
    ChunkPipeline(std::string where, int compress, int threads, uint64_t queue_bytes,
                  std::function<void(uint64_t)> before_encode);
    ~ChunkPipeline();
    ChunkPipeline(const ChunkPipeline&) = delete;
    ChunkPipeline& operator=(const ChunkPipeline&) = delete;

    /// A buffer of n values for a job's data, recycled from a written job when one is
    /// free (its old contents remain: the caller overwrites or clears what it uses).
    std::vector<uint16_t> take_buffer(size_t n);
    /// Queues a job (the dataset must stay open until drain()); blocks on a full queue.
    void submit(std::unique_ptr<Job> job);
    /// Waits until every job is written and stops the threads; rethrows a failure.
    void drain();
    /// Rethrows a failure of another thread, if there was one.
    void check() const;
    ChunkPipelineStats stats() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace pkv::kvdump_detail
