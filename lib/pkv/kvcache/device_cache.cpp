// Which methods a device engine simulates itself (device_cache.h).
#include "pkv/kvcache/device_cache.h"

namespace pkv {

bool device_cache_method(KvMethod m) {
    switch (m) {
        case KvMethod::fp16:
        case KvMethod::kivi:
        case KvMethod::q4_0:
        case KvMethod::q8_0:
        case KvMethod::fp8:
        case KvMethod::patternkv_table:
        case KvMethod::patternkv: return true;
    }
    return false;
}

}  // namespace pkv
