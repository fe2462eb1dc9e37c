// The device mirror of a packed cache (packed_attention.h): allocation, full and
// incremental uploads of a host PackedCache, and counts set by hand for benchmarks.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "pkv/cuda/check.cuh"
#include "pkv/cuda/packed_device_impl.cuh"

namespace pkv::cuda {

using pkv_rt::CacheMethod;
using pkv_rt::KvPart;

void packed_device_fail(const std::string& what) { throw pkv_rt::CacheError("packed cache (device): " + what); }

namespace {

std::string str(int64_t v) { return std::to_string(v); }

// The first field in which a and b differ, "" when none does.
std::string config_difference(const pkv_rt::CacheConfig& a, const pkv_rt::CacheConfig& b) {
    if (a.method != b.method)
        return std::string("method is ") + pkv_rt::to_string(a.method) + " but the device cache's is " +
               pkv_rt::to_string(b.method);
    const struct {
        const char* name;
        int64_t x, y;
    } fields[] = {{"n_layer", a.n_layer, b.n_layer},
                  {"n_head", a.n_head, b.n_head},
                  {"n_head_kv", a.n_head_kv, b.n_head_kv},
                  {"head_dim", a.head_dim, b.head_dim},
                  {"n_seq", a.n_seq, b.n_seq},
                  {"max_tokens", a.max_tokens, b.max_tokens},
                  {"window", a.window, b.window},
                  {"group", a.group, b.group},
                  {"bits", a.bits, b.bits},
                  {"k_patterns", a.k_patterns, b.k_patterns},
                  {"v_patterns", a.v_patterns, b.v_patterns}};
    const bool blocks = a.method != CacheMethod::fp16, table = a.method == CacheMethod::patternkv_table;
    for (const auto& f : fields) {
        const std::string n = f.name;
        if (!blocks && (n == "window" || n == "group" || n == "bits")) continue;
        if (!table && (n == "k_patterns" || n == "v_patterns")) continue;
        if (f.x != f.y) return n + " is " + str(f.x) + " but the device cache's is " + str(f.y);
    }
    return "";
}

// Copies `height` rows of `width` bytes, `pitch` bytes apart on both sides, from host
// base + offset to device base + offset.
int64_t copy_rows(void* dev, const void* host, int64_t offset, int64_t width, int64_t pitch, int64_t height) {
    if (width <= 0 || height <= 0) return 0;
    PKV_CUDA_CHECK(cudaMemcpy2D(static_cast<uint8_t*>(dev) + offset, static_cast<size_t>(pitch),
                                static_cast<const uint8_t*>(host) + offset, static_cast<size_t>(pitch),
                                static_cast<size_t>(width), static_cast<size_t>(height), cudaMemcpyHostToDevice));
    return width * height;
}

}  // namespace

PackedCacheDevice::PackedCacheDevice(const pkv_rt::CacheConfig& c, int device) : impl_(new Impl) {
    Impl& m = *impl_;
    m.cfg = c;
    m.layout[0] = pkv_rt::block_layout(c, KvPart::k);  // throws CacheError for a bad configuration
    m.layout[1] = pkv_rt::block_layout(c, KvPart::v);
    if (c.head_dim != 64 && c.head_dim != 128 && c.head_dim != 256)
        packed_device_fail("head_dim " + str(c.head_dim) + " has no kernel: expected 64, 128 or 256");
    const int gqa = c.n_head / c.n_head_kv;
    if (gqa != 1 && gqa != 2 && gqa != 4 && gqa != 8)
        packed_device_fail("n_head / n_head_kv = " + str(gqa) + " has no kernel: expected 1, 2, 4 or 8");
    m.device = device;
    const char* kernel = std::getenv("PKV_DECODE_KERNEL");  // read once: decode calls are a hot path
    m.general_only = kernel != nullptr && std::string(kernel) == "general";
    m.use_mma = kernel == nullptr || std::string(kernel) != "lanes";
    PKV_CUDA_CHECK(cudaSetDevice(device));
    PKV_CUDA_CHECK(cudaDeviceGetAttribute(&m.sms, cudaDevAttrMultiProcessorCount, device));
    int optin = 0;
    PKV_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    m.smem_optin = static_cast<size_t>(optin);

    const int64_t heads = int64_t{c.n_layer} * c.n_seq * c.n_head_kv;
    const bool blocks = c.method != CacheMethod::fp16;
    m.W = blocks ? c.window + pkv_rt::kWindowSlack : c.max_tokens;
    m.B = blocks ? (c.max_tokens + c.window - 1) / c.window : 0;
    for (int p = 0; p < 2; ++p) {
        m.block_bytes[p] = heads * m.B * m.layout[p].bytes;
        if (m.block_bytes[p] > 0) {
            m.blocks[p].reserve(static_cast<size_t>(m.block_bytes[p]));
            PKV_CUDA_CHECK(cudaMemset(m.blocks[p].get(), 0, static_cast<size_t>(m.block_bytes[p])));
        }
        const int M = p == 0 ? c.k_patterns : c.v_patterns;
        m.pattern_elems[p] =
            c.method == CacheMethod::patternkv_table ? int64_t{c.n_layer} * c.n_head_kv * M * c.head_dim : 0;
        if (m.pattern_elems[p] > 0) {
            m.patterns[p].reserve(static_cast<size_t>(m.pattern_elems[p]));
            PKV_CUDA_CHECK(cudaMemset(m.patterns[p].get(), 0, static_cast<size_t>(m.pattern_elems[p]) * 4));
        }
    }
    m.ring_elems = heads * 2 * m.W * c.head_dim;
    m.ring.reserve(static_cast<size_t>(m.ring_elems));
    PKV_CUDA_CHECK(cudaMemset(m.ring.get(), 0, static_cast<size_t>(m.ring_elems) * 2));
    m.counts.assign(static_cast<size_t>(c.n_layer) * static_cast<size_t>(c.n_seq) * 3, 0);
    m.d_counts.reserve(m.counts.size());
    PKV_CUDA_CHECK(cudaMemset(m.d_counts.get(), 0, m.counts.size() * sizeof(int64_t)));
    m.prefill.assign(static_cast<size_t>(c.n_seq), 1);
    m.head_params.reserve(static_cast<size_t>(c.n_layer) * static_cast<size_t>(c.n_head_kv));
    const std::vector<PackedHeadParams> defaults(static_cast<size_t>(c.n_layer) * static_cast<size_t>(c.n_head_kv));
    PKV_CUDA_CHECK(cudaMemcpy(m.head_params.get(), defaults.data(), defaults.size() * sizeof(PackedHeadParams),
                              cudaMemcpyHostToDevice));
    m.d_fault.reserve(1);
    PKV_CUDA_CHECK(cudaMemset(m.d_fault.get(), 0, sizeof(int)));
}

int64_t upload_head_params(PackedCacheDevice::Impl& m, const pkv_rt::PackedCache& host) {
    const pkv_rt::CacheConfig& c = m.cfg;
    std::vector<PackedHeadParams> hp(static_cast<size_t>(c.n_layer) * static_cast<size_t>(c.n_head_kv));
    for (int l = 0; l < c.n_layer; ++l)
        for (int h = 0; h < c.n_head_kv; ++h) {
            PackedHeadParams& p =
                hp[static_cast<size_t>(l) * static_cast<size_t>(c.n_head_kv) + static_cast<size_t>(h)];
            p.gate_z = host.gate_z(l, h);
            p.k_clip = host.clip(l, h, KvPart::k);
            p.v_clip = host.clip(l, h, KvPart::v);
            p.k_l2 = host.assign(l, h, KvPart::k) == pkv_rt::Assign::l2 ? 1 : 0;
            p.v_l2 = host.assign(l, h, KvPart::v) == pkv_rt::Assign::l2 ? 1 : 0;
        }
    const int64_t bytes = static_cast<int64_t>(hp.size() * sizeof(PackedHeadParams));
    return copy_rows(m.head_params.get(), hp.data(), 0, bytes, bytes, 1);
}

PackedCacheDevice::~PackedCacheDevice() = default;
PackedCacheDevice::PackedCacheDevice(PackedCacheDevice&&) noexcept = default;
PackedCacheDevice& PackedCacheDevice::operator=(PackedCacheDevice&&) noexcept = default;

const pkv_rt::CacheConfig& PackedCacheDevice::config() const { return impl_->cfg; }
int64_t PackedCacheDevice::last_upload_bytes() const { return impl_->last_bytes; }

void* PackedCacheDevice::device_array(PackedArray a, int64_t* bytes) const {
    const Impl& m = *impl_;
    int64_t n = 0;
    void* p = nullptr;
    switch (a) {
        case PackedArray::k_blocks: p = m.blocks[0].get(), n = m.block_bytes[0]; break;
        case PackedArray::v_blocks: p = m.blocks[1].get(), n = m.block_bytes[1]; break;
        case PackedArray::ring: p = m.ring.get(), n = m.ring_elems * 2; break;
        case PackedArray::k_patterns: p = m.patterns[0].get(), n = m.pattern_elems[0] * 4; break;
        case PackedArray::v_patterns: p = m.patterns[1].get(), n = m.pattern_elems[1] * 4; break;
    }
    if (bytes) *bytes = n;
    return n > 0 ? p : nullptr;
}

void PackedCacheDevice::set_state(int layer, int seq, int64_t n, int64_t nk, int64_t nv) {
    Impl& m = *impl_;
    const pkv_rt::CacheConfig& c = m.cfg;
    const std::string at = "set_state: layer " + str(layer) + " sequence " + str(seq);
    if (layer < 0 || layer >= c.n_layer || seq < 0 || seq >= c.n_seq)
        packed_device_fail(at + ": expected layer < " + str(c.n_layer) + " and sequence < " + str(c.n_seq));
    if (n < 0 || n > c.max_tokens)
        packed_device_fail(at + ": " + str(n) + " tokens, expected 0.." + str(c.max_tokens) + " (allocated)");
    if (c.method == CacheMethod::fp16) {
        if (nk != 0 || nv != 0) packed_device_fail(at + ": an fp16 cache quantizes nothing, got nK " + str(nk));
    } else {
        if (nk < 0 || nk > n || nk % c.window != 0)
            packed_device_fail(at + ": nK " + str(nk) + ", expected a multiple of R " + str(c.window) + " in [0, " +
                               str(n) + "]");
        if (nv < 0 || nv > n || (c.method == CacheMethod::patternkv_table && nv % c.window != 0))
            packed_device_fail(at + ": nV " + str(nv) + " is not a valid quantized prefix of " + str(n) + " tokens");
        if (n - nk > c.window || n - nv > c.window + pkv_rt::kWindowSlack)
            packed_device_fail(at + ": " + str(n - nk) + " K and " + str(n - nv) +
                               " V ring tokens exceed the ring's R + 1 = " + str(m.W) + " slots");
    }
    const size_t ix = (static_cast<size_t>(layer) * static_cast<size_t>(c.n_seq) + static_cast<size_t>(seq)) * 3;
    m.counts[ix] = n, m.counts[ix + 1] = nk, m.counts[ix + 2] = nv;
    m.prefill[static_cast<size_t>(seq)] = 0;
    m.loaded = true;
    PKV_CUDA_CHECK(cudaSetDevice(m.device));
    PKV_CUDA_CHECK(
        cudaMemcpy(m.d_counts.get() + ix, m.counts.data() + ix, 3 * sizeof(int64_t), cudaMemcpyHostToDevice));
}

void PackedCacheDevice::upload(const pkv_rt::PackedCache& host) {
    Impl& m = *impl_;
    const std::string diff = config_difference(host.config(), m.cfg);
    if (!diff.empty()) packed_device_fail("upload: the host cache's " + diff);
    PKV_CUDA_CHECK(cudaSetDevice(m.device));
    int64_t bytes = 0;
    const pkv_rt::CacheConfig& c = m.cfg;
    // The host's arrays are contiguous; the first element's address is the array's base.
    for (int p = 0; p < 2; ++p) {
        if (m.block_bytes[p] > 0)
            bytes += copy_rows(m.blocks[p].get(), host.block(0, 0, 0, static_cast<KvPart>(p), 0), 0, m.block_bytes[p],
                               m.block_bytes[p], 1);
        if (m.pattern_elems[p] > 0)
            bytes += copy_rows(m.patterns[p].get(), host.patterns(0, 0, static_cast<KvPart>(p)), 0,
                               m.pattern_elems[p] * 4, m.pattern_elems[p] * 4, 1);
    }
    bytes += copy_rows(m.ring.get(), host.ring_row(0, 0, 0, KvPart::k, 0), 0, m.ring_elems * 2, m.ring_elems * 2, 1);
    bytes += upload_head_params(m, host);
    PKV_CUDA_CHECK(cudaMemset(m.d_fault.get(), 0, sizeof(int)));
    for (int l = 0; l < c.n_layer; ++l)
        for (int s = 0; s < c.n_seq; ++s) {
            const size_t ix = (static_cast<size_t>(l) * static_cast<size_t>(c.n_seq) + static_cast<size_t>(s)) * 3;
            m.counts[ix] = host.tokens(l, s);
            m.counts[ix + 1] = host.quantized(l, s, KvPart::k);
            m.counts[ix + 2] = host.quantized(l, s, KvPart::v);
        }
    for (int s = 0; s < c.n_seq; ++s) m.prefill[static_cast<size_t>(s)] = host.in_prefill(s) ? 1 : 0;
    bytes += copy_rows(m.d_counts.get(), m.counts.data(), 0, static_cast<int64_t>(m.counts.size() * 8),
                       static_cast<int64_t>(m.counts.size() * 8), 1);
    m.loaded = true;
    m.last_bytes = bytes;
}

void PackedCacheDevice::sync(const pkv_rt::PackedCache& host) {
    Impl& m = *impl_;
    if (!m.loaded) return upload(host);
    const std::string diff = config_difference(host.config(), m.cfg);
    if (!diff.empty()) packed_device_fail("sync: the host cache's " + diff);
    PKV_CUDA_CHECK(cudaSetDevice(m.device));
    const pkv_rt::CacheConfig& c = m.cfg;
    const int64_t H = c.n_head_kv, D = c.head_dim, R = c.window;
    const bool blocks = c.method != CacheMethod::fp16;
    const uint8_t* ring_base = reinterpret_cast<const uint8_t*>(host.ring_row(0, 0, 0, KvPart::k, 0));
    int64_t bytes = 0;
    // Patterns are set before the first append and fixed after: copy them while empty.
    if (std::all_of(m.counts.begin(), m.counts.end(), [](int64_t v) { return v == 0; })) {
        for (int p = 0; p < 2; ++p)
            if (m.pattern_elems[p] > 0)
                bytes += copy_rows(m.patterns[p].get(), host.patterns(0, 0, static_cast<KvPart>(p)), 0,
                                   m.pattern_elems[p] * 4, m.pattern_elems[p] * 4, 1);
        bytes += upload_head_params(m, host);
    }
    for (int l = 0; l < c.n_layer; ++l)
        for (int s = 0; s < c.n_seq; ++s) {
            const size_t ix = (static_cast<size_t>(l) * static_cast<size_t>(c.n_seq) + static_cast<size_t>(s)) * 3;
            const int64_t n0 = m.counts[ix], k0 = m.counts[ix + 1], v0 = m.counts[ix + 2];
            const int64_t n1 = host.tokens(l, s), k1 = host.quantized(l, s, KvPart::k),
                          v1 = host.quantized(l, s, KvPart::v);
            const int64_t ls = int64_t{l} * c.n_seq + s;
            const bool rewound = n1 < n0 || k1 < k0 || v1 < v0;
            // Blocks: those flushed since (a KIVI V block partly filled before is rewritten).
            if (blocks) {
                const int64_t from[2] = {rewound ? 0 : k0 / R, rewound ? 0 : v0 / R};
                const int64_t to[2] = {rewound ? m.B : (k1 + R - 1) / R, rewound ? m.B : (v1 + R - 1) / R};
                for (int p = 0; p < 2; ++p) {
                    const int64_t bb = m.layout[p].bytes;
                    if (to[p] <= from[p]) continue;
                    const uint8_t* base = host.block(0, 0, 0, static_cast<KvPart>(p), 0);
                    bytes += copy_rows(m.blocks[p].get(), base, (ls * H * m.B + from[p]) * bb, (to[p] - from[p]) * bb,
                                       m.B * bb, H);
                }
            }
            // Ring slots of the tokens appended since: rows (head, part) of W slots each.
            const int64_t first = rewound ? 0 : n0, cnt = std::min(n1 - first, m.W);
            if (cnt > 0) {
                const int64_t slot0 = rewound || n1 - first >= m.W ? 0 : first % m.W;
                const int64_t run = std::min(cnt, m.W - slot0);
                const int64_t row = m.W * D * 2, rows0 = ls * H * 2;
                bytes += copy_rows(m.ring.get(), ring_base, rows0 * row + slot0 * D * 2, run * D * 2, row, H * 2);
                if (cnt > run)
                    bytes += copy_rows(m.ring.get(), ring_base, rows0 * row, (cnt - run) * D * 2, row, H * 2);
            }
            m.counts[ix] = n1, m.counts[ix + 1] = k1, m.counts[ix + 2] = v1;
        }
    for (int s = 0; s < c.n_seq; ++s) m.prefill[static_cast<size_t>(s)] = host.in_prefill(s) ? 1 : 0;
    bytes += copy_rows(m.d_counts.get(), m.counts.data(), 0, static_cast<int64_t>(m.counts.size() * 8),
                       static_cast<int64_t>(m.counts.size() * 8), 1);
    m.last_bytes = bytes;
}

}  // namespace pkv::cuda
