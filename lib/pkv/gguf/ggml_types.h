// pkv/gguf/ggml_types.h — ggml tensor types pkv reads, their block layouts, and
// plain reference (de)quantizers (`*_ref`), bit-exact with ggml's layouts.
//
// Layouts follow ggml-common.h: every quantized type stores blocks of
// `ggml_block_size(t)` elements in `ggml_type_size(t)` bytes, little-endian,
// binary16 scales (`ggml_half`). A row of n elements needs n % block_size == 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pkv {

/// ggml_type ids as stored in GGUF tensor infos (removed ids 4 and 5 are absent).
enum class GgmlType : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q4_K = 12,
    Q6_K = 14,
    BF16 = 30,
};

/// True for the ids above; other ids are well-formed GGUF but unsupported by pkv.
bool ggml_type_supported(uint32_t id);
/// "Q4_1", "IQ2_XXS", ...; "type<id>" for an id ggml never assigned.
std::string ggml_type_name(uint32_t id);
/// Block geometry of any id ggml has assigned (supported or not), so that sizes of
/// tensors pkv cannot dequantize are still known; false for unassigned ids.
bool ggml_type_layout(uint32_t id, uint64_t& block_size, uint64_t& type_size);
/// Elements per block (1 for F32/F16/BF16, 32 for Q4_0..Q8_0, 256 for K-quants).
/// These three throw unsupported for types pkv cannot dequantize.
size_t ggml_block_size(GgmlType t);
/// Bytes per block.
size_t ggml_type_size(GgmlType t);
/// Bytes of a row of n elements; throws invalid_argument if n is not a multiple of the block size.
size_t ggml_row_size(GgmlType t, int64_t n);

constexpr int QK4_0 = 32, QK4_1 = 32, QK5_0 = 32, QK5_1 = 32, QK8_0 = 32, QK_K = 256;

// clang-format off
#pragma pack(push, 1)
struct block_q4_0 { uint16_t d; uint8_t qs[QK4_0 / 2]; };
struct block_q4_1 { uint16_t d; uint16_t m; uint8_t qs[QK4_1 / 2]; };
struct block_q5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; };
struct block_q5_1 { uint16_t d; uint16_t m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; };
struct block_q8_0 { uint16_t d; int8_t qs[QK8_0]; };
struct block_q4_K { uint16_t d; uint16_t dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; };
struct block_q6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; };
#pragma pack(pop)
// clang-format on
static_assert(sizeof(block_q4_0) == 18, "wrong q4_0 block size");
static_assert(sizeof(block_q4_1) == 20, "wrong q4_1 block size");
static_assert(sizeof(block_q5_0) == 22, "wrong q5_0 block size");
static_assert(sizeof(block_q5_1) == 24, "wrong q5_1 block size");
static_assert(sizeof(block_q8_0) == 34, "wrong q8_0 block size");
static_assert(sizeof(block_q4_K) == 144, "wrong q4_K block size");
static_assert(sizeof(block_q6_K) == 210, "wrong q6_K block size");

/// Dequantizes n elements (a multiple of the block size) of type t from src to dst.
void dequantize_row_ref(GgmlType t, const void* src, float* dst, int64_t n);

/// Reference quantizers with ggml's rounding (quantize_row_*_ref), n a multiple of 32.
/// Used by KV-cache baselines that must store data exactly as llama.cpp does.
void quantize_row_q4_0_ref(const float* x, block_q4_0* y, int64_t n);
void quantize_row_q4_1_ref(const float* x, block_q4_1* y, int64_t n);
void quantize_row_q5_0_ref(const float* x, block_q5_0* y, int64_t n);
void quantize_row_q5_1_ref(const float* x, block_q5_1* y, int64_t n);
void quantize_row_q8_0_ref(const float* x, block_q8_0* y, int64_t n);

}  // namespace pkv
