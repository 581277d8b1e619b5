// attn_avx2.cpp: the flash-style F16 attention (simd/attn_flash.h) on 8-lane AVX2 vectors, 2 query
// rows per register block (8 score or 8 output accumulators + operands in the 16 ymm registers).
#include <immintrin.h>

#include "simd/attn_flash.h"
#include "simd/avx2_util.h"

namespace pq {

namespace {

struct Vec8 {
    using V = __m256;
    static constexpr int kLanes = 8, kRows = 2;
    static V zero() { return _mm256_setzero_ps(); }
    static V set1(float x) { return _mm256_set1_ps(x); }
    static V load(const float* p) { return _mm256_loadu_ps(p); }
    static V load_f16(const uint16_t* h) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)h)); }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V min(V a, V b) { return _mm256_min_ps(a, b); }
    static V max(V a, V b) { return _mm256_max_ps(a, b); }
    static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
    static V floor(V a) { return _mm256_floor_ps(a); }
    // 2^n for the integer-valued floats n of the exponential's range reduction.
    static V pow2i(V n) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23));
    }
    // The 8 lanes in a fixed tree (the same for every score).
    static float hsum(V v) { return hsum256(v); }
    static void hsum4(V a0, V a1, V a2, V a3, float* out) {
        out[0] = hsum(a0);
        out[1] = hsum(a1);
        out[2] = hsum(a2);
        out[3] = hsum(a3);
    }
    static float hmax(V v) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    // Lane i: base + i.
    static V iota(int base) { return _mm256_add_ps(_mm256_set1_ps((float)base), _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7)); }
    // Lane-wise idx < lim ? a : b.
    static V select_lt(V idx, V lim, V a, V b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(idx, lim, _CMP_LT_OQ)); }
};

}  // namespace

// See attention.h attention_rows; D a multiple of 8 (attention.cpp checks).
void attention_rows_f16_avx2(const float* q, int64_t q_stride, int64_t M, const int64_t* n_keys, const uint8_t* K,
                             size_t k_stride, const uint8_t* V, size_t v_stride, int64_t D, float scale, float* o,
                             int64_t o_stride) {
    flash_attention_rows<Vec8>(q, q_stride, M, n_keys, K, k_stride, V, v_stride, D, scale, o, o_stride);
}

}  // namespace pq
