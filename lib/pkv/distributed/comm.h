// pkv/distributed/comm.h — the processes of one pkv job: MPI ranks when launched by mpirun,
// else one process.
//
// `mpirun -np R pkv calibrate ...` starts R copies; each learns its rank here and takes
// its share of the work, rank 0 gathers the results and writes the output. Without
// MPI support (pkv built without an MPI library) or when not started by an MPI
// launcher (no OMPI_COMM_WORLD_SIZE / PMI_SIZE in the environment), world() is a
// single rank 0 of 1 and every call below is local.
//
// Errors: a rank that fails calls abort(), which prints "rank r of R: message" on
// stderr and ends the whole job (MPI_Abort) with a non-zero status, so no rank waits
// forever on a gather and rank 0 never writes a partial output.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pkv::dist {

class Comm {
public:
    /// The job's processes; MPI is initialised on the first call when launched by mpirun.
    static Comm& world();

    int rank() const { return rank_; }
    int size() const { return size_; }
    /// Rank within this host (the GPU a rank takes by default); 0 without MPI.
    int local_rank() const { return local_rank_; }
    /// "MPI (OpenMPI 4.1.4)" or "single process".
    std::string description() const;

    /// Every rank passes its bytes; rank 0 gets all of them in rank order, the others
    /// an empty vector.
    std::vector<std::string> gather(const std::string& bytes) const;
    /// Rank 0's bytes to every rank (small messages: ids, names).
    void broadcast(std::string& bytes) const;
    /// Every rank's bytes to every rank, in rank order (small messages).
    std::vector<std::string> allgather(const std::string& bytes) const;
    /// Rank 0 passes one part per rank (the others pass nothing); every rank gets its part.
    std::string scatter(const std::vector<std::string>& parts) const;
    /// Waits for every rank.
    void barrier() const;
    /// Every rank passes n values; every rank gets their sum over the ranks, added in
    /// rank order (so the result is the same bitwise on every rank and every run).
    void sum(double* values, size_t n) const;
    void sum(int64_t* values, size_t n) const;
    /// Rank r passes its count[r] values at out + offset[r] (offset[r] = sum of the
    /// counts before r); afterwards every rank holds all of them there.
    void allgather(int32_t* out, const std::vector<int64_t>& counts) const;
    void allgather(float* out, const std::vector<int64_t>& counts) const;
    /// Prints "rank r of R: message" and ends every rank of the job with `code`. In a
    /// single process it only returns (the caller reports the error as usual).
    void abort(const std::string& message, int code) const;

    Comm(const Comm&) = delete;
    Comm& operator=(const Comm&) = delete;

private:
    Comm();
    ~Comm();
    int rank_ = 0, size_ = 1, local_rank_ = 0;
    bool mpi_ = false;
};

}  // namespace pkv::dist
