// avx2_util.h: small AVX2 helpers shared by the simd/*_avx2.cpp kernels (include only from files compiled
// with -mavx2).
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

}  // namespace pq
