// pkv/core/atomic_file.h — outputs appear whole or not at all.
//
// Every file pkv writes goes to a temporary name in the destination directory
// (".<name>.pkv-tmp.<pid>") and is renamed over the final name by commit(). If the
// work fails, throws, or is interrupted by SIGINT/SIGTERM, the temporary file is
// removed and nothing is left under the final name. (After SIGKILL or a power cut
// only the hidden temporary can remain, never a half-written final file; the next
// AtomicOutput for the same name removes it once its process is gone.)
#pragma once

#include <cstddef>
#include <string>

namespace pkv {

class AtomicOutput {
public:
    /// Fails up front (failed_precondition) when `path` exists and `force` is false,
    /// and (io) when its directory does not exist or is not writable. Removes the
    /// temporaries of `path` whose process no longer exists (kill(pid, 0) gives
    /// ESRCH); a pid that is alive keeps its file even if the pid was reused, and
    /// processes of another pid namespace or host sharing the directory are not told
    /// apart from dead ones.
    AtomicOutput(std::string path, bool force);
    ~AtomicOutput();
    AtomicOutput(const AtomicOutput&) = delete;
    AtomicOutput& operator=(const AtomicOutput&) = delete;

    /// Where the writer should create its file.
    const std::string& temp_path() const { return temp_; }
    const std::string& path() const { return path_; }
    /// fsyncs the temporary (unless `durable` is false) and renames it to path(); throws
    /// io on failure, and interrupted (leaving path() as it was) once SIGINT/SIGTERM was
    /// received. Without the fsync a failure of pkv still leaves nothing under path(), but
    /// a power cut soon after may leave a file there whose data never reached the disk.
    void commit(bool durable = true);
    /// Writes `size` bytes as the whole temporary file, then commit(); throws io
    /// naming path() when the file cannot be created or written.
    void write_and_commit(const void* data, size_t size);

private:
    std::string path_, temp_;
    bool committed_ = false;
    int slot_ = -1;
};

/// Installs SIGINT/SIGTERM handlers: the first signal sets a flag that long loops
/// poll through check_interrupted(); a second one removes every pending temporary
/// file and exits at once with status 128 + signal (130 for SIGINT).
void install_interrupt_handlers();
/// For work that does not poll check_interrupted(): the first SIGINT/SIGTERM
/// removes every pending temporary file and exits at once with status 128 + signal.
/// A later install_interrupt_handlers() switches back to polling.
void install_exit_on_interrupt();
/// True once SIGINT or SIGTERM was received.
bool interrupted();
/// Throws Error(interrupted) if a signal was received.
void check_interrupted();

}  // namespace pkv
