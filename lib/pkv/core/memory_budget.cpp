#include "pkv/core/memory_budget.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "pkv/core/error.h"

namespace pkv {

uint64_t parse_memory_size(const std::string& text) {
    size_t i = 0;
    uint64_t v = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
        PKV_CHECK(v <= (UINT64_MAX - 9) / 10, invalid_argument, "PKV_MEMORY_BUDGET '{}': too large", text);
        v = v * 10 + static_cast<uint64_t>(text[i++] - '0');
    }
    PKV_CHECK(i > 0, invalid_argument, "PKV_MEMORY_BUDGET '{}': expected a byte count such as 4096, 512M or 8G", text);
    int shift = 0;
    if (i < text.size()) {
        switch (text[i]) {
            case 'K':
            case 'k': shift = 10; break;
            case 'M':
            case 'm': shift = 20; break;
            case 'G':
            case 'g': shift = 30; break;
            case 'T':
            case 't': shift = 40; break;
            default: shift = -1;
        }
        ++i;
        if (i < text.size() && (text[i] == 'B' || text[i] == 'b')) ++i;
    }
    PKV_CHECK(shift >= 0 && i == text.size(), invalid_argument,
              "PKV_MEMORY_BUDGET '{}': expected a byte count such as 4096, 512M or 8G", text);
    PKV_CHECK(v <= (UINT64_MAX >> shift), invalid_argument, "PKV_MEMORY_BUDGET '{}': too large", text);
    return v << shift;
}

uint64_t memory_budget_bytes() {
    constexpr uint64_t kFloor = uint64_t{1} << 20;
    if (const char* env = std::getenv("PKV_MEMORY_BUDGET"); env && *env)
        return std::max(kFloor, parse_memory_size(env));
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return uint64_t{16} << 30;  // unknown: a typical workstation
    return std::max(kFloor, static_cast<uint64_t>(pages) * static_cast<uint64_t>(page));
}

std::string human_bytes(uint64_t bytes) {
    static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = static_cast<double>(bytes);
    int u = 0;
    while (v >= 1024.0 && u < 6) {
        v /= 1024.0;
        ++u;
    }
    return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, units[u]);
}

void check_memory_budget(uint64_t bytes, const std::string& what) {
    const uint64_t budget = memory_budget_bytes();
    PKV_CHECK(bytes <= budget, out_of_range, "{}: needs {} of memory, above the budget of {} (PKV_MEMORY_BUDGET)", what,
              human_bytes(bytes), human_bytes(budget));
}

void check_file_fits_budget(const std::string& path) {
    struct stat st {};
    if (stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode))
        check_memory_budget(static_cast<uint64_t>(st.st_size), path);
}

}  // namespace pkv
