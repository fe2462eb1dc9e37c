// pkv/pipeline/bit_alloc.h — code widths per (layer, KV head, K or V) of a pattern table
// under a storage budget (`pkv calibrate --bits-budget`, docs/calibration.md).
//
// A unit (one tensor of one head) holds AllocUnit::weight elements relative to the others
// (1 for a global layer; a sliding-window layer's ring holds fewer tokens of a long
// sequence), so the table's average storage is the weighted mean of its units' bits per
// element, as pkv eval averages over the elements a cache holds. Each
// unit has a measured error at every candidate width (kAllocWidths: 2, 3, 4, 8 bits,
// and 16: kept fp16, error 0) and a cost in bits per element counted as pkv eval and
// analyze count it (simulate.h table_element_bits: codes, binary16 scales and zeros,
// pattern index and, for values, the gate bit).
//
// The allocation is greedy on each unit's lower convex hull of (cost, error): starting
// from every unit at the floor width (2 bits unless asked otherwise: a floor of 4 keeps
// every head at 4 bits or more and spends the rest of the budget on the fragile ones), it takes the steps in one global
// order, the largest error reduction per extra (weighted) bit first (ties: the lower unit index, then the narrower
// step). A step that would lift the mean above the budget is passed over, and with it the unit's later steps; the
// others go on, so a fragile head's jump to fp16 that does not fit leaves the budget to the heads whose steps do.
// Deterministic.
//
// Monotone in the budget: the sum of the units' errors never rises with the budget (the
// steps passed over at a smaller budget reduce the error at least as fast as what was
// taken instead). A single unit may still lose a step when the budget grows: a step that
// did not fit before now fits and takes the room another unit's smaller step used.
#pragma once

#include <array>
#include <cstddef>
#include <vector>

namespace pkv {

/// The candidate widths, narrowest first; 16 keeps the unit in fp16.
constexpr std::array<int, 5> kAllocWidths = {2, 3, 4, 8, 16};

/// One unit: cost and error at each width of kAllocWidths (same order). Costs rise with
/// the width; errors are >= 0 and finite (16: 0). Errors of different units must be
/// comparable: pkv calibrate uses each unit's NMSE.
struct AllocUnit {
    std::array<double, kAllocWidths.size()> cost{};
    std::array<double, kAllocWidths.size()> error{};
    double weight = 1.0;  ///< elements held relative to the other units (> 0)
};

struct BitAllocation {
    std::vector<int> widths;  ///< [units]: one of kAllocWidths
    double bits = 0.0;        ///< weighted mean cost per element over the units (<= the budget)
    double error = 0.0;       ///< sum of the units' errors at their widths
};

/// Weighted mean cost with every unit at width index w of kAllocWidths (0: all 2 bits, 4: all fp16).
double alloc_uniform_bits(const std::vector<AllocUnit>& units, std::size_t w);

/// Index in kAllocWidths of a floor width (2, 3, 4 or 8); invalid_argument otherwise,
/// one line naming `what`.
std::size_t alloc_width_index(int floor_bits, const char* what = "--bits-budget");

/// Throws as allocate_bits does for a budget outside [cheapest, 16] (costs alone are read).
void check_bits_budget(const std::vector<AllocUnit>& units, double budget, const char* what = "--bits-budget",
                       int floor_bits = 2);

/// The allocation under `budget` (mean bits per element), no unit below `floor_bits` (2, 3,
/// 4 or 8). Throws invalid_argument with one line when the budget is not a finite number
/// in [cheapest, 16]: "--bits-budget 2.1: below the cheapest allocation, 2.4609 bits per
/// element (every K/V head at 2 bits, counted with scales, zeros, pattern indices and
/// gates)" (the cheapest: every unit at the floor) or "--bits-budget 17: above 16 (every
/// K/V head kept fp16)"; `what` names the option. An empty unit list or another floor
/// throws too.
BitAllocation allocate_bits(const std::vector<AllocUnit>& units, double budget, const char* what = "--bits-budget",
                            int floor_bits = 2);

}  // namespace pkv
