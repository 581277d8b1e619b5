// qgemm_avx512.cpp: the prefill GEMM micro-kernel with AVX-512 VNNI (vpdpwssd), 4 rows x 4 tokens.
//
// Each step loads 32 packed int16 values of 4 weight rows and 4 tokens and does 16 vpdpwssd: 16
// accumulators + 8 operands fit the 32 zmm registers. The packed order (quants_internal.h) puts two
// values of the same lane side by side, so dword k of a zmm holds lane k mod 8; the two 256-bit halves
// are added at the end of a super-block to give ggml's 8 lanes, exactly (integer sums). The float steps
// per super-block are the reference's (qgemm.cpp tile_ref), in its order, on 8 lanes at once.
// Compiled with AVX-512 flags and picked at run time: it calls no inline function of the shared headers.
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
    __m128 sumf4[R];  // the min-term sums of a full token quad (lane t)
    for (int r = 0; r < R; ++r) {
        sumf4[r] = _mm_setzero_ps();
        for (int t = 0; t < T; ++t) sums[r][t] = _mm256_setzero_ps(), sumf[r][t] = 0;
    }
    for (int64_t i = 0; i < nb; ++i) {
        const PackedW16* wb[R];
        const PackedA16* ab[T];
        for (int r = 0; r < R; ++r) wb[r] = w + r * ws + i;
        for (int t = 0; t < T; ++t) ab[t] = a + t * as + i;
        __m512i acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_si512();
        for (int g = 0; g < QK_K / 32; ++g) {
            __m512i wv[R], av[T];
            for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_si512(wb[r]->w + 32 * g);
            for (int t = 0; t < T; ++t) av[t] = _mm512_loadu_si512(ab[t]->a + 32 * g);
            for (int r = 0; r < R; ++r)
                for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpwssd_epi32(acc[r][t], wv[r], av[t]);
        }
        if constexpr (T == 4) {
            // A full token quad: the 4 tokens' scale products and min terms go through 128-bit vectors
            // (lane t = token t), the same float operations per lane as the scalar branch below.
            const __m128 ad4 = _mm_setr_ps(ab[0]->d, ab[1]->d, ab[2]->d, ab[3]->d);
            __m512i bs = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)ab[0]->bs8));
            bs = _mm512_inserti32x4(bs, _mm_loadu_si128((const __m128i*)ab[1]->bs8), 1);
            bs = _mm512_inserti32x4(bs, _mm_loadu_si128((const __m128i*)ab[2]->bs8), 2);
            bs = _mm512_inserti32x4(bs, _mm_loadu_si128((const __m128i*)ab[3]->bs8), 3);
            for (int r = 0; r < R; ++r) {
                const __m128 dd4 = _mm_mul_ps(_mm_set1_ps(wb[r]->d), ad4);
                for (int t = 0; t < T; ++t) {
                    const __m256i l8 =
                        _mm256_add_epi32(_mm512_castsi512_si256(acc[r][t]), _mm512_extracti64x4_epi64(acc[r][t], 1));
                    const __m256 dd = _mm256_permutexvar_ps(_mm256_set1_epi32(t), _mm256_castps128_ps256(dd4));
                    sums[r][t] = _mm256_add_ps(sums[r][t], _mm256_mul_ps(dd, _mm256_cvtepi32_ps(l8)));
                }
                if (has_min) {
                    // summ of token t = sum_j m[j] * bs8_t[j]: 128-bit lane t of one vpmaddwd, reduced
                    // inside each lane, then the 4 lane sums gathered into one xmm.
                    __m512i p = _mm512_madd_epi16(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)wb[r]->m)), bs);
                    p = _mm512_add_epi32(p, _mm512_shuffle_epi32(p, (_MM_PERM_ENUM)0x4E));
                    p = _mm512_add_epi32(p, _mm512_shuffle_epi32(p, (_MM_PERM_ENUM)0xB1));
                    const __m128i summ = _mm512_castsi512_si128(
                        _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), p));
                    const __m128 dm4 = _mm_mul_ps(_mm_set1_ps(wb[r]->dmin), ad4);
                    sumf4[r] = _mm_sub_ps(sumf4[r], _mm_mul_ps(dm4, _mm_cvtepi32_ps(summ)));
                }
            }
        } else {
            for (int r = 0; r < R; ++r) {
                for (int t = 0; t < T; ++t) {
                    const __m256i l8 =
                        _mm256_add_epi32(_mm512_castsi512_si256(acc[r][t]), _mm512_extracti64x4_epi64(acc[r][t], 1));
                    const float dd = wb[r]->d * ab[t]->d;
                    sums[r][t] = _mm256_add_ps(sums[r][t], _mm256_mul_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(l8)));
                    if (has_min) {
                        const int32_t summ = hsum4(_mm_madd_epi16(_mm_loadu_si128((const __m128i*)wb[r]->m),
                                                                  _mm_loadu_si128((const __m128i*)ab[t]->bs8)));
                        const float dm = wb[r]->dmin * ab[t]->d;
                        sumf[r][t] -= dm * (float)summ;
                    }
                }
            }
        }
    }
    if constexpr (T == 4) {
        for (int r = 0; r < R; ++r) _mm_storeu_ps(sumf[r], sumf4[r]);
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
    const Fn f = nr == 1 ? row_fn<1>(nt) : nr == 2 ? row_fn<2>(nt) : nr == 3 ? row_fn<3>(nt) : row_fn<4>(nt);
    f(w, ws, a, as, nb, has_min, y, ldy);
}

}  // namespace

extern const QgemmKernels kQgemmAvx512;
const QgemmKernels kQgemmAvx512 = {"avx512vnni", 4, 4, tile_any};

}  // namespace pq
