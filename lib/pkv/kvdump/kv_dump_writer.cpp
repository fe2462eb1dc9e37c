// KV dump writer (docs/formats/kv_dump.md): the synchronous path through HDF5's chunk
// cache and filters, the chunk pipeline (chunk_writer.h) for compressed files, and the
// direct path (direct_writer.h) for uncompressed ones.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>

#include "pkv/core/half.h"
#include "pkv/kvdump/chunk_writer.h"
#include "pkv/kvdump/direct_writer.h"
#include "pkv/kvdump/h5.h"
#include "pkv/kvdump/kv_dump.h"
#include "pkv/kvdump/kv_dump_internal.h"

namespace pkv {

using namespace kvdump_detail;

namespace {

double since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// A chunk row of the pipeline being filled: every head's chunk of one (dataset, layer,
/// token chunk), [H][Tc][D] binary16, zero where no token falls (the tail chunk).
struct OpenChunk {
    std::vector<uint16_t> data;
    int64_t filled = 0;  ///< tokens written so far
};

struct Activation {
    const char* name;
    bool on = false;
    int heads = 0;
    h5::Id dset;
    int direct = -1;  ///< its index in the direct writer
};

uint64_t next_prime(uint64_t n) {
    auto prime = [](uint64_t x) {
        if (x < 2) return false;
        for (uint64_t d = 2; d * d <= x; ++d)
            if (x % d == 0) return false;
        return true;
    };
    while (!prime(n)) ++n;
    return n;
}

}  // namespace

struct KvDumpWriter::Impl {
    KvDumpHeader h;
    h5::File f;
    h5::Id f16;
    std::array<Activation, 4> acts;  // k_pre, k_post, v, q
    h5::Id tok_id, tok_pos, tok_seq, tok_nll;
    std::vector<uint16_t> buf;
    bool finished = false;
    KvDumpWriteOptions opt;
    KvDumpWriterStats st;
    uint64_t Tc = 1;  ///< chunk length along tokens
    /// Pipeline: the chunk rows being filled, by activation, slot and chunk index.
    std::array<std::vector<std::map<int64_t, OpenChunk>>, 4> open;
    uint64_t open_bytes = 0;
    double submit_seconds = 0;  ///< part of the copy time spent in submit (the pipeline counts its waits)
    /// Direct path: by slot, which tokens were written (every activation at once).
    std::vector<std::vector<uint8_t>> written;
    // Last members: destroyed first, so their threads stop before the datasets close.
    std::unique_ptr<DirectWriter> direct;
    std::unique_ptr<ChunkPipeline> pipe;

    /// Tokens of chunk c (the last one may be short).
    int64_t chunk_len(int64_t c) const {
        return std::min<int64_t>(static_cast<int64_t>(Tc), h.n_tokens - c * static_cast<int64_t>(Tc));
    }

    /// Puts tokens [t0, t0 + n) of activation i, layer `slot`, where they go: `fill(t, head,
    /// dst)` writes the D binary16 values of token t0 + t, head `head`, to dst.
    template <class Fill>
    void stage(size_t i, int slot, int64_t t0, int n, const Fill& fill) {
        Activation& a = acts[i];
        const size_t H = static_cast<size_t>(a.heads), D = static_cast<size_t>(h.head_dim);
        const auto t_start = std::chrono::steady_clock::now();
        if (!pipe) {
            // Model rows are [token][head][dim]; the file wants [head][token][dim].
            buf.resize(H * static_cast<size_t>(n) * D);
            for (size_t t = 0; t < static_cast<size_t>(n); ++t)
                for (size_t hh = 0; hh < H; ++hh) fill(t, hh, buf.data() + (hh * static_cast<size_t>(n) + t) * D);
            const auto t_write = std::chrono::steady_clock::now();
            st.copy_seconds += std::chrono::duration<double>(t_write - t_start).count();
            h5::write_block(f, a.dset.get(), a.name, f16.get(),
                            {static_cast<uint64_t>(slot), 0, static_cast<uint64_t>(t0), 0},
                            {1, H, static_cast<uint64_t>(n), D}, buf.data());
            st.write_seconds += since(t_write);
            st.raw_bytes += H * static_cast<size_t>(n) * D * 2;
            return;
        }
        const int64_t tc = static_cast<int64_t>(Tc);
        double in_submit = 0;
        for (int64_t c = t0 / tc; c * tc < t0 + n; ++c) {
            auto [it, fresh] = open[i][static_cast<size_t>(slot)].try_emplace(c);
            OpenChunk& oc = it->second;
            if (fresh) {
                oc.data = pipe->take_buffer(H * Tc * D);
                // Every value of a full chunk is written below; the tail chunk's padding is 0.
                if (chunk_len(c) < tc) std::fill(oc.data.begin(), oc.data.end(), uint16_t{0});
                open_bytes += oc.data.size() * 2;
                st.peak_open_bytes = std::max(st.peak_open_bytes, open_bytes);
            }
            const int64_t a0 = std::max(t0, c * tc), a1 = std::min(t0 + n, (c + 1) * tc);
            for (int64_t t = a0; t < a1; ++t)
                for (size_t hh = 0; hh < H; ++hh)
                    fill(static_cast<size_t>(t - t0), hh,
                         oc.data.data() + (hh * Tc + static_cast<size_t>(t - c * tc)) * D);
            oc.filled += a1 - a0;
            PKV_CHECK(oc.filled <= chunk_len(c), internal, "{}: layer slot {}: tokens of chunk {} written twice",
                      f.where(a.name), slot, c);
            if (oc.filled < chunk_len(c)) continue;
            auto job = std::make_unique<ChunkPipeline::Job>();
            job->dset = a.dset.get();
            job->name = a.name;
            job->chunk_elems = Tc * D;
            for (size_t hh = 0; hh < H; ++hh)
                job->offsets.push_back({static_cast<hsize_t>(slot), hh, static_cast<hsize_t>(c) * Tc, 0});
            job->data = std::move(oc.data);
            open_bytes -= job->data.size() * 2;
            st.raw_bytes += job->data.size() * 2;
            open[i][static_cast<size_t>(slot)].erase(it);
            const auto t_sub = std::chrono::steady_clock::now();
            pipe->submit(std::move(job));
            in_submit += since(t_sub);
        }
        st.copy_seconds += since(t_start) - in_submit;
    }

    /// write_layer / write_layer16 after their checks: src[i] are rows [n][H_i * D] of T.
    /// to_half must be safe to call from several threads at once (the direct path).
    template <class T, class ToHalf>
    void write_rows(int slot, int64_t t0, int n, const std::array<const T*, 4>& src, const ToHalf& to_half) {
        const size_t D = static_cast<size_t>(h.head_dim);
        std::vector<DirectWriter::Part> parts;  // the direct path writes every activation in one call
        for (size_t i = 0; i < acts.size(); ++i) {
            Activation& a = acts[i];
            if (!a.on) continue;
            PKV_CHECK(src[i] != nullptr, internal, "{}: write_layer: no data for a captured dataset", f.where(a.name));
            const size_t H = static_cast<size_t>(a.heads);
            const bool permute = h.hf_dim_order && !h.native_half_split && is_rope_dataset(a.name);
            const T* base = src[i];
            DirectWriter::Fill fill = [base, H, D, permute, &to_half](size_t t, size_t hh, uint16_t* dst) {
                to_half(base + (t * H + hh) * D, dst, D, permute);
            };
            if (direct) parts.push_back({a.direct, std::move(fill)});
            else stage(i, slot, t0, n, fill);
        }
        if (direct) write_direct(slot, t0, n, parts);
    }

    void write_direct(int slot, int64_t t0, int n, const std::vector<DirectWriter::Part>& parts) {
        std::vector<uint8_t>& done = written[static_cast<size_t>(slot)];
        for (int64_t t = t0; t < t0 + n; ++t)
            PKV_CHECK(!done[static_cast<size_t>(t)], internal, "{}: layer slot {}: token {} written twice",
                      f.where("/"), slot, t);
        direct->write(slot, t0, n, parts);
        std::fill(done.begin() + t0, done.begin() + t0 + n, uint8_t{1});
    }

    /// A joined dump's activation: each shard's tokens are that dataset of the shard.
    void create_virtual_activation(Activation& a) {
        const uint64_t L = h.layers.size(), H = static_cast<uint64_t>(a.heads), D = static_cast<uint64_t>(h.head_dim);
        std::vector<h5::VirtualMapping> maps;
        for (const KvDumpShardRef& s : h.shards)
            maps.push_back({s.file,
                            a.name,
                            {0, 0, static_cast<uint64_t>(s.token_start), 0},
                            {L, H, static_cast<uint64_t>(s.n_tokens), D}});
        // NaN where a shard is missing, for readers that go through HDF5's mapping (h5py):
        // never a plausible value.
        const uint16_t nan16 = 0x7e00;
        a.dset = h5::create_virtual(f, a.name, f16.get(), {L, H, static_cast<uint64_t>(h.n_tokens), D}, maps, &nan16);
        write_activation_attrs(a);
    }

    void write_activation_attrs(Activation& a) {
        h5::write_attr_strings(a.dset.get(), f.where(a.name), kvdump::kAttrAxes, axes_of(a.name));
        if (is_rope_dataset(a.name))
            h5::write_attr_string(a.dset.get(), f.where(a.name), kvdump::kAttrDimOrder, dim_order_of(h));
    }

    void create_activation(Activation& a) {
        if (!h.shards.empty()) return create_virtual_activation(a);
        const int L = static_cast<int>(h.layers.size());
        const uint64_t T = static_cast<uint64_t>(h.n_tokens), D = static_cast<uint64_t>(h.head_dim);
        const uint64_t Tc = static_cast<uint64_t>(std::min<int64_t>(h.chunk_tokens, h.n_tokens));
        const hsize_t dims[4] = {static_cast<hsize_t>(L), static_cast<hsize_t>(a.heads), T, D};
        const hsize_t chunk[4] = {1, 1, Tc, D};
        h5::Id space(H5Screate_simple(4, dims, nullptr));
        h5::Id dcpl(H5Pcreate(H5P_DATASET_CREATE));
        if (direct) {
            // Chunks allocated now, never filled, in the implicit index (direct_writer.h):
            // that index needs the 1.10 layout message, for these datasets only.
            H5Pset_chunk(dcpl.get(), 4, chunk);
            H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY);
            H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER);
            if (H5Fset_libver_bounds(f.id(), H5F_LIBVER_V110, H5F_LIBVER_V110) < 0)
                h5::fail_h5(ErrorCode::io, f.where(a.name), "cannot select the 1.10 file format");
            a.dset = h5::Id(H5Dcreate2(f.id(), a.name, f16.get(), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
            if (H5Fset_libver_bounds(f.id(), H5F_LIBVER_V18, H5F_LIBVER_V18) < 0)
                h5::fail_h5(ErrorCode::io, f.where(a.name), "cannot go back to the 1.8 file format");
            if (!a.dset) h5::fail_h5(ErrorCode::io, f.where(a.name), "cannot create dataset");
            write_activation_attrs(a);
            a.direct = direct->add_dataset(f.id(), a.dset.get(), a.name, L, a.heads, static_cast<int64_t>(T),
                                           static_cast<int>(D), static_cast<int64_t>(Tc));
            return;
        }
        H5Pset_chunk(dcpl.get(), 4, chunk);
        if (opt.compress > 0) {
            // The pipeline's encode_chunk produces exactly what these two filters store.
            H5Pset_shuffle(dcpl.get());
            H5Pset_deflate(dcpl.get(), static_cast<unsigned>(opt.compress));
        }
        // Every element is written; filling never-written chunks first would only cost time.
        H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER);
        // Data arrive one token window at a time for every (layer, head), so each write
        // touches L*H chunks and a window may end mid-chunk. The cache must keep the
        // partly written chunk of every (layer, head) plus the next one, or HDF5 would
        // compress, evict, re-read and re-compress them for every window.
        const uint64_t chunk_bytes = Tc * D * 2;
        const uint64_t hot = static_cast<uint64_t>(L) * static_cast<uint64_t>(a.heads) * 2;
        const uint64_t nbytes = std::clamp<uint64_t>(hot * chunk_bytes, 1u << 20, 1ull << 30);
        const uint64_t nslots = next_prime(std::max<uint64_t>(521, hot * 10));
        h5::Id dapl(H5Pcreate(H5P_DATASET_ACCESS));
        // w0 = 1: chunks already fully written leave the cache first.
        H5Pset_chunk_cache(dapl.get(), nslots, nbytes, 1.0);
        a.dset = h5::Id(H5Dcreate2(f.id(), a.name, f16.get(), space.get(), H5P_DEFAULT, dcpl.get(), dapl.get()));
        if (!a.dset) h5::fail_h5(ErrorCode::io, f.where(a.name), "cannot create dataset");
        write_activation_attrs(a);
    }
};

KvDumpWriter::KvDumpWriter(const std::string& path, const KvDumpHeader& header, const KvDumpWriteOptions& options)
    : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    m.h = header;
    m.opt = options;
    const KvDumpHeader& h = m.h;
    PKV_CHECK(options.compress >= 0 && options.compress <= 9, invalid_argument,
              "{}: kv dump: compression level: expected 0 to 9, got {}", path, options.compress);
    PKV_CHECK(options.threads >= 0 && options.threads <= 1024, invalid_argument,
              "{}: kv dump: writer threads: expected 0 to 1024, got {}", path, options.threads);
    PKV_CHECK(options.queue_bytes > 0, invalid_argument, "{}: kv dump: expected a queue bound above 0 bytes", path);
    m.st.compress = options.compress;
    m.st.threads = options.threads;
    PKV_CHECK(h.n_head > 0 && h.n_head_kv > 0 && h.head_dim > 0, invalid_argument,
              "{}: kv dump: expected positive head counts and head_dim, got n_head {}, n_head_kv {}, head_dim {}", path,
              h.n_head, h.n_head_kv, h.head_dim);
    PKV_CHECK(h.n_tokens > 0, invalid_argument, "{}: kv dump: expected at least one token, got {}", path, h.n_tokens);
    PKV_CHECK(!h.layers.empty(), invalid_argument, "{}: kv dump: expected at least one layer", path);
    for (size_t i = 0; i < h.layers.size(); ++i) {
        PKV_CHECK(h.layers[i] >= 0 && h.layers[i] < h.n_layer_model, invalid_argument,
                  "{}: kv dump: layer {} out of range [0, {})", path, h.layers[i], h.n_layer_model);
        PKV_CHECK(i == 0 || h.layers[i] > h.layers[i - 1], invalid_argument,
                  "{}: kv dump: layers must be ascending, got {} after {}", path, h.layers[i], h.layers[i - 1]);
    }
    PKV_CHECK(h.capture.k_pre || h.capture.k_post || h.capture.v || h.capture.q, invalid_argument,
              "{}: kv dump: nothing to capture", path);
    PKV_CHECK(!h.hf_dim_order || h.head_dim % 2 == 0, invalid_argument,
              "{}: kv dump: hf dim order needs an even head_dim, got {}", path, h.head_dim);
    PKV_CHECK(h.chunk_tokens > 0, invalid_argument, "{}: kv dump: expected chunk_tokens > 0, got {}", path,
              h.chunk_tokens);
    check_header_layer_info(path, h);
    int64_t next = 0;
    for (const KvDumpShardRef& r : h.shards) {
        PKV_CHECK(r.token_start == next && r.n_tokens > 0 && !r.file.empty(), invalid_argument,
                  "{}: kv dump: shard '{}' holds tokens [{}, {}), expected a non-empty range from {}", path, r.file,
                  r.token_start, r.token_start + r.n_tokens, next);
        next += r.n_tokens;
    }
    PKV_CHECK(h.shards.empty() || (next == h.n_tokens && !h.job.empty()), invalid_argument,
              "{}: kv dump: shards cover {} of {} tokens (job '{}')", path, next, h.n_tokens, h.job);

    m.f = h5::File::create(path, !h.shards.empty());
    m.f16 = h5::make_f16_type();
    const hid_t root = m.f.id();
    const std::string where = m.f.where("/");
    h5::write_attr_string(root, where, kvdump::kAttrFormat, kvdump::kFormat);
    h5::write_attr_string(root, where, kvdump::kAttrFormatVersion,
                          h.shards.empty() ? kvdump::kFormatVersion : kvdump::kFormatVersionJoined);
    h5::write_attr_string(root, where, kvdump::kAttrModel, json_text(h.model));
    h5::write_attr_string(root, where, kvdump::kAttrProvenance, json_text(h.provenance));
    h5::write_attr_int(root, where, kAttrNLayer, h.n_layer_model);
    h5::write_attr_int(root, where, kAttrNHead, h.n_head);
    h5::write_attr_int(root, where, kAttrNHeadKv, h.n_head_kv);
    h5::write_attr_int(root, where, kAttrHeadDim, h.head_dim);
    h5::write_attr_int(root, where, kAttrNTokens, h.n_tokens);
    h5::write_attr_string(root, where, kvdump::kAttrDimOrder, dim_order_of(h));
    h5::write_attr_string(root, where, kAttrCapture, h.capture.to_string());
    if (!h.shards.empty()) {
        nlohmann::json parts = nlohmann::json::array();
        for (const KvDumpShardRef& r : h.shards)
            parts.push_back({{"file", r.file}, {"token_start", r.token_start}, {"n_tokens", r.n_tokens}});
        h5::write_attr_string(root, where, kAttrShards, json_text({{"job", h.job}, {"parts", parts}}));
    }
    if (!h.shard.is_null()) h5::write_attr_string(root, where, kAttrShard, json_text(h.shard));

    m.acts = {Activation{kvdump::kKPre, h.capture.k_pre, h.n_head_kv, {}},
              Activation{kvdump::kKPost, h.capture.k_post, h.n_head_kv, {}},
              Activation{kvdump::kV, h.capture.v, h.n_head_kv, {}}, Activation{kvdump::kQ, h.capture.q, h.n_head, {}}};
    if (options.threads > 0 && options.compress == 0 && h.shards.empty()) {
        m.direct = std::make_unique<DirectWriter>(path, options.threads, options.start_writeback);
        m.written.assign(h.layers.size(), std::vector<uint8_t>(static_cast<size_t>(h.n_tokens), 0));
    }
    for (auto& a : m.acts)
        if (a.on) m.create_activation(a);

    h5::Id layers = h5::create_1d(m.f, kvdump::kLayers, H5T_STD_I32LE, h.layers.size());
    h5::write_1d(m.f, layers.get(), kvdump::kLayers, H5T_NATIVE_INT32, 0, h.layers.size(), h.layers.data());
    layers.close_checked(m.f.where(kvdump::kLayers));
    write_layer_info(m.f, h);

    h5::create_group(m.f, "/tokens");
    const uint64_t T = static_cast<uint64_t>(h.n_tokens);
    m.tok_id = h5::create_1d(m.f, kvdump::kTokenId, H5T_STD_I32LE, T);
    m.tok_pos = h5::create_1d(m.f, kvdump::kTokenPos, H5T_STD_I32LE, T);
    m.tok_seq = h5::create_1d(m.f, kvdump::kTokenSeq, H5T_STD_I32LE, T);
    m.tok_nll = h5::create_1d(m.f, kvdump::kTokenNll, H5T_IEEE_F32LE, T);

    m.Tc = static_cast<uint64_t>(std::min<int64_t>(h.chunk_tokens, h.n_tokens));
    if (options.threads > 0 && h.shards.empty() && !m.direct) {
        for (auto& o : m.open) o.resize(h.layers.size());
        m.pipe = std::make_unique<ChunkPipeline>(path, options.compress, options.threads, options.queue_bytes,
                                                 options.before_encode);
    }
}

KvDumpWriter::~KvDumpWriter() = default;

void KvDumpWriter::write_tokens(int64_t t0, const std::vector<int32_t>& id, const std::vector<int32_t>& pos,
                                const std::vector<int32_t>& seq, const std::vector<float>& nll) {
    Impl& m = *impl_;
    PKV_ASSERT(!m.finished);
    if (m.pipe) m.pipe->check();
    if (m.direct) m.direct->check();
    const size_t n = id.size();
    PKV_CHECK(pos.size() == n && seq.size() == n && nll.size() == n, internal,
              "{}: write_tokens: expected equal lengths, got id {}, pos {}, seq {}, nll {}", m.f.where("/tokens"), n,
              pos.size(), seq.size(), nll.size());
    PKV_CHECK(t0 >= 0 && t0 + static_cast<int64_t>(n) <= m.h.n_tokens, internal,
              "{}: write_tokens: tokens [{}, {}) outside [0, {})", m.f.where("/tokens"), t0, t0 + n, m.h.n_tokens);
    const uint64_t o = static_cast<uint64_t>(t0);
    h5::write_1d(m.f, m.tok_id.get(), kvdump::kTokenId, H5T_NATIVE_INT32, o, n, id.data());
    h5::write_1d(m.f, m.tok_pos.get(), kvdump::kTokenPos, H5T_NATIVE_INT32, o, n, pos.data());
    h5::write_1d(m.f, m.tok_seq.get(), kvdump::kTokenSeq, H5T_NATIVE_INT32, o, n, seq.data());
    h5::write_1d(m.f, m.tok_nll.get(), kvdump::kTokenNll, H5T_NATIVE_FLOAT, o, n, nll.data());
}

namespace {

void check_layer_call(const std::string& path, const KvDumpHeader& h, int slot, int64_t t0, int n_tokens) {
    PKV_CHECK(h.shards.empty(), internal, "{}: write_layer: a joined dump's activations are in its shards", path);
    PKV_CHECK(slot >= 0 && slot < static_cast<int>(h.layers.size()), internal,
              "{}: write_layer: slot {} outside [0, {})", path, slot, h.layers.size());
    PKV_CHECK(t0 >= 0 && n_tokens > 0 && t0 + n_tokens <= h.n_tokens, internal,
              "{}: write_layer: tokens [{}, {}) outside [0, {})", path, t0, t0 + n_tokens, h.n_tokens);
}

}  // namespace

void KvDumpWriter::write_layer(int slot, int64_t t0, int n_tokens, const float* k_pre, const float* k_post,
                               const float* v, const float* q) {
    Impl& m = *impl_;
    PKV_ASSERT(!m.finished);
    check_layer_call(m.f.path(), m.h, slot, t0, n_tokens);
    if (m.pipe) m.pipe->check();
    if (m.direct) m.direct->check();
    m.write_rows<float>(slot, t0, n_tokens, {k_pre, k_post, v, q},
                        [](const float* s, uint16_t* dst, size_t D, bool permute) {
                            if (permute) {
                                // Per thread: the direct path converts on its workers.
                                thread_local std::vector<float> row;
                                row.resize(D);
                                gguf_to_hf_order(s, row.data(), static_cast<int>(D));
                                s = row.data();
                            }
                            float_to_half_n(s, dst, D);
                        });
}

void KvDumpWriter::write_layer16(int slot, int64_t t0, int n_tokens, const uint16_t* k_pre, const uint16_t* k_post,
                                 const uint16_t* v, const uint16_t* q) {
    Impl& m = *impl_;
    PKV_ASSERT(!m.finished);
    check_layer_call(m.f.path(), m.h, slot, t0, n_tokens);
    if (m.pipe) m.pipe->check();
    if (m.direct) m.direct->check();
    m.write_rows<uint16_t>(slot, t0, n_tokens, {k_pre, k_post, v, q},
                           [](const uint16_t* s, uint16_t* dst, size_t D, bool permute) {
                               if (!permute) {
                                   std::memcpy(dst, s, D * sizeof(uint16_t));
                                   return;
                               }
                               // gguf_to_hf_order on the bits: a permutation commutes with rounding.
                               const size_t half = D / 2;
                               for (size_t k = 0; k < half; ++k) {
                                   dst[k] = s[2 * k];
                                   dst[k + half] = s[2 * k + 1];
                               }
                           });
}

KvDumpWriterStats KvDumpWriter::stats() const {
    const Impl& m = *impl_;
    KvDumpWriterStats s = m.st;
    if (m.pipe) {
        const ChunkPipelineStats p = m.pipe->stats();
        s.chunks = p.chunks;
        s.encode_seconds = p.encode_seconds;
        s.write_seconds = p.write_seconds;
        s.wait_seconds = p.wait_seconds;
        s.waits = p.waits;
        s.peak_queue_bytes = p.peak_queue_bytes;
    }
    if (m.direct) {
        const DirectWriterStats d = m.direct->stats();
        s.raw_bytes = d.bytes;
        s.chunks = d.writes;
        s.copy_seconds = d.wait_seconds;
        s.write_seconds = d.write_seconds;
        s.peak_queue_bytes = d.buffer_bytes;
    }
    return s;
}

void KvDumpWriter::finish(const std::vector<int64_t>& seq_start, const std::vector<int32_t>& seq_length,
                          const nlohmann::json& summary) {
    Impl& m = *impl_;
    PKV_ASSERT(!m.finished);
    PKV_CHECK(seq_start.size() == seq_length.size(), internal,
              "{}: finish: expected equal lengths, got start {}, length {}", m.f.where("/sequences"), seq_start.size(),
              seq_length.size());
    int64_t covered = 0;
    for (int32_t l : seq_length) covered += l;
    PKV_CHECK(covered == m.h.n_tokens, internal, "{}: finish: sequences cover {} tokens, expected {}",
              m.f.where("/sequences"), covered, m.h.n_tokens);
    const auto t_finish = std::chrono::steady_clock::now();
    if (m.pipe) {
        for (size_t i = 0; i < m.open.size(); ++i)
            for (size_t slot = 0; slot < m.open[i].size(); ++slot)
                if (!m.open[i][slot].empty()) {
                    const int64_t c = m.open[i][slot].begin()->first;
                    fail(ErrorCode::internal, "{}: finish: layer slot {}: tokens {}-{} were not all written",
                         m.f.where(m.acts[i].name), slot, c * static_cast<int64_t>(m.Tc),
                         c * static_cast<int64_t>(m.Tc) + m.chunk_len(c) - 1);
                }
        m.pipe->drain();
    } else if (m.direct) {
        for (size_t slot = 0; slot < m.written.size(); ++slot) {
            const auto& w = m.written[slot];
            const auto gap = std::find(w.begin(), w.end(), uint8_t{0});
            if (gap != w.end())
                fail(ErrorCode::internal, "{}: finish: layer slot {}: token {} was not written", m.f.where("/"), slot,
                     gap - w.begin());
        }
        m.direct->drain();
    } else {
        // HDF5 filters and writes the chunks still in its cache here.
        const auto t0 = std::chrono::steady_clock::now();
        for (auto& a : m.acts)
            if (a.on && m.h.shards.empty() && H5Dflush(a.dset.get()) < 0)
                h5::fail_h5(ErrorCode::io, m.f.where(a.name), "cannot flush the dataset");
        m.st.write_seconds += since(t0);
    }
    if (m.h.shards.empty())
        for (auto& a : m.acts)
            if (a.on) m.st.stored_bytes += h5::storage_bytes(a.dset.get());

    h5::create_group(m.f, "/sequences");
    const size_t S = seq_start.size();
    h5::Id start = h5::create_1d(m.f, kvdump::kSeqStart, H5T_STD_I64LE, S);
    h5::write_1d(m.f, start.get(), kvdump::kSeqStart, H5T_NATIVE_INT64, 0, S, seq_start.data());
    h5::Id length = h5::create_1d(m.f, kvdump::kSeqLength, H5T_STD_I32LE, S);
    h5::write_1d(m.f, length.get(), kvdump::kSeqLength, H5T_NATIVE_INT32, 0, S, seq_length.data());

    h5::create_group(m.f, "/sources");
    const auto& src = m.h.sources;
    std::vector<std::string> paths, shas;
    std::vector<int64_t> bytes, tokens;
    for (const auto& s : src) {
        paths.push_back(s.path);
        shas.push_back(s.sha256);
        bytes.push_back(s.bytes);
        tokens.push_back(s.tokens);
    }
    h5::Id vstr = h5::make_vlen_string_type();
    h5::Id d_path = h5::create_1d(m.f, kvdump::kSourcePath, vstr.get(), src.size());
    h5::write_1d_strings(m.f, d_path.get(), kvdump::kSourcePath, paths);
    h5::Id d_sha = h5::create_1d(m.f, kvdump::kSourceSha256, vstr.get(), src.size());
    h5::write_1d_strings(m.f, d_sha.get(), kvdump::kSourceSha256, shas);
    h5::Id d_bytes = h5::create_1d(m.f, kvdump::kSourceBytes, H5T_STD_I64LE, src.size());
    h5::write_1d(m.f, d_bytes.get(), kvdump::kSourceBytes, H5T_NATIVE_INT64, 0, src.size(), bytes.data());
    h5::Id d_tokens = h5::create_1d(m.f, kvdump::kSourceTokens, H5T_STD_I64LE, src.size());
    h5::write_1d(m.f, d_tokens.get(), kvdump::kSourceTokens, H5T_NATIVE_INT64, 0, src.size(), tokens.data());

    h5::write_attr_string(m.f.id(), m.f.where("/"), kAttrSummary, json_text(summary));

    // Closing datasets writes their cached chunks: a full disk shows up here or in the flush.
    for (auto* d :
         {&start, &length, &d_path, &d_sha, &d_bytes, &d_tokens, &m.tok_id, &m.tok_pos, &m.tok_seq, &m.tok_nll})
        d->close_checked(m.f.path());
    for (auto& a : m.acts) a.dset.close_checked(m.f.where(a.name));
    m.f16.reset();
    m.f.close();
    m.finished = true;
    m.st.finish_seconds = since(t_finish);
}

}  // namespace pkv
