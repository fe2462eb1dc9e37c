// test/fuzz/fuzz_common.h — what every pkv fuzz target shares: a private directory on
// tmpfs that the input is written into (pkv's readers take paths, not buffers), a quiet
// library, the memory budget the readers run under, and the rule for exceptions: a
// reader refusing the input is expected, so pkv::Error and other std::exceptions are
// caught (PKV_FUZZ_STRICT=1 makes anything but pkv::Error abort, to find the places
// that let a library exception escape). docs/fuzzing.md describes the targets and how
// scripts/fuzz.sh runs them.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <typeinfo>

#include "pkv/core/error.h"
#include "pkv/core/log.h"

// Defaults for a target run by hand on an artifact (scripts/fuzz.sh sets the same and
// more): a UB report without its stack names only the line. Defined here because each
// target is the one translation unit that includes this header.
extern "C" const char* __ubsan_default_options() { return "print_stacktrace=1:halt_on_error=1"; }

namespace pkv_fuzz {

// Well below scripts/fuzz.sh's -malloc_limit_mb (1024): any allocation the budget lets
// through stays under libFuzzer's limit, so a malloc-limit report is always a size read
// from the input that escaped the budget check (pkv/core/memory_budget.h).
constexpr const char* kMemoryBudget = "256M";

inline std::string& work_dir() {
    static std::string dir;
    return dir;
}

inline void remove_work_dir() {
    std::error_code ec;
    if (!work_dir().empty()) std::filesystem::remove_all(work_dir(), ec);
}

[[noreturn]] inline void die(const std::string& what) {
    std::fprintf(stderr, "pkv fuzz: %s: %s\n", what.c_str(), std::strerror(errno));
    std::abort();
}

// A target that crashed never ran atexit: removes the directories of targets that are gone
// (pkv-fuzz-<pid>-*, the pid no longer running). A reused pid only keeps a directory longer.
inline void remove_stale_dirs(const std::string& base) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(base, ec)) {
        int pid = 0;
        if (std::sscanf(entry.path().filename().c_str(), "pkv-fuzz-%d-", &pid) != 1 || pid <= 0) continue;
        if (::kill(pid, 0) == 0 || errno != ESRCH) continue;
        std::filesystem::remove_all(entry.path(), ec);
    }
}

/// Call once, from LLVMFuzzerInitialize, before any pkv code runs.
inline void init() {
    pkv::log::set_level(pkv::log::Level::quiet);
    // Environment set by the caller wins, so an artifact can be replayed under other bounds.
    ::setenv("PKV_MEMORY_BUDGET", kMemoryBudget, 0);
    // One thread: reports and timings then belong to the input alone.
    ::setenv("OMP_NUM_THREADS", "1", 0);

    // tmpfs keeps a million writes off the disk. scripts/fuzz.sh points PKV_FUZZ_TMPDIR at
    // a directory of its own, which it removes afterwards.
    std::string base;
    if (const char* b = std::getenv("PKV_FUZZ_TMPDIR"); b != nullptr && *b != '\0') base = b;
    else if (::access("/dev/shm", W_OK) == 0) base = "/dev/shm";
    else base = std::filesystem::temp_directory_path().string();
    remove_stale_dirs(base);
    std::string dir = base + "/pkv-fuzz-" + std::to_string(::getpid()) + "-XXXXXX";
    if (::mkdtemp(dir.data()) == nullptr) die("cannot create a directory under " + base);
    work_dir() = dir;
    std::atexit(remove_work_dir);
}

/// The path of `name` inside the private directory.
inline std::string path_of(const std::string& name) { return work_dir() + "/" + name; }

/// Writes `size` bytes to `name` in the private directory, replacing what a previous
/// input left there, and returns its path.
inline std::string write_input(const std::string& name, const void* data, size_t size) {
    const std::string path = path_of(name);
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) die("cannot create " + path);
    if (size > 0 && std::fwrite(data, 1, size, f) != size) die("cannot write " + path);
    if (std::fclose(f) != 0) die("cannot write " + path);
    return path;
}

inline bool strict() {
    static const bool on = [] {
        const char* s = std::getenv("PKV_FUZZ_STRICT");
        return s != nullptr && std::strcmp(s, "1") == 0;
    }();
    return on;
}

/// Runs one reader call; see the header comment for what counts as expected.
template <typename F>
void guarded(F&& call) {
    try {
        call();
    } catch (const pkv::Error&) {
    } catch (const std::exception& e) {
        if (strict()) {
            std::fprintf(stderr, "pkv fuzz: %s escaped instead of pkv::Error: %s\n", typeid(e).name(), e.what());
            std::abort();
        }
    }
}

}  // namespace pkv_fuzz
