// libFuzzer target: the KV dump reader (HDF5) on arbitrary bytes. Opens the file with
// KvDumpReader (which reads /layer_info as it opens), reads the token columns, the JSON
// records and a head or two of every activation present (whole and as a token range),
// then runs what `pkv validate`, `pkv info` and `pkv info --json` run on a dump. Besides
// crashes, leaks, UB, timeouts and allocations beyond the memory budget, an HDF5 object
// left open after the calls is a finding: every reader holds its handles in RAII
// wrappers, so a leftover handle is a path that skips them (docs/fuzzing.md).
//
// Leaks of memory that HDF5 allocated are not reported (see __lsan_default_suppressions
// below): the HDF5 1.10 of Debian 12 loses metadata-cache entries on the error paths of
// corrupt files by itself, inside calls such as H5Lexists that pkv cannot misuse. With
// the fast unwinder such stacks end inside libhdf5, so the suppression is by library and
// also hides variable-length strings pkv might forget to reclaim; handles pkv leaves open
// are still caught by the object count.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <hdf5.h>

#include "fuzz_common.h"
#include "pkv/kvdump/kv_dump.h"

namespace {

void read_dump(const std::string& path) {
    const pkv::KvDumpReader r(path);
    pkv_fuzz::guarded([&] { (void)r.token_ids(); });
    pkv_fuzz::guarded([&] { (void)r.token_seq(); });
    pkv_fuzz::guarded([&] { (void)r.token_pos(); });
    (void)r.model().dump();
    (void)r.provenance().dump();
    (void)r.summary().dump();
    (void)r.dim_order();
    (void)r.layer_info().size();
    const int64_t T = r.n_tokens();
    for (const char* name : pkv::kvdump::kActivations) {
        if (!r.has(name)) continue;
        const int heads = std::strcmp(name, pkv::kvdump::kQ) == 0 ? r.n_head() : r.n_head_kv();
        pkv_fuzz::guarded([&] { (void)r.read_head(name, 0, 0); });
        pkv_fuzz::guarded([&] { (void)r.read_head(name, r.n_layers() - 1, heads - 1, T / 2, T - T / 2); });
    }
}

}  // namespace

extern "C" const char* __lsan_default_suppressions() { return "leak:libhdf5\n"; }
// The suppression is hit on most corrupt inputs; its per-leak-check summary is noise.
extern "C" const char* __lsan_default_options() { return "print_suppressions=0"; }

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    pkv_fuzz::init();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = pkv_fuzz::write_input("input.h5", data, size);
    pkv_fuzz::guarded([&] { read_dump(path); });
    pkv_fuzz::guarded([&] { (void)pkv::validate_kv_dump(path); });
    pkv_fuzz::guarded([&] { (void)pkv::describe_kv_dump(path); });
    pkv_fuzz::guarded([&] { (void)pkv::kv_dump_metadata_json(path).dump(); });
    const ssize_t open_objects = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (open_objects != 0) {
        std::fprintf(stderr, "pkv fuzz: %zd HDF5 object(s) still open after the readers returned\n", open_objects);
        std::abort();
    }
    return 0;
}
