// avx2_util.h: small AVX2 helpers shared by the simd/*_avx2.cpp and *_avx512.cpp kernels (include only from
// files compiled with -mavx2 or more).
#pragma once

#include <immintrin.h>

namespace pq {

// The sum of the 8 lanes, in a fixed order (the one every AVX2 kernel's results are defined by).
static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
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

}  // namespace pq
