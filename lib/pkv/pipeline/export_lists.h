// pkv/pipeline/export_lists.h — `pkv export --format vllm-skip|modelopt|kv-plan-json`:
// which layers of a model keep an fp16 KV cache and how the others are quantized, in
// the forms inference runtimes take (docs/runtime.md, "Skip lists and per-layer precision").
//
// The plan covers every model layer 0 .. n_layer-1 of the table's model. A layer stays
// fp16 when any of these holds (all are recorded, in this order):
//   not_calibrated    the table has no patterns for it, so it cannot quantize it
//   report            it is in an analyze report's fragile.keep_fp16_layers (--report)
//   keep_fp16_layers  it is in --keep-fp16-layers
//   allocation        the table's width allocation keeps a K or V head of it in fp16
//                     (kv_layer_bits is 16)
// Every other layer is quantized with PatternKV at kv_layer_bits(table, layer) bits; with
// an allocation kv-plan-json also lists each KV head's K and V width.
//
// Outputs (each written atomically; an existing output needs force):
//   vllm-skip     one line: the fp16 layers, ascending, separated by one space, then
//                 "\n" (an empty line when there are none): the values of vLLM's
//                 --kv-cache-dtype-skip-layers, which takes layer indices as separate
//                 arguments ("--kv-cache-dtype-skip-layers 0 1 23")
//   modelopt      {"producer": {"name": "pkv", "version"}, "quantization": {"quant_algo":
//                 null, "kv_cache_quant_algo", "exclude_modules"}}, the field names of
//                 TensorRT Model Optimizer's hf_quant_config.json; exclude_modules holds
//                 "model.layers.<l>.self_attn" for every fp16 layer; kv_cache_quant_algo is
//                 the chosen runtime algorithm (default FP8), null when every layer is fp16
//   kv-plan-json  pkv's own record, format "pkv.kv_plan" 1.0 (docs/formats/kv_plan.md,
//                 schemas/kv_plan.schema.json)
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pkv/table/pattern_table.h"

namespace pkv {

constexpr const char* kKvPlanFormat = "pkv.kv_plan";
constexpr const char* kKvPlanFormatVersion = "1.1";

/// True for the formats this header writes: "vllm-skip", "modelopt", "kv-plan-json".
bool is_kv_plan_format(const std::string& format);

/// The residual code width of `layer`'s KV cache under table t: pkv.quant.bits, or with a
/// width allocation (pkv.quant.allocation) the widest width it gives a K or V head of the
/// layer (16 when any stays fp16), so that a runtime with one width per layer gives no
/// head less than its allocation. A layer t does not calibrate: t.bits.
int kv_layer_bits(const PatternTable& t, int layer);

/// One model layer of a plan.
struct KvLayerPlan {
    int layer = 0;
    bool fp16 = false;  ///< the layer's KV cache stays fp16
    int bits = 16;      ///< 16 when fp16, else kv_layer_bits
    // Why an fp16 layer is fp16 (any number of them): see the header comment.
    bool not_calibrated = false, from_report = false, from_option = false, from_allocation = false;
    /// With an allocation, a calibrated layer's widths per KV head (16: fp16); else empty.
    std::vector<int> k_bits, v_bits;
};

/// What the outputs are made from.
struct KvPlan {
    std::string table_path, table_format_version;
    PatternTableModel model;
    int group = 0, window = 0;                      ///< the table's quantizer group and fp16 window
    std::string report_path;                        ///< "" without --report
    std::vector<int> report_layers;                 ///< the report's keep_fp16_layers, ascending
    std::optional<std::vector<int>> option_layers;  ///< --keep-fp16-layers, ascending; none when not given
    std::vector<KvLayerPlan> layers;                ///< n_layer entries, layer i at index i

    std::vector<int> fp16_layers() const;       ///< ascending
    std::vector<int> quantized_layers() const;  ///< ascending
};

/// The layers an analyze report suggests for fp16 (fragile.keep_fp16_layers), ascending
/// without repeats, after checking that the report is a pkv.analyze_report of major
/// version 1 for t's model: model.n_layer, n_head_kv and head_dim equal to the table's,
/// and provenance.dump.model.sha256 equal to pkv.model.sha256 when both are recorded.
/// Throws invalid_argument naming `report_path` and the field, expected vs actual
/// ("r.json: model.n_layer: expected 30 (as t.safetensors), got 24"); a layer outside
/// 0 .. n_layer-1 throws out_of_range.
std::vector<int> report_keep_fp16_layers(const nlohmann::json& report, const std::string& report_path,
                                         const PatternTable& t, const std::string& table_path);

/// The plan of t with the report's layers (see report_keep_fp16_layers; empty when no
/// report) and the option's. An option layer outside 0 .. n_layer-1 throws out_of_range
/// ("--keep-fp16-layers: layer 40 is out of range: t.safetensors is for a model with
/// layers 0-29"). Calls check_pattern_table(t) first.
KvPlan make_kv_plan(const PatternTable& t, const std::string& table_path, const std::string& report_path,
                    const std::vector<int>& report_layers, const std::optional<std::vector<int>>& option_layers);

/// The vllm-skip file: "0 1 23\n", or "\n" when no layer is fp16.
std::string vllm_skip_text(const KvPlan& plan);

/// ModelOpt's KV cache algorithms ("FP8", "INT8", "NVFP4", "NVFP4_AFFINE"): the values
/// --kv-cache-algo accepts.
const std::vector<std::string>& modelopt_kv_cache_algos();
/// The modelopt document (see the header comment); throws invalid_argument for an
/// algorithm not in modelopt_kv_cache_algos().
nlohmann::json modelopt_kv_config(const KvPlan& plan, const std::string& kv_cache_algo);
/// modelopt_kv_config as written: 4-space indent, as ModelOpt writes it, and "\n".
std::string modelopt_kv_text(const KvPlan& plan, const std::string& kv_cache_algo);

/// The kv-plan-json document with `provenance` (core/provenance.h) as its provenance.
nlohmann::json kv_plan_json(const KvPlan& plan, const nlohmann::json& provenance);
/// kv_plan_json as written: one line per layer entry, the rest indented by one, "\n".
std::string kv_plan_text(const nlohmann::json& doc);

struct KvPlanOptions {
    std::string format;                                ///< "vllm-skip" | "modelopt" | "kv-plan-json"
    std::string report_path;                           ///< "" or an analyze report (JSON)
    std::optional<std::vector<int>> keep_fp16_layers;  ///< --keep-fp16-layers, parsed
    std::string kv_cache_algo;                         ///< modelopt only; "" = FP8
    std::vector<std::string> argv;                     ///< recorded in kv-plan-json's provenance
    bool force = false;                                ///< overwrite an existing output
};

/// What export_kv_plan wrote.
struct KvPlanSummary {
    std::string out_path, format;
    int n_layer = 0;
    std::vector<int> fp16_layers;
    int quantized = 0;  ///< layers quantized with PatternKV
    uint64_t bytes = 0;
};

/// Reads the table (and report), builds the plan and writes `format` to out_path
/// atomically. Bad options throw invalid_argument before anything is read (an unknown
/// format, --kv-cache-algo with another format, an existing output without force:
/// failed_precondition); a report that does not parse or belongs to another model
/// throws invalid_argument; a corrupt table the reader's data_loss error.
KvPlanSummary export_kv_plan(const std::string& table_path, const std::string& out_path, const KvPlanOptions& options);

}  // namespace pkv
