// formats.h: the tensor element and block formats of GGUF/ggml, shared by the CPU and CUDA code.
//
// One definition of every on-disk layout lives here so that the CPU kernels, the CUDA kernels and the
// quantizers cannot drift apart. Layouts follow ggml's ggml-common.h (byte-for-byte: these structs are
// read directly out of the mmapped file). Nothing here allocates or depends on the C++ standard library
// beyond <cstdint>/<cstring>, so nvcc and the host emulation harness can include it unchanged.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define PQ_HD __host__ __device__
#elif defined(PQ_CUDA_EMU)
#include "emu/emu_qualifiers.h"  // __host__ / __device__ as plain C++ (host code may include this first)
#define PQ_HD __host__ __device__
#else
#define PQ_HD
#endif

namespace pq {

// ggml type ids as stored in GGUF tensor infos (ggml.h enum ggml_type).
enum GgmlType : int32_t {
    T_F32 = 0,
    T_F16 = 1,
    T_Q4_0 = 2,
    T_Q4_1 = 3,
    T_Q5_0 = 6,
    T_Q5_1 = 7,
    T_Q8_0 = 8,
    T_Q8_1 = 9,
    T_Q2_K = 10,
    T_Q3_K = 11,
    T_Q4_K = 12,
    T_Q5_K = 13,
    T_Q6_K = 14,
    T_Q8_K = 15,
    T_IQ4_NL = 20,
    T_IQ4_XS = 23,
    T_BF16 = 30,
};

// ---- 16-bit floats -------------------------------------------------------------------------------
// The bits of a float and back (a memcpy: no aliasing games, compiled to a register move).
PQ_HD inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

PQ_HD inline float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// IEEE half <-> float, bit-exact with ggml's scalar conversions (round to nearest even, subnormals kept).
PQ_HD inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: renormalise
            exp = 127 - 15 + 1;
            while ((mant & 0x400u) == 0) {
                mant <<= 1;
                exp--;
            }
            mant &= 0x3ffu;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    return f32_from_bits(bits);
}

PQ_HD inline uint16_t fp32_to_fp16(float f) {
    // Same algorithm as ggml's fallback GGML_COMPUTE_FP32_TO_FP16 (Maratyszcza's FP16 library).
    const uint32_t w = f32_bits(f);
    const float scale_to_inf = 0x1.0p+112f;
    const float scale_to_zero = 0x1.0p-110f;
    float af = f < 0 ? -f : f;
    float base = (af * scale_to_inf) * scale_to_zero;
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = f32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = f32_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

PQ_HD inline float bf16_to_fp32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

PQ_HD inline uint16_t fp32_to_bf16(float f) {
    // ggml_compute_fp32_to_bf16: NaN kept quiet, otherwise round to nearest even.
    const uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

// ---- Quantized blocks (ggml-common.h) --------------------------------------------------------------
constexpr int QK8_0 = 32;
constexpr int QK4_NL = 32;
constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

// Legacy 32-value formats (llama.cpp's fallbacks for rows that are not a multiple of 256; also whole
// community files). The 5-bit ones keep the 5th bits of all 32 values in qh (bit j = value j).
constexpr int QK4_0 = 32;
constexpr int QK4_1 = 32;
constexpr int QK5_0 = 32;
constexpr int QK5_1 = 32;

struct block_q4_0 {      // 18 bytes: x = d * (q - 8); value j in the low nibble of qs[j], j+16 in the high
    uint16_t d;
    uint8_t qs[QK4_0 / 2];
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 layout");

struct block_q4_1 {      // 20 bytes: x = d * q + m
    uint16_t d;
    uint16_t m;
    uint8_t qs[QK4_1 / 2];
};
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 layout");

struct block_q5_0 {      // 22 bytes: x = d * (q - 16)
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
};
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 layout");

struct block_q5_1 {      // 24 bytes: x = d * q + m
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
};
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 layout");

struct block_q8_0 {      // 34 bytes per 32 values: x = d * q
    uint16_t d;          // fp16 scale
    int8_t qs[QK8_0];
};
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 layout");

struct block_q8_1 {      // 36 bytes: Q8_0 plus s = d * sum(q) (used for activations on CUDA)
    uint16_t d;
    uint16_t s;
    int8_t qs[QK8_0];
};
static_assert(sizeof(block_q8_1) == 36, "block_q8_1 layout");

struct block_q4_K {      // 144 bytes per 256 values: x = d*sc*q - dmin*m per 32-value sub-block
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];  // 8 x (6-bit scale, 6-bit min), packed
    uint8_t qs[QK_K / 2];          // 4-bit quants
};
static_assert(sizeof(block_q4_K) == 144, "block_q4_K layout");

struct block_q5_K {      // 176 bytes: Q4_K plus a 5th bit per value
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q5_K) == 176, "block_q5_K layout");

struct block_q6_K {      // 210 bytes: x = d * sc * (q6 - 32), 16 sub-blocks of 16
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;
};
static_assert(sizeof(block_q6_K) == 210, "block_q6_K layout");

struct block_q8_K {      // activation format for k-quant dot products on the CPU
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];  // sums of groups of 16 quants
};
static_assert(sizeof(block_q8_K) == 292, "block_q8_K layout");

struct block_iq4_nl {    // 18 bytes per 32 values, non-linear 4-bit codebook
    uint16_t d;
    uint8_t qs[QK4_NL / 2];
};
static_assert(sizeof(block_iq4_nl) == 18, "block_iq4_nl layout");

struct block_iq4_xs {    // 136 bytes per 256 values
    uint16_t d;
    uint16_t scales_h;
    uint8_t scales_l[QK_K / 64];
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_iq4_xs) == 136, "block_iq4_xs layout");

// The IQ4_NL / IQ4_XS codebook (kvalues_iq4nl in ggml).
#if defined(__CUDACC__)
__device__ __constant__
#endif
static const int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                         1,    13,   25,  38,  53,  69,  89,  113};

// Q4_K/Q5_K: unpack the 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes.
PQ_HD inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

// ---- Q8_0 / Q4_0 block quantizers (llama.cpp's quantize_row_*_ref, byte for byte) ----------------------
// Written once for the CPU core (quants_q8.cpp / quants_legacy.cpp call them) and the CUDA KV-cache append
// (kernels/rope.cuh), so a cache row holds the same bytes on both backends. ggml's scalar C code is
// reproduced operation by operation; on the GPU the one multiply-add is spelled with round-to-nearest
// intrinsics so nvcc cannot fuse it (a fused multiply-add rounds once and would change chosen levels; the
// CPU core is built with -ffp-contract=off for the same reason).

// C's float -> int8 conversion as x86-64 compilers emit it (cvttss2si to 32 bits, keep the low byte):
// NaN and out-of-range values become INT32_MIN, whose low byte is 0. Written explicitly because the
// plain cast is undefined behaviour for those inputs and ggml's Q8_0 reference hits them for
// subnormal blocks (1/d overflows to inf).
PQ_HD inline int8_t trunc_to_i8(float r) {
    int32_t i = INT32_MIN;
    if (r > -2147483904.f && r < 2147483648.f) i = (int32_t)r;
    return (int8_t)(uint8_t)(uint32_t)i;
}

// a * b + c with two roundings (never contracted into an fma).
PQ_HD inline float mul_add_unfused(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(__fmul_rn(a, b), c);
#else
    return a * b + c;
#endif
}

// One Q8_0 block: d = amax/127 (fp16), q = round(x * (1/d)) with C roundf (ties away from zero), the fp32
// inverse of the unrounded d as ggml takes it.
PQ_HD inline void quantize_block_q8_0(const float* x, block_q8_0* y) {
    float amax = 0;
    for (int j = 0; j < QK8_0; ++j) amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
    const float d = amax / 127;
    const float id = d ? 1.0f / d : 0.0f;
    y->d = fp32_to_fp16(d);
    for (int j = 0; j < QK8_0; ++j) y->qs[j] = trunc_to_i8(roundf(x[j] * id));
}

// The signed value of largest magnitude among x[0..n) (the first one on ties; 0 for all zeros), as
// ggml's q4_0 / q5_0 / q8_K / make_qx_quants pick it.
PQ_HD inline float signed_absmax(const float* x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; ++j) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

// One Q4_0 block: d = max / -8 with max the signed value of largest |x| (the first on ties), q = x/d + 8
// truncated and clamped to [0, 15] as ggml's MIN(15, (int8_t)v) stored into a uint8_t.
PQ_HD inline void quantize_block_q4_0(const float* x, block_q4_0* y) {
    const float d = signed_absmax(x, QK4_0) / -8;
    const float id = d ? 1.0f / d : 0.0f;
    y->d = fp32_to_fp16(d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
        const int q0 = trunc_to_i8(mul_add_unfused(x[j], id, 8.5f));
        const int q1 = trunc_to_i8(mul_add_unfused(x[QK4_0 / 2 + j], id, 8.5f));
        const uint8_t xi0 = (uint8_t)(15 < q0 ? 15 : q0), xi1 = (uint8_t)(15 < q1 ? 15 : q1);
        y->qs[j] = (uint8_t)(xi0 | (uint8_t)(xi1 << 4));
    }
}

// Block geometry of a type: values per block and bytes per block. Returns 0 for unsupported types.
PQ_HD inline int type_block_size(int type) {
    switch (type) {
        case T_F32: case T_F16: case T_BF16: return 1;
        case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1:
        case T_Q8_0: case T_Q8_1: case T_IQ4_NL: return 32;
        case T_Q4_K: case T_Q5_K: case T_Q6_K: case T_Q8_K: case T_IQ4_XS: return QK_K;
        default: return 0;
    }
}

PQ_HD inline int type_block_bytes(int type) {
    switch (type) {
        case T_F32: return 4;
        case T_F16: case T_BF16: return 2;
        case T_Q4_0: return (int)sizeof(block_q4_0);
        case T_Q4_1: return (int)sizeof(block_q4_1);
        case T_Q5_0: return (int)sizeof(block_q5_0);
        case T_Q5_1: return (int)sizeof(block_q5_1);
        case T_Q8_0: return (int)sizeof(block_q8_0);
        case T_Q8_1: return (int)sizeof(block_q8_1);
        case T_IQ4_NL: return (int)sizeof(block_iq4_nl);
        case T_Q4_K: return (int)sizeof(block_q4_K);
        case T_Q5_K: return (int)sizeof(block_q5_K);
        case T_Q6_K: return (int)sizeof(block_q6_K);
        case T_Q8_K: return (int)sizeof(block_q8_K);
        case T_IQ4_XS: return (int)sizeof(block_iq4_xs);
        default: return 0;
    }
}

}  // namespace pq
