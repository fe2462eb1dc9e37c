// pkv/core/threads.h — run n pieces of work, each in its own thread (one per device).
#pragma once

#include <cstddef>
#include <exception>
#include <thread>
#include <vector>

namespace pkv {

/// Calls f(i) for i in [0, n), each in its own std::thread, joins them all, then
/// rethrows the exception of the lowest i that threw (if any).
template <typename F>
void each_in_thread(size_t n, F&& f) {
    std::vector<std::exception_ptr> errors(n);
    std::vector<std::thread> threads;
    threads.reserve(n);
    for (size_t i = 0; i < n; ++i)
        threads.emplace_back([&, i]() {
            try {
                f(i);
            } catch (...) {
                errors[i] = std::current_exception();
            }
        });
    for (std::thread& t : threads) t.join();
    for (const std::exception_ptr& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace pkv
