// pkv/core/memory_budget.h — the one bound on memory that sizes read from files may ask for.
//
// Every reader that allocates from a size found in a file (a token count, a dataset
// extent, a tensor shape) first checks the size against the real file and then against
// this budget, so a forged or corrupt header gives one clear error instead of a
// multi-gigabyte allocation or an out-of-memory kill.
//
// The budget is the machine's physical memory, or PKV_MEMORY_BUDGET when set: a byte
// count with an optional K, M, G or T suffix (powers of 1024), e.g. "8G". A value pkv
// cannot parse is an invalid_argument error naming the variable.
#pragma once

#include <cstdint>
#include <string>

namespace pkv {

/// Bytes one allocation sized from a file may take (see above); at least 1 MiB.
uint64_t memory_budget_bytes();

/// Parses a PKV_MEMORY_BUDGET value ("4096", "512M", "8G"); throws invalid_argument.
uint64_t parse_memory_size(const std::string& text);

/// Throws out_of_range "<what>: needs <bytes> of memory, above the budget of <budget>
/// (PKV_MEMORY_BUDGET)" when bytes exceeds the budget; `what` names the file and object.
void check_memory_budget(uint64_t bytes, const std::string& what);

/// check_memory_budget for reading the whole of `path` into memory (its size on disk);
/// a file that cannot be stat'ed is left to the caller's open to report.
void check_file_fits_budget(const std::string& path);

/// "1.5 GiB", "512 KiB", "17 B": sizes for messages.
std::string human_bytes(uint64_t bytes);

}  // namespace pkv
