// attn_avx512.cpp: the flash-style F16 attention (simd/attn_flash.h) on 16-lane AVX-512 vectors, 4
// query rows per register block (16 accumulators + operands in the 32 zmm registers). A head size that
// is not a multiple of 16 takes the AVX2 kernel (fixed per model, so rows stay batch-independent).
#include <immintrin.h>

#include "simd/attn_flash.h"
#include "simd/avx512_util.h"

namespace pq {

void attention_rows_f16_avx2(const float* q, int64_t q_stride, int64_t M, const int64_t* n_keys, const uint8_t* K,
                             size_t k_stride, const uint8_t* V, size_t v_stride, int64_t D, float scale, float* o,
                             int64_t o_stride);

namespace {

struct Vec16 {
    using V = __m512;
    static constexpr int kLanes = 16, kRows = 4;
    static V zero() { return _mm512_setzero_ps(); }
    static V set1(float x) { return _mm512_set1_ps(x); }
    static V load(const float* p) { return _mm512_loadu_ps(p); }
    static V load_f16(const uint16_t* h) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)h)); }
    static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V min(V a, V b) { return _mm512_min_ps(a, b); }
    static V max(V a, V b) { return _mm512_max_ps(a, b); }
    static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
    static V floor(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
    static V pow2i(V n) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23));
    }
    // The 16 lanes in a fixed tree (the same for every score), and four at once by the same tree.
    static float hsum(V v) { return hsum512(v); }
    static void hsum4(V a0, V a1, V a2, V a3, float* out) { hsum512x4(a0, a1, a2, a3, out); }
    static float hmax(V v) { return _mm512_reduce_max_ps(v); }
    // Lane i: base + i.
    static V iota(int base) {
        return _mm512_add_ps(_mm512_set1_ps((float)base),
                             _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    }
    // Lane-wise idx < lim ? a : b.
    static V select_lt(V idx, V lim, V a, V b) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(idx, lim, _CMP_LT_OQ), b, a); }
};

}  // namespace

void attention_rows_f16_avx512(const float* q, int64_t q_stride, int64_t M, const int64_t* n_keys, const uint8_t* K,
                               size_t k_stride, const uint8_t* V, size_t v_stride, int64_t D, float scale, float* o,
                               int64_t o_stride) {
    if (D % 16) return attention_rows_f16_avx2(q, q_stride, M, n_keys, K, k_stride, V, v_stride, D, scale, o, o_stride);
    flash_attention_rows<Vec16>(q, q_stride, M, n_keys, K, k_stride, V, v_stride, D, scale, o, o_stride);
}

}  // namespace pq
