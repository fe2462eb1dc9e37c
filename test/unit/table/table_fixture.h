// test/unit/table/table_fixture.h — a small, valid, deterministic pattern table with no
// findings: distinct patterns, positive counts with equal totals per head, fitted clips.
#pragma once

#include <cstdint>
#include <vector>

#include "pkv/table/pattern_table.h"

namespace pkv_test {

inline pkv::PatternTable make_table(std::vector<int> layers = {0, 2}, int H = 3, int Mk = 4, int Mv = 5, int D = 8,
                                    uint32_t seed = 7) {
    pkv::PatternTable t;
    t.model.name = "tiny-llama";
    t.model.sha256 = std::string(64, 'a');
    t.model.n_layer = 4;
    t.model.n_head = 2 * H;
    t.model.n_head_kv = H;
    t.model.head_dim = D;
    t.bits = 2;
    t.group = 32;
    t.window = 16;
    t.k_patterns = Mk;
    t.v_patterns = Mv;
    uint32_t state = seed;
    auto next = [&state]() {  // deterministic values in [-2, 2)
        state = state * 1664525u + 1013904223u;
        return static_cast<float>(state >> 8) / float(1u << 24) * 4.0f - 2.0f;
    };
    for (int l : layers) {
        pkv::PatternLayer pl;
        pl.layer = l;
        for (int i = 0; i < H * Mk * D; ++i) pl.k_patterns.push_back(next());
        for (int i = 0; i < H * Mv * D; ++i) pl.v_patterns.push_back(next());
        // Each head holds the same counts in a rotated order, so every head's total agrees.
        for (int h = 0; h < H; ++h) {
            for (int j = 0; j < Mk; ++j) pl.k_counts.push_back(10 + (j + h) % Mk);
            for (int j = 0; j < Mv; ++j) pl.v_counts.push_back(20 + 3 * ((j + h) % Mv));
            pl.k_clip.push_back(0.9f - 0.05f * h);
            pl.v_clip.push_back(0.95f);
            pl.v_gate_z.push_back(static_cast<float>(pkv::ptable::kDefaultGateZ));
        }
        t.layers.push_back(std::move(pl));
    }
    t.calibration = {{"tool", "pkv"},
                     {"version", "0.1.0"},
                     {"argv", {"pkv", "calibrate"}},
                     {"dumps", nlohmann::json::array()},
                     {"seed", 1234},
                     {"heads", nlohmann::json::array()}};
    return t;
}

}  // namespace pkv_test
