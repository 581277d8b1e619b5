// avx2_util.h: small AVX2 helpers shared by the simd/*_avx2.cpp and *_avx512.cpp kernels (include only from
// files compiled with -mavx2 or more).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace pq {

// The sum of the 8 lanes, in a fixed order (the one every AVX2 kernel's results are defined by).
static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

// hsum256 of a, b, c, d at once into out[0..3], with the shuffles shared by the four: each add pairs the
// same lanes as hsum256's (and a float add is commutative), so each result is hsum256's bit for bit.
static inline void hsum256x4(__m256 a, __m256 b, __m256 c, __m256 d, float* out) {
    // s4 = lo + hi 128-bit halves, of a | b and of c | d
    const __m256 x = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    const __m256 y = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
    // per 128-bit half: [x0 + x2, x1 + x3, y0 + y2, y1 + y3]
    const __m256 z = _mm256_add_ps(_mm256_shuffle_ps(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm256_shuffle_ps(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
    // lanes 0, 1 of each half: z0 + z1, z2 + z3, i.e. [a, c, .. | b, d, ..]
    const __m256 s = _mm256_add_ps(_mm256_shuffle_ps(z, z, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm256_shuffle_ps(z, z, _MM_SHUFFLE(3, 1, 3, 1)));
    _mm_storeu_ps(out, _mm_unpacklo_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}

// Q6_K: the four 32-value quarters of one 128-value half as unsigned 6-bit levels (level + 32; layout as
// q6_k_levels in quants_q6k.cpp) from its 64 low-nibble bytes (ql0 | ql1) and 32 high-bit bytes (qh).
static inline void q6k_quarters(__m256i ql0, __m256i ql1, __m256i qh, __m256i (&u)[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    u[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
    u[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
    u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
    u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
}

// The 256 levels of one raw Q6_K block in natural order (level + 32) into lv (32-byte aligned).
static inline void q6k_levels256(const uint8_t* b, uint8_t* lv) {
    for (int h = 0; h < 2; ++h) {
        __m256i u[4];
        q6k_quarters(_mm256_loadu_si256((const __m256i*)(b + 64 * h)),
                     _mm256_loadu_si256((const __m256i*)(b + 64 * h + 32)),
                     _mm256_loadu_si256((const __m256i*)(b + 128 + 32 * h)), u);
        for (int k = 0; k < 4; ++k) _mm256_store_si256((__m256i*)(lv + 128 * h + 32 * k), u[k]);
    }
}

// Q4_K (q5 false) / Q5_K: the 64 levels of group g (values 64g .. 64g+63) in registers: lo = the low
// nibbles of the group's 32 quant bytes raw (values 64g + l), hi = the high nibbles (64g + 32 + l); Q5_K
// adds bit 2g / 2g+1 of its 32 qh bytes hb as bit 4. The one unpacking of the packers and the decode rows.
static inline void q45k_group(__m256i raw, __m256i hb, int g, bool q5, __m256i& lo, __m256i& hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    lo = _mm256_and_si256(raw, m4);
    hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
    if (q5) {
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * g), one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * g + 1), one), 4));
    }
}

// The 256 levels of one raw Q4_K (q5 false) or Q5_K block in natural order into lv (32-byte aligned).
static inline void q45k_levels256(const uint8_t* b, bool q5, uint8_t* lv) {
    const uint8_t* qs = q5 ? b + 48 : b + 16;
    const __m256i hb = q5 ? _mm256_loadu_si256((const __m256i*)(b + 16)) : _mm256_setzero_si256();
    for (int g = 0; g < 4; ++g) {
        __m256i lo, hi;
        q45k_group(_mm256_loadu_si256((const __m256i*)(qs + 32 * g)), hb, g, q5, lo, hi);
        _mm256_store_si256((__m256i*)(lv + 64 * g), lo);
        _mm256_store_si256((__m256i*)(lv + 64 * g + 32), hi);
    }
}

}  // namespace pq
