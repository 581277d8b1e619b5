// avx512_util.h: small AVX-512 helpers shared by the simd/*_avx512.cpp kernels (the AVX-512 counterpart
// of avx2_util.h; include only from files compiled with the AVX-512 flags of CMakeLists.txt).
//
// Everything here is `static inline` (internal linkage): a copy compiled with AVX-512 flags can never
// stand in for another file's at link time, and a file built for AVX2 alone never sees these.
#pragma once

#include <immintrin.h>

namespace pq {

// The 16-lane sum in one fixed tree: s8[j] = v[j] + v[j + 8], s4[j] = s8[j] + s8[j + 4], then
// (s4[0] + s4[2]) + (s4[1] + s4[3]) -- GCC's _mm512_reduce_add_ps order, written out so no compiler's
// intrinsic decides it. It is also avx2_util.h hsum256(lo + hi) of the two 256-bit halves, which is
// what keeps the AVX-512 kernels bit-identical to AVX2 ones that keep two 8-lane sums (gdn_avx512.cpp).
static inline float hsum512(__m512 v) {
    const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));         // lanes 0, 1: s4[0] + s4[2], s4[1] + s4[3]
    s = _mm_add_ss(s, _mm_movehdup_ps(s));          // lane 0: (s4[0] + s4[2]) + (s4[1] + s4[3])
    return _mm_cvtss_f32(s);
}

// hsum512 of a, b, c, d at once, with the shuffles shared by the four (each add pairs the same lanes as
// hsum512's, so each result is bit-identical to it): the four sums in lanes 0, 4, 8 and 12.
static inline __m512 hsum512x4_lanes(__m512 a, __m512 b, __m512 c, __m512 d) {
    // s8 of a | s8 of b, and of c | d: 128-bit quarters (0, 1) + (2, 3) of each
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
    // s4 of a | b | c | d: the even quarters + the odd ones
    const __m512 s4 = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 s2 = _mm512_add_ps(s4, _mm512_permute_ps(s4, _MM_SHUFFLE(1, 0, 3, 2)));  // (0+2), (1+3)
    return _mm512_add_ps(s2, _mm512_permute_ps(s2, _MM_SHUFFLE(2, 3, 0, 1)));            // lane 0 of each quarter
}

// hsum512x4_lanes stored as out[0..3].
static inline void hsum512x4(__m512 a, __m512 b, __m512 c, __m512 d, float* out) {
    const __m512 s = hsum512x4_lanes(a, b, c, d);
    _mm_storeu_ps(out, _mm512_castps512_ps128(
                           _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s)));
}

}  // namespace pq
