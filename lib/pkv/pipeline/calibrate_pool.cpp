// `pkv calibrate`'s inputs: the held-out split and the pooled tensors (calibrate_pool.h).
#include "pkv/pipeline/calibrate_pool.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "pkv/core/error.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/quant/hadamard.h"

namespace pkv::calib {

namespace {

// The dump's RoPE as a table records it (pattern_table.h kMetaModelRope); empty when the
// dump's model record has none (synthetic data).
std::string rope_record(const nlohmann::json& m) {
    if (!m.is_object() || !m.contains("rope_freq_base")) return {};
    nlohmann::json r = {{"type", m.value("rope_type", std::string("norm"))},
                        {"n_rot", m.value("n_rot", 0)},
                        {"base", m["rope_freq_base"]},
                        {"freq_scale", m.value("rope_freq_scale", 1.0)},
                        {"scaling", m.value("rope_scaling", std::string("none"))},
                        {"freq_factors", m.value("rope_freq_factors", nlohmann::json(nullptr))}};
    return r.dump();
}

}  // namespace

std::vector<SeqRange> sequences_of(const KvSource& r) {
    const KvDumpReader::Sequences s = r.sequences();
    std::vector<SeqRange> out(s.start.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = {s.start[i], s.length[i]};
    return out;
}

std::vector<Piece> split_holdout(const std::vector<DumpInput>& dumps, double fraction, uint64_t seed) {
    std::vector<Piece> pieces;
    int64_t total = 0;
    for (int d = 0; d < static_cast<int>(dumps.size()); ++d)
        for (const SeqRange& s : dumps[d].seqs) {
            pieces.push_back({d, s.start, s.length, false});
            total += s.length;
        }
    if (fraction <= 0.0) return pieces;
    const auto want = static_cast<int64_t>(std::ceil(fraction * static_cast<double>(total)));
    if (pieces.size() == 1) {
        // One sequence: hold out its tail, so the held-out tokens are still unseen text.
        // Copied, not referenced: the push_back below may move the vector's storage.
        const Piece whole = pieces[0];
        const int64_t held = std::min(want, whole.length - 1);  // the mining keeps at least one token
        if (held <= 0) return pieces;
        pieces[0].length = whole.length - held;
        pieces.push_back({whole.dump, whole.start + whole.length - held, held, true});
        return pieces;
    }
    std::vector<size_t> order(pieces.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::mt19937_64 gen(seed ^ 0x686f6c646f7574ULL);
    std::shuffle(order.begin(), order.end(), gen);
    int64_t held = 0;
    // Never hold out every sequence: the mining needs at least one.
    for (size_t i = 0; i + 1 < order.size() && held < want; ++i) {
        pieces[order[i]].holdout = true;
        held += pieces[order[i]].length;
    }
    return pieces;
}

namespace {

// Tokens [t0, t0 + count) of one (layer, head) of a dump, checked finite (an error names
// the token and dimension); count < 0: all tokens.
std::vector<float> read_finite(const KvSource& r, const char* dataset, int layer, int head, int D, int64_t t0,
                               int64_t count) {
    const auto& layers = r.layers();
    const int slot = static_cast<int>(std::find(layers.begin(), layers.end(), layer) - layers.begin());
    const std::vector<float> x =
        count < 0 ? r.read_head(dataset, slot, head) : r.read_head(dataset, slot, head, t0, count);
    for (size_t i = 0; i < x.size(); ++i)
        if (!std::isfinite(x[i]))
            fail(ErrorCode::data_loss,
                 "{}::{}: layer {}, head {}, token {}, dim {} is {}; calibration needs finite values", r.path(),
                 dataset, layer, head, t0 + static_cast<int64_t>(i / static_cast<size_t>(D)),
                 static_cast<int64_t>(i % static_cast<size_t>(D)), x[i]);
    return x;
}

}  // namespace

Pooled pool_tensor(const std::vector<DumpInput>& dumps, const std::vector<Piece>& pieces, const char* dataset,
                   int layer, int head, int D, bool rotate) {
    Pooled out;
    for (int d = 0; d < static_cast<int>(dumps.size()); ++d) {
        const std::vector<float> x = read_finite(*dumps[d].reader, dataset, layer, head, D, 0, -1);
        for (const Piece& p : pieces) {
            if (p.dump != d) continue;
            std::vector<float>& dst = p.holdout ? out.hold : out.train;
            std::vector<SeqRange>& seqs = p.holdout ? out.hold_seqs : out.train_seqs;
            seqs.push_back({static_cast<int64_t>(dst.size()) / D, p.length});
            dst.insert(dst.end(), x.begin() + p.start * D, x.begin() + (p.start + p.length) * D);
        }
    }
    if (rotate) {
        hadamard_rotate_rows(out.train.data(), out.n_train(), D);
        hadamard_rotate_rows(out.hold.data(), out.n_hold(), D);
    }
    return out;
}

std::vector<float> pool_train_rows(const std::vector<DumpInput>& dumps, const std::vector<Piece>& pieces,
                                   const char* dataset, int layer, int head, int D, bool rotate, int64_t r0,
                                   int64_t r1) {
    std::vector<float> out;
    out.reserve(static_cast<size_t>(std::max<int64_t>(r1 - r0, 0)) * static_cast<size_t>(D));
    int64_t at = 0;  // pooled row of the piece's first token
    for (int d = 0; d < static_cast<int>(dumps.size()); ++d)
        for (const Piece& p : pieces) {
            if (p.dump != d || p.holdout) continue;
            const int64_t lo = std::max(r0, at), hi = std::min(r1, at + p.length);
            if (lo < hi) {
                const std::vector<float> x =
                    read_finite(*dumps[d].reader, dataset, layer, head, D, p.start + (lo - at), hi - lo);
                out.insert(out.end(), x.begin(), x.end());
            }
            at += p.length;
        }
    if (rotate) hadamard_rotate_rows(out.data(), static_cast<int64_t>(out.size()) / D, D);
    return out;
}

PatternTable table_header(const CalibrateConfig& c, const KvSource& first, int H, int D, const std::string& sha256) {
    const nlohmann::json model = first.model();
    PatternTable t;
    t.model.name = model.is_object() ? model.value("name", std::string()) : std::string();
    t.model.arch = model.is_object() ? model.value("arch", std::string("llama")) : std::string("llama");
    t.model.rope = rope_record(model);
    t.model.sha256 = sha256;
    t.model.n_layer = first.n_layer_model();
    t.model.n_head = first.n_head();
    t.model.n_head_kv = H;
    t.model.head_dim = D;
    t.key_basis = c.keys_pre ? ptable::kBasisPre : ptable::kBasisPost;
    t.key_dim_order = first.dim_order();
    t.rotation = c.rotate ? ptable::kRotationHadamard : ptable::kRotationNone;
    t.bits = c.bits;
    t.group = c.group;
    t.outliers = c.outliers;
    t.window = c.window;
    t.assign = c.assign_l2 ? ptable::kAssignL2 : ptable::kAssignMinmax;
    t.k_patterns = c.k_patterns;
    t.v_patterns = c.v_patterns;
    return t;
}

}  // namespace pkv::calib
