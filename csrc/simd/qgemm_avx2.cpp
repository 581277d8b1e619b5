// qgemm_avx2.cpp: the prefill GEMM micro-kernel with AVX2 (vpmaddwd), 2 rows x 4 tokens.
//
// Each step takes one 16-value group: vpmaddwd adds the two products of each lane pair (the packed
// order of quants_internal.h), so dword k is lane k directly; 8 accumulators + 6 operands fit the 16
// ymm registers. Float steps as the reference's (qgemm.cpp tile_ref), in its order.
// Compiled with -mavx2 and picked at run time: it calls no inline function of the shared headers.
#include <immintrin.h>

#include "qgemm.h"

namespace pq {

namespace {

using qi::PackedA16;
using qi::PackedW16;

inline int32_t hsum4(__m128i p) {
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0x4E));
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0xB1));
    return _mm_cvtsi128_si32(p);
}

template <int R, int T>
void tile(const PackedW16* w, int64_t ws, const PackedA16* a, int64_t as, int64_t nb, bool has_min, float* y,
          int64_t ldy) {
    __m256 sums[R][T];
    float sumf[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) sums[r][t] = _mm256_setzero_ps(), sumf[r][t] = 0;
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
                const float dd = wb[r]->d * ab[t]->d;
                sums[r][t] = _mm256_add_ps(sums[r][t], _mm256_mul_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(acc[r][t])));
                if (has_min) {
                    const int32_t summ = hsum4(_mm_madd_epi16(_mm_loadu_si128((const __m128i*)wb[r]->m),
                                                              _mm_loadu_si128((const __m128i*)ab[t]->bs8)));
                    const float dm = wb[r]->dmin * ab[t]->d;
                    sumf[r][t] -= dm * (float)summ;
                }
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        for (int t = 0; t < T; ++t) {
            alignas(32) float l[8];
            _mm256_store_ps(l, sums[r][t]);
            float s = sumf[r][t];
            for (int k = 0; k < 8; ++k) s += l[k];
            y[t * ldy + r] = s;
        }
    }
}

using Fn = void (*)(const PackedW16*, int64_t, const PackedA16*, int64_t, int64_t, bool, float*, int64_t);

template <int R>
constexpr Fn row_fn(int nt) {
    return nt == 1 ? tile<R, 1> : nt == 2 ? tile<R, 2> : nt == 3 ? tile<R, 3> : tile<R, 4>;
}

void tile_any(const PackedW16* w, int64_t ws, int nr, const PackedA16* a, int64_t as, int nt, int64_t nb,
              bool has_min, float* y, int64_t ldy) {
    const Fn f = nr == 1 ? row_fn<1>(nt) : row_fn<2>(nt);
    f(w, ws, a, as, nb, has_min, y, ldy);
}

}  // namespace

extern const QgemmKernels kQgemmAvx2;
const QgemmKernels kQgemmAvx2 = {"avx2", 2, 4, tile_any, nullptr};

}  // namespace pq
