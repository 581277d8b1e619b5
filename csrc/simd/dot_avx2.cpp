// dot_avx2.cpp: AVX2+FMA+F16C versions of the float dot products (reference: matmul.cpp *_ref).
#include <cmath>
#include <immintrin.h>

#include <cstdint>

#include "simd/avx2_util.h"

namespace pq {

float dot_f32_avx2(const float* w, const float* x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum256(_mm256_add_ps(a0, a1));
    for (; i < n; ++i) s += w[i] * x[i];
    return s;
}

float dot_f16_avx2(const uint16_t* w, const float* x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w + i)));
        __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w + i + 8)));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum256(_mm256_add_ps(a0, a1));
    for (; i < n; ++i) s += _cvtsh_ss(w[i]) * x[i];
    return s;
}

float dot_bf16_avx2(const uint16_t* w, const float* x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(w + i)));
        __m256i h1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(w + i + 8)));
        __m256 w0 = _mm256_castsi256_ps(_mm256_slli_epi32(h0, 16));
        __m256 w1 = _mm256_castsi256_ps(_mm256_slli_epi32(h1, 16));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum256(_mm256_add_ps(a0, a1));
    for (; i < n; ++i) {
        uint32_t b = (uint32_t)w[i] << 16;
        float f;
        __builtin_memcpy(&f, &b, 4);
        s += f * x[i];
    }
    return s;
}

// ---- several tokens per weight row ---------------------------------------------------------------
//
// y[t * y_stride] = dot(w, x + t * x_stride) for t < m, each with exactly the accumulation of the
// one-token kernel above (two 8-lane sums over 16-element steps, then hsum, then the scalar tail), so
// a token's result does not depend on how many tokens share the call: verification batches equal
// one-token decode steps bit for bit. The weight vector is loaded and converted once for up to 4 tokens.

template <int M, class T, class Load>
static inline void dots_m(Load load, const T* w, const float* x, int64_t x_stride, int64_t n, float* y,
                          int64_t y_stride) {
    __m256 a0[M], a1[M];
    for (int t = 0; t < M; ++t) a0[t] = a1[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i + 16 <= n; i += 16) {
        const __m256 w0 = load(w + i), w1 = load(w + i + 8);
        for (int t = 0; t < M; ++t) {
            a0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * x_stride + i), a0[t]);
            a1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * x_stride + i + 8), a1[t]);
        }
    }
    for (int t = 0; t < M; ++t) y[t * y_stride] = hsum256(_mm256_add_ps(a0[t], a1[t]));
}

template <class T, class Load, class Scalar>
static void dots_any(Load load, Scalar scalar, const T* w, const float* x, int64_t x_stride, int64_t m, int64_t n,
                     float* y, int64_t y_stride) {
    int64_t t = 0;
    for (; t + 4 <= m; t += 4) dots_m<4>(load, w, x + t * x_stride, x_stride, n, y + t * y_stride, y_stride);
    switch (m - t) {
        case 3: dots_m<3>(load, w, x + t * x_stride, x_stride, n, y + t * y_stride, y_stride); break;
        case 2: dots_m<2>(load, w, x + t * x_stride, x_stride, n, y + t * y_stride, y_stride); break;
        case 1: dots_m<1>(load, w, x + t * x_stride, x_stride, n, y + t * y_stride, y_stride); break;
        default: break;
    }
    for (int64_t u = 0; u < m; ++u) {  // the scalar tail, as the one-token kernels add it
        float s = y[u * y_stride];
        for (int64_t i = n & ~int64_t(15); i < n; ++i) s += scalar(w[i]) * x[u * x_stride + i];
        y[u * y_stride] = s;
    }
}

static inline __m256 load_f32(const float* p) { return _mm256_loadu_ps(p); }
static inline __m256 load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
static inline __m256 load_bf16(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline float f32_scalar(float v) { return v; }
static inline float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }
static inline float bf16_scalar(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float f;
    __builtin_memcpy(&f, &b, 4);
    return f;
}

void dots_f32_avx2(const float* w, const float* x, int64_t x_stride, int64_t m, int64_t n, float* y,
                   int64_t y_stride) {
    dots_any(load_f32, f32_scalar, w, x, x_stride, m, n, y, y_stride);
}

void dots_f16_avx2(const uint16_t* w, const float* x, int64_t x_stride, int64_t m, int64_t n, float* y,
                   int64_t y_stride) {
    dots_any(load_f16, f16_scalar, w, x, x_stride, m, n, y, y_stride);
}

void dots_bf16_avx2(const uint16_t* w, const float* x, int64_t x_stride, int64_t m, int64_t n, float* y,
                    int64_t y_stride) {
    dots_any(load_bf16, bf16_scalar, w, x, x_stride, m, n, y, y_stride);
}

// ---- several weight rows per pass ----------------------------------------------------------------
//
// y[t * y_stride + r] = dot(w + r * w_stride, x + t * x_stride) for r < rows, t < m (matmul hands a
// thread its whole block of rows per token tile). Each (row, token) is accumulated exactly as the
// one-token dot above (a0 / a1 over 16-element steps, hsum256(a0 + a1), then the scalar tail), so decode
// and verification agree bit for bit; what changes is the schedule. Rows go in blocks (4 for one token,
// 2 for 2-3 tokens, 1 from 4 on: 8-12 accumulators of the 16 ymm registers, enough independent FMA chains
// to hide their latency on short rows), tokens in tiles of up to 4, the sums of a block are folded four
// at a time (hsum256x4), and each 32-element step asks for the weights kPrefetchRows rows ahead (the
// AVX-512 kernel's prefetch, dot_avx512.cpp: the weights stream from beyond the private caches).

constexpr int64_t kPrefetchRows = 8;

// out[r * M + t] = the 8-lane sum vector a0 + a1 of row r and token t.
template <int R, int M, class Load, class Prefetch>
static inline void vecs_rm(Load load, Prefetch pf, int64_t w_stride, int64_t n, const float* x, int64_t x_stride,
                           __m256* out) {
    __m256 a0[R][M], a1[R][M];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < M; ++t) a0[r][t] = a1[r][t] = _mm256_setzero_ps();
    const auto step = [&](int64_t i) {  // one 16-element step of the one-token dot, for every (row, token)
        for (int r = 0; r < R; ++r) {
            const __m256 w0 = load(r * w_stride + i), w1 = load(r * w_stride + i + 8);
            for (int t = 0; t < M; ++t) {
                a0[r][t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * x_stride + i), a0[r][t]);
                a1[r][t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * x_stride + i + 8), a1[r][t]);
            }
        }
    };
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {  // two steps per cache line of F16/BF16 weights: one prefetch per row
        for (int r = 0; r < R; ++r) pf(r * w_stride + i + kPrefetchRows * w_stride);  // a hint: never faults
        step(i);
        step(i + 16);
    }
    if (i + 16 <= n) step(i);
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < M; ++t) out[r * M + t] = _mm256_add_ps(a0[r][t], a1[r][t]);
}

template <int R, class Load, class Prefetch>
static inline void vecs_r(Load load, Prefetch pf, int64_t w_stride, int64_t n, const float* x, int64_t x_stride,
                          int64_t m, __m256* out) {
    switch (m) {
        case 4: vecs_rm<R, 4>(load, pf, w_stride, n, x, x_stride, out); break;
        case 3: vecs_rm<R, 3>(load, pf, w_stride, n, x, x_stride, out); break;
        case 2: vecs_rm<R, 2>(load, pf, w_stride, n, x, x_stride, out); break;
        default: vecs_rm<R, 1>(load, pf, w_stride, n, x, x_stride, out); break;
    }
}

template <class LoadAt, class ScalarAt, class PrefetchAt>
static void rows_any(LoadAt load_at, ScalarAt scalar_at, PrefetchAt prefetch_at, int64_t w_stride, int64_t rows,
                     const float* x, int64_t x_stride, int64_t m, int64_t n, float* y, int64_t y_stride) {
    const int rb = m == 1 ? 4 : m <= 3 ? 2 : 1;
    __m256 v[8];  // R * M <= 6 sums, padded to a multiple of 4
    float s[8];
    for (int64_t r0 = 0, R; r0 < rows; r0 += R) {
        R = rows - r0 < rb ? 1 : rb;  // the last rows of an uneven split: one at a time
        for (int64_t t0 = 0; t0 < m; t0 += 4) {
            const int64_t M = m - t0 < 4 ? m - t0 : 4;
            const auto load = [&](int64_t i) { return load_at(r0 * w_stride + i); };
            const auto pf = [&](int64_t i) { prefetch_at(r0 * w_stride + i); };
            const float* xt = x + t0 * x_stride;
            if (R == 4) vecs_r<4>(load, pf, w_stride, n, xt, x_stride, M, v);
            else if (R == 2) vecs_r<2>(load, pf, w_stride, n, xt, x_stride, M, v);
            else vecs_r<1>(load, pf, w_stride, n, xt, x_stride, M, v);
            const int cnt = (int)(R * M);
            for (int j = cnt; j % 4; ++j) v[j] = _mm256_setzero_ps();
            for (int j = 0; j < cnt; j += 4) hsum256x4(v[j], v[j + 1], v[j + 2], v[j + 3], s + j);
            for (int r = 0; r < R; ++r) {
                const int64_t row = r0 + r;
                for (int64_t t = 0; t < M; ++t) {  // the scalar tail, as the one-token kernels add it
                    float acc = s[r * M + t];
                    const float* xr = xt + t * x_stride;
                    for (int64_t i = n & ~int64_t(15); i < n; ++i) acc += scalar_at(row * w_stride + i) * xr[i];
                    y[(t0 + t) * y_stride + row] = acc;
                }
            }
        }
    }
}

void rows_f16_avx2(const uint16_t* w, int64_t w_stride, int64_t rows, const float* x, int64_t x_stride, int64_t m,
                   int64_t n, float* y, int64_t y_stride) {
    rows_any([w](int64_t i) { return load_f16(w + i); }, [w](int64_t i) { return f16_scalar(w[i]); },
             [w](int64_t i) { _mm_prefetch((const char*)(w + i), _MM_HINT_T0); }, w_stride, rows, x, x_stride, m, n,
             y, y_stride);
}

void rows_bf16_avx2(const uint16_t* w, int64_t w_stride, int64_t rows, const float* x, int64_t x_stride, int64_t m,
                    int64_t n, float* y, int64_t y_stride) {
    rows_any([w](int64_t i) { return load_bf16(w + i); }, [w](int64_t i) { return bf16_scalar(w[i]); },
             [w](int64_t i) { _mm_prefetch((const char*)(w + i), _MM_HINT_T0); }, w_stride, rows, x, x_stride, m, n,
             y, y_stride);
}

void axpy_f16_avx2(float* acc, const uint16_t* h, float a, int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i)));
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(va, v, _mm256_loadu_ps(acc + i)));
    }
    for (; i < n; ++i) acc[i] += a * _cvtsh_ss(h[i]);
}

// acc[d] += w[s] * V[s][d] for s in order, one fma per step as axpy_f16_avx2 does, with 32 columns of acc
// held in registers across the keys (the attention's P V for one row over a block of keys).
void wsum_avx2(float* acc, const float* V, const float* w, int64_t nk, int64_t D) {
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {
        __m256 a0 = _mm256_loadu_ps(acc + d), a1 = _mm256_loadu_ps(acc + d + 8);
        __m256 a2 = _mm256_loadu_ps(acc + d + 16), a3 = _mm256_loadu_ps(acc + d + 24);
        for (int64_t s = 0; s < nk; ++s) {
            const __m256 ws = _mm256_set1_ps(w[s]);
            const float* v = V + s * D + d;
            a0 = _mm256_fmadd_ps(ws, _mm256_loadu_ps(v), a0);
            a1 = _mm256_fmadd_ps(ws, _mm256_loadu_ps(v + 8), a1);
            a2 = _mm256_fmadd_ps(ws, _mm256_loadu_ps(v + 16), a2);
            a3 = _mm256_fmadd_ps(ws, _mm256_loadu_ps(v + 24), a3);
        }
        _mm256_storeu_ps(acc + d, a0);
        _mm256_storeu_ps(acc + d + 8, a1);
        _mm256_storeu_ps(acc + d + 16, a2);
        _mm256_storeu_ps(acc + d + 24, a3);
    }
    for (; d + 8 <= D; d += 8) {
        __m256 a = _mm256_loadu_ps(acc + d);
        for (int64_t s = 0; s < nk; ++s) a = _mm256_fmadd_ps(_mm256_set1_ps(w[s]), _mm256_loadu_ps(V + s * D + d), a);
        _mm256_storeu_ps(acc + d, a);
    }
    for (; d < D; ++d)
        for (int64_t s = 0; s < nk; ++s) acc[d] = std::fma(w[s], V[s * D + d], acc[d]);
}

}  // namespace pq
