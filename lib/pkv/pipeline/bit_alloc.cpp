// Greedy width allocation under a budget; the contract is in bit_alloc.h.
#include "pkv/pipeline/bit_alloc.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "pkv/core/error.h"

namespace pkv {

namespace {

// One step along a unit's hull: from width index `from` to `to`.
struct Step {
    double slope = 0.0;  // error reduction per extra bit
    size_t unit = 0;
    size_t from = 0, to = 0;
};

// The lower convex hull of a unit's (cost, error) points from width index `start` on:
// a width whose error a mix of its neighbours beats (or that does not lower the error)
// is skipped, so the slopes of the steps fall along the hull and the global order by
// slope takes each unit's steps in their own order.
std::vector<Step> hull_steps(const AllocUnit& u, size_t unit, size_t start) {
    std::vector<Step> steps;
    size_t at = start;
    while (at + 1 < kAllocWidths.size()) {
        size_t best = at;
        double best_slope = 0.0;
        for (size_t j = at + 1; j < kAllocWidths.size(); ++j) {
            const double s = (u.error[at] - u.error[j]) / (u.weight * (u.cost[j] - u.cost[at]));
            // The steepest descent; on equal slopes the farther point, so that the hull
            // has no collinear stops that a budget could split.
            if (s > best_slope || (best != at && s == best_slope)) best = j, best_slope = s;
        }
        if (best == at) break;  // no wider width lowers the error
        steps.push_back({best_slope, unit, at, best});
        at = best;
    }
    return steps;
}

}  // namespace

size_t alloc_width_index(int floor_bits, const char* what) {
    for (size_t w = 0; w + 1 < kAllocWidths.size(); ++w)
        if (kAllocWidths[w] == floor_bits) return w;
    throw Error(
        ErrorCode::invalid_argument,
        fmt::format("{} floor {} bits: expected 2, 3, 4 or 8 (the narrowest width a head may get)", what, floor_bits));
}

double alloc_weight(const std::vector<AllocUnit>& units) {
    double n = 0.0;
    for (const AllocUnit& u : units) n += u.weight;
    return n;
}

double alloc_uniform_bits(const std::vector<AllocUnit>& units, size_t w) {
    double s = 0.0;
    for (const AllocUnit& u : units) s += u.weight * u.cost[w];
    return units.empty() ? 0.0 : s / alloc_weight(units);
}

void check_bits_budget(const std::vector<AllocUnit>& units, double budget, const char* what, int floor_bits) {
    PKV_CHECK(!units.empty(), invalid_argument, "{}: no K/V heads to allocate widths to", what);
    const size_t f = alloc_width_index(floor_bits, what);
    const double lo = alloc_uniform_bits(units, f), hi = alloc_uniform_bits(units, kAllocWidths.size() - 1);
    PKV_CHECK(std::isfinite(budget), invalid_argument, "{} {}: expected a number of bits per element", what, budget);
    PKV_CHECK(budget >= lo, invalid_argument,
              "{} {}: below the cheapest allocation, {:.4f} bits per element (every K/V head at {} bits, counted "
              "with scales, zeros, pattern indices and gates)",
              what, budget, lo, floor_bits);
    PKV_CHECK(budget <= hi, invalid_argument, "{} {}: above {:.4g} (every K/V head kept fp16)", what, budget, hi);
}

BitAllocation allocate_bits(const std::vector<AllocUnit>& units, double budget, const char* what, int floor_bits) {
    check_bits_budget(units, budget, what, floor_bits);
    const size_t f = alloc_width_index(floor_bits, what);
    for (size_t i = 0; i < units.size(); ++i) {
        PKV_CHECK(std::isfinite(units[i].weight) && units[i].weight > 0.0, invalid_argument,
                  "{}: unit {}: weight {}, expected a finite number > 0", what, i, units[i].weight);
        for (size_t w = 0; w < kAllocWidths.size(); ++w) {
            PKV_CHECK(std::isfinite(units[i].error[w]) && units[i].error[w] >= 0.0, invalid_argument,
                      "{}: unit {}: error at {} bits is {}, expected a finite number >= 0", what, i, kAllocWidths[w],
                      units[i].error[w]);
            PKV_CHECK(w == 0 || units[i].cost[w] > units[i].cost[w - 1], invalid_argument,
                      "{}: unit {}: cost at {} bits ({}) does not exceed that at {} bits ({})", what, i,
                      kAllocWidths[w], units[i].cost[w], kAllocWidths[w - 1], units[i].cost[w - 1]);
        }
    }
    std::vector<Step> steps;
    for (size_t i = 0; i < units.size(); ++i) {
        const std::vector<Step> s = hull_steps(units[i], i, f);
        steps.insert(steps.end(), s.begin(), s.end());
    }
    std::sort(steps.begin(), steps.end(), [](const Step& a, const Step& b) {
        return std::make_tuple(-a.slope, a.unit, a.from) < std::make_tuple(-b.slope, b.unit, b.from);
    });
    const double n = alloc_weight(units);
    std::vector<size_t> at(units.size(), f);
    std::vector<bool> blocked(units.size(), false);  // a step of the unit did not fit: its later ones wait on it
    // Summed costs; the budget holds while total <= budget * n (a relative 1e-12 absorbs
    // the rounding of the sum, so a budget equal to an allocation's cost admits it).
    double total = alloc_uniform_bits(units, f) * n;
    for (const Step& s : steps) {
        if (blocked[s.unit]) continue;
        const double extra = units[s.unit].weight * (units[s.unit].cost[s.to] - units[s.unit].cost[s.from]);
        if (total + extra > budget * n * (1.0 + 1e-12)) {
            blocked[s.unit] = true;
            continue;
        }
        PKV_ASSERT(at[s.unit] == s.from);
        at[s.unit] = s.to;
        total += extra;
    }
    BitAllocation out;
    for (size_t i = 0; i < units.size(); ++i) {
        out.widths.push_back(kAllocWidths[at[i]]);
        out.bits += units[i].weight * units[i].cost[at[i]];
        out.error += units[i].error[at[i]];
    }
    out.bits /= n;
    return out;
}

}  // namespace pkv
