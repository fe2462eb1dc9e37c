#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>

#include "pkv/core/error.h"
#include "pkv/core/log.h"
#include "pkv/core/progress.h"

namespace pkv {

namespace {
std::atomic<int> g_level{static_cast<int>(log::Level::info)};
std::mutex g_mutex;
bool g_line_active = false;  // guarded by g_mutex
}  // namespace

namespace log {

void set_level(Level l) { g_level = static_cast<int>(l); }
Level level() { return static_cast<Level>(g_level.load()); }

Level parse_level(const std::string& name) {
    if (name == "debug") return Level::debug;
    if (name == "info") return Level::info;
    if (name == "warn") return Level::warn;
    if (name == "error") return Level::error;
    if (name == "quiet") return Level::quiet;
    fail(ErrorCode::invalid_argument, "--log-level: expected debug|info|warn|error|quiet, got '{}'", name);
}

void write(Level l, const std::string& message) {
    static const char* names[] = {"debug", "info", "warning", "error", ""};
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_line_active) {
        std::fputs("\r\033[K", stderr);
        g_line_active = false;
    }
    std::fprintf(stderr, "pkv: %s: %s\n", names[static_cast<int>(l)], message.c_str());
    std::fflush(stderr);
}

}  // namespace log

void progress_line_clear() {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_line_active) {
        std::fputs("\r\033[K", stderr);
        std::fflush(stderr);
        g_line_active = false;
    }
}

Progress::Progress(std::string label, uint64_t total, std::string unit, double interval_s)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      interval_(interval_s),
      tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

Progress::~Progress() {
    if (!finished_ && done_ > 0) progress_line_clear();
}

double Progress::elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::advance(uint64_t n) {
    done_ += n;
    const auto now = std::chrono::steady_clock::now();
    const double since = std::chrono::duration<double>(now - last_).count();
    if (since >= (tty_ ? 0.2 : interval_) && (total_ == 0 || done_ < total_)) {
        last_ = now;
        draw(false);
    }
}

void Progress::finish() {
    if (finished_) return;
    finished_ = true;
    draw(true);
}

void Progress::draw(bool final) {
    if (log::level() > log::Level::info) return;
    const double t = elapsed();
    const double rate = t > 0 ? static_cast<double>(done_) / t : 0.0;
    std::string line = fmt::format("{}  ", label_);
    if (total_ > 0) {
        const double frac = std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
        const int width = 24, fill = static_cast<int>(frac * width);
        line += "[" + std::string(fill, '#') + std::string(width - fill, '.') + "] ";
        line += fmt::format("{:3.0f}% {}/{} {}", frac * 100.0, done_, total_, unit_);
        if (!final && rate > 0)
            line += fmt::format("  {:.0f} {}/s  eta {:.0f}s", rate, unit_, (total_ - std::min(done_, total_)) / rate);
    } else {
        line += fmt::format("{} {}", done_, unit_);
    }
    if (final) line += fmt::format("  {:.0f} {}/s  {:.1f}s", rate, unit_, t);
    std::lock_guard<std::mutex> lock(g_mutex);
    if (tty_) {
        std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
        g_line_active = !final;
    } else {
        std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
}

}  // namespace pkv
