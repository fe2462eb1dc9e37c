// eval's position buckets: which bucket a query position falls in, the --position-buckets
// parser and its one-line refusals, and on a tiny model the buckets' counts and sums add
// up to the totals of the report (counts and top-1 exactly, NLL and KL to double rounding),
// with buckets no sequence reaches left out of the report.
#include <fstream>
#include <string>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/pipeline/eval.h"
#include "pkv/report/report.h"
#include "pkv/tokenizer/tokenizer.h"
#include "support/scratch_dir.h"
#include "support/tiny_model.h"

using namespace pkv;

namespace {

std::string parse_error(const std::string& list) {
    try {
        parse_position_buckets(list);
    } catch (const Error& e) {
        return e.what();
    }
    FAIL("no error for '" << list << "'");
    return {};
}

struct Fixture {
    pkv_test::ScratchDir dir;
    std::string model, text;
    Fixture() {
        model = dir.path("tiny.gguf");
        pkv::test::TinyModelSpec s;
        s.n_embd = 64;
        s.n_head = 2;
        s.n_head_kv = 1;
        s.n_ctx = 128;
        pkv::test::write_tiny_model(model, s);
        text = dir.path("text.txt");
        std::ofstream f(text);
        for (int i = 0; i < 40; ++i)
            f << "the other one then went in there, and " << i << " of them were on the river.\n";
    }
    EvalConfig config() const {
        EvalConfig c;
        c.model_path = model;
        c.text_paths = {text};
        c.n_tokens = 300;
        c.ctx = 128;  // sequences of 128, 128 and 44 tokens
        c.prefill = 32;
        c.kv = {"fp16", "kivi:2:g8:w16"};
        return c;
    }
};

// Every bucket's sums of one variant against its totals.
void check_sums(const EvalAccum& a) {
    int64_t n_dec = 0, n_all = 0, top1_dec = 0, top1_all = 0;
    double nll_dec = 0, nll_all = 0, kl_dec = 0, kl_all = 0;
    for (const EvalBucket& b : a.buckets) {
        n_dec += b.n_dec;
        n_all += b.n_all;
        top1_dec += b.top1_dec;
        top1_all += b.top1_all;
        nll_dec += b.nll_dec;
        nll_all += b.nll_all;
        kl_dec += b.kl_dec;
        kl_all += b.kl_all;
    }
    CHECK(n_dec == 95 + 95 + 11);
    CHECK(n_all == 127 + 127 + 43);
    CHECK(top1_dec == a.top1_dec);
    CHECK(top1_all == a.top1_all);
    CHECK(nll_dec == Approx(a.nll_dec).epsilon(1e-12));
    CHECK(nll_all == Approx(a.nll_all).epsilon(1e-12));
    CHECK(kl_dec == Approx(a.kl_dec).epsilon(1e-12).margin(1e-300));
    CHECK(kl_all == Approx(a.kl_all).epsilon(1e-12).margin(1e-300));
}

}  // namespace

TEST_CASE("eval positions: the bucket of a position", "[eval][positions]") {
    const std::vector<int64_t> edges = {0, 1024, 4096};
    CHECK(position_bucket(edges, 0) == 0);
    CHECK(position_bucket(edges, 1023) == 0);
    CHECK(position_bucket(edges, 1024) == 1);
    CHECK(position_bucket(edges, 4095) == 1);
    CHECK(position_bucket(edges, 4096) == 2);
    CHECK(position_bucket(edges, 1 << 20) == 2);
    CHECK(position_bucket({0}, 0) == 0);
    CHECK(position_bucket({0}, 5000) == 0);
    CHECK(position_bucket({0, 1}, 0) == 0);
    CHECK(position_bucket({0, 1}, 1) == 1);
    CHECK(EvalConfig{}.position_buckets == edges);
}

TEST_CASE("eval positions: --position-buckets", "[eval][positions]") {
    CHECK(parse_position_buckets("0,512,2048") == std::vector<int64_t>{0, 512, 2048});
    CHECK(parse_position_buckets("0") == std::vector<int64_t>{0});
    CHECK(parse_error("512,2048") == "--position-buckets 512,2048: the first edge must be 0, got 512");
    CHECK(parse_error("0,2048,512") == "--position-buckets 0,2048,512: edges must ascend, got 512 after 2048");
    CHECK(parse_error("0,512,512") == "--position-buckets 0,512,512: edges must ascend, got 512 after 512");
    CHECK(parse_error("0,x") ==
          "--position-buckets '0,x': expected non-negative integers separated by commas, got 'x'");
    CHECK(parse_error("0,-5") ==
          "--position-buckets '0,-5': expected non-negative integers separated by commas, got '-5'");
    CHECK(parse_error("0,,512") ==
          "--position-buckets '0,,512': expected non-negative integers separated by commas, got ''");
    CHECK(parse_error("0,512,") ==
          "--position-buckets '0,512,': expected non-negative integers separated by commas, got ''");
    CHECK(parse_error("") == "--position-buckets '': expected non-negative integers separated by commas, got ''");
    CHECK_THROWS_AS(check_position_buckets({}), Error);
}

TEST_CASE("eval positions: buckets add up to the totals", "[eval][positions][run]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    Fixture fx;
    EvalConfig c = fx.config();
    c.position_buckets = {0, 16, 40, 100, 200};  // the last is beyond every sequence
    const EvalResult res = run_eval(c);
    REQUIRE(res.methods.size() == 2);
    for (const EvalAccum* a : {&res.reference, &res.methods[0], &res.methods[1]}) {
        REQUIRE(a->buckets.size() == 5);
        check_sums(*a);
        // Per sequence (P = 32; the last has 44 tokens, t in [0, 42]): [0,16) all prefill, [16,40)
        // 24 positions of which t >= 32 decode, [40,100) 60 + 60 + 3, [100,200) 27 + 27.
        CHECK(a->buckets[0].n_all == 48);
        CHECK(a->buckets[0].n_dec == 0);
        CHECK(a->buckets[1].n_all == 72);
        CHECK(a->buckets[1].n_dec == 24);
        CHECK(a->buckets[2].n_all == 123);
        CHECK(a->buckets[2].n_dec == 123);
        CHECK(a->buckets[3].n_all == 54);
        CHECK(a->buckets[3].n_dec == 54);
        CHECK(a->buckets[4].n_all == 0);
    }
    // KIVI quantizes the prompt at the end of the prefill: prompt queries see exact K/V.
    CHECK(res.methods[1].buckets[0].kl_all == 0.0);
    CHECK(res.methods[1].buckets[3].kl_dec > 0.0);

    const nlohmann::json r = eval_report_json(res);
    CHECK(r["version"] == "1.4");
    CHECK(r["provenance"]["settings"]["position_buckets"] == nlohmann::json({0, 16, 40, 100, 200}));
    const nlohmann::json& bp = r["methods"][1]["by_position"];
    REQUIRE(bp.size() == 4);  // [200, 128) is left out, not shown as NaN
    CHECK(bp[0]["start"] == 0);
    CHECK(bp[0]["end"] == 16);
    CHECK(bp[3]["start"] == 100);
    CHECK(bp[3]["end"] == 128);
    CHECK(bp[0]["kl_mean"].is_null());  // wholly in the prefill: no decode position
    CHECK(bp[0]["kl_mean_all"] == 0.0);
    // The report's means, weighted by their counts, give the totals' means.
    const nlohmann::json& m = r["methods"][1];
    double kl = 0, kl_all = 0, nll = 0, top1 = 0;
    int64_t n = 0, n_all = 0;
    for (const auto& b : bp) {
        const auto nd = b["scored_decode"].get<int64_t>(), na = b["scored_all"].get<int64_t>();
        n += nd;
        n_all += na;
        if (nd > 0) {
            kl += nd * b["kl_mean"].get<double>();
            nll += nd * b["nll_mean"].get<double>();
            top1 += nd * b["top1_agreement"].get<double>();
        }
        kl_all += na * b["kl_mean_all"].get<double>();
    }
    CHECK(n == r["run"]["scored_decode"]);
    CHECK(n_all == r["run"]["scored_all"]);
    CHECK(kl / n == Approx(m["kl_mean"].get<double>()).epsilon(1e-12));
    CHECK(kl_all / n_all == Approx(m["kl_mean_all"].get<double>()).epsilon(1e-12));
    CHECK(nll / n == Approx(m["nll_mean"].get<double>()).epsilon(1e-12));
    CHECK(top1 / n == Approx(m["top1_agreement"].get<double>()).epsilon(1e-12));

    const std::string md = render_eval_markdown(r);
    CHECK_THAT(md, ContainsSubstring("### kivi:2:g8:w16 by position"));
    CHECK_THAT(md, ContainsSubstring("| 100–128 | 54 / 54 |"));
    CHECK_THAT(md, ContainsSubstring("| 0–16 | 0 / 48 | n/a | n/a | n/a | n/a | 0.000e+00 | 100.00 |"));
    // A report from before 1.2 renders without position tables.
    nlohmann::json old = r;
    for (auto& x : old["methods"]) x.erase("by_position");
    CHECK(render_eval_markdown(old).find("by position") == std::string::npos);
}

TEST_CASE("eval positions: one bucket when the sequences are shorter than the second edge", "[eval][positions][run]") {
    if (!tokenizer_available()) PKV_SKIP("built without PCRE2: no tokenizer");
    Fixture fx;
    const nlohmann::json r = eval_report_json(run_eval(fx.config()));  // default edges 0, 1024, 4096; ctx 128
    for (const auto& m : r["methods"]) {
        REQUIRE(m["by_position"].size() == 1);
        const auto& b = m["by_position"][0];
        CHECK(b["start"] == 0);
        CHECK(b["end"] == 128);
        CHECK(b["scored_decode"] == r["run"]["scored_decode"]);
        CHECK(b["scored_all"] == r["run"]["scored_all"]);
        // One bucket holds every position: its sums are the totals' sums, added in the same order.
        CHECK(b["kl_mean"] == m["kl_mean"]);
        CHECK(b["nll_mean"] == m["nll_mean"]);
        CHECK(b["top1_agreement_all"] == m["top1_agreement_all"]);
    }
}

TEST_CASE("eval positions: bad edges are refused up front", "[eval][positions][run]") {
    Fixture fx;
    EvalConfig c = fx.config();
    c.position_buckets = {0, 64, 32};
    try {
        run_eval(c);
        FAIL("no error");
    } catch (const Error& e) {
        CHECK(std::string(e.what()) == "--position-buckets 0,64,32: edges must ascend, got 32 after 64");
    }
}
