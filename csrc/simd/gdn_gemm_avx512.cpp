// gdn_gemm_avx512.cpp: the chunked delta rule's float product C (+)= A B on AVX-512 (reference: gdn_chunk.cpp
// gdn_gemm_ref; the AVX2 twin is gdn_gemm_avx2.cpp). 8-row x 32-column tiles: 16 zmm accumulators, 16 FMAs
// per 10 loads; column tails by lane masks.
// The row loops are unrolled by pragma: left to itself GCC kept the accumulator arrays on the stack and
// stored all of them every step (store-bound: the chunked kernel ran at 40% of its speed).
#include <immintrin.h>

#include <cstdint>

namespace pq {

static inline __mmask16 lane_mask16(int64_t w) {  // lanes < w (w clamped to 0..16)
    return w <= 0 ? (__mmask16)0 : w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << w) - 1);
}

template <int MR>
static inline void tile(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                        int64_t w, float cs) {
    const __mmask16 m0 = lane_mask16(w), m1 = lane_mask16(w - 16);
    __m512 c0[MR], c1[MR];
    const __m512 vs = _mm512_set1_ps(cs);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
        c0[r] = cs != 0.0f ? _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(m0, C + r * ldc)) : _mm512_setzero_ps();
        c1[r] = cs != 0.0f ? _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(m1, C + r * ldc + 16)) : _mm512_setzero_ps();
    }
    for (int64_t x = 0; x < K; ++x) {
        const float* b = B + x * ldb;
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_maskz_loadu_ps(m1, b + 16);
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
            const __m512 a = _mm512_set1_ps(A[r * lda + x]);
            c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
        _mm512_mask_storeu_ps(C + r * ldc, m0, c0[r]);
        _mm512_mask_storeu_ps(C + r * ldc + 16, m1, c1[r]);
    }
}

void gdn_gemm_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                     float* C, int64_t ldc, float c_scale) {
    for (int64_t j = 0; j < N; j += 32) {
        const int64_t w = N - j < 32 ? N - j : 32;
        const float* Bj = B + j;
        float* Cj = C + j;
        int64_t i = 0;
        for (; i + 8 <= M; i += 8) tile<8>(K, A + i * lda, lda, Bj, ldb, Cj + i * ldc, ldc, w, c_scale);
        switch (M - i) {
            case 7: tile<7>(K, A + i * lda, lda, Bj, ldb, Cj + i * ldc, ldc, w, c_scale); break;
            case 6: tile<6>(K, A + i * lda, lda, Bj, ldb, Cj + i * ldc, ldc, w, c_scale); break;
            case 5: tile<5>(K, A + i * lda, lda, Bj, ldb, Cj + i * ldc, ldc, w, c_scale); break;
            case 4: tile<4>(K, A + i * lda, lda, Bj, ldb, Cj + i * ldc, ldc, w, c_scale); break;
            case 3: tile<3>(K, A + i * lda, lda, Bj, ldb, Cj + i * ldc, ldc, w, c_scale); break;
            case 2: tile<2>(K, A + i * lda, lda, Bj, ldb, Cj + i * ldc, ldc, w, c_scale); break;
            case 1: tile<1>(K, A + i * lda, lda, Bj, ldb, Cj + i * ldc, ldc, w, c_scale); break;
            default: break;
        }
    }
}

}  // namespace pq
