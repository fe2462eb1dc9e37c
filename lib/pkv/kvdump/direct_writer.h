// pkv/kvdump/direct_writer.h — the uncompressed KV dump's write path: each activation
// dataset's chunks are allocated when it is created, in HDF5's implicit chunk index (no
// filters, allocated early, file format 1.10 for these datasets), which stores chunk i at
// base + i * chunk bytes; each (head, token window) then goes straight to its place with
// pwrite(2) from worker threads. Internal to the writer (kv_dump_writer.cpp); public for
// tests and bench/dump_writer.cpp.
//
// Why: unfiltered chunks are stored as they are, so HDF5 has nothing to do once they
// exist. Writing from several threads at known offsets removes the single writer thread
// and the assembly of whole chunks that the chunk pipeline (chunk_writer.h) needs for its
// filters. The implicit index because HDF5 1.10 finds a chunk's address by walking every
// chunk (~37k per dataset at 70k tokens of the 135M shape: minutes if each were looked
// up), while there one address and the chunk size give them all. The file has the same
// datasets, chunk shape and values as the other paths write (h5py reads it as any other).
//
// Flow: write() splits a call into one task per (dataset, head). A worker gathers the
// head's rows of the window into its own buffer (the only read of the caller's memory),
// then writes the buffer with one pwrite (a head's chunks lie back to back, so its window
// is one run of bytes). write() returns once
// every task of the call has gathered, so the caller may reuse its rows while the
// writes go on. Host memory is one window of one head per worker, whatever the number of
// tokens. With `start_writeback`, each write is followed by
// sync_file_range(SYNC_FILE_RANGE_WRITE), so the disk works while the model does and a
// final fsync finds little left.
//
// Errors: the first failure of a worker (a short or failed pwrite, e.g. a full disk) is
// kept and rethrown on the caller's thread by write(), check() and drain(), as one
// pkv::Error naming the file and dataset. The destructor stops the workers without throwing.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace pkv::kvdump_detail {

struct DirectWriterStats {
    uint64_t tasks = 0, writes = 0;  ///< (dataset, head, window) tasks; pwrite calls
    uint64_t bytes = 0;              ///< binary16 bytes written
    double gather_seconds = 0;       ///< summed over workers: reading the caller's rows
    double write_seconds = 0;        ///< summed over workers: inside pwrite / sync_file_range
    double wait_seconds = 0;         ///< the caller in write() until its tasks had gathered
    uint64_t buffer_bytes = 0;       ///< the workers' buffers at their largest, summed
};

class DirectWriter {
public:
    /// Opens `path` (an HDF5 file being written through another handle) for pwrite.
    /// `threads` >= 1 workers; io error naming the file when it cannot be opened.
    DirectWriter(std::string path, int threads, bool start_writeback);
    ~DirectWriter();
    DirectWriter(const DirectWriter&) = delete;
    DirectWriter& operator=(const DirectWriter&) = delete;

    /// Registers a dataset [L, H, T, D] of binary16 in chunks [1, 1, Tc, D], unfiltered,
    /// allocated at creation in the implicit chunk index: checks the first and last chunk
    /// lie where that index puts them, reserves the file space (fallocate, so a full disk
    /// is reported now rather than mid-run) and zeroes the tail chunks' padding. Returns its
    /// index for write(); internal error naming `name` when the chunks are laid out otherwise.
    int add_dataset(hid_t file, hid_t dset, const std::string& name, int L, int H, int64_t T, int D, int64_t Tc);

    /// Fills `D` binary16 values of token t (0-based in the window), head h into dst.
    /// Called concurrently from the workers: it must not write shared state.
    using Fill = std::function<void(size_t t, size_t h, uint16_t* dst)>;
    /// Tokens [t0, t0 + n) of layer slot `slot`, every head of dataset `ds`, through
    /// `fill`. Several datasets of one window go in one call (`parts`), so that all their
    /// heads share the workers; returns once `fill` will not be called again.
    struct Part {
        int ds = -1;
        Fill fill;
    };
    void write(int slot, int64_t t0, int n, const std::vector<Part>& parts);
    /// Waits until every write is done and stops the workers; rethrows a failure.
    void drain();
    /// Rethrows a failure of a worker, if there was one.
    void check() const;
    DirectWriterStats stats() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace pkv::kvdump_detail
