// pkv/pipeline/calibrate_pool.h — `pkv calibrate`'s inputs (calibrate_pool.cpp): the
// dumps (or the model source), the held-out split into whole sequences, and a head's
// tokens pooled into train and held-out parts. Shared by calibrate.cpp alone; not part
// of the public API.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pkv/pipeline/calibrate_fit.h"
#include "pkv/pipeline/kv_source.h"
#include "pkv/table/pattern_table.h"

namespace pkv::calib {

struct DumpInput {
    std::unique_ptr<KvSource> reader;
    std::vector<SeqRange> seqs;  ///< from /tokens/seq, in token order
    std::string model_sha256;
};

/// A token range of one dump, and where it lands in the pooled train or held-out tensor.
struct Piece {
    int dump = 0;
    int64_t start = 0, length = 0;
    bool holdout = false;
};

/// The source's sequences as token ranges.
std::vector<SeqRange> sequences_of(const KvSource& r);

/// Whole sequences of all dumps, drawn by a seeded shuffle until at least `fraction` of
/// all tokens are held out (one sequence alone: its last `fraction` of tokens), as pieces
/// in dump and token order (calibrate.h, "Held-out split").
std::vector<Piece> split_holdout(const std::vector<DumpInput>& dumps, double fraction, uint64_t seed);

/// One (layer, head) tensor of `dataset` pooled over the pieces, [tokens, D] floats,
/// Hadamard-rotated rows when `rotate`. Throws data_loss naming the file, layer, head,
/// token and dim of a non-finite value.
Pooled pool_tensor(const std::vector<DumpInput>& dumps, const std::vector<Piece>& pieces, const char* dataset,
                   int layer, int head, int D, bool rotate);

/// Rows [r0, r1) of pool_tensor(...).train alone, read from the dumps as token ranges
/// (a follower rank's shard of a data-parallel head).
std::vector<float> pool_train_rows(const std::vector<DumpInput>& dumps, const std::vector<Piece>& pieces,
                                   const char* dataset, int layer, int head, int D, bool rotate, int64_t r0,
                                   int64_t r1);

/// The header of the table (no layers yet): the model's identity and RoPE as `first` (a
/// dump or the model source) records them, with H KV heads of D dims and the
/// quantizer's settings from c, so that a runtime can reproduce the quantizer.
PatternTable table_header(const CalibrateConfig& c, const KvSource& first, int H, int D, const std::string& sha256);

}  // namespace pkv::calib
