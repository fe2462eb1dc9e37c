// test/unit/pipeline/calib_fixture.h — the small calibration the calibrate tests run on a
// synthetic dump (pkv::test::write_synth_dump): 4 key and value patterns per head, group 8,
// window 16, at most 10 k-means updates, a quarter of the sequences held out.
#pragma once

#include <string>

#include "pkv/pipeline/calibrate.h"

namespace pkv::test {

inline CalibrateConfig small_calibration(const std::string& dump, const std::string& out) {
    CalibrateConfig c;
    c.dump_paths = {dump};
    c.k_patterns = c.v_patterns = 4;
    c.group = 8;
    c.window = 16;
    c.max_iter = 10;
    c.holdout = 0.25;
    c.out_path = out;
    return c;
}

}  // namespace pkv::test
