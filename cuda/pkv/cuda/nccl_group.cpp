#include "pkv/cuda/nccl_group.h"

#include <atomic>
#include <cstring>
#include <thread>

#include "pkv/core/error.h"
#include "pkv/core/threads.h"

#if PKV_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include "pkv/cuda/check.cuh"

#define PKV_NCCL_CHECK(call)                                                                                    \
    do {                                                                                                        \
        const ncclResult_t pkv_nr_ = (call);                                                                    \
        if (pkv_nr_ != ncclSuccess)                                                                             \
            ::pkv::fail(::pkv::ErrorCode::cuda, "nccl: {} failed: {} ({})", #call, ncclGetErrorString(pkv_nr_), \
                        ncclGetLastError(nullptr));                                                             \
    } while (0)
#endif

namespace pkv::cuda {

#if PKV_HAVE_NCCL

bool built_with_nccl() { return true; }

std::string nccl_version() {
    int v = 0;
    if (ncclGetVersion(&v) != ncclSuccess) return "NCCL";
    // Codes from 2.9 on are major * 10000 + minor * 100 + patch.
    return fmt::format("NCCL {}.{}.{}", v / 10000, v / 100 % 100, v % 100);
}

struct NcclGroup::Impl {
    int size = 0;
    std::string description;
    std::vector<ncclComm_t> comms;  // [member]; null for members of other processes
    std::vector<int> devices;       // [member]
    std::vector<char> aborted;      // [member]
    bool local = false;             // all members in this process (ncclCommInitAll)
    std::atomic<bool> failed{false};

    ncclComm_t comm(int member) {
        PKV_CHECK(member >= 0 && member < size && comms[static_cast<size_t>(member)] != nullptr, internal,
                  "nccl group: member {} is not held by this process", member);
        PKV_CHECK(!failed.load(), cuda, "nccl group: another GPU of the group failed earlier; member {} stopped",
                  member);
        return comms[static_cast<size_t>(member)];
    }
    // A collective that NCCL refused: after another member's failure (its communicator
    // aborted under us) that failure is the story, else this is.
    void check(int member, ncclResult_t r, const char* what) {
        if (r == ncclSuccess) return;
        const bool other = failed.exchange(true);
        abort(member);
        if (other)
            pkv::fail(ErrorCode::cuda, "nccl group: another GPU of the group failed; member {} (GPU {}) stopped",
                      member, devices[static_cast<size_t>(member)]);
        pkv::fail(ErrorCode::cuda, "nccl: {} failed: {}", what, ncclGetErrorString(r));
    }
    void abort(int member) noexcept {
        auto& c = comms[static_cast<size_t>(member)];
        if (c == nullptr || aborted[static_cast<size_t>(member)]) return;
        aborted[static_cast<size_t>(member)] = 1;
        (void)ncclCommAbort(c);
        c = nullptr;
    }
};

NcclGroup::NcclGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NcclGroup::~NcclGroup() {
    Impl& m = *impl_;
    // ncclCommDestroy finalizes with the other members: every member of this process
    // in its own thread, so none waits on one not yet destroyed.
    each_in_thread(m.comms.size(), [&](size_t i) {
        if (m.comms[i] == nullptr) return;
        cudaSetDevice(m.devices[i]);
        if (m.failed.load()) (void)ncclCommAbort(m.comms[i]);
        else (void)ncclCommDestroy(m.comms[i]);
    });
}

int NcclGroup::size() const { return impl_->size; }
const std::string& NcclGroup::description() const { return impl_->description; }

void NcclGroup::sum_u64(int member, unsigned long long* device_data, size_t count, void* stream) {
    impl_->check(member,
                 ncclAllReduce(device_data, device_data, count, ncclUint64, ncclSum, impl_->comm(member),
                               static_cast<cudaStream_t>(stream)),
                 "all-reduce (sum) of the fixed-point sums");
}

void NcclGroup::max_u32(int member, unsigned int* device_data, size_t count, void* stream) {
    impl_->check(member,
                 ncclAllReduce(device_data, device_data, count, ncclUint32, ncclMax, impl_->comm(member),
                               static_cast<cudaStream_t>(stream)),
                 "all-reduce (max) of max|x|");
}

void NcclGroup::wait(int member, void* stream) {
    Impl& m = *impl_;
    ncclComm_t c = m.comm(member);
    const auto s = static_cast<cudaStream_t>(stream);
    // Polled rather than cudaStreamSynchronize: a member of this process that failed
    // never enqueues its side of the collective, and the others must not wait forever.
    for (;;) {
        const cudaError_t e = cudaStreamQuery(s);
        if (e == cudaSuccess) return;
        if (e != cudaErrorNotReady) {
            fail(member);
            PKV_CUDA_CHECK(e);
        }
        if (m.failed.load()) {
            m.abort(member);
            pkv::fail(ErrorCode::cuda, "nccl group: another GPU of the group failed; member {} (GPU {}) stopped",
                      member, m.devices[static_cast<size_t>(member)]);
        }
        ncclResult_t async = ncclSuccess;
        if (ncclCommGetAsyncError(c, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress) {
            fail(member);
            pkv::fail(ErrorCode::cuda, "nccl group: member {} (GPU {}): {}", member,
                      m.devices[static_cast<size_t>(member)], ncclGetErrorString(async));
        }
        std::this_thread::yield();
    }
}

void NcclGroup::fail(int member) noexcept {
    impl_->failed.store(true);
    if (member >= 0 && member < impl_->size) impl_->abort(member);
}

std::vector<NcclMember> nccl_local_group(const std::vector<int>& devices) {
    const int n = static_cast<int>(devices.size());
    PKV_CHECK(n >= 2, invalid_argument, "nccl group: expected at least 2 GPUs, got {}", n);
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < i; ++j)
            PKV_CHECK(devices[static_cast<size_t>(i)] != devices[static_cast<size_t>(j)], invalid_argument,
                      "nccl group: GPU {} listed twice (NCCL needs distinct GPUs)", devices[static_cast<size_t>(i)]);
    auto impl = std::make_unique<NcclGroup::Impl>();
    impl->size = n;
    impl->local = true;
    impl->devices = devices;
    impl->comms.assign(static_cast<size_t>(n), nullptr);
    impl->aborted.assign(static_cast<size_t>(n), 0);
    PKV_NCCL_CHECK(ncclCommInitAll(impl->comms.data(), n, devices.data()));
    impl->description = fmt::format("{}, {} GPUs in one process", nccl_version(), n);
    std::shared_ptr<NcclGroup> g(new NcclGroup(std::move(impl)));
    std::vector<NcclMember> out;
    for (int i = 0; i < n; ++i) out.push_back(NcclMember{g, i});
    return out;
}

std::string nccl_unique_id() {
    ncclUniqueId id;
    PKV_NCCL_CHECK(ncclGetUniqueId(&id));
    return std::string(reinterpret_cast<const char*>(&id), sizeof(id));
}

NcclMember nccl_join(const std::string& id, int ranks, int rank, int device) {
    ncclUniqueId uid;
    PKV_CHECK(id.size() == sizeof(uid), invalid_argument, "nccl group: expected a {}-byte id, got {} bytes",
              sizeof(uid), id.size());
    PKV_CHECK(ranks >= 1 && rank >= 0 && rank < ranks, invalid_argument, "nccl group: rank {} of {}", rank, ranks);
    std::memcpy(&uid, id.data(), sizeof(uid));
    auto impl = std::make_unique<NcclGroup::Impl>();
    impl->size = ranks;
    impl->devices.assign(static_cast<size_t>(ranks), -1);
    impl->devices[static_cast<size_t>(rank)] = device;
    impl->comms.assign(static_cast<size_t>(ranks), nullptr);
    impl->aborted.assign(static_cast<size_t>(ranks), 0);
    PKV_CUDA_CHECK(cudaSetDevice(device));
    PKV_NCCL_CHECK(ncclCommInitRank(&impl->comms[static_cast<size_t>(rank)], ranks, uid, rank));
    impl->description = fmt::format("{}, {} ranks", nccl_version(), ranks);
    return NcclMember{std::shared_ptr<NcclGroup>(new NcclGroup(std::move(impl))), rank};
}

#else  // no NCCL

bool built_with_nccl() { return false; }
std::string nccl_version() { return ""; }

struct NcclGroup::Impl {
    int size = 0;
    std::string description;
};

NcclGroup::NcclGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NcclGroup::~NcclGroup() = default;
int NcclGroup::size() const { return impl_->size; }
const std::string& NcclGroup::description() const { return impl_->description; }
void NcclGroup::sum_u64(int, unsigned long long*, size_t, void*) {
    pkv::fail(ErrorCode::unsupported, "pkv was built without NCCL");
}
void NcclGroup::max_u32(int, unsigned int*, size_t, void*) {
    pkv::fail(ErrorCode::unsupported, "pkv was built without NCCL");
}
void NcclGroup::wait(int, void*) { pkv::fail(ErrorCode::unsupported, "pkv was built without NCCL"); }
void NcclGroup::fail(int) noexcept {}

std::vector<NcclMember> nccl_local_group(const std::vector<int>&) {
    pkv::fail(ErrorCode::unsupported, "nccl group: pkv was built without NCCL");
}
std::string nccl_unique_id() { pkv::fail(ErrorCode::unsupported, "nccl group: pkv was built without NCCL"); }
NcclMember nccl_join(const std::string&, int, int, int) {
    pkv::fail(ErrorCode::unsupported, "nccl group: pkv was built without NCCL");
}

#endif

}  // namespace pkv::cuda
