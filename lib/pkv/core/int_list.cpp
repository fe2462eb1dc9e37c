#include "pkv/core/int_list.h"

#include <set>
#include <sstream>

#include "pkv/core/error.h"

namespace pkv {

std::vector<int> parse_int_list(const std::string& option, const std::string& list) {
    std::set<int> out;
    std::stringstream ss(list);
    std::string item;
    auto num = [&](const std::string& s) {
        size_t used = 0;
        long v = -1;
        try {
            v = std::stol(s, &used);
        } catch (...) {
            used = 0;
        }
        PKV_CHECK(used == s.size() && !s.empty() && v >= 0 && v < (1L << 30), invalid_argument,
                  "{} '{}': expected non-negative integers or ranges like 2-5, got '{}'", option, list, s);
        return static_cast<int>(v);
    };
    while (std::getline(ss, item, ',')) {
        if (item.empty()) continue;
        const size_t dash = item.find('-');
        if (dash == std::string::npos) {
            out.insert(num(item));
        } else {
            const int a = num(item.substr(0, dash)), b = num(item.substr(dash + 1));
            PKV_CHECK(a <= b, invalid_argument, "{} '{}': empty range '{}'", option, list, item);
            for (int i = a; i <= b; ++i) out.insert(i);
        }
    }
    PKV_CHECK(!out.empty(), invalid_argument, "{} '{}': expected at least one value", option, list);
    return {out.begin(), out.end()};
}

}  // namespace pkv
