// pkv/core/progress.h — a progress bar for long work, drawn on stderr.
//
// On a terminal it redraws one line ("dump  [#####.....]  51% 5120/10000 tok  812 tok/s  eta 6s");
// when stderr is not a terminal it prints a plain line at most every `interval` seconds,
// so CI logs stay readable. Silent when the log level is above info.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace pkv {

class Progress {
public:
    /// `total` units of work named `unit` (e.g. "tok"); total 0 means unknown.
    Progress(std::string label, uint64_t total, std::string unit, double interval_s = 5.0);
    ~Progress();
    Progress(const Progress&) = delete;
    Progress& operator=(const Progress&) = delete;

    /// Adds `n` finished units and redraws if due.
    void advance(uint64_t n);
    /// Draws the final state and ends the line.
    void finish();
    uint64_t done() const { return done_; }
    /// Seconds since construction.
    double elapsed() const;

private:
    void draw(bool final);

    std::string label_;
    uint64_t total_;
    std::string unit_;
    double interval_;
    uint64_t done_ = 0;
    bool tty_;
    bool finished_ = false;
    std::chrono::steady_clock::time_point start_, last_;
};

/// Clears the progress line if one is on screen (log::write does so before printing).
void progress_line_clear();

}  // namespace pkv
