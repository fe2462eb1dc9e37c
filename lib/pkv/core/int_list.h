// pkv/core/int_list.h — the integer lists of the command line: every `--layers`,
// `--heads`, `--bits` and `--keep-fp16-layers` goes through this one parser.
#pragma once

#include <string>
#include <vector>

namespace pkv {

/// "0,2,5-7" -> {0, 2, 5, 6, 7}: comma-separated non-negative integers below 2^30 and
/// inclusive ranges a-b (a <= b), returned ascending without duplicates. Empty items are
/// skipped ("1,,2" is {1, 2}). Throws invalid_argument naming `option` and the list:
///   "--layers '0,x': expected non-negative integers or ranges like 2-5, got 'x'"
///   "--layers '5-2': empty range '5-2'"
///   "--layers ',': expected at least one value"
/// Whether the values exist (a layer of the model, a head of the dump) is the caller's check.
std::vector<int> parse_int_list(const std::string& option, const std::string& list);

}  // namespace pkv
