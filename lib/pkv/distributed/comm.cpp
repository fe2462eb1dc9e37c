#include "pkv/distributed/comm.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "pkv/core/error.h"

#ifdef PKV_HAVE_MPI
#include <mpi.h>
#endif

namespace pkv::dist {

namespace {

// Launched by an MPI launcher (OpenMPI's mpirun, or a PMI-based one)?
bool launched_by_mpi() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE"); }

#ifdef PKV_HAVE_MPI
void check_mpi(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw Error(ErrorCode::internal, std::string(what) + ": " + std::string(msg, static_cast<size_t>(len)));
}
#endif

}  // namespace

Comm& Comm::world() {
    static Comm c;
    return c;
}

Comm::Comm() {
#ifdef PKV_HAVE_MPI
    if (!launched_by_mpi()) return;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) check_mpi(MPI_Init(nullptr, nullptr), "MPI_Init");
    // Errors come back as codes (and become pkv errors) instead of killing the job silently.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_free(&local);
    mpi_ = true;
#else
    if (launched_by_mpi() && std::getenv("OMPI_COMM_WORLD_RANK") && std::atoi(std::getenv("OMPI_COMM_WORLD_SIZE")) > 1)
        std::fprintf(stderr, "pkv: started by mpirun, but built without MPI: every process does the whole job\n");
#endif
}

Comm::~Comm() {
#ifdef PKV_HAVE_MPI
    if (mpi_) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
    }
#endif
}

std::string Comm::description() const {
#ifdef PKV_HAVE_MPI
    if (mpi_) {
        char lib[MPI_MAX_LIBRARY_VERSION_STRING];
        int len = 0;
        MPI_Get_library_version(lib, &len);
        std::string s(lib, static_cast<size_t>(len));
        const size_t cut = s.find_first_of(",\n");
        return "MPI, " + std::to_string(size_) + " ranks (" + s.substr(0, cut) + ")";
    }
#endif
    return "single process";
}

std::vector<std::string> Comm::gather(const std::string& bytes) const {
    if (!mpi_) return {bytes};
#ifdef PKV_HAVE_MPI
    // Sizes first (64-bit), then the bytes in pieces below 2^31 per rank.
    const long long n = static_cast<long long>(bytes.size());
    std::vector<long long> sizes(rank_ == 0 ? static_cast<size_t>(size_) : 0);
    check_mpi(MPI_Gather(&n, 1, MPI_LONG_LONG, sizes.data(), 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD), "MPI_Gather");
    std::vector<std::string> out;
    if (rank_ == 0) {
        out.resize(static_cast<size_t>(size_));
        out[0] = bytes;
        for (int r = 1; r < size_; ++r) {
            std::string& s = out[static_cast<size_t>(r)];
            s.resize(static_cast<size_t>(sizes[static_cast<size_t>(r)]));
            for (size_t off = 0; off < s.size();) {
                const int len = static_cast<int>(std::min<size_t>(s.size() - off, size_t{1} << 30));
                check_mpi(MPI_Recv(&s[off], len, MPI_BYTE, r, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE), "MPI_Recv");
                off += static_cast<size_t>(len);
            }
        }
    } else {
        for (size_t off = 0; off < bytes.size();) {
            const int len = static_cast<int>(std::min<size_t>(bytes.size() - off, size_t{1} << 30));
            check_mpi(MPI_Send(bytes.data() + off, len, MPI_BYTE, 0, 7, MPI_COMM_WORLD), "MPI_Send");
            off += static_cast<size_t>(len);
        }
    }
    return out;
#endif
}

void Comm::broadcast(std::string& bytes) const {
    if (!mpi_) return;
#ifdef PKV_HAVE_MPI
    long long n = static_cast<long long>(bytes.size());
    check_mpi(MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD), "MPI_Bcast");
    PKV_CHECK(n >= 0 && n < (1LL << 30), internal, "broadcast: {} bytes", n);
    bytes.resize(static_cast<size_t>(n));
    check_mpi(MPI_Bcast(&bytes[0], static_cast<int>(n), MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
#endif
}

std::vector<std::string> Comm::allgather(const std::string& bytes) const {
    if (!mpi_) return {bytes};
    std::vector<std::string> out(static_cast<size_t>(size_));
#ifdef PKV_HAVE_MPI
    for (int r = 0; r < size_; ++r) {
        std::string& s = out[static_cast<size_t>(r)];
        if (r == rank_) s = bytes;
        long long n = static_cast<long long>(s.size());
        check_mpi(MPI_Bcast(&n, 1, MPI_LONG_LONG, r, MPI_COMM_WORLD), "MPI_Bcast");
        PKV_CHECK(n >= 0 && n < (1LL << 30), internal, "allgather: {} bytes", n);
        s.resize(static_cast<size_t>(n));
        if (n > 0) check_mpi(MPI_Bcast(&s[0], static_cast<int>(n), MPI_BYTE, r, MPI_COMM_WORLD), "MPI_Bcast");
    }
#endif
    return out;
}

std::string Comm::scatter(const std::vector<std::string>& parts) const {
    if (!mpi_) return parts.empty() ? std::string() : parts[0];
#ifdef PKV_HAVE_MPI
    // Size first (64-bit), then the bytes in pieces below 2^31, rank by rank.
    if (rank_ == 0) {
        PKV_CHECK(static_cast<int>(parts.size()) == size_, internal, "scatter: {} parts for {} ranks", parts.size(),
                  size_);
        for (int r = 1; r < size_; ++r) {
            const std::string& s = parts[static_cast<size_t>(r)];
            const long long n = static_cast<long long>(s.size());
            check_mpi(MPI_Send(&n, 1, MPI_LONG_LONG, r, 8, MPI_COMM_WORLD), "MPI_Send");
            for (size_t off = 0; off < s.size();) {
                const int len = static_cast<int>(std::min<size_t>(s.size() - off, size_t{1} << 30));
                check_mpi(MPI_Send(s.data() + off, len, MPI_BYTE, r, 9, MPI_COMM_WORLD), "MPI_Send");
                off += static_cast<size_t>(len);
            }
        }
        return parts[0];
    }
    long long n = 0;
    check_mpi(MPI_Recv(&n, 1, MPI_LONG_LONG, 0, 8, MPI_COMM_WORLD, MPI_STATUS_IGNORE), "MPI_Recv");
    std::string s(static_cast<size_t>(n), '\0');
    for (size_t off = 0; off < s.size();) {
        const int len = static_cast<int>(std::min<size_t>(s.size() - off, size_t{1} << 30));
        check_mpi(MPI_Recv(&s[off], len, MPI_BYTE, 0, 9, MPI_COMM_WORLD, MPI_STATUS_IGNORE), "MPI_Recv");
        off += static_cast<size_t>(len);
    }
    return s;
#else
    return {};
#endif
}

void Comm::sum(double* values, size_t n) const {
    if (!mpi_ || n == 0) return;
#ifdef PKV_HAVE_MPI
    // Gather to rank 0, add in rank order, broadcast: MPI_Allreduce may associate the
    // additions differently on different ranks.
    std::vector<double> all(rank_ == 0 ? n * static_cast<size_t>(size_) : 0);
    for (size_t off = 0; off < n;) {
        const int len = static_cast<int>(std::min<size_t>(n - off, size_t{1} << 26));
        std::vector<double> part(rank_ == 0 ? static_cast<size_t>(len) * size_ : 0);
        check_mpi(MPI_Gather(values + off, len, MPI_DOUBLE, part.data(), len, MPI_DOUBLE, 0, MPI_COMM_WORLD),
                  "MPI_Gather");
        if (rank_ == 0)
            for (int i = 0; i < len; ++i) {
                double acc = part[static_cast<size_t>(i)];
                for (int r = 1; r < size_; ++r) acc += part[static_cast<size_t>(r) * len + i];
                values[off + static_cast<size_t>(i)] = acc;
            }
        check_mpi(MPI_Bcast(values + off, len, MPI_DOUBLE, 0, MPI_COMM_WORLD), "MPI_Bcast");
        off += static_cast<size_t>(len);
    }
#endif
}

void Comm::sum(int64_t* values, size_t n) const {
    if (!mpi_ || n == 0) return;
#ifdef PKV_HAVE_MPI
    // Integer sums are exact in any order.
    for (size_t off = 0; off < n;) {
        const int len = static_cast<int>(std::min<size_t>(n - off, size_t{1} << 26));
        check_mpi(MPI_Allreduce(MPI_IN_PLACE, values + off, len, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD),
                  "MPI_Allreduce");
        off += static_cast<size_t>(len);
    }
#endif
}

namespace {
#ifdef PKV_HAVE_MPI
template <typename T>
void allgather_impl(T* out, const std::vector<int64_t>& counts, MPI_Datatype type, int size) {
    PKV_CHECK(static_cast<int>(counts.size()) == size, internal, "allgather: {} counts for {} ranks", counts.size(),
              size);
    // Rank by rank as broadcasts: counts may exceed an int's range in total.
    int64_t off = 0;
    for (int r = 0; r < size; ++r) {
        for (int64_t done = 0; done < counts[static_cast<size_t>(r)];) {
            const int len =
                static_cast<int>(std::min<int64_t>(counts[static_cast<size_t>(r)] - done, int64_t{1} << 28));
            check_mpi(MPI_Bcast(out + off + done, len, type, r, MPI_COMM_WORLD), "MPI_Bcast");
            done += len;
        }
        off += counts[static_cast<size_t>(r)];
    }
}
#endif
}  // namespace

void Comm::allgather(int32_t* out, const std::vector<int64_t>& counts) const {
    if (!mpi_) return;
#ifdef PKV_HAVE_MPI
    allgather_impl(out, counts, MPI_INT32_T, size_);
#endif
}

void Comm::allgather(float* out, const std::vector<int64_t>& counts) const {
    if (!mpi_) return;
#ifdef PKV_HAVE_MPI
    allgather_impl(out, counts, MPI_FLOAT, size_);
#endif
}

void Comm::barrier() const {
#ifdef PKV_HAVE_MPI
    if (mpi_) check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
#endif
}

void Comm::abort(const std::string& message, int code) const {
    if (!mpi_) return;
#ifdef PKV_HAVE_MPI
    std::fprintf(stderr, "pkv: rank %d of %d: %s\n", rank_, size_, message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
#endif
}

}  // namespace pkv::dist
