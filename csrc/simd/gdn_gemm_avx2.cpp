// gdn_gemm_avx2.cpp: the chunked delta rule's float product C (+)= A B on AVX2+FMA (reference: gdn_chunk.cpp
// gdn_gemm_ref). The shapes are small (M, N <= 2 x 64 or dk, K <= 128): no packing, B's 16-column panel
// (K x 64 bytes) stays in L1 while 6-row tiles of A stream past it. Each tile keeps 6 x 2 accumulators
// in registers (12 of the 16 ymm), 12 FMAs per 8 loads: the FMA ports are the bound.
// The row loops are unrolled by pragma: left to itself GCC kept the accumulator arrays on the stack and
// stored all of them every step (store-bound: the chunked kernel ran at 40% of its speed).
#include <immintrin.h>

#include <cstdint>

namespace pq {

static inline __m256i lane_mask(int64_t w) {  // lanes < w (w clamped to 0..8)
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(w < 0 ? 0 : w > 8 ? 8 : w)), idx);
}

// Rows [0, MR) of C, columns [0, w) with w <= 16 (FULL: w == 16, no masks).
template <int MR, bool FULL>
static inline void tile(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                        int64_t w, float cs) {
    const __m256i m0 = lane_mask(w), m1 = lane_mask(w - 8);
    __m256 c0[MR], c1[MR];
    const __m256 vs = _mm256_set1_ps(cs);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
        if (cs == 0.0f) {
            c0[r] = _mm256_setzero_ps();
            c1[r] = _mm256_setzero_ps();
        } else if (FULL) {
            c0[r] = _mm256_mul_ps(vs, _mm256_loadu_ps(C + r * ldc));
            c1[r] = _mm256_mul_ps(vs, _mm256_loadu_ps(C + r * ldc + 8));
        } else {
            c0[r] = _mm256_mul_ps(vs, _mm256_maskload_ps(C + r * ldc, m0));
            c1[r] = _mm256_mul_ps(vs, _mm256_maskload_ps(C + r * ldc + 8, m1));
        }
    }
    for (int64_t x = 0; x < K; ++x) {
        const float* b = B + x * ldb;
        const __m256 b0 = FULL ? _mm256_loadu_ps(b) : _mm256_maskload_ps(b, m0);
        const __m256 b1 = FULL ? _mm256_loadu_ps(b + 8) : _mm256_maskload_ps(b + 8, m1);
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
            const __m256 a = _mm256_broadcast_ss(A + r * lda + x);
            c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
        if (FULL) {
            _mm256_storeu_ps(C + r * ldc, c0[r]);
            _mm256_storeu_ps(C + r * ldc + 8, c1[r]);
        } else {
            _mm256_maskstore_ps(C + r * ldc, m0, c0[r]);
            _mm256_maskstore_ps(C + r * ldc + 8, m1, c1[r]);
        }
    }
}

template <bool FULL>
static void rows(int64_t M, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                 int64_t ldc, int64_t w, float cs) {
    int64_t i = 0;
    for (; i + 6 <= M; i += 6) tile<6, FULL>(K, A + i * lda, lda, B, ldb, C + i * ldc, ldc, w, cs);
    switch (M - i) {
        case 5: tile<5, FULL>(K, A + i * lda, lda, B, ldb, C + i * ldc, ldc, w, cs); break;
        case 4: tile<4, FULL>(K, A + i * lda, lda, B, ldb, C + i * ldc, ldc, w, cs); break;
        case 3: tile<3, FULL>(K, A + i * lda, lda, B, ldb, C + i * ldc, ldc, w, cs); break;
        case 2: tile<2, FULL>(K, A + i * lda, lda, B, ldb, C + i * ldc, ldc, w, cs); break;
        case 1: tile<1, FULL>(K, A + i * lda, lda, B, ldb, C + i * ldc, ldc, w, cs); break;
        default: break;
    }
}

void gdn_gemm_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                   float* C, int64_t ldc, float c_scale) {
    for (int64_t j = 0; j < N; j += 16) {
        const int64_t w = N - j < 16 ? N - j : 16;
        if (w == 16) rows<true>(M, K, A, lda, B + j, ldb, C + j, ldc, w, c_scale);
        else rows<false>(M, K, A, lda, B + j, ldb, C + j, ldc, w, c_scale);
    }
}

}  // namespace pq
