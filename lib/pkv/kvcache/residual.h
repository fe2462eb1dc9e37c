// pkv/kvcache/residual.h — the residual quantizer of a pattern table: assignment,
// error measurement and the fit of its per-head parameters (`pkv calibrate`).
//
// Given one (layer, KV head) tensor x ([n, D] row-major float, tokens of several
// sequences back to back) and its patterns ([M, D]), a runtime
//   1. assigns each token its pattern (l2 or minmax metric, lowest index on ties),
//   2. keys:   quantizes r = x - c per channel in groups of G consecutive tokens of one
//              sequence (the flush blocks of the cache),
//      values: subtracts c only where the value gate passes (z-test with threshold z,
//              pkv/kvcache/simulate.h v_gate_passes) and quantizes each token's residual
//              per token in groups of min(G, D) channels,
//   3. both with the asymmetric min-max quantizer of pkv/quant/minmax.h at `bits`,
//      clip ratio a (MinMaxSpec::clip).
// Errors are measured on the tokens this quantizes: for keys only whole G-token blocks
// of a sequence (a runtime keeps the partial last block in its fp16 window), for values
// every token. NMSE = sum |x - x̂|² / sum |x|² over those elements.
//
// The fitted parameters (docs/numerics.md, "Pattern tables"): the key clip ratio, the
// value clip ratio and the value gate z, each chosen from a fixed grid to minimise the
// squared error on the calibration (training) tokens; held-out tokens never enter the fit.
#pragma once

#include <cstdint>
#include <vector>

namespace pkv {

/// Token ranges [start, start + length) of the sequences inside a tensor.
struct SeqRange {
    int64_t start = 0;
    int64_t length = 0;
};

/// labels[i] = nearest pattern of token i by the given metric (l2: squared Euclidean;
/// minmax: range of x_i - c, see pkv/kmeans/minmax_assign.h); lowest index on ties.
void assign_patterns(const float* x, int64_t n, int D, const float* patterns, int M, bool l2, int32_t* labels);

/// The metric a key error e (one token, [D]) is measured in, for `pkv calibrate
/// --objective` (docs/calibration.md): with M = E[q qᵀ] of the head's queries, eᵀ M e is
/// the expected squared error of the attention logit q·e (up to 1/D).
///   neither set: |e|², the raw error (bit for bit the unweighted measurement);
///   weight [D]:  Σ_c w_c e_c², w_c >= 0 finite (the diagonal of M);
///   factor [D*D] row-major upper-triangular U (UᵀU = M): |U e|².
/// The reference ref2 is the same form of x.
struct KeyMetric {
    std::vector<double> weight;
    std::vector<double> factor;
    bool raw() const { return weight.empty() && factor.empty(); }
};

/// Parameters of the residual quantizer of one head.
struct ResidualParams {
    int bits = 2;
    int group = 128;                     ///< G
    float clip = 1.0f;                   ///< clip ratio a in (0, 1]
    double gate_z = 1.6448536269514722;  ///< values only
    bool use_patterns = true;            ///< false: plain min-max of x (the baseline)
    /// Elements of each min-max group that stay exact (pkv/kvcache/outliers.h, as eval's
    /// `outN` holds them out), 0..8: the group's range is that of the kept elements and
    /// the held-out ones count with zero error.
    int outliers = 0;
};

/// Squared error and reference of the quantized elements, plus (values) the fraction
/// of tokens whose gate passed.
struct ResidualError {
    double err2 = 0.0, ref2 = 0.0;
    int64_t tokens = 0;  ///< quantized tokens
    int64_t gated = 0;   ///< values: tokens whose pattern was subtracted
    double nmse() const { return ref2 > 0.0 ? err2 / ref2 : 0.0; }
};

/// Keys: error of the residual quantizer on x with the given labels (see above).
ResidualError key_residual_error(const float* x, int D, const std::vector<SeqRange>& seqs, const float* patterns,
                                 const int32_t* labels, const ResidualParams& p);
/// Values: the same with the gate. rho[i] = v_gate_rho of token i against its pattern
/// (precomputed, since the gate only thresholds it).
ResidualError value_residual_error(const float* x, int D, const std::vector<SeqRange>& seqs, const float* patterns,
                                   const int32_t* labels, const double* rho, const ResidualParams& p);

/// Several parameter sets on the same tokens in one pass: out[k] is bitwise what the
/// single function above returns for ps[k] (each sum runs in its order). Every ps[k]
/// has the same bits, group and outliers (else invalid_argument); empty ps gives an empty result.
/// Costs about what one evaluation per parameter set costs, without its re-reading.
/// tasks: groups of 8 parameter sets run as OpenMP tasks, which idle threads of an
/// enclosing parallel region may take (the same result; about a tenth more work in all).
/// metric (keys only): nullptr or a raw() metric: the plain squared error; else that of
/// KeyMetric (malformed: invalid_argument). The full factor costs about D/2 times the
/// diagonal measurement.
std::vector<ResidualError> key_residual_errors(const float* x, int D, const std::vector<SeqRange>& seqs,
                                               const float* patterns, const int32_t* labels,
                                               const std::vector<ResidualParams>& ps, bool tasks = false,
                                               const KeyMetric* metric = nullptr);
std::vector<ResidualError> value_residual_errors(const float* x, int D, const std::vector<SeqRange>& seqs,
                                                 const float* patterns, const int32_t* labels, const double* rho,
                                                 const std::vector<ResidualParams>& ps, bool tasks = false);

/// rho of every token against its assigned pattern (pkv/kvcache/simulate.h v_gate_rho).
std::vector<double> gate_rhos(const float* x, int64_t n, int D, const float* patterns, const int32_t* labels);

/// The grids searched by the fit.
const std::vector<float>& clip_grid();     ///< 1.00, 0.975, ..., 0.40
const std::vector<double>& gate_z_grid();  ///< 0, 0.5, 1, 1.645 (the paper's), 2.5, 4, 8

struct KeyFit {
    float clip = 1.0f;
    ResidualError at_default, at_fit;  ///< training error at clip 1 and at the fitted clip
};
struct ValueFit {
    float clip = 1.0f;
    double gate_z = 1.6448536269514722;
    ResidualError at_default, at_fit;  ///< training error at (1, 1.645) and at the fit
};

/// Picks the clip ratio with the lowest training squared error (ties: the larger a).
/// use_patterns = false fits plain min-max (the ablation that separates what clipping
/// alone gains from what the patterns gain). tasks and metric as for key_residual_errors:
/// the error minimised (and reported) is the metric's. outliers: ResidualParams::outliers.
KeyFit fit_key_params(const float* x, int D, const std::vector<SeqRange>& seqs, const float* patterns,
                      const int32_t* labels, int bits, int group, bool use_patterns = true, bool tasks = false,
                      const KeyMetric* metric = nullptr, int outliers = 0);
/// Picks z first at clip 1, then the clip ratio at that z (ties: paper z, larger a).
/// use_patterns = false: the clip ratio of plain min-max (z is then irrelevant).
ValueFit fit_value_params(const float* x, int D, const std::vector<SeqRange>& seqs, const float* patterns,
                          const int32_t* labels, int bits, int group, bool use_patterns = true, bool tasks = false,
                          int outliers = 0);

}  // namespace pkv
