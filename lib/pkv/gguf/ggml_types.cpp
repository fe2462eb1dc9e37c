#include "pkv/gguf/ggml_types.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "pkv/core/error.h"
#include "pkv/core/half.h"

namespace pkv {

namespace {

struct TypeLayout {
    uint32_t id;
    const char* name;
    uint32_t block;  // elements per block
    uint32_t bytes;  // bytes per block
};

// Every id ggml has assigned, so that files holding types pkv cannot dequantize
// can still be listed with their sizes and checked for overlapping data.
constexpr TypeLayout kLayouts[] = {
    {0, "F32", 1, 4},         {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},      {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},      {7, "Q5_1", 32, 24},      {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84},    {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292},   {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74},
    {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},   {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110},
    {22, "IQ2_S", 256, 82},   {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},         {25, "I16", 1, 2},
    {26, "I32", 1, 4},        {27, "I64", 1, 8},        {28, "F64", 1, 8},        {29, "IQ1_M", 256, 56},
    {30, "BF16", 1, 2},       {34, "TQ1_0", 256, 54},   {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},
    {40, "NVFP4", 64, 36},    {41, "Q1_0", 128, 18},
};

const TypeLayout* find_layout(uint32_t id) {
    for (const auto& l : kLayouts)
        if (l.id == id) return &l;
    return nullptr;
}

const TypeLayout& supported_layout(GgmlType t) {
    const uint32_t id = static_cast<uint32_t>(t);
    const TypeLayout* l = ggml_type_supported(id) ? find_layout(id) : nullptr;
    if (!l) fail(ErrorCode::unsupported, "ggml type {} (id {}) is not supported", ggml_type_name(id), id);
    return *l;
}

inline float h2f(uint16_t h) { return half_to_float(h); }

void check_multiple(GgmlType t, int64_t n, int64_t block) {
    if (n < 0 || n % block != 0)
        fail(ErrorCode::invalid_argument, "{}: row of {} elements is not a multiple of the block size {}",
             ggml_type_name(static_cast<uint32_t>(t)), n, block);
}

// The 6-bit scale and min of sub-block j of a Q4_K super-block (12 packed bytes).
inline void q4k_scale_min(int j, const uint8_t* s, uint8_t& sc, uint8_t& m) {
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

void dequant_q4_0(const block_q4_0* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK4_0) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            y[j] = static_cast<float>((b[i].qs[j] & 0x0F) - 8) * d;
            y[j + QK4_0 / 2] = static_cast<float>((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void dequant_q4_1(const block_q4_1* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK4_1) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            y[j] = static_cast<float>(b[i].qs[j] & 0x0F) * d + m;
            y[j + QK4_1 / 2] = static_cast<float>(b[i].qs[j] >> 4) * d + m;
        }
    }
}

void dequant_q5_0(const block_q5_0* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK5_0) {
        const float d = h2f(b[i].d);
        uint32_t qh;
        std::memcpy(&qh, b[i].qh, 4);
        for (int j = 0; j < QK5_0 / 2; ++j) {
            const int lo = (b[i].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
            const int hi = (b[i].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
            y[j] = static_cast<float>(lo - 16) * d;
            y[j + QK5_0 / 2] = static_cast<float>(hi - 16) * d;
        }
    }
}

void dequant_q5_1(const block_q5_1* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK5_1) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        uint32_t qh;
        std::memcpy(&qh, b[i].qh, 4);
        for (int j = 0; j < QK5_1 / 2; ++j) {
            const int lo = (b[i].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
            const int hi = (b[i].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
            y[j] = static_cast<float>(lo) * d + m;
            y[j + QK5_1 / 2] = static_cast<float>(hi) * d + m;
        }
    }
}

void dequant_q8_0(const block_q8_0* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK8_0) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < QK8_0; ++j) y[j] = static_cast<float>(b[i].qs[j]) * d;
    }
}

void dequant_q4_k(const block_q4_K* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        const uint8_t* q = b[i].qs;
        for (int c = 0; c < 4; ++c, q += 32) {
            uint8_t sc0, m0, sc1, m1;
            q4k_scale_min(2 * c, b[i].scales, sc0, m0);
            q4k_scale_min(2 * c + 1, b[i].scales, sc1, m1);
            const float d0 = d * sc0, mm0 = dmin * m0, d1 = d * sc1, mm1 = dmin * m1;
            for (int l = 0; l < 32; ++l) *y++ = d0 * static_cast<float>(q[l] & 0x0F) - mm0;
            for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] >> 4) - mm1;
        }
    }
}

void dequant_q6_k(const block_q6_K* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(b[i].d);
        const uint8_t* ql = b[i].ql;
        const uint8_t* qh = b[i].qh;
        const int8_t* sc = b[i].scales;
        for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
                y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
                y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
                y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
            }
        }
    }
}

// The signed value of largest magnitude in x[0..n) (the first one on ties), and that magnitude.
inline void signed_absmax(const float* x, int n, float& max, float& amax) {
    max = 0.0f;
    amax = 0.0f;
    for (int j = 0; j < n; ++j) {
        if (amax < std::fabs(x[j])) {
            amax = std::fabs(x[j]);
            max = x[j];
        }
    }
}

// The reference quantizers round x * id to float before adding the offset (two
// statements in C, so an ISO compiler may not fuse them). A fused multiply-add, which
// -mfma builds may emit, changes a code now and then; the volatile forces the rounding.
inline float mul_rounded(float a, float b) {
    volatile float p = a * b;
    return p;
}

// Stores the 5-bit codes of elements j and j + 16 of a Q5 block: low nibbles in
// qs[j], fifth bits in bit j and bit j + 16 of qh.
inline void pack_q5_pair(uint8_t q0, uint8_t q1, int j, uint8_t* qs, uint32_t& qh) {
    qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
    qh |= static_cast<uint32_t>((q0 & 0x10u) >> 4) << j;
    qh |= static_cast<uint32_t>((q1 & 0x10u) >> 4) << (j + 16);
}

inline void min_max(const float* x, int n, float& mn, float& mx) {
    mn = std::numeric_limits<float>::max();
    mx = -std::numeric_limits<float>::max();
    for (int j = 0; j < n; ++j) {
        mn = std::min(mn, x[j]);
        mx = std::max(mx, x[j]);
    }
}

}  // namespace

bool ggml_type_supported(uint32_t id) {
    switch (static_cast<GgmlType>(id)) {
        case GgmlType::F32:
        case GgmlType::F16:
        case GgmlType::Q4_0:
        case GgmlType::Q4_1:
        case GgmlType::Q5_0:
        case GgmlType::Q5_1:
        case GgmlType::Q8_0:
        case GgmlType::Q4_K:
        case GgmlType::Q6_K:
        case GgmlType::BF16: return true;
    }
    return false;
}

std::string ggml_type_name(uint32_t id) {
    const TypeLayout* l = find_layout(id);
    return l ? std::string(l->name) : "type" + std::to_string(id);
}

bool ggml_type_layout(uint32_t id, uint64_t& block_size, uint64_t& type_size) {
    const TypeLayout* l = find_layout(id);
    if (!l) return false;
    block_size = l->block;
    type_size = l->bytes;
    return true;
}

size_t ggml_block_size(GgmlType t) { return supported_layout(t).block; }
size_t ggml_type_size(GgmlType t) { return supported_layout(t).bytes; }

size_t ggml_row_size(GgmlType t, int64_t n) {
    const TypeLayout& l = supported_layout(t);
    check_multiple(t, n, l.block);
    return static_cast<size_t>(n / l.block) * l.bytes;
}

void dequantize_row_ref(GgmlType t, const void* src, float* dst, int64_t n) {
    const TypeLayout& l = supported_layout(t);
    check_multiple(t, n, l.block);
    if (n == 0) return;  // empty tensors may come with null buffers
    const int64_t nb = n / l.block;
    switch (t) {
        case GgmlType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
        case GgmlType::F16: {
            const auto* s = static_cast<const uint8_t*>(src);
            for (int64_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, s + 2 * i, 2);
                dst[i] = half_to_float(h);
            }
            return;
        }
        case GgmlType::BF16: {
            const auto* s = static_cast<const uint8_t*>(src);
            for (int64_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, s + 2 * i, 2);
                dst[i] = bf16_to_float(h);
            }
            return;
        }
        // Blocks are byte-packed structs, so any source address is fine to read through.
        case GgmlType::Q4_0: dequant_q4_0(static_cast<const block_q4_0*>(src), dst, nb); return;
        case GgmlType::Q4_1: dequant_q4_1(static_cast<const block_q4_1*>(src), dst, nb); return;
        case GgmlType::Q5_0: dequant_q5_0(static_cast<const block_q5_0*>(src), dst, nb); return;
        case GgmlType::Q5_1: dequant_q5_1(static_cast<const block_q5_1*>(src), dst, nb); return;
        case GgmlType::Q8_0: dequant_q8_0(static_cast<const block_q8_0*>(src), dst, nb); return;
        case GgmlType::Q4_K: dequant_q4_k(static_cast<const block_q4_K*>(src), dst, nb); return;
        case GgmlType::Q6_K: dequant_q6_k(static_cast<const block_q6_K*>(src), dst, nb); return;
    }
    PKV_ASSERT(false);
}

void quantize_row_q4_0_ref(const float* x, block_q4_0* y, int64_t n) {
    check_multiple(GgmlType::Q4_0, n, QK4_0);
    for (int64_t i = 0; i < n / QK4_0; ++i, x += QK4_0) {
        float max, amax;
        signed_absmax(x, QK4_0, max, amax);
        // Mapping the extreme value to -8 uses the full range [-8, 7] on one side.
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = float_to_half(d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            const auto q0 = std::min<int8_t>(15, static_cast<int8_t>(mul_rounded(x[j], id) + 8.5f));
            const auto q1 = std::min<int8_t>(15, static_cast<int8_t>(mul_rounded(x[j + QK4_0 / 2], id) + 8.5f));
            y[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
        }
    }
}

void quantize_row_q4_1_ref(const float* x, block_q4_1* y, int64_t n) {
    check_multiple(GgmlType::Q4_1, n, QK4_1);
    for (int64_t i = 0; i < n / QK4_1; ++i, x += QK4_1) {
        float mn, mx;
        min_max(x, QK4_1, mn, mx);
        const float d = (mx - mn) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = float_to_half(d);
        y[i].m = float_to_half(mn);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            const auto q0 = std::min<int8_t>(15, static_cast<int8_t>(mul_rounded(x[j] - mn, id) + 0.5f));
            const auto q1 = std::min<int8_t>(15, static_cast<int8_t>(mul_rounded(x[j + QK4_1 / 2] - mn, id) + 0.5f));
            y[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
        }
    }
}

void quantize_row_q5_0_ref(const float* x, block_q5_0* y, int64_t n) {
    check_multiple(GgmlType::Q5_0, n, QK5_0);
    for (int64_t i = 0; i < n / QK5_0; ++i, x += QK5_0) {
        float max, amax;
        signed_absmax(x, QK5_0, max, amax);
        const float d = max / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = float_to_half(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; ++j) {
            const auto q0 =
                static_cast<uint8_t>(std::min<int8_t>(31, static_cast<int8_t>(mul_rounded(x[j], id) + 16.5f)));
            const auto q1 = static_cast<uint8_t>(
                std::min<int8_t>(31, static_cast<int8_t>(mul_rounded(x[j + QK5_0 / 2], id) + 16.5f)));
            pack_q5_pair(q0, q1, j, y[i].qs, qh);
        }
        std::memcpy(y[i].qh, &qh, 4);
    }
}

void quantize_row_q5_1_ref(const float* x, block_q5_1* y, int64_t n) {
    check_multiple(GgmlType::Q5_1, n, QK5_1);
    for (int64_t i = 0; i < n / QK5_1; ++i, x += QK5_1) {
        float mn, mx;
        min_max(x, QK5_1, mn, mx);
        const float d = (mx - mn) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = float_to_half(d);
        y[i].m = float_to_half(mn);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_1 / 2; ++j) {
            // (x - min) * id never exceeds 31 by more than rounding noise; the clamp keeps
            // such noise from wrapping the 5-bit code.
            const auto q0 = static_cast<uint8_t>(std::min(31, static_cast<int>(mul_rounded(x[j] - mn, id) + 0.5f)));
            const auto q1 =
                static_cast<uint8_t>(std::min(31, static_cast<int>(mul_rounded(x[j + QK5_1 / 2] - mn, id) + 0.5f)));
            pack_q5_pair(q0, q1, j, y[i].qs, qh);
        }
        std::memcpy(y[i].qh, &qh, 4);
    }
}

void quantize_row_q8_0_ref(const float* x, block_q8_0* y, int64_t n) {
    check_multiple(GgmlType::Q8_0, n, QK8_0);
    for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = float_to_half(d);
        for (int j = 0; j < QK8_0; ++j) y[i].qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
    }
}

}  // namespace pkv
