// run_eval on a tiny model with a tokenizer: the fp16 reference reproduces the
// dump's perplexity, 8-bit caches stay close to fp16 and 2-bit ones do not, the
// accounting is consistent, and bad input fails with one clear message.
#include <cmath>
#include <fstream>
#include <string>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/pipeline/dump.h"
#include "pkv/pipeline/eval.h"
#include "pkv/report/report.h"
#include "pkv/tokenizer/tokenizer.h"
#include "support/scratch_dir.h"
#include "support/tiny_model.h"

using namespace pkv;

namespace {

struct Fixture {
    pkv_test::ScratchDir dir;
    std::string model, text;
    Fixture() {
        model = dir.path("tiny.gguf");
        pkv::test::TinyModelSpec s;
        s.n_embd = 64;
        s.n_head = 2;
        s.n_head_kv = 1;  // head_dim 32: q8_0 blocks fit
        s.n_ctx = 128;
        pkv::test::write_tiny_model(model, s);
        text = dir.path("text.txt");
        std::ofstream f(text);
        for (int i = 0; i < 40; ++i)
            f << "the other one then went in there, and " << i << " of them were on the river.\n";
    }
    EvalConfig config(std::vector<std::string> kv) const {
        EvalConfig c;
        c.model_path = model;
        c.text_paths = {text};
        c.n_tokens = 300;
        c.ctx = 128;  // sequences of 128, 128 and 44 tokens
        c.prefill = 32;
        c.kv = std::move(kv);
        return c;
    }
};

const nlohmann::json& method(const nlohmann::json& r, const std::string& label) {
    for (const auto& m : r["methods"])
        if (m["label"] == label) return m;
    FAIL("no method " << label);
    return r;
}

std::string error_of(const EvalConfig& c) {
    try {
        eval_report_json(run_eval(c));
    } catch (const Error& e) {
        return e.what();
    }
    FAIL("no error");
    return {};
}

}  // namespace

TEST_CASE("eval: fp16 reference and methods on a tiny model", "[eval][run]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    Fixture fx;
    const nlohmann::json r =
        eval_report_json(run_eval(fx.config({"fp16", "kivi:8:g8:w16", "kivi:2:g8:w16", "q8_0", "q4_0:rot"})));
    CHECK(r["format"] == "pkv.eval_report");
    CHECK(r["run"]["n_sequences"] == 3);
    CHECK(r["run"]["scored_all"] == 127 + 127 + 43);
    CHECK(r["run"]["scored_decode"] == 95 + 95 + 11);
    CHECK(r["provenance"]["model"]["sha256"].get<std::string>().size() == 64);
    CHECK(r["provenance"]["texts"][0]["sha256"].get<std::string>().size() == 64);

    // (a) The reference's all-position perplexity is the dump's for the same tokens.
    DumpConfig d;
    d.model_path = fx.model;
    d.text_paths = {fx.text};
    d.n_tokens = 300;
    d.ctx = 128;
    d.out_path = fx.dir.path("d.h5");
    const DumpSummary ds = run_dump(d);
    const double ref_all = r["reference"]["ppl_all"].get<double>();
    CHECK(ref_all == Approx(ds.perplexity).epsilon(1e-9));

    // The fp16 method runs the hooked path with exact heads: identical to the reference.
    const auto& f = method(r, "fp16");
    CHECK(f["ppl"] == r["reference"]["ppl"]);
    CHECK(f["kl_mean"].get<double>() == 0.0);
    CHECK(f["top1_agreement"].get<double>() == 1.0);
    CHECK(f["bits_per_element"].get<double>() == 16.0);

    // (b) 8-bit caches: tight KL; 2-bit: clearly worse.
    const double kl8 = method(r, "kivi:8:g8:w16")["kl_mean"].get<double>();
    const double klq8 = method(r, "q8_0")["kl_mean"].get<double>();
    const double kl2 = method(r, "kivi:2:g8:w16")["kl_mean"].get<double>();
    CHECK(kl8 < 1e-3);
    CHECK(klq8 < 1e-3);
    CHECK(kl2 > 10 * std::max(kl8, klq8));
    CHECK(method(r, "kivi:2:g8:w16")["top1_agreement"].get<double>() < 1.0);

    // Accounting: fewer bits than fp16; memory of the longest sequence.
    const auto& k2 = method(r, "kivi:2:g8:w16");
    CHECK(k2["bits_per_element"].get<double>() < 16.0);
    CHECK(k2["bits_per_element"].get<double>() > 2.0);
    CHECK(r["reference"]["kv_bytes"].get<double>() == 2.0 * 128 * 32 * 1 * 2 * 16 / 8);
    CHECK(k2["kv_bytes"].get<double>() < r["reference"]["kv_bytes"].get<double>());
    CHECK(method(r, "q8_0")["bits_per_element"].get<double>() == Approx(8.5));  // 34 bytes per 32 values

    const std::string md = render_eval_markdown(r);
    CHECK_THAT(md, ContainsSubstring("| fp16 (reference) | 16.00 |"));
    CHECK_THAT(md, ContainsSubstring("| q4_0:rot |"));
}

TEST_CASE("eval: keep-fp16 layers and the seed", "[eval][run]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    Fixture fx;
    EvalConfig c = fx.config({"kivi:2:g8:w16"});
    c.keep_fp16_layers = {0, 1};
    const nlohmann::json r = eval_report_json(run_eval(c));
    CHECK(r["methods"][0]["kl_mean"].get<double>() == 0.0);
    CHECK(r["methods"][0]["bits_per_element"].get<double>() == 16.0);
    EvalConfig p = fx.config({"patternkv:2:g8:w16:p4"});
    p.seed = 3;
    const nlohmann::json a = eval_report_json(run_eval(p)), b = eval_report_json(run_eval(p));
    CHECK(a["methods"][0]["ppl"] == b["methods"][0]["ppl"]);
}

TEST_CASE("eval: bad input", "[eval][run]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    Fixture fx;
    EvalConfig c = fx.config({"fp16"});
    c.ctx = 256;
    CHECK_THAT(error_of(c), ContainsSubstring("--ctx 256: longer than the model's context length 128"));
    CHECK(error_of(fx.config({"kivvi:2"})) ==
          "unknown method 'kivvi' in --kv 'kivvi:2': expected one of fp16, kivi, patternkv, patternkv-table, q4_0, "
          "q8_0, fp8");
    CHECK_THAT(error_of(fx.config({"kivi:2", "kivi:2:g128"})), ContainsSubstring("the same method as an earlier --kv"));
    CHECK_THAT(error_of(fx.config({"kivi:2:g24"})), ContainsSubstring("group 24 does not divide head_dim 32"));
    CHECK_THAT(error_of(fx.config({"patternkv-table:2:missing/T.safetensors"})),
               ContainsSubstring("missing/T.safetensors"));
    EvalConfig k = fx.config({"fp16"});
    k.keep_fp16_layers = {2};
    CHECK_THAT(error_of(k), ContainsSubstring("--keep-fp16-layers: layer 2 is out of range"));
    EvalConfig t = fx.config({"fp16"});
    t.n_tokens = 100000;
    CHECK_THAT(error_of(t), ContainsSubstring("--tokens 100000: the text holds only"));
    EvalConfig pf = fx.config({"fp16"});
    pf.prefill = 127;
    CHECK_THAT(error_of(pf), ContainsSubstring("leaves no decode position to score"));
    EvalConfig none = fx.config({});
    CHECK(error_of(none) == "--kv: expected at least one method spec");
}
