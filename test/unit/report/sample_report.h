// test/unit/report/sample_report.h — a synthetic `pkv analyze` report for the
// renderer and schema tests. The numbers are made up but shaped like real ones:
// error falls ~4x per extra bit, patternkv beats kivi, rotation helps, layers 0
// and 1 are far worse than the rest.
#pragma once

#include <vector>

#include <nlohmann/json.hpp>

namespace pkv::test {

/// methods fp16 (16 bits), kivi and patternkv (each bit width in `bits`, with and
/// without rotation when `with_rotation`), plus q4_0/q8_0/fp8 when `all_methods`.
/// Result (layer 1, KV head 0, kivi, 2 bits, no rotation) has attn null.
/// local_window 0: a 1.0 report of an all-global model (SmolLM2-like). local_window > 0:
/// a 1.1 report of a Gemma-3-like model, every sixth layer (5, 11, ...) global and the
/// others local with that sliding window: windows in results and fragile heads, and
/// layer_kinds with the means per kind (local layers 2x the error of global ones).
nlohmann::json make_sample_report(int n_layer, int n_kv_head, const std::vector<int>& bits, bool with_rotation,
                                  bool all_methods, int local_window = 0);

}  // namespace pkv::test
