// test/support/scratch_dir.h — a fresh directory under the system temp dir,
// removed with everything in it when the test ends.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace pkv_test {

class ScratchDir {
public:
    ScratchDir() {
        static std::atomic<int> counter{0};
        dir_ = std::filesystem::temp_directory_path() /
               ("pkv-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_);
    }
    ~ScratchDir() {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    ScratchDir(const ScratchDir&) = delete;
    ScratchDir& operator=(const ScratchDir&) = delete;

    /// The directory itself.
    std::string str() const { return dir_.string(); }
    /// A path inside the directory.
    std::string path(const std::string& name) const { return (dir_ / name).string(); }
    /// Writes bytes to `name` (replacing it) and returns the full path.
    std::string write(const std::string& name, const std::vector<uint8_t>& bytes) const {
        const std::string p = path(name);
        std::ofstream f(p, std::ios::binary | std::ios::trunc);
        f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        return p;
    }

private:
    std::filesystem::path dir_;
};

}  // namespace pkv_test
