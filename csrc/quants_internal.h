// quants_internal.h: private helpers shared by the per-type quant sources (not part of the public API).
//
// Every quantizer here must reproduce llama.cpp's reference output byte for byte, so the float
// arithmetic is written out in the same order as ggml's scalar C code and this code is compiled with
// -ffp-contract=off (a fused multiply-add rounds once instead of twice and would change chosen levels).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "formats.h"

namespace pq {
namespace qi {

// Round to nearest (ties to even) by adding 1.5*2^23 and reading the mantissa, exactly as ggml's
// nearest_int does. Only meaningful for |f| < 2^22; outside that the result is the same
// deterministic garbage ggml produces, which we must reproduce for byte identity.
inline int nearest_int(float f) {
    const float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, sizeof(i));
    return (i & 0x007fffff) - 0x00400000;
}

// trunc_to_i8 (C's float -> int8 conversion as x86-64 emits it): formats.h, shared with CUDA.

constexpr float kGroupMaxEps = 1e-15f;  // ggml GROUP_MAX_EPS: below this a group counts as all-zero

// Scale/min search for asymmetric k-quants (ggml make_qkx2_quants): levels L in [0, nmax] with
// x ~ scale*L - the_min. Returns the scale; writes L and the (positive) min.
float search_scale_min(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep);

// Scale search for symmetric k-quants with weights x^2 (ggml make_qx_quants, rmse_type 1, no
// importance): levels L in [0, 2*nmax) with x ~ scale*(L - nmax). Returns the (signed) scale.
float search_scale_sym(int n, int nmax, const float* x, int8_t* L);

// Q4_K/Q5_K share the 6-bit scale/min packing; pack 8 (scale, min) pairs into the 12 bytes.
void pack_scale_min_k4(const uint8_t* ls, const uint8_t* lm, uint8_t* scales12);

// Per-type kernels (defined in quants_q8.cpp, quants_q4k_q5k.cpp, quants_q6k.cpp, quants_iq4.cpp).
void q8_0_to_float(const void* src, float* dst, int64_t n);
void q8_0_from_float(const float* src, void* dst, int64_t n);
float q8_0_vec_dot(int64_t n, const void* w, const void* x);
void q8_1_to_float(const void* src, float* dst, int64_t n);
void q8_1_from_float(const float* src, void* dst, int64_t n);
void q8_k_to_float(const void* src, float* dst, int64_t n);
void q8_k_from_float(const float* src, void* dst, int64_t n);

// Legacy 32-value formats (quants_legacy.cpp): Q4_0/Q5_0 dot with Q8_0 activations, Q4_1/Q5_1 with Q8_1.
void q4_0_to_float(const void* src, float* dst, int64_t n);
void q4_0_from_float(const float* src, void* dst, int64_t n);
float q4_0_vec_dot(int64_t n, const void* w, const void* x);
void q4_1_to_float(const void* src, float* dst, int64_t n);
void q4_1_from_float(const float* src, void* dst, int64_t n);
float q4_1_vec_dot(int64_t n, const void* w, const void* x);
void q5_0_to_float(const void* src, float* dst, int64_t n);
void q5_0_from_float(const float* src, void* dst, int64_t n);
float q5_0_vec_dot(int64_t n, const void* w, const void* x);
void q5_1_to_float(const void* src, float* dst, int64_t n);
void q5_1_from_float(const float* src, void* dst, int64_t n);
float q5_1_vec_dot(int64_t n, const void* w, const void* x);

void q4_k_to_float(const void* src, float* dst, int64_t n);
void q4_k_from_float(const float* src, void* dst, int64_t n);
float q4_k_vec_dot(int64_t n, const void* w, const void* x);
void q5_k_to_float(const void* src, float* dst, int64_t n);
void q5_k_from_float(const float* src, void* dst, int64_t n);
float q5_k_vec_dot(int64_t n, const void* w, const void* x);

void q6_k_to_float(const void* src, float* dst, int64_t n);
void q6_k_from_float(const float* src, void* dst, int64_t n);
float q6_k_vec_dot(int64_t n, const void* w, const void* x);

void iq4_nl_to_float(const void* src, float* dst, int64_t n);
float iq4_nl_vec_dot(int64_t n, const void* w, const void* x);
void iq4_xs_to_float(const void* src, float* dst, int64_t n);
float iq4_xs_vec_dot(int64_t n, const void* w, const void* x);

// ---- Packed blocks for the prefill GEMM (qgemm.cpp) ----
// One 256-value super-block of a k-quant weight, unpacked once per call and reused for many tokens:
// every value as int16 already multiplied by its sub-block scale (the products fit: |level*scale| <=
// 63*63 for Q4_K/Q5_K, 32*128 for Q6_K), in lane-pair order (within each 16 values: 0,8,1,9,...,7,15),
// the order the AVX2 tiles and decode kernels were built on (any order gives the same exact isum). d and dmin are the
// block's float scales, m its 8 sub-block mins (0 for Q6_K, which has none). 64-byte aligned (576
// bytes, as PackedA16): at 536 and 528 bytes most 64-byte loads of the GEMM tile straddled two cache
// lines, which cost the AVX-512 tile about a sixth of its speed with its data in L1.
struct alignas(64) PackedW16 {
    int16_t w[QK_K];
    float d, dmin;
    int16_t m[8];
};
// The activation side: a block_q8_K in the same lane-pair order, its d, and bs8[j] = bsums[2j] +
// bsums[2j+1] (the sum of the 32 values of sub-block j, which the min term needs).
struct alignas(64) PackedA16 {
    int16_t a[QK_K];
    float d;
    int16_t bs8[8];
};
void q4_k_pack16(const void* block, PackedW16* out);
void q5_k_pack16(const void* block, PackedW16* out);
void q6_k_pack16(const void* block, PackedW16* out);
void q8_k_pack16(const void* block, PackedA16* out);
// The same activation block in the order of the Q4_K decode kernel (simd/qgemm_avx512.cpp q4_k_rows),
// which widens the weight nibbles with one byte shuffle and shifts instead of lane-pair interleaves:
// position p of a holds value q4k_dec_value(p). Pairs (2i, 2i+1) are still values of one lane mod 8.
int q4k_dec_value(int p);
void q8_k_pack16_dec(const void* block, PackedA16* out);

// The k-quants on unsigned levels for the VNNI GEMM (simd/qgemm_avx512.cpp): one super-block of 16
// weight rows, interleaved as PackedW8 so that one 64-byte vector holds 4 consecutive levels of each
// of the 16 rows and a vpdpbusd against 4 broadcast activation bytes leaves row r's partial sum in
// dword r. The levels are stored as they are in the file (Q4_K 0..15, Q5_K 0..31, Q6_K 0..63 = value
// + 32), the sub-block scales and mins as int32/int16 per row, so the kernel forms the spec's exact isum
// (quants_q4k_q5k.cpp kx_vec_dot, quants_q6k.cpp q6_k_dot) with one integer multiply per sub-block.
// Rows that hold no weight row are all zero. 5504 bytes, a multiple of 64.
struct alignas(64) PackedWK {
    uint8_t q[64][16][4];  // value 4k+j of row r at q[k][r][j]
    int32_t sc[16][16];    // row r's scale of sub-block j at sc[j][r] (Q4_K/Q5_K: j < 8, 32 values each;
                           // Q6_K: 16 sub-blocks of 16, the int8 scale)
    int32_t m[4][16];      // Q4_K/Q5_K: row r's mins (m[2k], m[2k+1]) as an int16 pair in m[k][r]
    float d[16], dmin[16];
};
// The activation side: a Q8_K block's values, its d, the sums per 32 values as int16 pairs (the min
// term, from bsums as the reference dot), and -32 times the sum of each 16 values (Q6_K's level
// offset, from the values themselves as the reference's (u - 32) * q8).
struct alignas(64) PackedAK {
    int8_t q[QK_K];
    float d;
    int32_t bs8p[4];  // (bsums[4k] + bsums[4k+1], bsums[4k+2] + bsums[4k+3]) as int16 pairs
    int32_t off6[16];
};

// The 32-value group formats (Q8_0, IQ4_XS) for the prefill GEMM. Their reference dots add one float
// term per 32 values, c * sumi with c = d_w * d_a (IQ4_XS: times the 6-bit sub-block scale), so the
// integer sum of each group must be complete before its float step. PackedW8 holds one group of 16
// weight rows interleaved so that one 64-byte vector holds 4 consecutive values of each of the 16 rows
// and a vpdpbusd against 4 broadcast activation bytes leaves row r's partial sum in dword r (no
// horizontal sums). Values are stored as level + 128 (unsigned, as vpdpbusd's first operand wants);
// the kernels take 128 * sum(activation group) back out.
struct PackedW8 {
    uint8_t q[8][16][4];  // value 4k+j of row r at q[k][r][j], plus 128
    float d[16];          // the row's weight scale for this group (Q8_0: block d; IQ4_XS: super-block d)
    float ls[16];         // IQ4_XS: the 6-bit sub-block scale - 32; Q8_0: unused
};
// One 32-value activation group: a Q8_0 block (d per 32) or an eighth of a Q8_K block (d per 256).
struct PackedA8 {
    int8_t q[32];
    float d;
    int32_t sum;  // sum of q
};
// Row r of a panel: groups [0, ng) of one weight row (raw GGUF blocks) into panel[g] row r.
void q8_0_pack8(const void* row, int64_t ng, int r, PackedW8* panel);
void iq4_xs_pack8(const void* row, int64_t ng, int r, PackedW8* panel);
// A panel row that holds no weight row: value 0, scales 0.
void pack8_clear_row(int64_t ng, int r, PackedW8* panel);
// 32 signed levels of one group into row r of a PackedW8 (quants_q8.cpp).
void pack8_levels(const int8_t* v, int r, PackedW8& p);
// Activations: n values -> n / 32 groups, quantized exactly as the reference dot's activation (Q8_0
// for Q8_0 weights, Q8_K for IQ4_XS).
void q8_0_pack_a8(const float* x, int64_t n, PackedA8* out);
void q8_k_pack_a8(const float* x, int64_t n, PackedA8* out);

// The exact integer part of a k-quant super-block's dot (the spec of the Q4_K/Q5_K/Q6_K kernels):
// sum over the QK_K / SUB sub-blocks j of sc[j] * sum over their SUB values e of q8[e] * q[e] (levels q
// and scales sc of any integer type; every sum fits int32, bounds in the per-format files).
template <int SUB, class Q, class S>
inline int32_t subblock_isum(const Q* q, const int8_t* q8, const S* sc) {
    int32_t isum = 0;
    for (int j = 0; j < QK_K / SUB; ++j) {
        int32_t s = 0;
        for (int e = SUB * j; e < SUB * j + SUB; ++e) s += q8[e] * q[e];
        isum += sc[j] * s;
    }
    return isum;
}

// Lane-pair order of 256 values q (any integer type) times the scale of their 16-value group.
template <class Q>
inline void pack_lane_pairs(const Q* q, const int* scale16, int16_t* w) {
    for (int g = 0; g < QK_K / 16; ++g) {
        const int s = scale16[g];
        for (int k = 0; k < 8; ++k) {
            w[16 * g + 2 * k] = (int16_t)(q[16 * g + k] * s);
            w[16 * g + 2 * k + 1] = (int16_t)(q[16 * g + k + 8] * s);
        }
    }
}

#if defined(PQ_HAVE_AVX2_KERNELS)
// AVX2 versions, bit-identical to the references: only the integer lane sums are computed with SIMD
// (simd/quants_avx2.cpp); the float steps stay in the scalar files above (Q8_0 and the legacy formats in
// ggml's order, the k-quants in their spec's: kx_vec_dot in quants_q4k_q5k.cpp).
float q8_0_vec_dot_avx2(int64_t n, const void* w, const void* x);
float q4_k_vec_dot_avx2(int64_t n, const void* w, const void* x);
float q5_k_vec_dot_avx2(int64_t n, const void* w, const void* x);
float q6_k_vec_dot_avx2(int64_t n, const void* w, const void* x);
float q4_0_vec_dot_avx2(int64_t n, const void* w, const void* x);
float q4_1_vec_dot_avx2(int64_t n, const void* w, const void* x);
float q5_0_vec_dot_avx2(int64_t n, const void* w, const void* x);
float q5_1_vec_dot_avx2(int64_t n, const void* w, const void* x);

namespace avx2 {
// Integer kernels (simd/quants_avx2.cpp). They may only use types from formats.h, never its inline
// functions: an out-of-line copy compiled with -mavx2 could be picked by the linker for scalar callers.
// lane[l] = sum over values e = l (mod 8) of scale(e) * q8[e] * q(e) for one super-block (partial sums of
// the dots' exact isum, added up by the callers), where
// sc holds the 8 unpacked 6-bit sub-block scales (Q4_K/Q5_K); Q6_K reads its int8 scales itself.
void q4_k_lanes(const block_q4_K& b, const int8_t* q8, const uint8_t* sc, int32_t* lane);
void q5_k_lanes(const block_q5_K& b, const int8_t* q8, const uint8_t* sc, int32_t* lane);
void q6_k_lanes(const block_q6_K& b, const int8_t* q8, int32_t* lane);
// sumi[i] = sum_j w[i].qs[j] * a[i].qs[j] for nb blocks.
void q8_0_block_sums(int64_t nb, const block_q8_0* w, const block_q8_0* a, int32_t* sumi);
}  // namespace avx2
#endif

}  // namespace qi
}  // namespace pq
