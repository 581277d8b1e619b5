// qgemm_avx2.cpp: the prefill GEMM micro-kernel with AVX2 (vpmaddwd), 2 rows x 4 tokens.
//
// Each step takes one 16-value group: vpmaddwd on the packed int16 values (already times their sub-block
// scale); the 8 dwords add up to the super-block's exact isum; 8 accumulators + 6 operands fit the 16
// ymm registers. Float steps as the spec's (qgemm_glue.h kq_step), in its order.
// Compiled with -mavx2 and picked at run time: it calls no inline function of the shared headers.
#include <immintrin.h>

#include "qgemm.h"
#include "simd/qgemm_glue.h"

namespace pq {

namespace {

using qi::PackedA16;
using qi::PackedW16;

template <int R, int T>
void tile(const PackedW16* w, int64_t ws, const PackedA16* a, int64_t as, int64_t nb, bool has_min, float* y,
          int64_t ldy) {
    float facc[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) facc[r][t] = 0;
    for (int64_t i = 0; i < nb; ++i) {
        const PackedW16* wb[R];
        const PackedA16* ab[T];
        for (int r = 0; r < R; ++r) wb[r] = w + r * ws + i;
        for (int t = 0; t < T; ++t) ab[t] = a + t * as + i;
        __m256i acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_si256();
        for (int g = 0; g < QK_K / 16; ++g) {
            __m256i wv[R], av[T];
            for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_si256((const __m256i*)(wb[r]->w + 16 * g));
            for (int t = 0; t < T; ++t) av[t] = _mm256_loadu_si256((const __m256i*)(ab[t]->a + 16 * g));
            for (int r = 0; r < R; ++r)
                for (int t = 0; t < T; ++t) acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(wv[r], av[t]));
        }
        for (int r = 0; r < R; ++r) {
            for (int t = 0; t < T; ++t) {
                facc[r][t] = kq_step(facc[r][t], wb[r]->d, ab[t]->d, hsum8(acc[r][t]));
                if (has_min) {
                    const int32_t summ = hsum4(_mm_madd_epi16(_mm_loadu_si128((const __m128i*)wb[r]->m),
                                                              _mm_loadu_si128((const __m128i*)ab[t]->bs8)));
                    facc[r][t] = kq_min_step(facc[r][t], wb[r]->dmin, ab[t]->d, summ);
                }
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) y[t * ldy + r] = facc[r][t];
}

// The 2 x 4 tile for qgemm_glue.h.
struct Tile2 {
    static constexpr int kRows = 2;
    template <int R, int T>
    static void run(const PackedW16* w, int64_t ws, const PackedA16* a, int64_t as, int64_t nb, bool has_min,
                    float* y, int64_t ldy) {
        tile<R, T>(w, ws, a, as, nb, has_min, y, ldy);
    }
};

// ---- 32-value groups (Q8_0, IQ4_XS): 16 rows x T tokens ----
// Without VNNI the exact product goes through int16: 16 stored bytes (4 values of 4 rows) widened,
// vpmaddwd against the token's 4 values, so dword 2q+h of quad j holds half h of row 4j+q; the halves
// are added with vphaddd at the end of the group (integer, exact), then -128 * sum(activations) and
// the reference's float step on 8 rows per vector.
template <int T, bool SCALED>
void tile8(const qi::PackedW8* w, int64_t ng, const qi::PackedA8* a, int64_t as, float* y, int64_t ldy,
           int nr) {
    alignas(32) float buf[T][16];
    __m256 sumf[T][2];
    for (int t = 0; t < T; ++t) sumf[t][0] = sumf[t][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
        const qi::PackedW8& wg = w[g];
        const qi::PackedA8* ag[T];
        __m256i acc[T][4];
        for (int t = 0; t < T; ++t) {
            ag[t] = a + t * as + g;
            for (int j = 0; j < 4; ++j) acc[t][j] = _mm256_setzero_si256();
        }
        for (int k = 0; k < 8; ++k) {
            __m256i av[T];
            for (int t = 0; t < T; ++t) {
                int32_t a4;
                __builtin_memcpy(&a4, ag[t]->q + 4 * k, 4);
                av[t] = _mm256_cvtepi8_epi16(_mm_set1_epi32(a4));
            }
            for (int j = 0; j < 4; ++j) {
                const __m256i wv = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)wg.q[k][4 * j]));
                for (int t = 0; t < T; ++t) acc[t][j] = _mm256_add_epi32(acc[t][j], _mm256_madd_epi16(wv, av[t]));
            }
        }
        for (int t = 0; t < T; ++t) {
            const __m256i off = _mm256_set1_epi32(-128 * ag[t]->sum);
            const __m256 ad = _mm256_set1_ps(ag[t]->d);
            for (int h = 0; h < 2; ++h) {
                __m256i s8 = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[t][2 * h], acc[t][2 * h + 1]), 0xD8);
                s8 = _mm256_add_epi32(s8, off);
                __m256 c = _mm256_mul_ps(_mm256_loadu_ps(wg.d + 8 * h), ad);
                if (SCALED) c = _mm256_mul_ps(c, _mm256_loadu_ps(wg.ls + 8 * h));
                sumf[t][h] = _mm256_add_ps(sumf[t][h], _mm256_mul_ps(c, _mm256_cvtepi32_ps(s8)));
            }
        }
    }
    for (int t = 0; t < T; ++t) {
        _mm256_store_ps(buf[t], sumf[t][0]);
        _mm256_store_ps(buf[t] + 8, sumf[t][1]);
        for (int r = 0; r < nr; ++r) y[t * ldy + r] = buf[t][r];
    }
}

void tile8_any(const qi::PackedW8* w, int64_t ng, const qi::PackedA8* a, int64_t as, int nt, bool scaled, float* y,
               int64_t ldy, int nr) {
    if (scaled) {
        if (nt == 2) tile8<2, true>(w, ng, a, as, y, ldy, nr);
        else tile8<1, true>(w, ng, a, as, y, ldy, nr);
    } else {
        if (nt == 2) tile8<2, false>(w, ng, a, as, y, ldy, nr);
        else tile8<1, false>(w, ng, a, as, y, ldy, nr);
    }
}

}  // namespace

extern const QgemmKernels kQgemmAvx2;
const QgemmKernels kQgemmAvx2 = {"avx2", 2, 4, tile_any<Tile2>, nullptr, 2, tile8_any, nullptr};

}  // namespace pq
