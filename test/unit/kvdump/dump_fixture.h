// test/unit/kvdump/dump_fixture.h — synthetic KV dumps with known contents.
//
// Activations are a deterministic function of (what, slot, token, head, dim); k_post
// and q are RoPE (NORM mode, pairs (2i, 2i+1)) of their pre-rotation values at the
// token's position in its sequence, so test/python/check_dump_h5py.py can verify a
// synthetic file the same way it verifies a real one.
#pragma once

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "catch.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"
#include "pkv/kvdump/kv_dump.h"
#include "support/scratch_dir.h"

namespace pkv::test {

/// A scratch directory; `path` is the directory itself.
struct TempDir {
    pkv_test::ScratchDir dir;
    std::string path = dir.str();
};

struct SynthSpec {
    int n_layer_model = 3;
    std::vector<int32_t> layers{0, 2};
    int n_head = 4, n_head_kv = 2, head_dim = 8, n_rot = 8;
    std::vector<int> seq_lengths{20, 20, 10};  // one write window per sequence
    int chunk_tokens = 16;                     // windows straddle chunk boundaries
    bool hf = false;
    CaptureSet capture;
    double rope_base = 10000.0, rope_scale = 1.0;
    int n_vocab = 100;
    // Local (sliding-window) model layers rotate with rope_base_swa; none by default.
    int window = 0;
    std::vector<int32_t> swa_layers;
    double rope_base_swa = 10000.0;
    bool is_local(int32_t layer) const {
        return std::find(swa_layers.begin(), swa_layers.end(), layer) != swa_layers.end();
    }
    double base_of_slot(int slot) const { return is_local(layers[slot]) ? rope_base_swa : rope_base; }
};

enum class Which { k_pre, v, q_pre };

/// A smooth, sign-varying value in about [-6, 6] for each coordinate.
inline float synth_value(Which w, int slot, int64_t t, int head, int d) {
    const double x = 0.37 * static_cast<double>(t) + 1.3 * head + 0.71 * d + 2.9 * slot + 5.1 * static_cast<int>(w);
    return static_cast<float>(6.0 * std::sin(x) * std::cos(0.13 * x + d));
}

/// NORM-mode RoPE of one head vector: pairs (2i, 2i+1) rotate by pos * scale * base^(-2i/n_rot).
inline void rope_norm(const float* in, float* out, int head_dim, int n_rot, int pos, double base, double scale) {
    for (int d = 0; d < head_dim; ++d) out[d] = in[d];
    for (int i = 0; 2 * i < n_rot; ++i) {
        const double theta = scale * pos * std::pow(base, -2.0 * i / n_rot);
        const double c = std::cos(theta), s = std::sin(theta);
        const double a = in[2 * i], b = in[2 * i + 1];
        out[2 * i] = static_cast<float>(a * c - b * s);
        out[2 * i + 1] = static_cast<float>(a * s + b * c);
    }
}

inline int64_t synth_tokens(const SynthSpec& s) {
    int64_t T = 0;
    for (int l : s.seq_lengths) T += l;
    return T;
}

inline nlohmann::json synth_model_json(const SynthSpec& s) {
    return {{"name", "synthetic"},
            {"file", "synthetic.gguf"},
            {"sha256", std::string(64, 'a')},
            {"arch", "llama"},
            {"n_layer", s.n_layer_model},
            {"n_head", s.n_head},
            {"n_head_kv", s.n_head_kv},
            {"head_dim", s.head_dim},
            {"n_rot", s.n_rot},
            {"n_embd", s.n_head * s.head_dim},
            {"n_ff", 64},
            {"n_vocab", s.n_vocab},
            {"n_ctx_train", 128},
            {"rope_freq_base", s.rope_base},
            {"rope_freq_scale", s.rope_scale},
            {"rope_type", "norm"},
            {"rms_eps", 1e-5},
            {"file_type", 3},
            {"sliding_window", s.window},
            {"swa_layers", s.swa_layers},
            {"rope_freq_base_swa", s.swa_layers.empty() ? nlohmann::json(nullptr) : nlohmann::json(s.rope_base_swa)}};
}

/// The layer_info a writer of `s` records.
inline std::vector<KvDumpLayerInfo> synth_layer_info(const SynthSpec& s) {
    std::vector<KvDumpLayerInfo> out;
    for (size_t i = 0; i < s.layers.size(); ++i)
        out.push_back({s.layers[i], s.is_local(s.layers[i]) ? s.window : 0, s.base_of_slot(static_cast<int>(i)),
                       s.n_head_kv, s.head_dim});
    return out;
}

inline KvDumpHeader synth_header(const SynthSpec& s) {
    KvDumpHeader h;
    h.n_layer_model = s.n_layer_model;
    h.layers = s.layers;
    h.n_head = s.n_head;
    h.n_head_kv = s.n_head_kv;
    h.head_dim = s.head_dim;
    h.n_tokens = synth_tokens(s);
    h.capture = s.capture;
    h.hf_dim_order = s.hf;
    h.chunk_tokens = s.chunk_tokens;
    h.model = synth_model_json(s);
    h.provenance = {
        {"tool", "pkv"}, {"version", "0.0.0-test"}, {"argv", {"pkv", "test"}}, {"created_utc", "2000-01-01T00:00:00Z"}};
    h.sources = {{"a.txt", std::string(64, 'b'), 1000, synth_tokens(s) - 7}, {"b.txt", std::string(64, 'c'), 50, 7}};
    h.layer_info = synth_layer_info(s);
    return h;
}

/// The model-order (GGUF interleaved) rows [n, H*D] of one activation for tokens
/// [t0, t0+n) of the sequence that starts at `seq_t0`.
inline std::vector<float> synth_rows(const SynthSpec& s, const char* dataset, int slot, int64_t t0, int n,
                                     int64_t seq_t0) {
    const std::string name = dataset;
    const bool is_q = name == kvdump::kQ;
    const int H = is_q ? s.n_head : s.n_head_kv, D = s.head_dim;
    const Which w = is_q ? Which::q_pre : name == kvdump::kV ? Which::v : Which::k_pre;
    const bool rotate = name == kvdump::kKPost || is_q;
    std::vector<float> rows(static_cast<size_t>(n) * H * D), pre(D);
    for (int i = 0; i < n; ++i)
        for (int h = 0; h < H; ++h) {
            for (int d = 0; d < D; ++d) pre[d] = synth_value(w, slot, t0 + i, h, d);
            float* out = rows.data() + (static_cast<size_t>(i) * H + h) * D;
            if (rotate)
                rope_norm(pre.data(), out, D, s.n_rot, static_cast<int>(t0 + i - seq_t0), s.base_of_slot(slot),
                          s.is_local(s.layers[slot]) ? 1.0 : s.rope_scale);
            else std::copy(pre.begin(), pre.end(), out);
        }
    return rows;
}

/// How write_synth_dump hands the data to the writer.
struct SynthWrite {
    KvDumpWriteOptions options;  ///< the writer's settings
    bool binary16 = false;       ///< write_layer16 with the bits write_layer would store
    bool reverse = false;        ///< sequences last to first (chunks then fill out of order)
};

/// Writes a complete, valid synthetic dump (with `header` instead of synth_header(s) when given).
inline void write_synth_dump(const std::string& path, const SynthSpec& s, const KvDumpHeader* header = nullptr,
                             const SynthWrite& how = {}) {
    KvDumpWriter w(path, header ? *header : synth_header(s), how.options);
    std::vector<int64_t> starts;
    std::vector<int32_t> lengths;
    int64_t T = 0;
    for (int n : s.seq_lengths) {
        starts.push_back(T);
        lengths.push_back(n);
        T += n;
    }
    std::vector<size_t> order;
    for (size_t si = 0; si < s.seq_lengths.size(); ++si) order.push_back(si);
    if (how.reverse) std::reverse(order.begin(), order.end());
    auto to16 = [](const std::vector<float>& x) {
        std::vector<uint16_t> h(x.size());
        float_to_half_n(x.data(), h.data(), x.size());
        return h;
    };
    for (size_t si : order) {
        const int n = s.seq_lengths[si];
        const int64_t t0 = starts[si];
        for (size_t slot = 0; slot < s.layers.size(); ++slot) {
            const int sl = static_cast<int>(slot);
            auto kp = synth_rows(s, kvdump::kKPre, sl, t0, n, t0);
            auto ko = synth_rows(s, kvdump::kKPost, sl, t0, n, t0);
            auto v = synth_rows(s, kvdump::kV, sl, t0, n, t0);
            auto q = synth_rows(s, kvdump::kQ, sl, t0, n, t0);
            if (how.binary16) {
                auto kp16 = to16(kp), ko16 = to16(ko), v16 = to16(v), q16 = to16(q);
                w.write_layer16(sl, t0, n, s.capture.k_pre ? kp16.data() : nullptr,
                                s.capture.k_post ? ko16.data() : nullptr, s.capture.v ? v16.data() : nullptr,
                                s.capture.q ? q16.data() : nullptr);
            } else {
                w.write_layer(sl, t0, n, s.capture.k_pre ? kp.data() : nullptr, s.capture.k_post ? ko.data() : nullptr,
                              s.capture.v ? v.data() : nullptr, s.capture.q ? q.data() : nullptr);
            }
        }
        std::vector<int32_t> id(n), pos(n), seq(n, static_cast<int32_t>(si));
        std::vector<float> nll(n, std::nanf(""));
        for (int i = 0; i < n; ++i) {
            id[i] = static_cast<int32_t>((t0 + i) * 7 % s.n_vocab);
            pos[i] = i;
            if (i > 0) nll[i] = 0.5f + 0.01f * static_cast<float>(i);
        }
        w.write_tokens(t0, id, pos, seq, nll);
    }
    w.finish(starts, lengths, {{"n_tokens", T}, {"perplexity", 2.5}, {"nll_mean", std::log(2.5)}, {"n_predicted", 47}});
}

/// True when /usr/bin/python3 can import the given modules.
inline bool python_has(const std::string& modules) {
    if (access("/usr/bin/python3", X_OK) != 0) return false;
    return std::system(("/usr/bin/python3 -c 'import " + modules + "' >/dev/null 2>&1").c_str()) == 0;
}

inline int exit_status(int system_rc) { return WIFEXITED(system_rc) ? WEXITSTATUS(system_rc) : -1; }

}  // namespace pkv::test
