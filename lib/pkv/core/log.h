// pkv/core/log.h — leveled logging to stderr. Data never goes through here:
// results go to stdout or files, diagnostics and progress to stderr.
#pragma once

#include <string>
#include <utility>

#include <fmt/format.h>

namespace pkv::log {

enum class Level : int { debug = 0, info = 1, warn = 2, error = 3, quiet = 4 };

/// Messages below `level` are dropped before formatting. Default: info.
void set_level(Level level);
Level level();
/// Parses "debug", "info", "warn", "error", "quiet"; throws invalid_argument otherwise.
Level parse_level(const std::string& name);

/// Writes "pkv: <level>: message\n" to stderr, clearing any progress line first.
void write(Level level, const std::string& message);

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
    if (level() <= Level::debug) write(Level::debug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
    if (level() <= Level::info) write(Level::info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
    if (level() <= Level::warn) write(Level::warn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
    if (level() <= Level::error) write(Level::error, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace pkv::log
