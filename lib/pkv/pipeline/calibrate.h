// pkv/pipeline/calibrate.h — `pkv calibrate` as one library call: mine key and value
// patterns per (layer, KV head) from KV dumps, fit the residual quantizer, measure it
// on held-out sequences and write a pattern table (pkv/table/pattern_table.h).
//
// Data: KV dumps, or the model itself run over text (CalibrateConfig::stream; the table
// then equals that of `pkv dump` + calibrate on the same tokens, its provenance records
// "source": "model"). Every dump must hold /v and the key dataset of the chosen basis (/k_post, or
// /k_pre with keys_pre), and /q for a query-weighted objective, for every calibrated layer, and describe the same model
// (SHA-256, n_head_kv, head_dim, key dim order). Tokens of all dumps are pooled.
//
// Held-out split: whole sequences, drawn by a seeded shuffle of all sequences of all
// dumps until at least holdout x (all tokens) are held out; with a single sequence its
// last holdout fraction is held out instead. Held-out tokens never enter the mining or
// the fit; the table's metadata records the held-out error of each head
// (pkv/kvcache/residual.h describes the measurement).
//
// Work proceeds in batches of whole layers sized by batch_bytes, so memory does not
// grow with the number of layers; all (layer, head) problems of a batch go to
// kmeans_batch at once (one launch sequence on a GPU).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/kmeans/kmeans.h"
#include "pkv/pipeline/calibrate_objective.h"
#include "pkv/pipeline/kv_source.h"
#include "pkv/table/pattern_table.h"

namespace pkv {

class KMeansAssigner;
namespace dist {
class Comm;
}

/// How `--restarts` chooses among the k-means runs of each (layer, KV head, K or V):
/// inertia, the lowest training objective (kmeans.h); attention, the lowest held-out
/// attention-output error of the table the run gives (calibrate_pick.h).
enum class RestartPick { inertia, attention };

/// "inertia", "attention".
const char* restart_pick_name(RestartPick p);
/// The inverse; anything else: invalid_argument "--restart-pick: expected inertia or attention, got 'x'".
RestartPick parse_restart_pick(const std::string& name);

struct CalibrateConfig {
    std::vector<std::string> dump_paths;
    /// Instead of dumps (exactly one of the two): the model run over text (kv_source.h),
    /// used when stream.model_path is set. Its model_path, text_paths, n_tokens, ctx,
    /// hf_dim_order, sample_tokens and engine are read here; capture (the key basis and
    /// the values), layers, seed and argv come from this config. Every sampled token
    /// is held in memory: sampled tokens x layers x n_head_kv x head_dim x 4 bytes (and
    /// the queries, n_head instead of n_head_kv, under a qk objective).
    ModelSourceConfig stream = [] {
        ModelSourceConfig m;
        m.sample_tokens = 65536;
        return m;
    }();
    std::string out_path;    ///< the table (.safetensors)
    bool force = false;      ///< overwrite out_path
    int k_patterns = 32;     ///< Mk per (layer, head)
    int v_patterns = 32;     ///< Mv per (layer, head)
    bool keys_pre = false;   ///< mine pre-RoPE keys (/k_pre) instead of post-RoPE
    bool assign_l2 = false;  ///< runtime pattern choice by L2 (default min-max)
    int bits = 2;            ///< residual code width the fit targets: 2, 3, 4 or 8
    /// > 0: choose a width per (layer, KV head, K/V) among 2, 3, 4, 8 and 16 (fp16) so that
    /// the mean bits per cached element, counted as pkv eval counts them, stay within this
    /// budget (calibrate_alloc.h, bit_alloc.h; refused outside [all 2 bits, 16]). Every
    /// head is then fitted at every width; `bits` stays the width of the held-out
    /// statistics and of pkv.quant.bits. 0: every head at `bits`.
    double bits_budget = 0.0;
    /// The narrowest width --bits-budget may give a head (2, 3, 4 or 8): the budget then
    /// starts from every head at this width and spends what is left on the heads whose
    /// error falls most per bit (e.g. 4 with a budget above the all-4-bit cost keeps every
    /// head at 4 bits or more). Unused without bits_budget.
    int bits_floor = 2;
    /// What --bits-budget compares heads by (calibrate_alloc.h): true (the default), the
    /// relative error of the attention output of its query heads with that tensor quantized
    /// at each width (needs /q in every dump; refused with keys_pre); false, each K or V
    /// head's training NMSE at each width. Unused without bits_budget.
    bool bits_measure_attention = true;
    /// Sequence length the budget is counted for: a sliding-window layer's unit weighs
    /// min(n, W) / n against a global layer's 1, as eval's bits per element average over
    /// what each layer's cache holds at n tokens (pkv eval's default --ctx). Models without
    /// local layers do not depend on it.
    int64_t budget_ctx = 2048;
    int group = 128;  ///< G (K tokens per channel group; V channels, capped at D)
    /// Elements of each min-max group the runtime keeps exact (eval's `outN`,
    /// pkv/kvcache/outliers.h), 0..8: the clip ratios and gate z are fitted, and the
    /// held-out errors and --restart-pick attention measured, with them held out; the
    /// table records the count (pkv.quant.outliers). With bits_budget every width is fitted
    /// with them and the budget counts their bits (table_element_bits).
    int outliers = 0;
    int window = 128;      ///< R, recorded for runtimes (fp16 window / flush block)
    bool rotate = false;   ///< mine in the Hadamard-rotated basis (plain H_D)
    double holdout = 0.1;  ///< fraction of tokens held out, [0, 0.9]
    uint64_t seed = 1234;
    std::vector<int> layers;  ///< model layers (empty: every layer of the dumps)
    int max_iter = 30;        ///< k-means Lloyd iterations
    double tol = 1e-4;        ///< k-means centroid-shift tolerance
    KMeansInit init = KMeansInit::kmeanspp;
    int restarts = 1;
    /// Which of the `restarts` runs each K or V head keeps. attention: every run is fitted
    /// as the table's would be (at `bits`) and the one whose cache gives the head's query
    /// heads the lowest attention-output error on the held-out sequences is kept
    /// (calibrate_pick.h). Needs /q (and /k_post with keys_pre) in every dump, held-out
    /// tokens and restarts >= 2; refused with max_points_per_centroid (the runs' labels
    /// are not kept) and with keys_pre and rotate. inertia keeps tables bit for bit as before.
    RestartPick restart_pick = RestartPick::inertia;
    int64_t max_points_per_centroid = 0;  ///< k-means training subsample (0: all tokens)
    int64_t fit_tokens = 65536;           ///< training tokens per head used by the parameter fit (whole sequences)
    bool fit = true;                      ///< false: no fit; clip ratios 1 and the paper's gate z (the ablation)
    /// What the key fit (qk) and also the key mining (qk-mine, qk-full) minimise
    /// (calibrate_objective.h). Not kv: every dump must hold /q; refused with fit = false
    /// for qk (nothing would use it), with keys_pre and rotate, qk-full with keys_pre, and
    /// qk-mine and qk-full with heads data parallel over MPI ranks.
    CalibObjective objective = CalibObjective::kv;
    int64_t batch_bytes = int64_t{2} << 30;  ///< activation bytes per batch of layers (float32)
    /// Heads with more training tokens than this run data parallel: rows sharded over
    /// all devices of the process and all MPI ranks (docs/distributed.md). 0: when they
    /// exceed what one device holds.
    int64_t shard_above = 0;
    std::string device = "cpu";     ///< recorded: what the assigner runs on
    std::vector<std::string> argv;  ///< recorded as provenance
};

/// Validates the configuration against the dumps (throws pkv::Error naming the option
/// or "<file>::<object>" before any heavy work), calibrates, writes the table atomically
/// and returns it. assigner == nullptr mines on the CPU. Progress goes to stderr.
/// Errors: missing datasets, mismatched dumps, a non-finite activation ("d.h5::/v:
/// layer 3, head 1, token 517, dim 12 is nan"), too few training tokens for Mk or Mv.
PatternTable run_calibrate(const CalibrateConfig& config, KMeansAssigner* assigner = nullptr);

/// The same over several assigners (e.g. one per GPU of the host; nullptr entries or
/// an empty list: the CPU) and the ranks of `comm` (nullptr: dist::Comm::world()):
/// rank r of R mines the (layer, head) jobs j = layer index * H + head with
/// j % R == r, reading only their activations, its batches' problems dealt over the
/// assigners (kmeans_batch_multi); rank 0 gathers every head, writes the table and
/// returns it; other ranks return the table without layers and write nothing. The
/// patterns, counts and fitted parameters equal the single-assigner, single-process
/// run's bitwise (same assigner kind and device model); the metadata records the
/// processes. A failing rank throws as usual; the caller ends the job
/// (dist::Comm::abort) so that no rank waits on the others.
PatternTable run_calibrate(const CalibrateConfig& config, const std::vector<KMeansAssigner*>& assigners,
                           const dist::Comm* comm);

/// Means over heads of the per-head statistics in table.calibration["heads"]: a JSON
/// object {"k": {...}, "v": {...}} with the same fields, for summaries.
nlohmann::json calibration_means(const PatternTable& table);

}  // namespace pkv
