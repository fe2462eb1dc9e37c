#include "pkv/core/provenance.h"

#include <ctime>

#include "pkv/core/version.h"

namespace pkv {

std::string utc_timestamp() {
    const std::time_t t = std::time(nullptr);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    return buf;
}

nlohmann::json provenance_json(const std::string& command, const std::vector<std::string>& argv) {
    return {{"tool", "pkv"},      {"version", PKV_VERSION}, {"commit", PKV_GIT_COMMIT},
            {"command", command}, {"argv", argv},           {"created_utc", utc_timestamp()}};
}

}  // namespace pkv
