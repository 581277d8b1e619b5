// qgemm_avx2.cpp: the prefill GEMM micro-kernels with AVX2: the k-quants on unsigned levels with the
// rows in the dword lanes (PackedWK; vpmaddubsw + vpmaddwd, 16 rows x 2 tokens), Q8_0 / IQ4_XS (tile8).
// Compiled with -mavx2 and picked at run time: it calls no inline function of the shared headers.
#include <immintrin.h>

#include <cstring>

#include "qgemm.h"
#include "simd/avx2_util.h"
#include "simd/qgemm_glue.h"

namespace pq {

namespace {


// ---- K-quants on unsigned levels (PackedWK): 16 rows (two ymm of 8) x 2 tokens ----
// The AVX-512 kernel's scheme without VNNI: per dword k (4 levels of each row) vpmaddubsw against the
// token's 4 broadcast activation bytes gives two int16 pair sums per row (|pair| <= 2 * 63 * 128 = 16128:
// no saturation), vpmaddwd with ones adds them into the row's dword; per sub-block one vpmulld by the
// rows' scales into isum; per super-block the spec's float steps (quants_q4k_q5k.cpp kx_step) on 8 rows per vector. All
// integer sums are exact, so the results are the reference's bits.
template <int T, bool Q6>
void tile_k_body(const qi::PackedWK* w, int64_t /*ws*/, int nr, const qi::PackedAK* a, int64_t as, int64_t nb,
                 float* st, int flags, float* y, int64_t ldy) {
    constexpr int NJ = Q6 ? 16 : 8, KJ = 64 / NJ;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 F[2][T];
    for (int h = 0; h < 2; ++h)
        for (int t = 0; t < T; ++t)
            F[h][t] = (flags & kChunkFirst) ? _mm256_setzero_ps() : _mm256_loadu_ps(st + 8 * (h * T + t));
    for (int64_t i = 0; i < nb; ++i) {
        const qi::PackedWK& wb = w[i];
        const qi::PackedAK* ab[T];
        for (int t = 0; t < T; ++t) ab[t] = a + t * as + i;
        __m256i S[2][T];
        for (int h = 0; h < 2; ++h)
            for (int t = 0; t < T; ++t) S[h][t] = _mm256_setzero_si256();
        for (int j = 0; j < NJ; ++j) {
            __m256i A[2][T];
            for (int t = 0; t < T; ++t) {
                const __m256i init = Q6 ? _mm256_set1_epi32(ab[t]->off6[j]) : _mm256_setzero_si256();
                A[0][t] = A[1][t] = init;
            }
            for (int kk = 0; kk < KJ; ++kk) {
                const int k = j * KJ + kk;
                const __m256i w0 = _mm256_load_si256((const __m256i*)wb.q[k][0]);
                const __m256i w1 = _mm256_load_si256((const __m256i*)wb.q[k][8]);
                for (int t = 0; t < T; ++t) {
                    int32_t a4;
                    __builtin_memcpy(&a4, ab[t]->q + 4 * k, 4);
                    const __m256i bc = _mm256_set1_epi32(a4);
                    A[0][t] = _mm256_add_epi32(A[0][t], _mm256_madd_epi16(_mm256_maddubs_epi16(w0, bc), ones));
                    A[1][t] = _mm256_add_epi32(A[1][t], _mm256_madd_epi16(_mm256_maddubs_epi16(w1, bc), ones));
                }
            }
            for (int h = 0; h < 2; ++h) {
                const __m256i scv = _mm256_load_si256((const __m256i*)(wb.sc[j] + 8 * h));
                for (int t = 0; t < T; ++t) S[h][t] = _mm256_add_epi32(S[h][t], _mm256_mullo_epi32(A[h][t], scv));
            }
        }
        for (int h = 0; h < 2; ++h) {
            const __m256 dw = _mm256_load_ps(wb.d + 8 * h);
            for (int t = 0; t < T; ++t) {
                const __m256 da = _mm256_set1_ps(ab[t]->d);
                F[h][t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(S[h][t]), F[h][t]);
            }
            if (!Q6) {
                const __m256 dmw = _mm256_load_ps(wb.dmin + 8 * h);
                for (int t = 0; t < T; ++t) {
                    __m256i M = _mm256_setzero_si256();
                    for (int k = 0; k < 4; ++k)
                        M = _mm256_add_epi32(M, _mm256_madd_epi16(_mm256_load_si256((const __m256i*)(wb.m[k] + 8 * h)),
                                                                  _mm256_set1_epi32(ab[t]->bs8p[k])));
                    F[h][t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmw, _mm256_set1_ps(ab[t]->d)), _mm256_cvtepi32_ps(M),
                                               F[h][t]);
                }
            }
        }
    }
    if (!(flags & kChunkLast)) {
        for (int h = 0; h < 2; ++h)
            for (int t = 0; t < T; ++t) _mm256_storeu_ps(st + 8 * (h * T + t), F[h][t]);
        return;
    }
    for (int t = 0; t < T; ++t) {
        alignas(32) float buf[16];
        _mm256_store_ps(buf, F[0][t]);
        _mm256_store_ps(buf + 8, F[1][t]);
        for (int r = 0; r < nr && r < 16; ++r) y[t * ldy + r] = buf[r];
    }
}

void tile_k(int type, const qi::PackedWK* w, int64_t ws, int nr, const qi::PackedAK* a, int64_t as, int nt, int64_t nb,
            float* st, int flags, float* y, int64_t ldy) {
    const bool q6 = type == T_Q6_K;
    if (nt >= 2) (q6 ? tile_k_body<2, true> : tile_k_body<2, false>)(w, ws, nr, a, as, nb, st, flags, y, ldy);
    else (q6 ? tile_k_body<1, true> : tile_k_body<1, false>)(w, ws, nr, a, as, nb, st, flags, y, ldy);
}

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// formats.h get_scale_min_k4, which this file may not call (see the note at the top).
inline void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Up to 16 raw rows -> nb PackedWK blocks: levels in natural order (the AVX2 dot kernels' unpacking),
// copied a dword at a time to q[k][r] (about 1% of a 1-thread qgemm here: no transposes needed).
void pack_k(int type, const void* rows, size_t row_stride, int nrows, int64_t nb, qi::PackedWK* out) {
    const size_t bytes = type == T_Q6_K ? sizeof(block_q6_K) : type == T_Q5_K ? sizeof(block_q5_K) : sizeof(block_q4_K);
    for (int64_t i = 0; i < nb; ++i) {
        qi::PackedWK& o = out[i];
        std::memset((void*)&o, 0, sizeof(o));
        for (int r = 0; r < nrows; ++r) {
            const uint8_t* b = (const uint8_t*)rows + r * row_stride + i * bytes;
            alignas(32) uint8_t lv[QK_K];
            if (type == T_Q6_K) {
                q6k_levels256(b, lv);
                for (int j = 0; j < 16; ++j) o.sc[j][r] = ((const int8_t*)b)[192 + j];
                o.d[r] = h2f(*(const uint16_t*)(b + 208));
            } else {
                q45k_levels256(b, type == T_Q5_K, lv);
                int sc[8], m[8];
                for (int j = 0; j < 8; ++j) scale_min_k4(j, b + 4, sc[j], m[j]);
                for (int j = 0; j < 8; ++j) o.sc[j][r] = sc[j];
                for (int k = 0; k < 4; ++k) o.m[k][r] = (int32_t)((uint32_t)m[2 * k] | (uint32_t)m[2 * k + 1] << 16);
                o.d[r] = h2f(*(const uint16_t*)b);
                o.dmin[r] = h2f(*(const uint16_t*)(b + 2));
            }
            for (int k = 0; k < 64; ++k) __builtin_memcpy(o.q[k][r], lv + 4 * k, 4);
        }
    }
}

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
const QgemmKernels kQgemmAvx2 = {"avx2", 0, 0, nullptr, nullptr, 2, tile8_any, nullptr,
                                 nullptr, 0, nullptr, 1, 2, tile_k, pack_k};

}  // namespace pq
