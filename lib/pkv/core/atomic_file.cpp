#include "pkv/core/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "pkv/core/error.h"
#include "pkv/core/log.h"

namespace pkv {

namespace {

// Temporary paths a signal must remove; plain char arrays so the handler stays
// async-signal-safe. A slot is claimed (kWriting) before its path is copied in and
// only published (kReady) after, so the handler never reads a half-copied path and
// two threads never share a slot.
constexpr int kSlots = 16;
constexpr size_t kPathMax = 4096;
constexpr int kFree = 0, kWriting = 1, kReady = 2;
char g_temp_paths[kSlots][kPathMax];
std::atomic<int> g_slot_state[kSlots];
volatile sig_atomic_t g_signals = 0;
volatile sig_atomic_t g_exit_at_once = 0;
volatile sig_atomic_t g_stderr_tty = 0;

void on_signal(int sig) {
    g_signals = g_signals + 1;
    if (g_exit_at_once || g_signals >= 2) {
        for (int i = 0; i < kSlots; ++i)
            if (g_slot_state[i].load() == kReady) unlink(g_temp_paths[i]);
        // write(2) only: stdio is not async-signal-safe. On a terminal, first clear
        // the progress line the signal may have cut.
        static const char clear[] = "\r\033[K";
        static const char msg[] = "pkv: error: interrupted by signal; unfinished outputs removed\n";
        if (g_stderr_tty) (void)!write(STDERR_FILENO, clear, sizeof clear - 1);
        (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
        _exit(128 + sig);
    }
}

int claim_slot(const std::string& path) {
    if (path.size() >= kPathMax) return -1;
    for (int i = 0; i < kSlots; ++i) {
        int expected = kFree;
        if (g_slot_state[i].compare_exchange_strong(expected, kWriting)) {
            std::memcpy(g_temp_paths[i], path.c_str(), path.size() + 1);
            g_slot_state[i].store(kReady);
            return i;
        }
    }
    return -1;
}

void install(bool exit_at_once) {
    g_stderr_tty = isatty(STDERR_FILENO) != 0;
    g_exit_at_once = exit_at_once;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

std::string dir_of(const std::string& path) {
    const auto slash = path.find_last_of('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

// Removes "<prefix><pid>" files in `dir` whose process is gone: what a SIGKILL or a
// power cut left of an earlier run. Only ESRCH counts as gone: EPERM means the
// process exists under another user, and a live writer's file must stay.
void remove_stale_temps(const std::string& out, const std::string& dir, const std::string& prefix) {
    DIR* d = opendir(dir.c_str());
    if (!d) return;
    while (const dirent* e = readdir(d)) {
        const char* name = e->d_name;
        if (std::strncmp(name, prefix.c_str(), prefix.size()) != 0) continue;
        const char* digits = name + prefix.size();
        const size_t n = std::strlen(digits);
        if (n == 0 || n > 9 || std::strspn(digits, "0123456789") != n) continue;
        const long pid = std::strtol(digits, nullptr, 10);
        if (pid <= 0 || pid == getpid()) continue;
        if (kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
        const std::string stale = (dir == "/" ? "" : dir) + "/" + name;
        if (unlink(stale.c_str()) == 0)
            log::info("{}: removed '{}', left by process {} that no longer runs", out, stale, pid);
    }
    closedir(d);
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
    const std::string prefix = "." + base + ".pkv-tmp.";
    remove_stale_temps(path_, dir, prefix);
    temp_ =
        (slash == std::string::npos ? std::string() : path_.substr(0, slash + 1)) + prefix + std::to_string(getpid());
    slot_ = claim_slot(temp_);
}

AtomicOutput::~AtomicOutput() {
    if (!committed_) unlink(temp_.c_str());
    if (slot_ >= 0) g_slot_state[slot_].store(kFree);
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

void AtomicOutput::commit(bool durable) {
    PKV_ASSERT(!committed_);
    if (durable) {
        const int fd = open(temp_.c_str(), O_RDONLY);
        PKV_CHECK(fd >= 0, io, "{}: cannot reopen temporary output '{}': {}", path_, temp_, std::strerror(errno));
        const int rc = fsync(fd);
        const int err = errno;
        close(fd);
        PKV_CHECK(rc == 0, io, "{}: cannot flush output to disk: {}", path_, std::strerror(err));
    }
    // A signal that came after the last poll of the work still keeps the output out.
    check_interrupted();
    PKV_CHECK(std::rename(temp_.c_str(), path_.c_str()) == 0, io, "{}: cannot rename temporary output '{}': {}", path_,
              temp_, std::strerror(errno));
    committed_ = true;
}

void install_interrupt_handlers() { install(false); }

void install_exit_on_interrupt() { install(true); }

bool interrupted() { return g_signals > 0; }

void check_interrupted() {
    if (interrupted()) fail(ErrorCode::interrupted, "interrupted by signal; no output was written");
}

}  // namespace pkv
