#include "pkv/dist/comm.h"

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

bool built_with_mpi() {
#ifdef PKV_HAVE_MPI
    return true;
#else
    return false;
#endif
}

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
