#include "pkv/core/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "pkv/core/error.h"

namespace pkv {

namespace {

// Temporary paths the second signal must remove; plain char arrays so the
// handler stays async-signal-safe.
constexpr int kSlots = 16;
constexpr size_t kPathMax = 4096;
char g_temp_paths[kSlots][kPathMax];
std::atomic<bool> g_slot_used[kSlots];
volatile sig_atomic_t g_signals = 0;

void on_signal(int sig) {
    g_signals = g_signals + 1;
    if (g_signals >= 2) {
        for (int i = 0; i < kSlots; ++i)
            if (g_slot_used[i].load()) unlink(g_temp_paths[i]);
        _exit(128 + sig);
    }
}

int claim_slot(const std::string& path) {
    if (path.size() >= kPathMax) return -1;
    for (int i = 0; i < kSlots; ++i) {
        bool expected = false;
        if (!g_slot_used[i].load() ) {
            std::memcpy(g_temp_paths[i], path.c_str(), path.size() + 1);
            if (g_slot_used[i].compare_exchange_strong(expected, true)) return i;
        }
    }
    return -1;
}

std::string dir_of(const std::string& path) {
    const auto slash = path.find_last_of('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

}  // namespace

AtomicOutput::AtomicOutput(std::string path, bool force) : path_(std::move(path)) {
    PKV_CHECK(!path_.empty(), invalid_argument, "output path is empty");
    struct stat st {};
    if (stat(path_.c_str(), &st) == 0) {
        PKV_CHECK(!S_ISDIR(st.st_mode), invalid_argument, "{}: output path is a directory", path_);
        PKV_CHECK(force, failed_precondition, "{}: output exists; pass --force to overwrite it", path_);
    }
    const std::string dir = dir_of(path_);
    struct stat dst {};
    PKV_CHECK(stat(dir.c_str(), &dst) == 0 && S_ISDIR(dst.st_mode), io, "{}: output directory '{}' does not exist",
              path_, dir);
    PKV_CHECK(access(dir.c_str(), W_OK) == 0, io, "{}: output directory '{}' is not writable", path_, dir);
    const auto slash = path_.find_last_of('/');
    const std::string base = slash == std::string::npos ? path_ : path_.substr(slash + 1);
    temp_ = (slash == std::string::npos ? std::string() : path_.substr(0, slash + 1)) + "." + base + ".pkv-tmp." +
            std::to_string(getpid());
    slot_ = claim_slot(temp_);
}

AtomicOutput::~AtomicOutput() {
    if (!committed_) unlink(temp_.c_str());
    if (slot_ >= 0) g_slot_used[slot_].store(false);
}

void AtomicOutput::write_and_commit(const void* data, size_t size) {
    {
        std::ofstream f(temp_, std::ios::binary | std::ios::trunc);
        PKV_CHECK(f, io, "{}: cannot create '{}': {}", path_, temp_, std::strerror(errno));
        f.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
        f.flush();
        PKV_CHECK(f, io, "{}: write failed: {}", path_, std::strerror(errno));
    }
    commit();
}

void AtomicOutput::commit() {
    PKV_ASSERT(!committed_);
    const int fd = open(temp_.c_str(), O_RDONLY);
    PKV_CHECK(fd >= 0, io, "{}: cannot reopen temporary output '{}': {}", path_, temp_, std::strerror(errno));
    const int rc = fsync(fd);
    const int err = errno;
    close(fd);
    PKV_CHECK(rc == 0, io, "{}: cannot flush output to disk: {}", path_, std::strerror(err));
    PKV_CHECK(std::rename(temp_.c_str(), path_.c_str()) == 0, io, "{}: cannot rename temporary output '{}': {}",
              path_, temp_, std::strerror(errno));
    committed_ = true;
}

void install_interrupt_handlers() {
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

bool interrupted() { return g_signals > 0; }

void check_interrupted() {
    if (interrupted()) fail(ErrorCode::interrupted, "interrupted by signal; no output was written");
}

}  // namespace pkv
