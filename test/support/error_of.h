// test/support/error_of.h — the message (and code) of the pkv::Error a call throws, for
// tests that check refusals by their one-line text.
#pragma once

#include <functional>
#include <string>

#include "pkv/core/error.h"

namespace pkv_test {

/// f's pkv::Error message, its code in *code when given; "" when f throws nothing.
inline std::string error_of(const std::function<void()>& f, pkv::ErrorCode* code = nullptr) {
    try {
        f();
    } catch (const pkv::Error& e) {
        if (code) *code = e.code();
        return e.what();
    }
    return "";
}

}  // namespace pkv_test
