// pkv/pipeline/calibrate_alloc.h — `pkv calibrate --bits-budget`: per-head code widths
// chosen from the fits at every width (calibrate_fit.h WidthFit) with bit_alloc.h, shared
// by calibrate.cpp alone; not part of the public API.
//
// Units: (calibrated layer, KV head, K then V), in table order. A unit's error at width w
// is its training NMSE with the residual quantizer fitted at w (0 at 16, fp16); its cost
// is simulate.h table_element_bits, what pkv eval and analyze count per element.
#pragma once

#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/pipeline/bit_alloc.h"
#include "pkv/pipeline/calibrate.h"
#include "pkv/table/pattern_table.h"

namespace pkv::calib {

/// The costs of the K and V units of a head (errors left 0), from the settings alone.
AllocUnit alloc_costs(const CalibrateConfig& c, int D, bool value);

/// Refuses a budget outside [cheapest, 16] before any mining (bit_alloc.h's message).
void check_budget_early(const CalibrateConfig& c, int D, size_t n_layers, int H);

/// Allocates the widths under c.bits_budget from the head records (calibrate.cpp's
/// head_record, with "k_widths" / "v_widths"; records[i] is head i % H of t.layers[i / H])
/// and applies them to t: k_bits / v_bits, and each head's clip ratios and gate z set to
/// their fit at its width (a 16-bit head keeps those of c.bits). heads (the per-head
/// statistics, same order) gain "bits" and "widths" under "k" and "v". Returns the
/// record of pkv.calibration's "allocation".
nlohmann::json apply_allocation(const CalibrateConfig& c, PatternTable& t,
                                const std::vector<const nlohmann::json*>& records, nlohmann::json& heads);

}  // namespace pkv::calib
