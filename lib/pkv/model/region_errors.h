// pkv/model/region_errors.h — internal to model/: the first exception of an OpenMP region.
#pragma once

#include <atomic>
#include <exception>

namespace pkv {

// Exceptions cannot leave an OpenMP region: keep the first, skip later stages, rethrow after the region.
class RegionErrors {
public:
    template <class Fn>
    void guarded(Fn&& fn) {
        if (failed_.load()) return;
        try {
            fn();
        } catch (...) {
#pragma omp critical(pkv_forward_error)
            if (!error_) error_ = std::current_exception();
            failed_ = true;
        }
    }
    void rethrow() const {
        if (error_) std::rethrow_exception(error_);
    }

private:
    std::exception_ptr error_;
    std::atomic<bool> failed_{false};
};

}  // namespace pkv
