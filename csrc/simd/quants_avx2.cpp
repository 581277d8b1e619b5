// quants_avx2.cpp: AVX2 integer kernels of the quantized dot products.
//
// Bit-identical with the references by construction: these compute only exact integer sums, in 8 lanes
// (value index mod 8; for the k-quants partial sums of the super-block's isum, which the callers add
// up), and the callers in the scalar quant files do the float steps.
// The trick that keeps the lane structure with _mm256_maddubs_epi16 (which
// adds adjacent byte products): shuffle each 16 bytes to the order 0,8,1,9,...,7,15 so that the
// adjacent pair is always two values of the same lane.
//
// Compiled with -mavx2 and picked at run time (quants.cpp), so nothing here may call the inline
// functions of formats.h or quants_internal.h (see the note in quants_internal.h).
#include <immintrin.h>

#include "quants_internal.h"
#include "simd/avx2_util.h"

namespace pq {
namespace qi {
namespace avx2 {

namespace {

inline __m256i lane_pairs() {
    return _mm256_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15,  //
                            0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
}

// 32 unsigned levels u (< 64) times 32 int8 activations, reduced to int16 per lane for each
// 16-value half: result int16 k of half h = u[16h+k]*q8[16h+k] + u[16h+k+8]*q8[16h+k+8].
// |value| <= 2*63*128 = 16128: no saturation.
inline __m256i pair_products(__m256i u, __m256i q8, __m256i shuf) {
    return _mm256_maddubs_epi16(_mm256_shuffle_epi8(u, shuf), _mm256_shuffle_epi8(q8, shuf));
}

// acc (8 x int32 lanes) += scale * (both halves of p added per lane); used when the 32 values share
// one scale. |half sum| <= 2 * 2*31*128 = 15872 fits int16 for the 5-bit levels used here.
inline __m256i add_scaled_same(__m256i acc, __m256i p, int32_t scale) {
    const __m128i h = _mm_add_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
    return _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_cvtepi16_epi32(h), _mm256_set1_epi32(scale)));
}

// acc += scale_lo * (low half of p) + scale_hi * (high half), for two 16-value sub-blocks.
inline __m256i add_scaled_split(__m256i acc, __m256i p, int32_t scale_lo, int32_t scale_hi) {
    const __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p));
    const __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(p, 1));
    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(lo, _mm256_set1_epi32(scale_lo)));
    return _mm256_add_epi32(acc, _mm256_mullo_epi32(hi, _mm256_set1_epi32(scale_hi)));
}

inline __m256i load32(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }

}  // namespace

void q4_k_lanes(const block_q4_K& b, const int8_t* q8, const uint8_t* sc, int32_t* lane) {
    const __m256i shuf = lane_pairs(), m4 = _mm256_set1_epi8(0x0F);
    __m256i acc = _mm256_setzero_si256();
    for (int g = 0; g < QK_K / 64; ++g) {
        const __m256i raw = load32(b.qs + 32 * g);
        const __m256i lo = _mm256_and_si256(raw, m4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        acc = add_scaled_same(acc, pair_products(lo, load32(q8 + 64 * g), shuf), sc[2 * g]);
        acc = add_scaled_same(acc, pair_products(hi, load32(q8 + 64 * g + 32), shuf), sc[2 * g + 1]);
    }
    _mm256_storeu_si256((__m256i*)lane, acc);
}

void q5_k_lanes(const block_q5_K& b, const int8_t* q8, const uint8_t* sc, int32_t* lane) {
    const __m256i shuf = lane_pairs(), m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const __m256i qh = load32(b.qh);
    __m256i acc = _mm256_setzero_si256();
    for (int g = 0; g < QK_K / 64; ++g) {
        const __m256i raw = load32(b.qs + 32 * g);
        // Bit 2g of qh[l] is bit 4 of value 64g+l, bit 2g+1 of value 64g+32+l. The 16-bit shifts
        // pull in bits from the neighbouring byte, which the byte mask drops.
        const __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), one);
        const __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g + 1), one);
        const __m256i lo = _mm256_or_si256(_mm256_and_si256(raw, m4), _mm256_slli_epi16(h0, 4));
        const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), _mm256_slli_epi16(h1, 4));
        acc = add_scaled_same(acc, pair_products(lo, load32(q8 + 64 * g), shuf), sc[2 * g]);
        acc = add_scaled_same(acc, pair_products(hi, load32(q8 + 64 * g + 32), shuf), sc[2 * g + 1]);
    }
    _mm256_storeu_si256((__m256i*)lane, acc);
}

void q6_k_lanes(const block_q6_K& b, const int8_t* q8, int32_t* lane) {
    const __m256i shuf = lane_pairs();
    const __m256i ones = _mm256_set1_epi8(1);
    __m256i acc = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
        const __m256i ql0 = load32(b.ql + 64 * h), ql1 = load32(b.ql + 64 * h + 32);
        const __m256i qh = load32(b.qh + 32 * h);
        // The four 32-value quarters of this 128-value half (layout as q6_k_levels in quants_q6k.cpp).
        __m256i u[4];
        q6k_quarters(ql0, ql1, qh, u);
        for (int k = 0; k < 4; ++k) {
            // Levels are stored +32 (unsigned for maddubs); subtract 32*q8 per pair in int16. Both
            // terms are exact (|pu| <= 16128, |32*p1| <= 8192) and the difference, a pair sum of
            // (u-32)*q8, lies in [-7936, 8192], so the wrapping int16 subtraction is exact too.
            const __m256i a = load32(q8 + 128 * h + 32 * k);
            const __m256i pu = pair_products(u[k], a, shuf);
            const __m256i p1 = pair_products(ones, a, shuf);
            const __m256i p = _mm256_sub_epi16(pu, _mm256_slli_epi16(p1, 5));
            const int sb = 8 * h + 2 * k;  // 16-value sub-blocks of the two halves of this quarter
            acc = add_scaled_split(acc, p, b.scales[sb], b.scales[sb + 1]);
        }
    }
    _mm256_storeu_si256((__m256i*)lane, acc);
}

void q8_0_block_sums(int64_t nb, const block_q8_0* w, const block_q8_0* a, int32_t* sumi) {
    // Widen to int16 and use madd (exact for every int8 pair, including -128 * -128).
    for (int64_t i = 0; i < nb; ++i) {
        const __m256i wv = load32(w[i].qs), av = load32(a[i].qs);
        const __m256i p0 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(wv)),
                                             _mm256_cvtepi8_epi16(_mm256_castsi256_si128(av)));
        const __m256i p1 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(wv, 1)),
                                             _mm256_cvtepi8_epi16(_mm256_extracti128_si256(av, 1)));
        __m256i s = _mm256_add_epi32(p0, p1);
        __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
        sumi[i] = _mm_cvtsi128_si32(t);
    }
}

}  // namespace avx2
}  // namespace qi
}  // namespace pq
